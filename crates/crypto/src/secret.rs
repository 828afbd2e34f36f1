//! Secret byte containers: redacted when printed, zeroized when dropped.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CryptoError;
use crate::primitives::{KEY_LEN, random_bytes};

/// Secret bytes: Debug/Display print "[redacted]", zeroized on drop, Clone allowed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of the bytes (no copy is left behind).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes; keep the borrow short and never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A plaintext data-encryption key (32 bytes), zeroized on drop, redacted Debug.
// Boxed so that moving a DataKey around does not leave stack copies of the key.
#[derive(Clone)]
pub struct DataKey(Box<[u8; KEY_LEN]>);

impl DataKey {
    /// A new random 256-bit key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Box::new([0u8; KEY_LEN]);
        random_bytes(&mut key[..])?;
        Ok(Self(key))
    }

    /// Copies a key returned by a key service; fails unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::Provider(format!(
                "data key must be {KEY_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The key bytes, for wrapping by a key provider.
    pub fn expose(&self) -> &[u8] {
        &self.0[..]
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_do_not_show_bytes() {
        let secret = SecretBytes::new(b"hunter2-refresh-token".to_vec());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), b"hunter2-refresh-token");
        assert_eq!(secret.len(), 21);

        let key = DataKey::from_slice(&[0xAB; 32]).unwrap();
        let printed = format!("{key:?} {:?}", Some(&key));
        assert!(!printed.contains("171") && !printed.to_lowercase().contains("ab"));
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn data_key_requires_32_bytes() {
        assert!(DataKey::from_slice(&[0; 31]).is_err());
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
    }
}
