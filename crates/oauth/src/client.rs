//! The broker's registration at a provider (client id and secret) and how it authenticates at the
//! token and revocation endpoints.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

/// The OAuth client registered at a provider. `Debug` shows the id, never the secret.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The public client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretString,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

impl ClientCredentials {
    /// Client id and secret.
    pub fn new(client_id: impl Into<String>, client_secret: SecretString) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret,
        }
    }

    /// An `Authorization: Basic` value, marked sensitive so hyper never logs it.
    ///
    /// RFC 6749 §2.3.1 form-urlencodes id and secret before base64, but many providers do not
    /// decode them. Unreserved characters (`A-Z a-z 0-9 - . _ ~`, what nearly every id and secret
    /// is made of) are therefore kept as they are — identical under both readings — and only
    /// other bytes are percent-encoded as the RFC asks.
    pub(crate) fn basic_header(&self) -> Option<HeaderValue> {
        let raw = format!(
            "{}:{}",
            percent_encode(&self.client_id),
            percent_encode(self.client_secret.expose_secret())
        );
        let mut value = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An `Authorization: Bearer` value, marked sensitive.
pub(crate) fn bearer_header(token: &SecretString) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let c = ClientCredentials::new("my-client", SecretString::from("s3cr3t-value"));
        let shown = format!("{c:?}");
        assert!(shown.contains("my-client"));
        assert!(!shown.contains("s3cr3t-value"));
    }

    #[test]
    fn basic_header_encodes_only_reserved_bytes() {
        let c = ClientCredentials::new("id:1", SecretString::from("p@ss word~._-Z9"));
        let h = c.basic_header().unwrap();
        assert!(h.is_sensitive());
        assert_eq!(
            h.to_str().unwrap(),
            format!("Basic {}", STANDARD.encode("id%3A1:p%40ss%20word~._-Z9"))
        );
    }
}
