//! The token bundle sealed into each credential row. Secrets are typed (`SecretString`): their
//! `Debug` output is redacted, and they are zeroized on drop.

use crate::clock::Timestamp;
use crate::error::BrokerError;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Everything the provider gave us for one grant.
#[derive(Clone, Debug)]
pub struct TokenBundle {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token, if the grant has one.
    pub refresh_token: Option<SecretString>,
    /// OpenID Connect id token, if any.
    pub id_token: Option<SecretString>,
    /// Token type, usually `Bearer`.
    pub token_type: String,
    /// When the access token expires (`None`: unknown / does not expire).
    pub access_expires_at: Option<Timestamp>,
    /// When the refresh token expires, if the provider says.
    pub refresh_expires_at: Option<Timestamp>,
    /// When the provider issued the access token, if known (not for imported tokens): with the
    /// expiry it gives the token's lifetime.
    pub obtained_at: Option<Timestamp>,
    /// Non-secret provider values (e.g. Salesforce `instance_url`).
    pub extras: BTreeMap<String, String>,
}

/// Serialized form; lives only inside a zeroized buffer.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    v: u8,
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    token_type: String,
    #[serde(default)]
    access_expires_at: Option<i64>,
    #[serde(default)]
    refresh_expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    obtained_at: Option<i64>,
    #[serde(default)]
    extras: BTreeMap<String, String>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.access_token.zeroize();
        self.refresh_token.zeroize();
        self.id_token.zeroize();
    }
}

impl TokenBundle {
    /// Serializes for sealing; the buffer is zeroized when dropped.
    pub fn to_plaintext(&self) -> Result<Zeroizing<Vec<u8>>, BrokerError> {
        let wire = Wire {
            v: 1,
            access_token: self.access_token.expose_secret().to_owned(),
            refresh_token: self
                .refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned()),
            id_token: self.id_token.as_ref().map(|s| s.expose_secret().to_owned()),
            token_type: self.token_type.clone(),
            access_expires_at: self.access_expires_at.map(Timestamp::as_millis),
            refresh_expires_at: self.refresh_expires_at.map(Timestamp::as_millis),
            obtained_at: self.obtained_at.map(Timestamp::as_millis),
            extras: self.extras.clone(),
        };
        serde_json::to_vec(&wire)
            .map(Zeroizing::new)
            .map_err(|e| BrokerError::Internal(format!("token bundle serialization failed: {e}")))
    }

    /// Parses an opened token bundle.
    pub fn from_plaintext(bytes: &[u8]) -> Result<Self, BrokerError> {
        // serde_json's error text can quote input; report only its position.
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            BrokerError::Internal(format!(
                "stored token bundle is malformed (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        Ok(Self {
            access_token: SecretString::from(wire.access_token.as_str()),
            refresh_token: wire.refresh_token.as_deref().map(SecretString::from),
            id_token: wire.id_token.as_deref().map(SecretString::from),
            token_type: wire.token_type.clone(),
            access_expires_at: wire.access_expires_at.map(Timestamp::from_millis),
            refresh_expires_at: wire.refresh_expires_at.map(Timestamp::from_millis),
            obtained_at: wire.obtained_at.map(Timestamp::from_millis),
            extras: wire.extras.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_redacted_debug() {
        let b = TokenBundle {
            access_token: SecretString::from("at-secret-123"),
            refresh_token: Some(SecretString::from("rt-secret-456")),
            id_token: None,
            token_type: "Bearer".into(),
            access_expires_at: Some(Timestamp::from_millis(42)),
            refresh_expires_at: None,
            obtained_at: Some(Timestamp::from_millis(7)),
            extras: BTreeMap::from([("instance_url".into(), "https://x".into())]),
        };
        let dbg = format!("{b:?}");
        assert!(
            !dbg.contains("at-secret-123") && !dbg.contains("rt-secret-456"),
            "{dbg}"
        );
        let back = TokenBundle::from_plaintext(&b.to_plaintext().unwrap()).unwrap();
        assert_eq!(back.access_token.expose_secret(), "at-secret-123");
        assert_eq!(back.refresh_token.unwrap().expose_secret(), "rt-secret-456");
        assert_eq!(back.access_expires_at, Some(Timestamp::from_millis(42)));
        assert_eq!(back.obtained_at, Some(Timestamp::from_millis(7)));
        assert_eq!(back.extras["instance_url"], "https://x");
    }

    #[test]
    fn malformed_bundle_error_does_not_quote_input() {
        let e = TokenBundle::from_plaintext(b"{\"access_token\": \"leak-me\"").unwrap_err();
        assert!(!e.to_string().contains("leak-me"));
    }
}
