//! The authorization URL the user's browser is sent to (RFC 6749 §4.1.1, RFC 7636 §4.3).

use crate::catalog::{Pkce, ProviderSpec, Quirk};
use crate::client::ClientCredentials;
use crate::endpoint;
use crate::error::OAuthError;
use std::collections::BTreeMap;

/// What varies per connect attempt.
#[derive(Clone, Copy, Debug)]
pub struct AuthorizeRequest<'a> {
    /// Where the provider sends the user back (registered at the provider).
    pub redirect_uri: &'a str,
    /// Scopes to request. With [`Quirk::SlackAuthedUser`] these are Slack *user* scopes and are
    /// sent as `user_scope` (the broker connects people, not bots); `scope` is then left out.
    pub scopes: &'a [String],
    /// The `state` value (see [`crate::random_state`]).
    pub state: &'a str,
    /// The S256 PKCE challenge; required when the provider's `pkce` is not `none`.
    pub pkce_challenge: Option<&'a str>,
}

/// Builds the authorize URL: `response_type=code`, `client_id` (or the spec's
/// `client_id_param`, TikTok `client_key`), `redirect_uri`, `scope` (space-
/// or comma-separated per [`Quirk::CommaSeparatedScopes`]; `user_scope` for Slack user tokens),
/// `state`, `code_challenge` + `code_challenge_method=S256` when the provider uses PKCE, then the
/// spec's `extra_authorize_params` (which may not replace any of the former). `placeholders`:
/// values for URL placeholders, keys without braces (`shop`, `subdomain`).
pub fn authorize_url(
    spec: &ProviderSpec,
    client: &ClientCredentials,
    req: &AuthorizeRequest<'_>,
    placeholders: &BTreeMap<String, String>,
) -> Result<url::Url, OAuthError> {
    let raw = endpoint::fill(&spec.authorize_url, placeholders, None)?;
    let mut url = endpoint::parse_browser_url(&raw)?;
    if req.redirect_uri.is_empty() {
        return Err(OAuthError::Config("redirect_uri is empty".to_owned()));
    }
    if req.state.is_empty() {
        return Err(OAuthError::Config("state is empty".to_owned()));
    }
    let challenge = match (spec.pkce, req.pkce_challenge) {
        (Pkce::None, _) => None,
        (_, Some(c)) if !c.is_empty() => Some(c),
        (_, _) => {
            return Err(OAuthError::Config(format!(
                "provider {} uses pkce: a code challenge is required",
                spec.id
            )));
        }
    };
    let reserved = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "user_scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ];
    let id_param = spec.client_id_param();
    if let Some(name) = spec
        .extra_authorize_params
        .keys()
        .find(|k| reserved.contains(&k.as_str()) || k.as_str() == id_param)
    {
        return Err(OAuthError::Config(format!(
            "extra authorize parameter {name} would replace one the broker sets"
        )));
    }
    let scope = join_scopes(spec, req.scopes);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code");
        q.append_pair(id_param, &client.client_id);
        q.append_pair("redirect_uri", req.redirect_uri);
        if !scope.is_empty() {
            let name = if spec.quirks.contains(&Quirk::SlackAuthedUser) {
                "user_scope"
            } else {
                "scope"
            };
            q.append_pair(name, &scope);
        }
        q.append_pair("state", req.state);
        if let Some(c) = challenge {
            q.append_pair("code_challenge", c);
            q.append_pair("code_challenge_method", "S256");
        }
        for (k, v) in &spec.extra_authorize_params {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

/// Scopes joined the way the provider reads them.
fn join_scopes(spec: &ProviderSpec, scopes: &[String]) -> String {
    let sep = if spec.quirks.contains(&Quirk::CommaSeparatedScopes) {
        ","
    } else {
        " "
    };
    scopes
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{github, spec};
    use secrecy::SecretString;

    fn client() -> ClientCredentials {
        ClientCredentials::new("cid", SecretString::from("never-in-urls"))
    }

    fn params(url: &url::Url) -> Vec<(String, String)> {
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn get(url: &url::Url, name: &str) -> Option<String> {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    fn build(spec: &ProviderSpec, scopes: &[&str], challenge: Option<&str>) -> url::Url {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        authorize_url(
            spec,
            &client(),
            &AuthorizeRequest {
                redirect_uri: "https://broker.example/callback",
                scopes: &scopes,
                state: "st4te",
                pkce_challenge: challenge,
            },
            &BTreeMap::new(),
        )
        .unwrap()
    }

    /// Whether an authorize URL for `spec` with no scopes and no PKCE challenge is refused as a
    /// configuration error.
    fn refused_without_challenge(spec: &ProviderSpec) -> bool {
        let result = authorize_url(
            spec,
            &client(),
            &AuthorizeRequest {
                redirect_uri: "https://b/cb",
                scopes: &[],
                state: "s",
                pkce_challenge: None,
            },
            &BTreeMap::new(),
        );
        matches!(result, Err(OAuthError::Config(_)))
    }

    #[test]
    fn standard_parameters_with_pkce() {
        let s = spec("https://auth.example.com/authorize", Pkce::Required, &[]);
        let url = build(&s, &["read", "write"], Some("chal"));
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.path(), "/authorize");
        assert_eq!(
            params(&url),
            vec![
                ("response_type".into(), "code".into()),
                ("client_id".into(), "cid".into()),
                (
                    "redirect_uri".into(),
                    "https://broker.example/callback".into()
                ),
                ("scope".into(), "read write".into()),
                ("state".into(), "st4te".into()),
                ("code_challenge".into(), "chal".into()),
                ("code_challenge_method".into(), "S256".into()),
            ]
        );
        assert!(!url.as_str().contains("never-in-urls"));
    }

    #[test]
    fn tiktok_names_the_client_id_client_key() {
        let mut s = spec("https://www.tiktok.com/v2/auth/authorize/", Pkce::None, &[]);
        s.client_id_param = Some("client_key".to_owned());
        let url = build(&s, &["user.info.basic"], None);
        assert_eq!(get(&url, "client_key").as_deref(), Some("cid"));
        assert_eq!(get(&url, "client_id"), None);
        // An extra parameter may not replace it either.
        s.extra_authorize_params
            .insert("client_key".to_owned(), "other".to_owned());
        assert!(refused_without_challenge(&s));
    }

    #[test]
    fn pkce_is_left_out_when_the_provider_does_not_use_it_and_required_otherwise() {
        let s = spec("https://auth.example.com/authorize", Pkce::None, &[]);
        let url = build(&s, &["a"], Some("chal"));
        assert_eq!(get(&url, "code_challenge"), None);
        let s = spec("https://auth.example.com/authorize", Pkce::Supported, &[]);
        assert!(refused_without_challenge(&s));
    }

    #[test]
    fn google_extra_params_are_appended() {
        let mut s = spec(
            "https://accounts.google.com/o/oauth2/v2/auth",
            Pkce::Supported,
            &[],
        );
        // Google's parameters as the built-in catalog declares them.
        let catalog = crate::catalog::Catalog::builtin().unwrap();
        s.extra_authorize_params = catalog.get("gmail").unwrap().extra_authorize_params.clone();
        let url = build(&s, &["openid", "email"], Some("c"));
        assert_eq!(get(&url, "access_type").as_deref(), Some("offline"));
        assert_eq!(get(&url, "prompt").as_deref(), Some("consent"));
        assert_eq!(get(&url, "include_granted_scopes").as_deref(), Some("true"));
        assert_eq!(get(&url, "scope").as_deref(), Some("openid email"));
    }

    #[test]
    fn dropbox_offline_access_param() {
        let mut s = spec(
            "https://www.dropbox.com/oauth2/authorize",
            Pkce::Supported,
            &[],
        );
        s.extra_authorize_params
            .insert("token_access_type".into(), "offline".into());
        let url = build(&s, &["files.content.read"], Some("c"));
        assert_eq!(get(&url, "token_access_type").as_deref(), Some("offline"));
    }

    #[test]
    fn extra_params_cannot_replace_reserved_ones() {
        let mut s = spec("https://auth.example.com/a", Pkce::None, &[]);
        s.extra_authorize_params
            .insert("redirect_uri".into(), "https://evil.example".into());
        assert!(refused_without_challenge(&s));
    }

    #[test]
    fn slack_user_scopes_are_comma_separated_user_scope() {
        let s = spec(
            "https://slack.com/oauth/v2/authorize",
            Pkce::None,
            &[Quirk::CommaSeparatedScopes, Quirk::SlackAuthedUser],
        );
        let url = build(&s, &["channels:read", "chat:write"], None);
        assert_eq!(
            get(&url, "user_scope").as_deref(),
            Some("channels:read,chat:write")
        );
        assert_eq!(get(&url, "scope"), None);
    }

    #[test]
    fn comma_separated_scopes() {
        let s = github(&[Quirk::CommaSeparatedScopes]);
        let url = build(&s, &["repo", "read:user"], None);
        assert_eq!(get(&url, "scope").as_deref(), Some("repo,read:user"));
    }

    #[test]
    fn shop_placeholder_is_filled_and_checked() {
        let s = spec(
            "https://{shop}.myshopify.com/admin/oauth/authorize",
            Pkce::None,
            &[Quirk::ShopSubdomain],
        );
        let mut placeholders = BTreeMap::new();
        placeholders.insert("shop".to_owned(), "acme".to_owned());
        let req = AuthorizeRequest {
            redirect_uri: "https://b/cb",
            scopes: &[],
            state: "s",
            pkce_challenge: None,
        };
        let url = authorize_url(&s, &client(), &req, &placeholders).unwrap();
        assert_eq!(url.host_str(), Some("acme.myshopify.com"));
        let mut evil = placeholders.clone();
        evil.insert("shop".to_owned(), "evil.com/".to_owned());
        assert!(authorize_url(&s, &client(), &req, &evil).is_err());
        assert!(authorize_url(&s, &client(), &req, &BTreeMap::new()).is_err());
    }

    #[test]
    fn existing_query_parameters_are_kept_and_http_only_for_loopback() {
        let s = spec(
            "https://login.example.com/auth?tenant=common",
            Pkce::None,
            &[],
        );
        let url = build(&s, &[], None);
        assert_eq!(get(&url, "tenant").as_deref(), Some("common"));
        assert_eq!(get(&url, "scope"), None);
        let s = spec("http://127.0.0.1:8080/authorize", Pkce::None, &[]);
        build(&s, &[], None);
        let s = spec("http://example.com/authorize", Pkce::None, &[]);
        assert!(refused_without_challenge(&s));
    }
}
