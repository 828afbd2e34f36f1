//! The provider gateway: the catalog (built in + config), client credentials per provider, the
//! redirect-URI allow-list and the OAuth HTTP client, behind the domain's `ProviderGateway`.

use crate::runtime::config::{Config, ENV_PREFIX, EnvSource};
use cb_broker::gateway::{
    AccountInfo, AppClient, ClientProbe, CodeExchange, Discovery, GrantedTokens, MetadataError,
    ProviderError, ProviderGateway, ProviderInfo, RedirectProbe, RevokeResult,
};
use cb_broker::tokens::TokenBundle;
use cb_oauth::catalog::{Catalog, ProviderSpec};
use cb_oauth::outbound::{OutboundClient, OutboundError};
use cb_oauth::{
    AuthorizeRequest, ClientCredentials, CodeGrant, HttpConfig, OAuthError, OAuthHttp,
    TokenResponse,
};
use secrecy::SecretString;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The environment variable names that configure `provider`'s client.
pub fn env_names(provider: &str) -> (String, String) {
    let key = provider.to_uppercase().replace('-', "_");
    (
        format!("{ENV_PREFIX}PROVIDER_{key}_CLIENT_ID"),
        format!("{ENV_PREFIX}PROVIDER_{key}_CLIENT_SECRET"),
    )
}

/// Providers as the broker uses them.
pub struct OAuthGateway {
    catalog: Catalog,
    clients: HashMap<String, ClientCredentials>,
    placeholders: HashMap<String, BTreeMap<String, String>>,
    custom: Vec<String>,
    redirect_uris: Vec<String>,
    http: OAuthHttp,
    /// Requests to URLs taken from a provider's own metadata (discovery) go through the guard.
    outbound: OutboundClient,
    /// Calls to providers a workspace defined at runtime: the same guard.
    workspace_http: OAuthHttp,
}

impl OAuthGateway {
    /// Builds the catalog and clients from config and environment.
    pub fn from_config(config: &Config, env: &dyn EnvSource) -> Result<Self, String> {
        let loopback = config.oauth.allow_insecure_loopback;
        let mut catalog = Catalog::builtin()
            .map_err(|e| e.to_string())?
            .with_http_loopback(loopback);
        let mut custom = Vec::new();
        for spec in &config.custom_providers {
            catalog.insert(spec.clone()).map_err(|e| e.to_string())?;
            custom.push(spec.id.clone());
        }
        let mut clients = HashMap::new();
        let mut placeholders = HashMap::new();
        for spec in catalog.iter() {
            let settings = config.providers.get(&spec.id);
            let (id_env, secret_env) = env_names(&spec.id);
            let client_id = env
                .get(&id_env)
                .or_else(|| settings.and_then(|s| s.client_id.clone()));
            let secret = env.get(&secret_env).or_else(|| {
                settings.and_then(|s| s.client_secret.as_ref().map(|s| s.expose().to_owned()))
            });
            if let (Some(id), Some(secret)) = (client_id, secret) {
                clients.insert(
                    spec.id.clone(),
                    ClientCredentials::new(id, SecretString::from(secret)),
                );
            }
            if let Some(s) = settings {
                placeholders.insert(spec.id.clone(), s.placeholders.clone());
            }
        }
        for id in config.providers.keys() {
            if catalog.get(id).is_none() {
                return Err(format!(
                    "providers.{id}: no such provider in the catalog or custom_providers"
                ));
            }
        }
        let http = OAuthHttp::new(HttpConfig {
            total_timeout: Duration::from_secs(config.oauth.http_timeout_seconds),
            allow_http_loopback: loopback,
            ..HttpConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let outbound = OutboundClient::new(config.outbound.policy()).map_err(|e| e.to_string())?;
        Ok(Self {
            workspace_http: OAuthHttp::over_outbound(&outbound),
            outbound,
            catalog,
            clients,
            placeholders,
            custom,
            redirect_uris: config.oauth.redirect_uris.clone(),
            http,
        })
    }

    /// The provider and the client to call it with: the workspace app's when given, else the
    /// configured one.
    /// A workspace-defined provider comes with its app's client and is called through the
    /// outbound guard.
    #[allow(clippy::type_complexity)] // the three parts of one call
    fn spec<'a>(
        &'a self,
        id: &str,
        app: Option<&'a AppClient>,
    ) -> Result<(&'a ProviderSpec, Cow<'a, ClientCredentials>, &'a OAuthHttp), ProviderError> {
        if let Some((app, spec)) = app.and_then(|a| a.provider.as_deref().map(|s| (a, s))) {
            let client = ClientCredentials::new(app.client_id.clone(), app.client_secret.clone());
            return Ok((spec, Cow::Owned(client), &self.workspace_http));
        }
        let spec = self
            .catalog
            .get(id)
            .ok_or_else(|| ProviderError::Other(format!("unknown provider {id}")))?;
        if let Some(app) = app {
            let client = ClientCredentials::new(app.client_id.clone(), app.client_secret.clone());
            return Ok((spec, Cow::Owned(client), &self.http));
        }
        let client = self
            .clients
            .get(id)
            .ok_or_else(|| ProviderError::Other(format!("provider {id} is not configured")))?;
        Ok((spec, Cow::Borrowed(client), &self.http))
    }

    fn placeholders(&self, id: &str) -> BTreeMap<String, String> {
        self.placeholders.get(id).cloned().unwrap_or_default()
    }

    fn info(&self, spec: &ProviderSpec) -> ProviderInfo {
        let configured = self.clients.contains_key(&spec.id);
        let (id_env, secret_env) = env_names(&spec.id);
        let missing = if configured {
            Vec::new()
        } else {
            vec![
                format!("providers.{}.client_id (or {id_env})", spec.id),
                format!("providers.{}.client_secret (or {secret_env})", spec.id),
            ]
        };
        ProviderInfo::from_spec(spec, configured, missing, self.custom.contains(&spec.id))
    }
}

/// Where an issuer publishes its metadata: RFC 8414 (the well-known segment goes between host and
/// path), then OpenID discovery (appended to the issuer).
fn metadata_urls(issuer: &str) -> Vec<url::Url> {
    let mut urls = Vec::new();
    if let Ok(base) = url::Url::parse(issuer) {
        let path = base.path().trim_end_matches('/').to_owned();
        let mut rfc8414 = base.clone();
        rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
        urls.push(rfc8414);
        let mut openid = base;
        openid.set_path(&format!("{path}/.well-known/openid-configuration"));
        urls.push(openid);
    }
    urls
}

/// Compares published metadata with the entry the broker calls the provider by.
/// Compares published metadata with an entry: the issuer, the authorization and token
/// endpoints, and with `every_endpoint` (a workspace's stored definition, which discovery
/// filled from this metadata) the userinfo and revocation endpoints too.
fn compare_metadata(
    spec: &ProviderSpec,
    issuer: &str,
    metadata: &serde_json::Value,
    every_endpoint: bool,
) -> Discovery {
    let text = |name: &str| metadata.get(name).and_then(serde_json::Value::as_str);
    let mut mismatches = Vec::new();
    // RFC 8414 §3.3: the metadata's issuer must be the issuer it was fetched for.
    if text("issuer") != Some(issuer) {
        mismatches.push(format!(
            "the metadata names issuer {:?}, the entry declares {issuer}",
            text("issuer").unwrap_or_default()
        ));
    }
    let mut endpoints = vec![
        ("token_endpoint", spec.token_url.as_str()),
        ("authorization_endpoint", spec.authorize_url.as_str()),
    ];
    if every_endpoint {
        if let cb_oauth::catalog::AccountSource::Userinfo { url, .. } = &spec.account {
            endpoints.push(("userinfo_endpoint", url.as_str()));
        }
        if let Some(url) = &spec.revocation_url {
            endpoints.push(("revocation_endpoint", url.as_str()));
        }
    }
    for (field, entry) in endpoints {
        // Templated entries ({tenant}) are filled per credential: not comparable here.
        if !entry.contains('{') && text(field).is_some_and(|published| published != entry) {
            mismatches.push(format!(
                "the metadata's {field} is {:?}, the entry uses {entry}",
                text(field).unwrap_or_default()
            ));
        }
    }
    let scopes_supported = metadata
        .get("scopes_supported")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        });
    Discovery::Found {
        mismatches,
        scopes_supported,
    }
}

impl OAuthGateway {
    /// GETs one metadata document through the outbound guard.
    async fn fetch_metadata(&self, url: &url::Url) -> Result<serde_json::Value, MetadataError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let response = self
            .outbound
            .send(self.outbound.inner().get(url.clone()))
            .await?;
        if !response.status.is_success() {
            return Err(MetadataError::Invalid(format!(
                "{host} answered HTTP {} for {}",
                response.status.as_u16(),
                url.path()
            )));
        }
        serde_json::from_slice(&response.body).map_err(|_| {
            MetadataError::Invalid(format!(
                "{host} did not answer JSON metadata at {}",
                url.path()
            ))
        })
    }

    /// The issuer's metadata: RFC 8414 first, then OpenID discovery; a policy refusal stops
    /// at once (the other URL has the same host).
    async fn metadata_of(&self, issuer: &str) -> Result<serde_json::Value, MetadataError> {
        let mut last = MetadataError::Invalid(format!("{issuer} is not a URL"));
        for url in metadata_urls(issuer) {
            match self.fetch_metadata(&url).await {
                Ok(metadata) => return Ok(metadata),
                Err(MetadataError::Outbound(e)) if e.is_refusal() => {
                    return Err(MetadataError::Outbound(e));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// GETs an authorization URL through the guard's client (URL checked, resolver guarded, no
/// redirects followed) and classifies the answer. Never reports a redirect's query (it may hold
/// a code).
async fn probe_authorize(
    outbound: &OutboundClient,
    url: url::Url,
    redirect_uri: &str,
) -> RedirectProbe {
    if let Err(e) = outbound.check_url(&url) {
        return RedirectProbe::Unreachable(e.to_string());
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    let response = match outbound.inner().get(url).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return RedirectProbe::Unreachable(format!("{host} did not answer in time"));
        }
        Err(_) => return RedirectProbe::Unreachable(format!("{host} could not be reached")),
    };
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let target = location.split(['?', '#']).next().unwrap_or_default();
        return RedirectProbe::Accepted(if target == redirect_uri {
            format!(
                "the authorization endpoint redirected to the redirect URI (HTTP {})",
                status.as_u16()
            )
        } else {
            format!(
                "the authorization endpoint redirected elsewhere (HTTP {}, a login page): it took the request",
                status.as_u16()
            )
        });
    }
    if status.is_success() {
        return RedirectProbe::Accepted(format!(
            "the authorization endpoint showed a page (HTTP {}), a login or consent page",
            status.as_u16()
        ));
    }
    if status.is_client_error() {
        // Only the page's beginning is read: the excerpt needs no more.
        let mut response = response;
        let mut body = Vec::new();
        while body.len() < 4096 {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        let excerpt: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(160)
            .collect();
        return RedirectProbe::Refused(format!(
            "HTTP {} without a redirect: {}",
            status.as_u16(),
            excerpt.trim()
        ));
    }
    RedirectProbe::Unreachable(format!("{host} answered HTTP {}", status.as_u16()))
}

/// `code: description`, or the code alone.
fn with_description(error: String, description: Option<String>) -> String {
    match description {
        Some(d) => format!("{error}: {d}"),
        None => error,
    }
}

fn classify(e: OAuthError) -> ProviderError {
    match e {
        OAuthError::InvalidGrant { error, description } => {
            ProviderError::Permanent(with_description(error, description))
        }
        OAuthError::InvalidClient { error, description } => {
            ProviderError::ClientRejected(with_description(error, description))
        }
        OAuthError::AccessDenied { description } => {
            ProviderError::Denied(description.unwrap_or_else(|| "access_denied".into()))
        }
        OAuthError::RateLimited { retry_after } => ProviderError::Transient {
            detail: "rate limited by the provider (429)".into(),
            retry_after,
        },
        e @ OAuthError::Transient { .. } => ProviderError::Transient {
            detail: e.to_string(),
            retry_after: None,
        },
        other => ProviderError::Other(other.to_string()),
    }
}

fn granted(t: TokenResponse) -> GrantedTokens {
    GrantedTokens {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        id_token: t.id_token,
        token_type: t.token_type,
        // The catalog's lifetime stands in when the provider sent no expires_in (Salesforce).
        expires_in: t.access_token_lifetime,
        refresh_expires_in: t.refresh_token_expires_in,
        scopes: t.scope,
        extras: t.extras,
    }
}

#[async_trait::async_trait]
impl ProviderGateway for OAuthGateway {
    fn list(&self) -> Vec<ProviderInfo> {
        self.catalog.iter().map(|s| self.info(s)).collect()
    }

    fn get(&self, id: &str) -> Option<ProviderInfo> {
        self.catalog.get(id).map(|s| self.info(s))
    }

    fn redirect_allowed(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|u| u == uri)
    }

    fn authorize_url(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        authorize: AuthorizeRequest<'_>,
    ) -> Result<String, ProviderError> {
        let (spec, client, _) = self.spec(provider, app)?;
        let placeholders = self.placeholders(provider);
        cb_oauth::authorize_url(spec, &client, &authorize, &placeholders)
            .map(|u| u.to_string())
            .map_err(classify)
    }

    fn uses_pkce(&self, provider: &str) -> bool {
        self.catalog
            .get(provider)
            .is_some_and(|s| s.pkce != cb_oauth::catalog::Pkce::None)
    }

    fn issuer(&self, provider: &str) -> Option<String> {
        self.catalog.get(provider).and_then(|s| s.issuer.clone())
    }

    async fn exchange_code(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        exchange: CodeExchange<'_>,
    ) -> Result<(GrantedTokens, AccountInfo), ProviderError> {
        let (spec, client, http) = self.spec(provider, app)?;
        let placeholders = self.placeholders(provider);
        // Provider values that arrive with the callback (QuickBooks realmId), validated by the
        // same parser that reads real callbacks.
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("code", "-").append_pair("state", "-");
            for (k, v) in exchange.callback_params {
                q.append_pair(k, v);
            }
            q.finish()
        };
        let callback_extras = cb_oauth::callback::parse_callback(spec, &query)
            .map_err(classify)?
            .extras;
        let tokens = http
            .exchange_code(spec, &client, exchange.grant, &placeholders)
            .await
            .map_err(classify)?;
        let account = http
            .identify(spec, &tokens, &placeholders)
            .await
            .map_err(classify)?;
        let lookup = http
            .post_connect_extras(spec, &tokens, &placeholders)
            .await
            .map_err(classify)?;
        let mut granted = granted(tokens);
        granted.extras.extend(callback_extras);
        granted.extras.extend(lookup);
        Ok((
            granted,
            AccountInfo {
                subject: account.subject,
                label: account.label,
            },
        ))
    }

    async fn refresh(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError> {
        let (spec, client, http) = self.spec(provider, app)?;
        let placeholders = self.placeholders(provider);
        http.refresh(spec, &client, refresh_token, extras, &placeholders)
            .await
            .map(granted)
            .map_err(classify)
    }

    async fn probe_client(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        redirect_uri: &str,
    ) -> ClientProbe {
        let (spec, client, http) = match self.spec(provider, app) {
            Ok(found) => found,
            Err(e) => return ClientProbe::Unexpected(e.to_string()),
        };
        let placeholders = self.placeholders(provider);
        // A code no provider issued, and a well-formed verifier where PKCE is in use: only the
        // client's authentication can decide the answer's kind.
        let code = SecretString::from(format!(
            "credential-broker-diagnosis-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let verifier = (spec.pkce != cb_oauth::catalog::Pkce::None)
            .then(|| SecretString::from("d".repeat(64)));
        match http
            .exchange_code(
                spec,
                &client,
                CodeGrant {
                    code: &code,
                    redirect_uri,
                    pkce_verifier: verifier.as_ref(),
                },
                &placeholders,
            )
            .await
        {
            Ok(_) => ClientProbe::Unexpected(
                "the token endpoint accepted an authorization code that cannot be valid".into(),
            ),
            Err(OAuthError::InvalidGrant { .. }) => ClientProbe::Accepted,
            Err(OAuthError::InvalidClient { error, description }) => ClientProbe::Refused(
                description.map_or_else(|| error.clone(), |d| format!("{error}: {d}")),
            ),
            Err(e @ (OAuthError::Transient { .. } | OAuthError::RateLimited { .. })) => {
                ClientProbe::Unreachable(e.to_string())
            }
            Err(other) => ClientProbe::Unexpected(other.to_string()),
        }
    }

    async fn discover(&self, provider: &str, runtime: Option<&ProviderSpec>) -> Discovery {
        let Some(spec) = runtime.or_else(|| self.catalog.get(provider)) else {
            return Discovery::Unreachable(format!("unknown provider {provider}"));
        };
        let Some(issuer) = spec.issuer.clone() else {
            return Discovery::NoIssuer;
        };
        match self.metadata_of(&issuer).await {
            Ok(metadata) => compare_metadata(spec, &issuer, &metadata, runtime.is_some()),
            Err(e) => Discovery::Unreachable(e.to_string()),
        }
    }

    fn check_outbound_url(&self, url: &url::Url) -> Result<(), OutboundError> {
        self.outbound.check_url(url)
    }

    async fn probe_redirect(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        redirect_uri: &str,
    ) -> RedirectProbe {
        let (spec, client, _) = match self.spec(provider, app) {
            Ok(found) => found,
            Err(e) => return RedirectProbe::Unreachable(e.to_string()),
        };
        let placeholders = self.placeholders(provider);
        // A well-formed S256 challenge where PKCE is in use: only the redirect URI and the
        // client id can decide the answer.
        let challenge = (spec.pkce != cb_oauth::catalog::Pkce::None).then(|| "c".repeat(43));
        let req = AuthorizeRequest {
            redirect_uri,
            scopes: &spec.default_scopes,
            state: "credential-broker-diagnosis",
            pkce_challenge: challenge.as_deref(),
        };
        let url = match cb_oauth::authorize_url(spec, &client, &req, &placeholders) {
            Ok(url) => url,
            Err(e) => return RedirectProbe::Unreachable(e.to_string()),
        };
        probe_authorize(&self.outbound, url, redirect_uri).await
    }

    fn outbound_allows_loopback(&self) -> bool {
        self.outbound.policy().allow_loopback
    }

    async fn issuer_metadata(&self, issuer: &str) -> Result<serde_json::Value, MetadataError> {
        self.metadata_of(issuer).await
    }

    async fn revoke(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        tokens: &TokenBundle,
    ) -> Result<RevokeResult, ProviderError> {
        let (spec, client, http) = self.spec(provider, app)?;
        let placeholders = self.placeholders(provider);
        // Revoking the refresh token ends the whole grant where the provider supports it.
        let (token, hint) = match (
            &tokens.refresh_token,
            cb_oauth::revokes_with_access_token(spec),
        ) {
            (Some(rt), false) => (rt, "refresh_token"),
            _ => (&tokens.access_token, "access_token"),
        };
        match http
            .revoke(spec, &client, token, hint, &placeholders)
            .await
            .map_err(classify)?
        {
            cb_oauth::RevokeOutcome::Revoked => Ok(RevokeResult::Revoked),
            cb_oauth::RevokeOutcome::NotSupported => Ok(RevokeResult::NotSupported),
        }
    }
}
