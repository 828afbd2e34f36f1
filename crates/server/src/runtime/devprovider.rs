//! `serve --dev-provider`: the fake OAuth 2.0 server (crate `cb-fake-provider`) on loopback as
//! provider `dev`, so a newcomer can walk the whole connect flow with grpcurl and curl without
//! registering an app anywhere. It auto-approves every authorization request, issues random
//! tokens, rotates refresh tokens, checks PKCE (S256) and client authentication, and serves
//! `/callback`, which answers the redirect with the JSON body CompleteConnect expects.
//!
//! Compiled only with the `dev-provider` feature (on by default for `cargo run`; the release image
//! builds without it, see docs/operations.md). Without it, `--dev-provider` is refused at start.

use crate::runtime::config::Config;
use crate::runtime::error::StartupError;
use std::net::SocketAddr;

/// Provider id of the development provider.
pub const ID: &str = "dev";
/// Its client id.
pub const CLIENT_ID: &str = "dev-client";

/// The running development provider; stops when dropped.
pub struct DevProvider {
    #[cfg(feature = "dev-provider")]
    _fake: cb_fake_provider::FakeProvider,
}

/// Starts the development provider on `addr` (loopback only) and declares it in `config` as
/// provider `dev`, with its client credentials and its `/callback` as a redirect URI.
#[cfg(feature = "dev-provider")]
pub async fn start(config: &mut Config, addr: SocketAddr) -> Result<DevProvider, StartupError> {
    use crate::runtime::config::{ProviderSettings, SecretValue};
    use cb_fake_provider::{ClientAuth, FakeConfig, FakeProvider, TokenStyle};

    if !addr.ip().is_loopback() {
        return Err(StartupError::Providers(
            "--dev-provider-listen must be a loopback address".into(),
        ));
    }
    let secret = random_secret();
    let fake = FakeProvider::start_on(
        addr,
        FakeConfig {
            client_id: CLIENT_ID.to_owned(),
            client_secret: secret.clone(),
            redirect_uris: Vec::new(),
            client_auth: Some(ClientAuth::Basic),
            rotate_refresh_tokens: true,
            subject: "dev-user-1".to_owned(),
            token_style: TokenStyle::Random {
                prefix: "dev".to_owned(),
            },
            ..FakeConfig::default()
        },
    )
    .await
    .map_err(|source| StartupError::Bind { addr, source })?;
    // The port is known only now (`--dev-provider-listen 127.0.0.1:0`).
    let redirect_uri = format!("{}/callback", fake.base_url());
    fake.configure(|c| c.redirect_uris = vec![redirect_uri.clone()]);
    tracing::warn!(
        addr = %fake.addr(),
        "development oauth provider running (auto-approves everything): never use it in production"
    );
    config.oauth.allow_insecure_loopback = true;
    config.oauth.redirect_uris.push(redirect_uri.clone());
    config
        .custom_providers
        .push(spec(&fake.base_url()).map_err(StartupError::Providers)?);
    config.providers.insert(
        ID.to_owned(),
        ProviderSettings {
            client_id: Some(CLIENT_ID.to_owned()),
            client_secret: Some(SecretValue::new(secret)),
            placeholders: Default::default(),
        },
    );
    tracing::info!(%redirect_uri, "provider `dev` available for StartConnect");
    Ok(DevProvider { _fake: fake })
}

/// Without the `dev-provider` feature: refuses, saying why.
#[cfg(not(feature = "dev-provider"))]
pub async fn start(_config: &mut Config, _addr: SocketAddr) -> Result<DevProvider, StartupError> {
    Err(StartupError::Providers(
        "--dev-provider is not available: this binary was built without the `dev-provider` feature"
            .into(),
    ))
}

/// A per-start client secret (hex of 24 random bytes).
#[cfg(feature = "dev-provider")]
fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The catalog entry pointing at the development provider at `base`.
#[cfg(feature = "dev-provider")]
fn spec(base: &str) -> Result<cb_oauth::catalog::ProviderSpec, String> {
    let text = format!(
        r#"[[provider]]
id = "{ID}"
display_name = "Local development provider"
icon_url = "{base}/icon.png"
category = "development"
authorize_url = "{base}/authorize"
token_url = "{base}/token"
revocation_url = "{base}/revoke"
default_scopes = ["profile"]
auth_style = "basic"
pkce = "supported"
docs_url = "{base}/"
scopes = [
  {{ name = "profile", description = "See your name and email address" }},
  {{ name = "files.read", description = "Read your files" }},
  {{ name = "files.write", description = "Create, change and delete your files" }},
]
[provider.account]
kind = "userinfo"
url = "{base}/userinfo"
subject_pointer = "/sub"
label_pointer = "/email"
[provider.refresh]
access_token_lifetime_seconds = 3600
rotates_refresh_tokens = true
"#
    );
    let mut catalog = cb_oauth::catalog::Catalog::new().with_http_loopback(true);
    catalog.extend_from_toml(&text).map_err(|e| e.to_string())?;
    catalog
        .get(ID)
        .cloned()
        .ok_or_else(|| "dev provider spec missing".into())
}
