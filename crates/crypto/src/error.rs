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
    /// Any other key-provider failure.
    #[error("key provider error: {0}")]
    Provider(String),
}
