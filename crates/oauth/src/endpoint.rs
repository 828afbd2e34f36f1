//! Provider endpoint URLs: filling `{shop}` / `{subdomain}` / `{client_id}` placeholders and
//! checking that what the broker is about to call is https (plain http only to loopback, and only
//! when allowed — tests and local development).

use crate::error::OAuthError;
use std::collections::BTreeMap;
use url::{Host, Url};

/// Placeholders a connection may fill: `{shop}` (Shopify) and `{subdomain}` (Zendesk and similar).
const CONNECTION_PLACEHOLDERS: [&str; 2] = ["shop", "subdomain"];

/// Fills the connection placeholders in `template` from `placeholders` (keys without braces:
/// `shop`, `subdomain`) and, when given, `{client_id}`. Each value must be one DNS label
/// (ASCII letters, digits and inner hyphens, 1–63 characters): a value can never move the URL to
/// another host or path. A placeholder left unfilled is a [`OAuthError::Config`].
pub(crate) fn fill(
    template: &str,
    placeholders: &BTreeMap<String, String>,
    client_id: Option<&str>,
) -> Result<String, OAuthError> {
    let mut out = template.to_owned();
    for name in CONNECTION_PLACEHOLDERS {
        let marker = format!("{{{name}}}");
        if !out.contains(&marker) {
            continue;
        }
        let value = placeholders
            .get(name)
            .ok_or_else(|| OAuthError::Config(format!("the `{name}` placeholder is required")))?;
        if !is_dns_label(value) {
            return Err(OAuthError::Config(format!(
                "the `{name}` placeholder must be a single DNS label (letters, digits, hyphens)"
            )));
        }
        out = out.replace(&marker, &value.to_ascii_lowercase());
    }
    if let Some(client_id) = client_id.filter(|_| out.contains("{client_id}")) {
        // Goes into a path segment: only RFC 3986 unreserved characters.
        if client_id.is_empty()
            || !client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(OAuthError::Config(
                "the client id cannot be used in a url path".to_owned(),
            ));
        }
        out = out.replace("{client_id}", client_id);
    }
    if out.contains('{') || out.contains('}') {
        return Err(OAuthError::Config(
            "endpoint url has an unknown or unfilled placeholder".to_owned(),
        ));
    }
    Ok(out)
}

/// One DNS label: 1–63 ASCII letters, digits or hyphens, not starting or ending with a hyphen.
fn is_dns_label(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// Parses an endpoint the broker calls itself: https with a host and no userinfo, or — when
/// `allow_http_loopback` — plain http to 127.0.0.1, ::1 or localhost.
pub(crate) fn parse_server_url(
    field: &str,
    raw: &str,
    allow_http_loopback: bool,
) -> Result<Url, OAuthError> {
    let url = Url::parse(raw)
        .map_err(|e| OAuthError::Config(format!("{field} is not a valid url: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OAuthError::Config(format!(
            "{field} may not contain credentials"
        )));
    }
    if url.host().is_none() {
        return Err(OAuthError::Config(format!("{field} has no host")));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http_loopback && is_loopback(&url) => Ok(url),
        _ => Err(OAuthError::Config(format!("{field} must be an https url"))),
    }
}

/// The authorize URL goes to the user's browser, not to a broker-side request: https, or plain
/// http to a loopback host (local development, tests).
pub(crate) fn parse_browser_url(raw: &str) -> Result<Url, OAuthError> {
    parse_server_url("authorize_url", raw, true)
}

/// Whether the URL's host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_with_single_labels_only() {
        let t = "https://{shop}.myshopify.com/admin/oauth/access_token";
        assert_eq!(
            fill(t, &map(&[("shop", "My-Store")]), None).unwrap(),
            "https://my-store.myshopify.com/admin/oauth/access_token"
        );
        for bad in [
            "evil.com/x?",
            "evil.com#",
            "a.b",
            "",
            "-x",
            "x@y",
            "x:1",
            "%2e",
        ] {
            assert!(
                matches!(
                    fill(t, &map(&[("shop", bad)]), None),
                    Err(OAuthError::Config(_))
                ),
                "{bad}"
            );
        }
        assert!(fill(t, &BTreeMap::new(), None).is_err());
        assert!(fill("https://x/{other}", &BTreeMap::new(), None).is_err());
    }

    #[test]
    fn client_id_placeholder_takes_unreserved_characters_only() {
        let t = "https://api.github.com/applications/{client_id}/grant";
        assert_eq!(
            fill(t, &BTreeMap::new(), Some("Iv1.ab_c-9")).unwrap(),
            "https://api.github.com/applications/Iv1.ab_c-9/grant"
        );
        assert!(fill(t, &BTreeMap::new(), Some("a/../b")).is_err());
        assert!(fill(t, &BTreeMap::new(), None).is_err());
    }

    #[test]
    fn server_urls_must_be_https_unless_loopback_is_allowed() {
        assert!(parse_server_url("token_url", "https://example.com/token", false).is_ok());
        assert!(parse_server_url("token_url", "http://example.com/token", true).is_err());
        assert!(parse_server_url("token_url", "http://127.0.0.1:9/token", false).is_err());
        assert!(parse_server_url("token_url", "http://127.0.0.1:9/token", true).is_ok());
        assert!(parse_server_url("token_url", "http://localhost:9/token", true).is_ok());
        assert!(parse_server_url("token_url", "https://u:p@example.com/token", false).is_err());
        assert!(parse_server_url("token_url", "ftp://example.com/", true).is_err());
        assert!(parse_server_url("token_url", "not a url", true).is_err());
    }
}
