//! Provider behaviours that need code rather than data: where Salesforce refreshes go, and how
//! each provider revokes. (Token response quirks — Slack `authed_user`, errors with HTTP 200 —
//! live in [`crate::token`]; authorize URL quirks in [`crate::authorize`].)

use crate::catalog::{ProviderSpec, Quirk};
use crate::endpoint;
use crate::error::OAuthError;
use url::{Host, Url};

/// Salesforce hosts a stored `instance_url` may name (`acme.my.salesforce.com`,
/// `acme--sandbox.sandbox.my.salesforce.com`, `acme.lightning.force.com`, ...).
const SALESFORCE_HOST_SUFFIXES: [&str; 2] = [".salesforce.com", ".force.com"];

/// The token endpoint for a Salesforce refresh: `{instance_url}/services/oauth2/token`.
///
/// `instance_url` comes from a stored token response, so it is checked before the broker sends a
/// client secret and refresh token to it: https, a Salesforce host, the default port, no
/// credentials; only scheme, host and port are kept. Loopback hosts pass only when
/// `allow_http_loopback` (tests). Without this check a tampered extra would turn the broker into
/// an open proxy that posts secrets to any host.
pub(crate) fn salesforce_token_url(
    instance_url: &str,
    allow_http_loopback: bool,
) -> Result<Url, OAuthError> {
    let bad = |why: &str| OAuthError::Config(format!("salesforce instance_url rejected: {why}"));
    let url = Url::parse(instance_url).map_err(|_| bad("not a url"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("contains credentials"));
    }
    let loopback = endpoint::is_loopback(&url) && matches!(url.scheme(), "http" | "https");
    if loopback {
        if !allow_http_loopback {
            return Err(bad("loopback host"));
        }
    } else {
        if url.scheme() != "https" {
            return Err(bad("not https"));
        }
        if url.port().is_some() {
            return Err(bad("non-default port"));
        }
        let Some(Host::Domain(host)) = url.host() else {
            return Err(bad("not a salesforce host"));
        };
        let host = host.to_ascii_lowercase();
        if !SALESFORCE_HOST_SUFFIXES.iter().any(|s| host.ends_with(s)) {
            return Err(bad("not a salesforce host"));
        }
    }
    let mut token_url = url;
    token_url.set_path("/services/oauth2/token");
    token_url.set_query(None);
    token_url.set_fragment(None);
    Ok(token_url)
}

/// How a provider revokes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RevocationStyle {
    /// RFC 7009: form POST of `token` and `token_type_hint` with client authentication (a JSON
    /// body with [`Quirk::JsonTokenRequest`], as Notion wants).
    Rfc7009,
    /// GitHub: `DELETE /applications/{client_id}/grant`, Basic client auth, JSON
    /// `{"access_token": ...}`; removes the whole grant.
    GithubGrant,
    /// The token authenticates its own revocation: POST with `Authorization: Bearer` and no body
    /// (Slack `auth.revoke`, Dropbox `/2/auth/token/revoke`).
    BearerSelf,
}

/// Picks the revocation style from the spec: a `{client_id}` placeholder in `revocation_url`
/// means GitHub's grant API; Slack (errors as `ok:false`) and Dropbox's `/2/auth/token/revoke`
/// revoke with the token as Bearer; everything else is RFC 7009.
pub(crate) fn revocation_style(spec: &ProviderSpec, revocation_url: &str) -> RevocationStyle {
    if revocation_url.contains("{client_id}") {
        RevocationStyle::GithubGrant
    } else if spec.quirks.contains(&Quirk::OkFalseErrors)
        || revocation_url
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/2/auth/token/revoke"))
    {
        RevocationStyle::BearerSelf
    } else {
        RevocationStyle::Rfc7009
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Pkce;
    use crate::test_support::spec;

    #[test]
    fn salesforce_instance_urls_are_confined_to_salesforce() {
        for ok in [
            "https://acme.my.salesforce.com",
            "https://acme.my.salesforce.com/some/path?x=1",
            "https://ACME--dev.sandbox.my.salesforce.com/",
            "https://na1.force.com",
        ] {
            let u = salesforce_token_url(ok, false).unwrap();
            assert_eq!(u.path(), "/services/oauth2/token", "{ok}");
            assert_eq!(u.query(), None);
        }
        for bad in [
            "http://acme.my.salesforce.com",
            "https://evil.com",
            "https://salesforce.com.evil.com",
            "https://evilsalesforce.com",
            "https://acme.my.salesforce.com:8443",
            "https://user:pw@acme.my.salesforce.com",
            "https://10.0.0.1",
            "http://127.0.0.1:8080",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(
                matches!(salesforce_token_url(bad, false), Err(OAuthError::Config(_))),
                "{bad}"
            );
        }
        let u = salesforce_token_url("http://127.0.0.1:8080/x", true).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/services/oauth2/token");
    }

    #[test]
    fn revocation_styles() {
        let plain = spec("https://a/authorize", Pkce::None, &[]);
        assert_eq!(
            revocation_style(&plain, "https://oauth2.googleapis.com/revoke"),
            RevocationStyle::Rfc7009
        );
        assert_eq!(
            revocation_style(
                &plain,
                "https://api.github.com/applications/{client_id}/grant"
            ),
            RevocationStyle::GithubGrant
        );
        assert_eq!(
            revocation_style(&plain, "https://api.dropboxapi.com/2/auth/token/revoke"),
            RevocationStyle::BearerSelf
        );
        let slack = spec("https://a/authorize", Pkce::None, &[Quirk::OkFalseErrors]);
        assert_eq!(
            revocation_style(&slack, "https://slack.com/api/auth.revoke"),
            RevocationStyle::BearerSelf
        );
    }
}
