//! Errors of the OAuth client, and the classification of provider error codes into them.
//!
//! Nothing in an [`OAuthError`] may carry a token, an authorization code, a client secret or a PKCE
//! verifier. Provider error bodies are never echoed: only their `error` code and a sanitized,
//! truncated `error_description` are kept (see [`sanitize_code`] and [`sanitize_description`]).

use std::time::Duration;

/// Longest provider `error_description` kept, in characters.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 200;
/// Longest provider `error` code kept, in characters.
const MAX_CODE_CHARS: usize = 64;

/// What went wrong talking to a provider.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The grant (code or refresh token) is invalid, expired or revoked: `invalid_grant` and the
    /// provider equivalents (Slack `invalid_refresh_token`, GitHub `bad_refresh_token`, ...).
    /// Permanent: the broker marks the credential `NEEDS_RECONNECT`.
    #[error("provider rejected the grant ({error}{})", fmt_description(.description))]
    InvalidGrant {
        /// The provider's error code.
        error: String,
        /// The provider's description, sanitized and truncated.
        description: Option<String>,
    },
    /// The client id or secret was rejected (`invalid_client`, `unauthorized_client`). Permanent.
    #[error("provider rejected the client ({error}{})", fmt_description(.description))]
    InvalidClient {
        /// The provider's error code.
        error: String,
        /// The provider's description, sanitized and truncated.
        description: Option<String>,
    },
    /// The user or the provider refused access (`access_denied`, or HTTP 403 from userinfo).
    #[error("access denied by the provider{}", fmt_description(.description))]
    AccessDenied {
        /// The provider's description, sanitized and truncated.
        description: Option<String>,
    },
    /// HTTP 429 (or a provider's rate-limit error); retry later.
    #[error("rate limited by the provider")]
    RateLimited {
        /// The provider's `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx, a timeout or a connection error; retry with backoff.
    #[error("provider temporarily unavailable: {detail}")]
    Transient {
        /// The HTTP status, when a response arrived.
        status: Option<u16>,
        /// What failed, without secrets.
        detail: String,
    },
    /// The provider answered something this client cannot use: malformed or oversized body,
    /// no access token, an unexpected redirect, or an OAuth error that is neither permanent nor
    /// transient (`invalid_request`, `invalid_scope`, ...).
    #[error("provider protocol error: {0}")]
    Protocol(String),
    /// The provider spec, a URL, a placeholder or a request parameter is unusable.
    #[error("oauth configuration error: {0}")]
    Config(String),
}

fn fmt_description(description: &Option<String>) -> String {
    match description {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

impl OAuthError {
    /// True when retrying cannot help and the user must reconnect or an operator must fix the
    /// client registration: [`OAuthError::InvalidGrant`] and [`OAuthError::InvalidClient`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidGrant { .. } | Self::InvalidClient { .. })
    }

    /// True when the same request may succeed later: [`OAuthError::RateLimited`] and
    /// [`OAuthError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient { .. })
    }
}

/// Keeps an `error` code usable in logs: ASCII letters, digits, `_`, `-`, `.` and `:` only,
/// at most 64 characters. Anything else is dropped; an empty result becomes `unknown_error`.
pub(crate) fn sanitize_code(code: &str) -> String {
    let kept: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        .take(MAX_CODE_CHARS)
        .collect();
    if kept.is_empty() {
        "unknown_error".to_owned()
    } else {
        kept
    }
}

/// Keeps a provider description readable and bounded: control characters become spaces,
/// whitespace runs collapse, at most [`MAX_DESCRIPTION_CHARS`] characters (an ellipsis marks the
/// cut), and any of `secrets` (values this client sent) that the provider echoed is replaced by
/// `[redacted]`. Empty → `None`.
pub(crate) fn sanitize_description(description: &str, secrets: &[&str]) -> Option<String> {
    let mut text = description.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = true;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == MAX_DESCRIPTION_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        count += 1;
    }
    let trimmed = out.trim_end();
    if trimmed.is_empty() {
        None
    } else {
        Some(trimmed.to_owned())
    }
}

/// Which request a provider error answered; a few codes mean different things per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `grant_type=authorization_code`.
    Exchange,
    /// `grant_type=refresh_token`.
    Refresh,
    /// Token revocation.
    Revoke,
    /// The account lookup (userinfo).
    Identify,
}

/// Turns a provider error code (already sanitized) and description into an [`OAuthError`].
///
/// RFC 6749 §5.2 codes plus the non-standard codes providers use for the same conditions:
/// Slack (`invalid_code`, `invalid_refresh_token`, `token_revoked`, `invalid_client_id`,
/// `bad_client_secret`, `ratelimited`, ...) and GitHub (`bad_verification_code`,
/// `bad_refresh_token`, `incorrect_client_credentials`, `redirect_uri_mismatch`, ...).
pub(crate) fn classify(
    error: String,
    description: Option<String>,
    operation: Operation,
) -> OAuthError {
    let lower = error.to_ascii_lowercase();
    match lower.as_str() {
        // The grant itself is gone: reconnect.
        "invalid_grant"
        | "invalid_code"
        | "code_already_used"
        | "code_expired"
        | "bad_verification_code"
        | "bad_refresh_token"
        | "invalid_refresh_token"
        | "expired_refresh_token"
        | "refresh_token_expired"
        | "unknown_refresh_token"
        | "token_revoked"
        | "token_expired"
        | "invalid_token"
        | "invalid_auth"
        | "not_authed"
        | "account_inactive"
        | "app_uninstalled"
        | "authorization_not_found"
        | "redirect_uri_mismatch"
        | "bad_redirect_uri"
        | "unverified_user_email" => OAuthError::InvalidGrant { error, description },
        // The client registration is wrong: an operator must fix it.
        "invalid_client"
        | "unauthorized_client"
        | "invalid_client_id"
        | "bad_client_secret"
        | "incorrect_client_credentials"
        | "invalid_client_secret"
        | "unauthorized_client_id" => OAuthError::InvalidClient { error, description },
        "access_denied" | "consent_required" | "interaction_required" => {
            OAuthError::AccessDenied { description }
        }
        "ratelimited" | "rate_limited" | "slow_down" | "too_many_requests" => {
            OAuthError::RateLimited { retry_after: None }
        }
        "temporarily_unavailable"
        | "server_error"
        | "internal_error"
        | "fatal_error"
        | "service_unavailable"
        | "request_timeout" => OAuthError::Transient {
            status: None,
            detail: format!("provider error {error}"),
        },
        _ => {
            let during = match operation {
                Operation::Exchange => "code exchange",
                Operation::Refresh => "refresh",
                Operation::Revoke => "revocation",
                Operation::Identify => "account lookup",
            };
            OAuthError::Protocol(format!(
                "{during} failed with provider error {error}{}",
                fmt_description(&description)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_provider_codes_are_classified() {
        for code in [
            "invalid_grant",
            "bad_refresh_token",
            "bad_verification_code",
            "invalid_refresh_token",
            "token_revoked",
            "invalid_code",
        ] {
            let e = classify(code.to_owned(), None, Operation::Refresh);
            assert!(matches!(e, OAuthError::InvalidGrant { .. }), "{code}");
            assert!(e.is_permanent() && !e.is_transient());
        }
        for code in [
            "invalid_client",
            "unauthorized_client",
            "bad_client_secret",
            "invalid_client_id",
            "incorrect_client_credentials",
        ] {
            let e = classify(code.to_owned(), None, Operation::Exchange);
            assert!(matches!(e, OAuthError::InvalidClient { .. }), "{code}");
            assert!(e.is_permanent());
        }
        assert!(matches!(
            classify("access_denied".into(), None, Operation::Exchange),
            OAuthError::AccessDenied { .. }
        ));
        let e = classify("ratelimited".into(), None, Operation::Refresh);
        assert!(matches!(e, OAuthError::RateLimited { .. }) && e.is_transient());
        let e = classify("temporarily_unavailable".into(), None, Operation::Refresh);
        assert!(matches!(e, OAuthError::Transient { .. }) && e.is_transient());
        let e = classify("invalid_scope".into(), None, Operation::Refresh);
        assert!(matches!(e, OAuthError::Protocol(_)));
        assert!(!e.is_permanent() && !e.is_transient());
    }

    #[test]
    fn codes_keep_only_safe_characters() {
        assert_eq!(sanitize_code("invalid_grant"), "invalid_grant");
        assert_eq!(sanitize_code("bad\ncode <script>"), "badcodescript");
        assert_eq!(sanitize_code("\u{7}"), "unknown_error");
        assert_eq!(sanitize_code(&"x".repeat(500)).len(), 64);
    }

    #[test]
    fn descriptions_are_cleaned_truncated_and_scrubbed() {
        assert_eq!(
            sanitize_description("line one\r\n\tline\u{1b}[31m two  ", &[]).as_deref(),
            Some("line one line [31m two")
        );
        let long = "é".repeat(1000);
        let cut = sanitize_description(&long, &[]).unwrap_or_default();
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(
            sanitize_description("token rt-secret-123 is revoked", &["rt-secret-123"]).as_deref(),
            Some("token [redacted] is revoked")
        );
        assert_eq!(sanitize_description(" \n ", &[]), None);
    }

    #[test]
    fn display_never_holds_more_than_code_and_description() {
        let e = OAuthError::InvalidGrant {
            error: "invalid_grant".into(),
            description: Some("expired".into()),
        };
        assert_eq!(
            e.to_string(),
            "provider rejected the grant (invalid_grant: expired)"
        );
    }
}
