//! The key-provider abstraction: who holds the key-encryption keys (KEKs).

use std::collections::BTreeMap;

use crate::{CryptoError, DataKey};

/// Which key-encryption key wrapped a DEK.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef {
    /// Provider-specific key id (a local key file id, or a KMS key ARN).
    pub key_id: String,
    /// Version of that key.
    pub version: u32,
}

/// A DEK wrapped by a KEK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedDek {
    /// The KEK that wrapped it.
    pub key: KeyRef,
    /// Provider-specific wrapped bytes (locally: nonce || ciphertext || tag).
    pub ciphertext: Vec<u8>,
}

/// KMS encryption context (also bound into local wrapping as AAD); BTreeMap for canonical order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one entry.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.0.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The context for one credential's DEK: `workspace_id`, `credential_id`, `purpose`.
    pub fn for_credential(workspace_id: &str, credential_id: &str, purpose: &str) -> Self {
        Self::new()
            .with("workspace_id", workspace_id)
            .with("credential_id", credential_id)
            .with("purpose", purpose)
    }

    /// Entries in sorted key order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Holds key-encryption keys and wraps/unwraps per-credential data keys with them.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// Short name for logs/config ("local" or "aws-kms").
    fn kind(&self) -> &'static str;

    /// The key new DEKs are wrapped with.
    fn current_key(&self) -> KeyRef;

    /// New random 256-bit DEK, plaintext + wrapped under the current key, bound to ctx.
    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError>;

    /// Unwraps a DEK; fails if the ctx differs from the one used to wrap, the key is unknown,
    /// or bytes were tampered.
    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError>;

    /// Wraps an existing DEK under the current key, bound to ctx.
    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError>;

    /// Re-wraps a DEK under the current key (key rotation). The default unwraps then wraps;
    /// a KMS can override it with a server-side re-encrypt that never exposes the DEK.
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        let dek = self.unwrap_data_key(wrapped, ctx).await?;
        self.wrap_data_key(&dek, ctx).await
    }
}

/// `key version` for messages (KMS keys have no versions of their own: shown as the ARN).
pub fn key_label(key_id: &str, version: i64) -> String {
    if key_id.starts_with("arn:") && version == 0 {
        key_id.to_owned()
    } else {
        format!("{key_id} version {version}")
    }
}
