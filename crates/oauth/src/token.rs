//! Token endpoint responses: parsing a provider's JSON into a [`TokenResponse`], and recognising
//! errors that arrive with HTTP 200 (Slack `ok:false`, GitHub `{"error": ...}`).
//!
//! Parsing is done on a `serde_json::Value` rather than with `oauth2::StandardTokenResponse`
//! because the real responses stray from RFC 6749 §5.1: Slack user tokens sit under
//! `authed_user` with no top-level `access_token`, GitHub and Slack separate scopes with commas,
//! some providers send `expires_in` as a string, Salesforce adds `instance_url`, Notion `owner`.
//! Error bodies are parsed with `oauth2::StandardErrorResponse` (RFC 6749 §5.2).

use crate::catalog::{AccountSource, ProviderSpec, Quirk};
use crate::error::{OAuthError, Operation, classify, sanitize_code, sanitize_description};
use oauth2::StandardErrorResponse;
use oauth2::basic::BasicErrorResponseType;
use secrecy::SecretString;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Tokens and metadata from a successful code exchange or refresh. `Debug` redacts the tokens.
#[derive(Clone, Debug)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token, if one was issued. On refresh, a new one means the provider rotated it
    /// and the old one is (or will soon be) dead: store it.
    pub refresh_token: Option<SecretString>,
    /// The OpenID Connect id token, if any.
    pub id_token: Option<SecretString>,
    /// Token type for the `Authorization` header: `Bearer` unless the provider says otherwise.
    pub token_type: String,
    /// Access token lifetime from the response; `None` when the provider gave none (tokens that
    /// do not expire, or an unknown lifetime). The caller turns it into an instant with its clock.
    pub expires_in: Option<Duration>,
    /// How long to treat the access token as valid: `expires_in` when the provider sent it, else
    /// the spec's [`ProviderSpec::fallback_access_token_lifetime`] when a refresh token can renew
    /// it (Salesforce sends no `expires_in`); `None` for tokens that do not expire.
    pub access_token_lifetime: Option<Duration>,
    /// Refresh token lifetime, when the provider gives one: `refresh_token_expires_in`, Intuit's
    /// `x_refresh_token_expires_in`, or TikTok's and Keycloak's `refresh_expires_in`.
    pub refresh_token_expires_in: Option<Duration>,
    /// Granted scopes when the response lists them; `None` means "not said": keep the requested
    /// ones. A partial grant shows up here as fewer scopes than requested.
    pub scope: Option<Vec<String>>,
    /// Non-secret provider values worth keeping: `instance_url` (Salesforce), `team_id` (Slack),
    /// `workspace_id` (Notion), `account_id` (Dropbox), ... Never a token.
    pub extras: BTreeMap<String, String>,
    /// For [`AccountSource::TokenResponse`] only: the response with every key that names a token,
    /// secret, key, signature or webhook removed (at any depth). `None` for other account sources.
    pub raw_account: Option<Value>,
}

impl TokenResponse {
    /// A bearer access token and nothing else: what a caller holding only a stored access token
    /// has to identify the account with.
    pub fn bearer(access_token: SecretString) -> Self {
        Self {
            access_token,
            refresh_token: None,
            id_token: None,
            token_type: "Bearer".into(),
            expires_in: None,
            access_token_lifetime: None,
            refresh_token_expires_in: None,
            scope: None,
            extras: BTreeMap::new(),
            raw_account: None,
        }
    }
}

/// Top-level scalar fields copied into `extras` under the same name.
const EXTRA_KEYS: [&str; 12] = [
    "instance_url", // Salesforce: the org's API host; refreshes go there
    "id",           // Salesforce: identity URL of the user
    "issued_at",    // Salesforce
    "workspace_id", // Notion
    "workspace_name",
    "bot_id",
    "account_id", // Dropbox
    "team_id",
    "uid",
    "app_id", // Slack
    "bot_user_id",
    "realmId", // Intuit QuickBooks (normally from the callback query)
];

/// The spellings of the refresh token lifetime in token responses, in the order tried.
const REFRESH_EXPIRY_KEYS: [&str; 3] = [
    "refresh_token_expires_in",   // RFC-style (Zendesk, Shopify, Slack)
    "x_refresh_token_expires_in", // Intuit QuickBooks
    "refresh_expires_in",         // TikTok, Keycloak
];

/// Nested non-secret fields copied into `extras` as (pointer, name).
const NESTED_EXTRAS: [(&str, &str); 4] = [
    ("/team/id", "team_id"), // Slack
    ("/team/name", "team_name"),
    ("/enterprise/id", "enterprise_id"),
    ("/authed_user/id", "authed_user_id"),
];

/// Substrings of keys dropped from `raw_account`, compared in lowercase.
const SECRET_KEY_PARTS: [&str; 6] = ["token", "secret", "password", "signature", "webhook", "key"];

/// Longest scalar copied into `extras`.
const MAX_EXTRA_CHARS: usize = 512;

/// Parses a successful (HTTP 2xx) token endpoint body. Errors reported in a 2xx body (Slack
/// `ok:false`, GitHub `error`) become the classified [`OAuthError`]. `sent` are secrets from the
/// request, scrubbed from any provider description.
pub(crate) fn parse_success(
    spec: &ProviderSpec,
    body: &[u8],
    operation: Operation,
    sent: &[&str],
) -> Result<TokenResponse, OAuthError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| OAuthError::Protocol("token response is not json".to_owned()))?;
    let Value::Object(top) = value else {
        return Err(OAuthError::Protocol(
            "token response is not a json object".to_owned(),
        ));
    };
    if let Some(err) = error_in_body(spec, &top, operation, sent) {
        return Err(err);
    }

    // Slack user tokens: under `authed_user` when the spec connects users. Refresh responses put
    // the rotated user token at the top level, so fall back to it.
    let token_source = if spec.quirks.contains(&Quirk::SlackAuthedUser) {
        match top.get("authed_user") {
            Some(Value::Object(user)) if non_empty_str(user, "access_token").is_some() => user,
            _ => &top,
        }
    } else {
        &top
    };

    let access_token = non_empty_str(token_source, "access_token")
        .ok_or_else(|| OAuthError::Protocol("token response has no access_token".to_owned()))?;
    let token_type = normalise_token_type(spec, token_source.get("token_type"));
    let expires_in = lifetime(token_source, "expires_in");
    let refresh_token_expires_in = REFRESH_EXPIRY_KEYS
        .iter()
        .find_map(|key| lifetime(token_source, key));
    let refresh_token = non_empty_str(token_source, "refresh_token");
    // A refresh answer may omit the refresh token (no rotation): the stored one still renews.
    let refreshable = refresh_token.is_some() || operation == Operation::Refresh;
    let access_token_lifetime =
        expires_in.or_else(|| spec.fallback_access_token_lifetime(refreshable));
    if expires_in.is_none() && access_token_lifetime.is_some() {
        tracing::debug!(
            provider = %spec.id,
            assumed_seconds = access_token_lifetime.map(|d| d.as_secs()),
            "no expires_in in the token response, assuming the catalog lifetime"
        );
    }
    let scope = token_source.get("scope").and_then(parse_scope_value);

    let mut extras = BTreeMap::new();
    for key in EXTRA_KEYS {
        if let Some(v) = top.get(key).and_then(scalar_string) {
            extras.insert(key.to_owned(), v);
        }
    }
    let top_value = Value::Object(top.clone());
    for (pointer, name) in NESTED_EXTRAS {
        if let Some(v) = top_value.pointer(pointer).and_then(scalar_string) {
            extras.entry(name.to_owned()).or_insert(v);
        }
    }

    let raw_account = match spec.account {
        AccountSource::TokenResponse { .. } => Some(strip_secret_keys(top_value)),
        _ => None,
    };

    Ok(TokenResponse {
        access_token: SecretString::from(access_token.to_owned()),
        refresh_token: refresh_token.map(|s| SecretString::from(s.to_owned())),
        id_token: non_empty_str(&top, "id_token").map(|s| SecretString::from(s.to_owned())),
        token_type,
        expires_in,
        access_token_lifetime,
        refresh_token_expires_in,
        scope,
        extras,
        raw_account,
    })
}

/// An error carried in a 2xx body: Slack's `ok: false`, or an `error` string (GitHub, and any
/// provider that answers errors with 200).
fn error_in_body(
    spec: &ProviderSpec,
    top: &Map<String, Value>,
    operation: Operation,
    sent: &[&str],
) -> Option<OAuthError> {
    let ok_false = spec.quirks.contains(&Quirk::OkFalseErrors)
        && top.get("ok").and_then(Value::as_bool) == Some(false);
    let has_error = top.get("error").is_some_and(Value::is_string);
    if !(ok_false || has_error) {
        return None;
    }
    Some(parse_error_object(top, operation, sent).unwrap_or_else(|| {
        OAuthError::Protocol("provider answered ok:false without an error code".to_owned())
    }))
}

/// Parses an RFC 6749 §5.2 error object (`error`, `error_description`) with the `oauth2` crate's
/// types and classifies it. `None` when there is no `error` string.
pub(crate) fn parse_error_object(
    obj: &Map<String, Value>,
    operation: Operation,
    sent: &[&str],
) -> Option<OAuthError> {
    // Only the two fields are handed to serde: a body's other members never reach an error.
    let mut minimal = Map::new();
    minimal.insert("error".to_owned(), obj.get("error")?.clone());
    if let Some(Value::String(d)) = obj.get("error_description") {
        minimal.insert("error_description".to_owned(), Value::String(d.clone()));
    }
    let parsed: StandardErrorResponse<BasicErrorResponseType> =
        serde_json::from_value(Value::Object(minimal)).ok()?;
    let code = sanitize_code(parsed.error().as_ref());
    let description = parsed
        .error_description()
        .and_then(|d| sanitize_description(d, sent));
    Some(classify(code, description, operation))
}

/// Parses an error body from a non-2xx response, if it is an OAuth error object.
pub(crate) fn parse_error_body(
    body: &[u8],
    operation: Operation,
    sent: &[&str],
) -> Option<OAuthError> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(obj) => parse_error_object(&obj, operation, sent),
        _ => None,
    }
}

/// A string member that is present and not empty.
fn non_empty_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `Bearer` (any case) and a missing type become `Bearer`; Slack's `bot`/`user` are Bearer tokens
/// too. Other types (`DPoP`, `MAC`) are kept, as sent.
fn normalise_token_type(spec: &ProviderSpec, value: Option<&Value>) -> String {
    match value.and_then(Value::as_str).map(str::trim) {
        None | Some("") => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("dpop") => "DPoP".to_owned(),
        Some(_) if spec.quirks.contains(&Quirk::OkFalseErrors) => "Bearer".to_owned(),
        Some(t) => t
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(32)
            .collect(),
    }
}

/// A lifetime in seconds: a number or a numeric string. Zero or a malformed value gives `None`
/// (several providers send 0 for "does not expire"; a malformed lifetime must not make a
/// working token unusable).
fn lifetime(obj: &Map<String, Value>, key: &str) -> Option<Duration> {
    let secs = match obj.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match secs {
        Some(0) | None => {
            if secs.is_none() {
                tracing::warn!(field = key, "ignoring malformed token lifetime");
            }
            None
        }
        Some(s) => Some(Duration::from_secs(s)),
    }
}

/// A `scope` value: a space- or comma-separated string, or an array of strings.
fn parse_scope_value(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(s) => Some(parse_scope(s)),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .flat_map(parse_scope)
                .fold(Vec::new(), dedup_push),
        ),
        _ => None,
    }
}

/// Splits a scope string on spaces and commas; drops empties and duplicates, keeps order.
pub fn parse_scope(scope: &str) -> Vec<String> {
    scope
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .fold(Vec::new(), dedup_push)
}

fn dedup_push(mut acc: Vec<String>, s: String) -> Vec<String> {
    if !acc.contains(&s) {
        acc.push(s);
    }
    acc
}

/// A string, number or bool as text, without control characters, bounded.
fn scalar_string(value: &Value) -> Option<String> {
    let s = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_EXTRA_CHARS)
        .collect();
    (!s.is_empty()).then_some(s)
}

/// Removes, at any depth, every member whose key names a secret.
fn strip_secret_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    !SECRET_KEY_PARTS.iter().any(|p| k.contains(p))
                })
                .map(|(k, v)| (k, strip_secret_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_secret_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Pkce;
    use crate::test_support::{github, spec};
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn parse(spec: &ProviderSpec, body: Value) -> Result<TokenResponse, OAuthError> {
        parse_success(
            spec,
            body.to_string().as_bytes(),
            Operation::Exchange,
            &["the-code"],
        )
    }

    fn plain() -> ProviderSpec {
        spec("https://a.example/authorize", Pkce::Supported, &[])
    }

    #[test]
    fn standard_response() {
        let t = parse(
            &plain(),
            json!({"access_token": "at", "refresh_token": "rt", "token_type": "bearer",
                   "expires_in": 3600, "scope": "read write", "id_token": "a.b.c"}),
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "at");
        assert_eq!(t.refresh_token.as_ref().unwrap().expose_secret(), "rt");
        assert_eq!(t.id_token.as_ref().unwrap().expose_secret(), "a.b.c");
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(t.scope, Some(vec!["read".to_owned(), "write".to_owned()]));
        assert!(t.raw_account.is_none());
    }

    #[test]
    fn missing_fields_default_sensibly() {
        let t = parse(&plain(), json!({"access_token": "at"})).unwrap();
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.expires_in, None);
        assert_eq!(t.scope, None);
        assert!(t.refresh_token.is_none());
        let t = parse(
            &plain(),
            json!({"access_token": "at", "expires_in": "7200"}),
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(7200)));
        let t = parse(&plain(), json!({"access_token": "at", "expires_in": 0})).unwrap();
        assert_eq!(t.expires_in, None);
        let t = parse(
            &plain(),
            json!({"access_token": "at", "expires_in": "soon"}),
        )
        .unwrap();
        assert_eq!(t.expires_in, None);
        let t = parse(
            &plain(),
            json!({"access_token": "at", "x_refresh_token_expires_in": 8_726_400}),
        )
        .unwrap();
        assert_eq!(
            t.refresh_token_expires_in,
            Some(Duration::from_secs(8_726_400))
        );
    }

    #[test]
    fn every_refresh_expiry_spelling_is_read() {
        for key in [
            "refresh_token_expires_in",
            "x_refresh_token_expires_in",
            "refresh_expires_in",
        ] {
            let t = parse(&plain(), json!({"access_token": "at", key: 15_552_000})).unwrap();
            assert_eq!(
                t.refresh_token_expires_in,
                Some(Duration::from_secs(15_552_000)),
                "{key}"
            );
        }
        // TikTok's whole answer: `refresh_expires_in` next to `expires_in`.
        let t = parse(
            &plain(),
            json!({"access_token": "act.1", "expires_in": 7200, "open_id": "o-1",
                   "refresh_expires_in": 15_552_000, "refresh_token": "rft.1",
                   "scope": "user.info.basic,video.list", "token_type": "Bearer"}),
        )
        .unwrap();
        assert_eq!(t.access_token_lifetime, Some(Duration::from_secs(7200)));
        assert_eq!(
            t.refresh_token_expires_in,
            Some(Duration::from_secs(15_552_000))
        );
    }

    #[test]
    fn access_token_lifetime_falls_back_to_the_catalog_then_the_default() {
        let mut salesforce = plain();
        salesforce.refresh.access_token_lifetime_seconds = Some(7200);
        // Salesforce answers without expires_in.
        let answer = json!({"access_token": "00D!x", "refresh_token": "5Aep",
                            "instance_url": "https://acme.my.salesforce.com"});
        let t = parse(&salesforce, answer.clone()).unwrap();
        assert_eq!(
            t.expires_in, None,
            "expires_in stays what the provider said"
        );
        assert_eq!(t.access_token_lifetime, Some(Duration::from_secs(7200)));
        // No catalog lifetime: the conservative default.
        let t = parse(&plain(), answer).unwrap();
        assert_eq!(
            t.access_token_lifetime,
            Some(crate::catalog::DEFAULT_ACCESS_TOKEN_LIFETIME)
        );
        // The provider's expires_in wins over the catalog.
        let t = parse(
            &salesforce,
            json!({"access_token": "at", "refresh_token": "rt", "expires_in": 900}),
        )
        .unwrap();
        assert_eq!(t.access_token_lifetime, Some(Duration::from_secs(900)));
        // A refresh answer without a new refresh token is still renewable (the stored one).
        let t = parse_success(
            &salesforce,
            json!({"access_token": "00D!y"}).to_string().as_bytes(),
            Operation::Refresh,
            &[],
        )
        .unwrap();
        assert_eq!(t.access_token_lifetime, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn tokens_nothing_can_renew_are_not_assumed_to_expire() {
        let mut slack_like = plain();
        slack_like.refresh.access_token_lifetime_seconds = Some(43_200);
        // No expires_in and no refresh token: assuming expiry would strand a working token.
        let t = parse(&slack_like, json!({"access_token": "xoxp-1"})).unwrap();
        assert_eq!(t.access_token_lifetime, None);
        // Tokens the catalog says never expire stay so even with a refresh token.
        let github = github(&[Quirk::NonExpiringTokens]);
        let t = parse(
            &github,
            json!({"access_token": "gho_1", "refresh_token": "r"}),
        )
        .unwrap();
        assert_eq!(t.access_token_lifetime, None);
        // Mailchimp's expires_in of 0 means "does not expire".
        let t = parse(&github, json!({"access_token": "m", "expires_in": 0})).unwrap();
        assert_eq!(t.access_token_lifetime, None);
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(parse_scope("a b  c"), vec!["a", "b", "c"]);
        assert_eq!(parse_scope("repo,user, gist"), vec!["repo", "user", "gist"]);
        assert_eq!(parse_scope("a a b"), vec!["a", "b"]);
        assert!(parse_scope("").is_empty());
        let t = parse(
            &plain(),
            json!({"access_token": "at", "scope": ["x", "y z"]}),
        )
        .unwrap();
        assert_eq!(t.scope, Some(vec!["x".into(), "y".into(), "z".into()]));
        let t = parse(&plain(), json!({"access_token": "at", "scope": ""})).unwrap();
        assert_eq!(t.scope, Some(vec![]));
    }

    #[test]
    fn missing_access_token_is_a_protocol_error() {
        assert!(matches!(
            parse(&plain(), json!({"token_type": "bearer"})),
            Err(OAuthError::Protocol(_))
        ));
        assert!(matches!(
            parse_success(&plain(), b"<html>", Operation::Exchange, &[]),
            Err(OAuthError::Protocol(_))
        ));
        assert!(matches!(
            parse(&plain(), json!(["access_token"])),
            Err(OAuthError::Protocol(_))
        ));
    }

    #[test]
    fn errors_with_http_200_are_classified() {
        let gh = github(&[Quirk::GithubJsonAccept]);
        let e = parse(
            &gh,
            json!({"error": "bad_verification_code",
                   "error_description": "The code passed the-code is incorrect or expired.",
                   "error_uri": "https://docs.github.com/"}),
        )
        .unwrap_err();
        match e {
            OAuthError::InvalidGrant { error, description } => {
                assert_eq!(error, "bad_verification_code");
                assert_eq!(
                    description.as_deref(),
                    Some("The code passed [redacted] is incorrect or expired.")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let slack = spec(
            "https://slack.com/oauth/v2/authorize",
            Pkce::None,
            &[Quirk::OkFalseErrors],
        );
        let e = parse(
            &slack,
            json!({"ok": false, "error": "invalid_refresh_token"}),
        )
        .unwrap_err();
        assert!(matches!(e, OAuthError::InvalidGrant { .. }));
        let e = parse(&slack, json!({"ok": false, "error": "bad_client_secret"})).unwrap_err();
        assert!(matches!(e, OAuthError::InvalidClient { .. }));
        let e = parse(&slack, json!({"ok": false})).unwrap_err();
        assert!(matches!(e, OAuthError::Protocol(_)));
    }

    #[test]
    fn slack_user_tokens_come_from_authed_user() {
        let mut s = spec(
            "https://slack.com/oauth/v2/authorize",
            Pkce::None,
            &[
                Quirk::OkFalseErrors,
                Quirk::SlackAuthedUser,
                Quirk::CommaSeparatedScopes,
            ],
        );
        s.account = AccountSource::TokenResponse {
            subject_pointer: "/authed_user/id".into(),
            label_pointer: "/team/name".into(),
        };
        let t = parse(
            &s,
            json!({"ok": true, "app_id": "A1", "team": {"id": "T1", "name": "Acme"},
                   "authed_user": {"id": "U1", "scope": "chat:write,channels:read",
                                   "access_token": "xoxp-1", "token_type": "user",
                                   "refresh_token": "xoxe-1", "expires_in": 43200},
                   "incoming_webhook": {"url": "https://hooks.slack.com/secret"}}),
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "xoxp-1");
        assert_eq!(t.refresh_token.as_ref().unwrap().expose_secret(), "xoxe-1");
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(t.expires_in, Some(Duration::from_secs(43200)));
        assert_eq!(
            t.scope,
            Some(vec!["chat:write".into(), "channels:read".into()])
        );
        assert_eq!(t.extras.get("team_id").map(String::as_str), Some("T1"));
        assert_eq!(t.extras.get("app_id").map(String::as_str), Some("A1"));
        let raw = t.raw_account.unwrap();
        assert_eq!(raw.pointer("/authed_user/id"), Some(&json!("U1")));
        let text = raw.to_string();
        assert!(!text.contains("xoxp") && !text.contains("xoxe") && !text.contains("hooks"));
        // A refresh response carries the rotated user token at the top level.
        let t = parse(
            &s,
            json!({"ok": true, "access_token": "xoxp-2", "refresh_token": "xoxe-2",
                   "token_type": "user", "expires_in": 43200}),
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "xoxp-2");
        assert_eq!(t.refresh_token.as_ref().unwrap().expose_secret(), "xoxe-2");
    }

    #[test]
    fn extras_keep_only_known_non_secret_values() {
        let t = parse(
            &plain(),
            json!({"access_token": "at", "instance_url": "https://acme.my.salesforce.com",
                   "signature": "sig", "id": "https://login.salesforce.com/id/00D/005",
                   "weird_token": "x", "workspace_id": 42}),
        )
        .unwrap();
        assert_eq!(
            t.extras.get("instance_url").map(String::as_str),
            Some("https://acme.my.salesforce.com")
        );
        assert_eq!(t.extras.get("workspace_id").map(String::as_str), Some("42"));
        assert!(t.extras.contains_key("id"));
        assert!(!t.extras.contains_key("signature"));
        assert!(!t.extras.contains_key("weird_token"));
        assert!(!t.extras.values().any(|v| v == "at"));
    }

    #[test]
    fn debug_redacts_tokens() {
        let t = parse(
            &plain(),
            json!({"access_token": "AT-SECRET", "refresh_token": "RT-SECRET", "id_token": "ID-SECRET"}),
        )
        .unwrap();
        let shown = format!("{t:?}");
        for s in ["AT-SECRET", "RT-SECRET", "ID-SECRET"] {
            assert!(!shown.contains(s), "{shown}");
        }
    }

    #[test]
    fn error_bodies_keep_only_code_and_description() {
        let body = json!({"error": "invalid_grant", "error_description": "bad\u{0}thing",
                          "refresh_token": "RT-LEAK"})
        .to_string();
        let e = parse_error_body(body.as_bytes(), Operation::Refresh, &[]).unwrap();
        assert!(!format!("{e:?} {e}").contains("RT-LEAK"));
        assert!(matches!(e, OAuthError::InvalidGrant { ref description, .. }
            if description.as_deref() == Some("bad thing")));
        assert!(parse_error_body(b"<html>oops</html>", Operation::Refresh, &[]).is_none());
        assert!(parse_error_body(b"{\"message\":\"x\"}", Operation::Refresh, &[]).is_none());
    }
}
