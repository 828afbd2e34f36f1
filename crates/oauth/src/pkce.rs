//! PKCE (RFC 7636, S256) and the `state` parameter. Randomness comes from aws-lc-rs; the S256
//! challenge is computed by the `oauth2` crate's [`oauth2::PkceCodeChallenge`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

/// Random bytes behind a verifier or a state: 256 bits, 43 base64url characters.
const RANDOM_BYTES: usize = 32;

/// A PKCE verifier (kept secret, sent only to the token endpoint) and its S256 challenge (sent in
/// the authorize URL).
#[derive(Clone, Debug)]
pub struct PkcePair {
    /// The `code_verifier`: 43 characters of base64url (RFC 7636 allows 43–128).
    pub verifier: SecretString,
    /// The `code_challenge`: base64url(SHA-256(verifier)), sent with `code_challenge_method=S256`.
    pub challenge: String,
}

/// A fresh PKCE pair from 256 random bits.
pub fn pkce_pair() -> PkcePair {
    let verifier = random_urlsafe();
    let challenge = challenge_s256(&verifier);
    PkcePair {
        verifier,
        challenge,
    }
}

/// The S256 challenge of `verifier` (43 characters, as made by [`random_urlsafe`]).
/// Private: the `oauth2` crate asserts the RFC 7636 length (43–128), which our verifiers meet.
fn challenge_s256(verifier: &SecretString) -> String {
    let v = oauth2::PkceCodeVerifier::new(verifier.expose_secret().to_owned());
    oauth2::PkceCodeChallenge::from_code_verifier_sha256(&v)
        .as_str()
        .to_owned()
}

/// A fresh `state` value for the authorize URL: 256 random bits, base64url (43 characters).
/// The broker stores only a hash of it.
pub fn random_state() -> SecretString {
    random_urlsafe()
}

/// 256 bits from the system CSPRNG (aws-lc-rs), base64url without padding.
fn random_urlsafe() -> SecretString {
    let mut bytes = [0u8; RANDOM_BYTES];
    fill_random(&mut bytes);
    let encoded = URL_SAFE_NO_PAD.encode(bytes);
    bytes.fill(0);
    SecretString::from(encoded)
}

/// Fills `buf` from aws-lc-rs's system random source. If the OS entropy source fails the process
/// aborts: handing out predictable states or verifiers would be worse than stopping.
fn fill_random(buf: &mut [u8]) {
    if aws_lc_rs::rand::fill(buf).is_err() {
        tracing::error!("system random source failed; aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let verifier = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            challenge_s256(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn pairs_are_well_formed_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..64 {
            let p = pkce_pair();
            let v = p.verifier.expose_secret();
            assert_eq!(v.len(), 43);
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            assert_eq!(p.challenge, challenge_s256(&p.verifier));
            assert_eq!(p.challenge.len(), 43);
            assert!(seen.insert(v.to_owned()));
        }
    }

    #[test]
    fn states_are_urlsafe_and_distinct() {
        let a = random_state();
        let b = random_state();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        let p = pkce_pair();
        assert!(!format!("{p:?}").contains(p.verifier.expose_secret()));
    }
}
