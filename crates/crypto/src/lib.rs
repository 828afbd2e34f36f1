//! Envelope encryption for stored OAuth credentials.
//!
//! Each credential gets its own data-encryption key (DEK); the DEK is stored wrapped by a
//! key-encryption key (KEK) held by a [`KeyProvider`]: a local key file, or an AWS KMS key.
//! [`Envelope`] seals and opens rows and keeps a bounded cache of unwrapped DEKs.

pub mod aws_kms;
mod cache;
mod deferred;
mod envelope;
mod error;
mod key_provider;
mod local;
mod local_watch;
mod multi;
mod primitives;
mod secret;
#[cfg(test)]
mod test_support;

pub use aws_kms::{AwsKmsConfig, AwsKmsKeyProvider};
pub use cache::{CacheStats, DekCacheConfig};
pub use deferred::{ConnectFn, DeferredKeyProvider};
pub use envelope::{Envelope, SealedBlob};
pub use error::CryptoError;
pub use key_provider::{EncryptionContext, KeyProvider, KeyRef, WrappedDek, key_label};
pub use local::LocalKeyProvider;
pub use local_watch::WatchedLocalKeyProvider;
pub use multi::MultiKeyProvider;
pub use primitives::sha256_hex;
pub use secret::{DataKey, SecretBytes};
