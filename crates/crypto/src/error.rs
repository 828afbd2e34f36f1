//! The crate's error type.

use std::path::PathBuf;

/// Errors from sealing, opening and key management. Messages never contain key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong context/AAD, another row's blob, or tampering.
    #[error("ciphertext could not be opened: wrong key, wrong row, or tampered")]
    Decrypt,
    /// The DEK was wrapped by a key this provider does not hold (often: a different key file).
    #[error("unknown key {key_id} version {version}: was the data written with a different key?")]
    UnknownKey {
        /// Key id recorded with the wrapped DEK.
        key_id: String,
        /// Key version recorded with the wrapped DEK.
        version: u32,
    },
    /// The local key file is missing, unreadable, malformed or could not be written.
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        /// Path of the key file.
        path: PathBuf,
        /// What went wrong (never includes key material).
        reason: String,
    },
    /// The key service could not be reached; the operation may succeed later.
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// The key service refused the call (IAM policy or key policy).
    #[error(
        "access denied to key {key_id} for {operation}: check that the IAM policy and the key policy \
         allow kms:GenerateDataKey, kms:Decrypt, kms:Encrypt, kms:ReEncrypt* and kms:DescribeKey on it"
    )]
    AccessDenied {
        /// The key the call used.
        key_id: String,
        /// The refused operation, e.g. `kms:Decrypt`.
        operation: String,
    },
    /// The key exists but cannot be used: disabled, or scheduled for deletion.
    #[error("key {key_id} is disabled or pending deletion: enable it or rotate to another key")]
    KeyDisabled {
        /// The key the call used.
        key_id: String,
    },
    /// The key service does not know the key (wrong id, account or region).
    #[error("key {key_id} not found in region {region}")]
    KeyNotFound {
        /// The key the call used.
        key_id: String,
        /// The region that was asked.
        region: String,
    },
    /// Any other key-provider failure.
    #[error("key provider error: {0}")]
    Provider(String),
}
