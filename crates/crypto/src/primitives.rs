//! AES-256-GCM, SHA-256, randomness and the canonical byte encodings shared by the crate.

use aws_lc_rs::aead::{AES_256_GCM, Aad, MAX_TAG_LEN, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{digest, rand};
use zeroize::Zeroizing;

use crate::{CryptoError, EncryptionContext};

/// AES-256 key length.
pub(crate) const KEY_LEN: usize = 32;

/// Fills `dest` from the system CSPRNG.
pub(crate) fn random_bytes(dest: &mut [u8]) -> Result<(), CryptoError> {
    rand::fill(dest).map_err(|_| CryptoError::Provider("random number generator failed".into()))
}

/// Builds an AES-256-GCM key whose nonces are 96 random bits per seal.
pub(crate) fn aead_key(key: &[u8]) -> Result<RandomizedNonceKey, CryptoError> {
    RandomizedNonceKey::new(&AES_256_GCM, key)
        .map_err(|_| CryptoError::Provider("invalid aes-256-gcm key".into()))
}

/// Seals `plaintext`; the result is nonce || ciphertext || tag.
pub(crate) fn seal(
    key: &RandomizedNonceKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    // Sized up front so appending the tag never reallocates and strands a plaintext copy.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + MAX_TAG_LEN));
    buf.extend_from_slice(plaintext);
    let nonce = key
        .seal_in_place_append_tag(Aad::from(aad), &mut *buf)
        .map_err(|_| CryptoError::Provider("aes-gcm seal failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens nonce || ciphertext || tag; any failure is [`CryptoError::Decrypt`].
pub(crate) fn open(
    key: &RandomizedNonceKey,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + MAX_TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf[..])
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Lower-case hex of the SHA-256 of `data`: how the broker stores what it must recognise but
/// never keep (refresh tokens in a refresh intent, run grants).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// An unambiguous byte encoding: a domain label, then length-prefixed fields, so no two
/// different field lists encode to the same bytes.
pub(crate) struct Canonical(Vec<u8>);

impl Canonical {
    /// Starts an encoding for one purpose, e.g. `"credential-broker/v1|dek|"`.
    pub(crate) fn new(domain: &str) -> Self {
        Self(domain.as_bytes().to_vec())
    }

    /// Appends a length-prefixed byte string.
    pub(crate) fn bytes(mut self, field: &[u8]) -> Self {
        self.0
            .extend_from_slice(&(field.len() as u64).to_be_bytes());
        self.0.extend_from_slice(field);
        self
    }

    /// Appends a length-prefixed string.
    pub(crate) fn str(self, field: &str) -> Self {
        self.bytes(field.as_bytes())
    }

    /// Appends a fixed-width number.
    pub(crate) fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends the entry count, then each key and value (sorted, as the map is a BTreeMap).
    pub(crate) fn context(mut self, ctx: &EncryptionContext) -> Self {
        self.0
            .extend_from_slice(&(ctx.entries().count() as u64).to_be_bytes());
        ctx.entries().fold(self, |c, (k, v)| c.str(k).str(v))
    }

    /// The encoded bytes.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_context_encoding_is_unambiguous() {
        let a = EncryptionContext::new().with("a", "b|c");
        let b = EncryptionContext::new().with("a|b", "c");
        let enc = |c: &EncryptionContext| Canonical::new("x").context(c).finish();
        assert_ne!(enc(&a), enc(&b));
        // Insertion order does not matter.
        let c1 = EncryptionContext::new().with("x", "1").with("y", "2");
        let c2 = EncryptionContext::new().with("y", "2").with("x", "1");
        assert_eq!(enc(&c1), enc(&c2));
    }

    #[test]
    fn seal_open_and_short_input() {
        let key = aead_key(&[7; 32]).unwrap();
        let sealed = seal(&key, b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 5 + MAX_TAG_LEN);
        assert_eq!(&open(&key, b"aad", &sealed).unwrap()[..], b"hello");
        assert!(matches!(
            open(&key, b"aad", &sealed[..20]),
            Err(CryptoError::Decrypt)
        ));
        // Key ids and fingerprints are written in lowercase hex.
        assert_eq!(hex::encode([0x00, 0xff, 0x1a]), "00ff1a");
    }
}
