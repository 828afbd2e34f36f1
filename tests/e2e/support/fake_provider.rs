//! The fake OAuth 2.0 authorization server (crate `cb-fake-provider`) as the tests use it: started
//! on a free port (panicking if it cannot be), plus the broker-side view of it: the provider spec,
//! client credentials and HTTP config that point `cb-oauth` and the broker at it, and a browser
//! that follows its authorization redirect.

use cb_oauth::catalog::{
    AccountSource, AuthStyle, Pkce, ProviderSpec, Quirk, RefreshBehaviour, ScopeSpec,
};
use cb_oauth::{ClientCredentials, HttpConfig};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::ops::Deref;

pub use cb_fake_provider::{ClientAuth, Dialect, FakeConfig, TokenFailure};

/// A fake that rotates refresh tokens and, like real servers, revokes the whole grant when a
/// rotated-away one is presented again.
pub fn rotating() -> FakeConfig {
    FakeConfig {
        rotate_refresh_tokens: true,
        reuse_revokes_grant: true,
        ..FakeConfig::default()
    }
}

/// A running fake authorization server; stops when dropped. Everything the crate's
/// [`cb_fake_provider::FakeProvider`] offers (configuration, fault injection, counters) is
/// reachable through `Deref`.
pub struct FakeProvider(cb_fake_provider::FakeProvider);

impl Deref for FakeProvider {
    type Target = cb_fake_provider::FakeProvider;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl FakeProvider {
    /// A fake rotating refresh tokens that also knows the client `client_id` (a workspace's own
    /// OAuth app), besides its default client.
    pub async fn with_app_client(client_id: &str, client_secret: &str) -> FakeProvider {
        FakeProvider::start(FakeConfig {
            extra_clients: vec![(client_id.into(), client_secret.into())],
            rotate_refresh_tokens: true,
            ..FakeConfig::default()
        })
        .await
    }

    /// Starts the server on 127.0.0.1 with a free port.
    pub async fn start(config: FakeConfig) -> FakeProvider {
        FakeProvider(
            cb_fake_provider::FakeProvider::start(config)
                .await
                .expect("start the fake provider"),
        )
    }

    /// The client ids of the token requests with `grant_type`, in order.
    pub fn token_clients(&self, grant_type: &str) -> Vec<String> {
        self.token_requests()
            .into_iter()
            .filter(|r| r.grant_type.as_deref() == Some(grant_type))
            .filter_map(|r| r.client_id)
            .collect()
    }

    /// The registered client, for the code under test.
    pub fn client_credentials(&self) -> ClientCredentials {
        let config = self.config();
        ClientCredentials::new(config.client_id, SecretString::from(config.client_secret))
    }

    /// An HTTP config that may call this server (plain http to loopback).
    pub fn http_config() -> HttpConfig {
        HttpConfig {
            allow_http_loopback: true,
            ..HttpConfig::default()
        }
    }

    /// The account read from this fake's OpenID-style userinfo endpoint (`sub`, `email`).
    pub fn userinfo(&self) -> AccountSource {
        AccountSource::Userinfo {
            url: format!("{}/userinfo", self.base_url()),
            subject_pointer: "/sub".into(),
            label_pointer: "/email".into(),
            headers: BTreeMap::new(),
            body: None,
            token_header: None,
        }
    }

    /// A provider spec pointing at this server. The account source follows the quirks: Slack
    /// (`SlackAuthedUser`) and Notion (`JsonTokenRequest`) read it from the token response,
    /// others from `/userinfo` (`/sub`, `/email`). The revocation URL follows them too: GitHub
    /// (`GithubJsonAccept`) uses the grant API, Slack (`OkFalseErrors`) `auth.revoke`.
    pub fn spec(&self, id: &str, auth: AuthStyle, pkce: Pkce, quirks: &[Quirk]) -> ProviderSpec {
        let base = self.base_url();
        let cfg = self.config();
        let has = |q: Quirk| quirks.contains(&q);
        let account = if has(Quirk::SlackAuthedUser) {
            AccountSource::TokenResponse {
                subject_pointer: "/authed_user/id".into(),
                label_pointer: "/team/name".into(),
            }
        } else if has(Quirk::JsonTokenRequest) {
            AccountSource::TokenResponse {
                subject_pointer: "/owner/user/id".into(),
                label_pointer: "/owner/user/person/email".into(),
            }
        } else {
            self.userinfo()
        };
        let revocation_url = if has(Quirk::GithubJsonAccept) {
            format!("{base}/applications/{{client_id}}/grant")
        } else if has(Quirk::OkFalseErrors) {
            format!("{base}/api/auth.revoke")
        } else {
            format!("{base}/revoke")
        };
        ProviderSpec {
            id: id.to_owned(),
            display_name: format!("Fake {id}"),
            icon_url: format!("{base}/icon.png"),
            category: "developer".into(),
            authorize_url: format!("{base}/authorize"),
            token_url: format!("{base}/token"),
            revocation_url: Some(revocation_url),
            revocation_ends_authorization: false,
            issuer: cfg.issuer.clone(),
            account,
            default_scopes: vec!["read".into()],
            scopes: vec![
                ScopeSpec {
                    name: "read".into(),
                    description: "Read your data".into(),
                },
                ScopeSpec {
                    name: "write".into(),
                    description: "Change your data".into(),
                },
            ],
            auth_style: auth,
            pkce,
            extra_authorize_params: BTreeMap::new(),
            extra_token_params: BTreeMap::new(),
            extra_refresh_params: BTreeMap::new(),
            client_id_param: None,
            refresh: RefreshBehaviour {
                access_token_lifetime_seconds: cfg.access_token_ttl.map(|d| d.as_secs()),
                rotates_refresh_tokens: cfg.rotate_refresh_tokens,
                single_use_refresh_tokens: cfg.rotate_refresh_tokens,
                refresh_token_lifetime_seconds: cfg.refresh_token_ttl.map(|d| d.as_secs()),
                ..RefreshBehaviour::default()
            },
            quirks: quirks.to_vec(),
            docs_url: format!("{base}/docs"),
            sources: vec![],
            checked: None,
            verified: true,
            unsure: vec![],
            // Atlassian and Xero look up the tenant right after connecting.
            post_connect: quirks
                .iter()
                .find_map(|q| match q {
                    Quirk::AtlassianCloudId => Some(("cloud_id", "/0/id")),
                    Quirk::XeroTenantId => Some(("tenant_id", "/0/tenantId")),
                    _ => None,
                })
                .map(|(name, pointer)| cb_oauth::catalog::PostConnectLookup {
                    url: format!("{base}/tenants"),
                    extras: [(name.to_owned(), pointer.to_owned())].into(),
                }),
        }
    }

    /// Sends the browser to `authorize_url` and returns where the fake redirects it (the
    /// `redirect_uri` with `code` and `state`, or `error`). Panics when there is no redirect.
    pub async fn approve(&self, authorize_url: &url::Url) -> url::Url {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client");
        let resp = client
            .get(authorize_url.clone())
            .send()
            .await
            .expect("authorize request");
        assert_eq!(resp.status(), 302, "authorize did not redirect");
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("location header");
        url::Url::parse(location).expect("redirect is a url")
    }
}
