//! The redirect back from the provider (RFC 6749 §4.1.2): `code` and `state`, or an error.

use crate::catalog::{ProviderSpec, Quirk};
use crate::error::{OAuthError, Operation, classify, sanitize_code, sanitize_description};
use secrecy::SecretString;
use std::collections::BTreeMap;

/// What a successful callback carries.
#[derive(Clone, Debug)]
pub struct Callback {
    /// The authorization code (single use, short-lived).
    pub code: SecretString,
    /// The `state` to match against the connect session (compare hashes, in constant time).
    pub state: SecretString,
    /// Non-secret values some providers put in the callback: `realmId` (QuickBooks, with
    /// [`Quirk::QuickbooksRealmId`]).
    pub extras: BTreeMap<String, String>,
    /// The `iss` parameter (RFC 9207), compared to the provider's declared
    /// [`ProviderSpec::issuer`] by the caller before the code is exchanged.
    pub iss: Option<String>,
}

/// Reads the callback query string (without the leading `?`). An `error` parameter becomes the
/// classified error (`access_denied` → [`OAuthError::AccessDenied`]); a missing `code` or `state`
/// is a [`OAuthError::Protocol`].
pub fn parse_callback(spec: &ProviderSpec, query: &str) -> Result<Callback, OAuthError> {
    let params: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some(error) = params.get("error") {
        let description = params
            .get("error_description")
            .and_then(|d| sanitize_description(d, &[]));
        return Err(classify(
            sanitize_code(error),
            description,
            Operation::Exchange,
        ));
    }
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| OAuthError::Protocol("callback has no code".to_owned()))?;
    let state = params
        .get("state")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OAuthError::Protocol("callback has no state".to_owned()))?;
    let mut extras = BTreeMap::new();
    if spec.quirks.contains(&Quirk::QuickbooksRealmId) {
        match params.get("realmId") {
            Some(realm) if !realm.is_empty() && realm.bytes().all(|b| b.is_ascii_digit()) => {
                extras.insert("realmId".to_owned(), realm.clone());
            }
            _ => {
                return Err(OAuthError::Protocol(
                    "callback has no valid realmId".to_owned(),
                ));
            }
        }
    }
    Ok(Callback {
        code: SecretString::from(code.clone()),
        state: SecretString::from(state.clone()),
        extras,
        iss: params.get("iss").filter(|i| !i.is_empty()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Pkce;
    use crate::test_support::spec;
    use secrecy::ExposeSecret;

    #[test]
    fn code_and_state() {
        let s = spec("https://a/authorize", Pkce::None, &[]);
        let c = parse_callback(&s, "code=abc%2F1&state=xyz").unwrap();
        assert_eq!(c.code.expose_secret(), "abc/1");
        assert_eq!(c.state.expose_secret(), "xyz");
        assert!(c.extras.is_empty());
        assert!(c.iss.is_none());
        assert!(!format!("{c:?}").contains("abc"));
        let c = parse_callback(&s, "code=c&state=s&iss=https%3A%2F%2Fa").unwrap();
        assert_eq!(c.iss.as_deref(), Some("https://a"));
        assert!(matches!(
            parse_callback(&s, "state=xyz"),
            Err(OAuthError::Protocol(_))
        ));
        assert!(matches!(
            parse_callback(&s, "code=abc"),
            Err(OAuthError::Protocol(_))
        ));
    }

    #[test]
    fn errors_are_classified() {
        let s = spec("https://a/authorize", Pkce::None, &[]);
        match parse_callback(
            &s,
            "error=access_denied&error_description=User+said+no&state=x",
        ) {
            Err(OAuthError::AccessDenied { description }) => {
                assert_eq!(description.as_deref(), Some("User said no"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_callback(&s, "error=temporarily_unavailable&state=x"),
            Err(OAuthError::Transient { .. })
        ));
    }

    #[test]
    fn quickbooks_realm_id_is_kept() {
        let s = spec(
            "https://appcenter.intuit.com/connect/oauth2",
            Pkce::None,
            &[Quirk::QuickbooksRealmId],
        );
        let c = parse_callback(&s, "code=c&state=s&realmId=4620816365").unwrap();
        assert_eq!(
            c.extras.get("realmId").map(String::as_str),
            Some("4620816365")
        );
        assert!(parse_callback(&s, "code=c&state=s").is_err());
        assert!(parse_callback(&s, "code=c&state=s&realmId=1/../x").is_err());
    }
}
