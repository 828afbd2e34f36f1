//! Which provider account a grant belongs to: a stable subject and a label for people.

use crate::error::OAuthError;
use crate::token::TokenResponse;
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use secrecy::ExposeSecret;
use serde_json::Value;

/// Longest subject kept.
const MAX_SUBJECT_CHARS: usize = 255;
/// Longest label kept.
const MAX_LABEL_CHARS: usize = 200;

/// The connected account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    /// Stable provider account id (`sub`, numeric user id, ...), used to recognise reconnects.
    pub subject: String,
    /// What a person recognises: email or login; the subject when the provider gives neither.
    pub label: String,
}

/// Reads the account from a JSON document with two JSON pointers. The subject may be a string or
/// a number; a missing label falls back to the subject.
pub(crate) fn from_document(
    doc: &Value,
    subject_pointer: &str,
    label_pointer: &str,
    what: &str,
) -> Result<AccountInfo, OAuthError> {
    let subject = doc
        .pointer(subject_pointer)
        .and_then(scalar_text)
        .map(|s| bounded(&s, MAX_SUBJECT_CHARS))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            OAuthError::Protocol(format!("{what} has no account id at {subject_pointer}"))
        })?;
    let label = doc
        .pointer(label_pointer)
        .and_then(scalar_text)
        .map(|s| bounded(&s, MAX_LABEL_CHARS))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| subject.clone());
    Ok(AccountInfo { subject, label })
}

/// Reads `sub` and a label (`email`, else `preferred_username`, else `name`) from the id token.
///
/// The JWT signature is not verified: the id token came straight from the provider's token
/// endpoint over TLS in answer to our own authenticated request, which OpenID Connect Core
/// §3.1.3.7 accepts as validation of its origin.
pub(crate) fn from_id_token(tokens: &TokenResponse) -> Result<AccountInfo, OAuthError> {
    let jwt = tokens
        .id_token
        .as_ref()
        .ok_or_else(|| OAuthError::Protocol("token response has no id_token".to_owned()))?;
    let payload = jwt
        .expose_secret()
        .split('.')
        .nth(1)
        .ok_or_else(|| OAuthError::Protocol("id_token is not a jwt".to_owned()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .or_else(|_| URL_SAFE.decode(payload))
        .map_err(|_| OAuthError::Protocol("id_token payload is not base64url".to_owned()))?;
    let claims: Value = serde_json::from_slice(&bytes)
        .map_err(|_| OAuthError::Protocol("id_token payload is not json".to_owned()))?;
    let label_pointer = ["/email", "/preferred_username", "/name"]
        .into_iter()
        .find(|p| claims.pointer(p).and_then(Value::as_str).is_some())
        .unwrap_or("/sub");
    from_document(&claims, "/sub", label_pointer, "id_token")
}

/// A string or number as text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Without control characters, trimmed, at most `max` characters.
fn bounded(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use serde_json::json;

    fn tokens_with_id_token(id_token: Option<String>) -> TokenResponse {
        TokenResponse {
            id_token: id_token.map(SecretString::from),
            ..TokenResponse::bearer(SecretString::from("at"))
        }
    }

    fn jwt(claims: &Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn id_token_claims() {
        let t = tokens_with_id_token(Some(jwt(
            &json!({"sub": "1234", "email": "ada@example.com"}),
        )));
        assert_eq!(
            from_id_token(&t).unwrap(),
            AccountInfo {
                subject: "1234".into(),
                label: "ada@example.com".into()
            }
        );
        let t = tokens_with_id_token(Some(jwt(&json!({"sub": "1234"}))));
        assert_eq!(from_id_token(&t).unwrap().label, "1234");
        let t = tokens_with_id_token(Some(jwt(&json!({"email": "x@y"}))));
        assert!(matches!(from_id_token(&t), Err(OAuthError::Protocol(_))));
        assert!(from_id_token(&tokens_with_id_token(None)).is_err());
        assert!(from_id_token(&tokens_with_id_token(Some("garbage".into()))).is_err());
    }

    #[test]
    fn pointers_read_strings_and_numbers() {
        let doc = json!({"id": 583231, "login": "octocat", "owner": {"user": {"id": "u-1"}}});
        let a = from_document(&doc, "/id", "/login", "userinfo").unwrap();
        assert_eq!(a.subject, "583231");
        assert_eq!(a.label, "octocat");
        let a = from_document(&doc, "/owner/user/id", "/owner/user/person/email", "x").unwrap();
        assert_eq!(
            a,
            AccountInfo {
                subject: "u-1".into(),
                label: "u-1".into()
            }
        );
        assert!(from_document(&doc, "/sub", "/login", "userinfo").is_err());
    }
}
