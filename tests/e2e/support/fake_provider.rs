//! A fake OAuth 2.0 authorization server on 127.0.0.1 (real HTTP, hyper) for tests.
//!
//! It implements the authorization code grant with PKCE, refresh with optional rotation and
//! reuse detection (reusing a rotated refresh token revokes the whole grant, as real servers do),
//! RFC 7009 revocation plus the GitHub / Slack / Dropbox revocation APIs, and a userinfo endpoint.
//! Dialects reproduce provider quirks (Slack `ok:false` with HTTP 200, GitHub errors with HTTP
//! 200 and form-encoded answers without `Accept: application/json`, Notion JSON bodies,
//! Salesforce `instance_url`). Failures (500, 429, delays, invalid_grant, oversized or malformed
//! bodies) can be switched on while it runs.
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`; each
//! request is processed under the lock in one go, so counters and rotation are exact under
//! concurrency.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use cb_oauth::catalog::{
    AccountSource, AuthStyle, Pkce, ProviderSpec, Quirk, RefreshBehaviour, ScopeSpec,
};
use cb_oauth::{ClientCredentials, HttpConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Which provider the fake imitates in its request and response formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// RFC 6749: form bodies, JSON answers, errors as HTTP 400/401 JSON.
    Standard,
    /// Slack v2: every answer HTTP 200 with `ok`; user tokens under `authed_user` on exchange,
    /// at the top level on refresh; comma-separated scopes.
    Slack,
    /// GitHub: errors as HTTP 200 `{"error": ...}`; a form-encoded answer unless the request
    /// says `Accept: application/json`; comma-separated scopes.
    Github,
    /// Notion: the token endpoint takes JSON bodies only; the answer names the `owner.user`.
    Notion,
    /// Salesforce: answers carry `instance_url` (this server) and `id`; never `expires_in`;
    /// refreshes are also served at `/services/oauth2/token`.
    Salesforce,
}

/// A failure the token endpoint answers with instead of processing the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFailure {
    /// HTTP 500.
    ServerError,
    /// HTTP 429 with `Retry-After: <secs>`.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// `invalid_grant` in the dialect's format (Slack `ok:false`, GitHub 200, ...).
    InvalidGrant,
    /// A 200 body larger than 512 KiB.
    OversizedBody,
    /// A 200 body that is not JSON.
    MalformedJson,
}

/// How the fake behaves; change it while running with [`FakeProvider::configure`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// The registered client id.
    pub client_id: String,
    /// The registered client secret.
    pub client_secret: String,
    /// Registered redirect URIs; `/authorize` refuses others (without redirecting).
    pub redirect_uris: Vec<String>,
    /// Client authentication the token and revocation endpoints demand; `None` accepts either
    /// (but never both at once).
    pub client_auth: Option<AuthStyle>,
    /// `Required`: `/authorize` refuses requests without an S256 `code_challenge`.
    pub pkce: Pkce,
    /// Request/response format.
    pub dialect: Dialect,
    /// Each refresh returns a new refresh token; the old one is superseded.
    pub rotate_refresh_tokens: bool,
    /// Reusing a superseded refresh token revokes the whole grant (every token of the chain).
    pub reuse_revokes_grant: bool,
    /// Whether code exchanges return a refresh token.
    pub issue_refresh_tokens: bool,
    /// Access token lifetime sent as `expires_in`; `None` sends no `expires_in`.
    pub access_token_ttl: Option<Duration>,
    /// Sent as `refresh_token_expires_in` when set.
    pub refresh_token_ttl: Option<Duration>,
    /// Partial grants: only these of the requested scopes are granted (`None`: all requested).
    pub granted_scopes: Option<Vec<String>>,
    /// Whether the answer lists the granted scopes in `scope`.
    pub return_scope: bool,
    /// Add an (unsigned) OpenID Connect id token to code exchanges.
    pub issue_id_token: bool,
    /// The account `/authorize` approves as.
    pub subject: String,
    /// `/authorize` redirects back with `error=access_denied`.
    pub deny: bool,
    /// Sticky token endpoint failure.
    pub token_failure: Option<TokenFailure>,
    /// Delay before the token endpoint answers (the request is counted on arrival and processed
    /// after the delay, like a slow server).
    pub token_delay: Duration,
    /// Revocation endpoints answer HTTP 503.
    pub revoke_fails: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            client_id: "fake-client".into(),
            client_secret: "fake-secret".into(),
            redirect_uris: vec!["https://broker.test/oauth/callback".into()],
            client_auth: None,
            pkce: Pkce::Supported,
            dialect: Dialect::Standard,
            rotate_refresh_tokens: false,
            reuse_revokes_grant: true,
            issue_refresh_tokens: true,
            access_token_ttl: Some(Duration::from_secs(3600)),
            refresh_token_ttl: None,
            granted_scopes: None,
            return_scope: true,
            issue_id_token: false,
            subject: "user-1".into(),
            deny: false,
            token_failure: None,
            token_delay: Duration::ZERO,
            revoke_fails: false,
        }
    }
}

/// What the fake saw of one token endpoint request (no secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequestRecord {
    /// Request path (`/token`, `/services/oauth2/token`).
    pub path: String,
    /// `grant_type`, if parsable.
    pub grant_type: Option<String>,
    /// `basic`, `post`, `both` or `none`.
    pub client_auth: &'static str,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
    /// Whether a `code_verifier` was sent.
    pub has_code_verifier: bool,
}

/// A running fake authorization server; stops when dropped.
pub struct FakeProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    subject: String,
    scopes: Vec<String>,
    used: bool,
    /// The grant created by the first exchange (revoked if the code is replayed).
    grant: Option<usize>,
}

struct Grant {
    subject: String,
    client_id: String,
    scopes: Vec<String>,
    revoked: bool,
}

struct RefreshEntry {
    grant: usize,
    superseded: bool,
}

#[derive(Default)]
struct State {
    config: FakeConfig,
    seq: u64,
    port: u16,
    failures: VecDeque<TokenFailure>,
    codes: HashMap<String, CodeGrant>,
    grants: Vec<Grant>,
    access: HashMap<String, usize>,
    refresh: HashMap<String, RefreshEntry>,
    revoked_tokens: HashSet<String>,
    user_ids: BTreeMap<String, u64>,
    token_calls: u64,
    refresh_calls: u64,
    revocations: u64,
    reuse_detections: u64,
    userinfo_calls: u64,
    token_requests: Vec<TokenRequestRecord>,
    authorize_queries: Vec<BTreeMap<String, String>>,
}

impl FakeProvider {
    /// Starts the server on 127.0.0.1 with a free port.
    pub async fn start(config: FakeConfig) -> FakeProvider {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind fake provider");
        let addr = listener.local_addr().expect("fake provider address");
        let state = Arc::new(Mutex::new(State {
            config,
            port: addr.port(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, addr, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeProvider { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the configuration while running.
    pub fn configure(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut self.lock().config);
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> FakeConfig {
        self.lock().config.clone()
    }

    /// Makes the next token endpoint request fail with `failure` (queued, one per request,
    /// before any sticky [`FakeConfig::token_failure`]).
    pub fn push_token_failure(&self, failure: TokenFailure) {
        self.lock().failures.push_back(failure);
    }

    /// The registered client, for the code under test.
    pub fn client_credentials(&self) -> ClientCredentials {
        let s = self.lock();
        ClientCredentials::new(
            s.config.client_id.clone(),
            SecretString::from(s.config.client_secret.clone()),
        )
    }

    /// An HTTP config that may call this server (plain http to loopback).
    pub fn http_config() -> HttpConfig {
        HttpConfig {
            allow_http_loopback: true,
            ..HttpConfig::default()
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
            AccountSource::Userinfo {
                url: format!("{base}/userinfo"),
                subject_pointer: "/sub".into(),
                label_pointer: "/email".into(),
                headers: BTreeMap::new(),
                body: None,
                token_header: None,
            }
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
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("location header");
        url::Url::parse(location).expect("redirect is a url")
    }

    /// Issues a grant directly (as if a user had connected), for import-based tests: returns
    /// (access token, refresh token).
    pub fn issue_grant(&self, subject: &str) -> (String, String) {
        let mut s = self.lock();
        let client_id = s.config.client_id.clone();
        let scopes = vec!["read".to_owned()];
        let grant = s.new_grant(subject, &client_id, scopes);
        let access = s.new_access(grant);
        let refresh = s.new_refresh(grant);
        (access, refresh)
    }

    /// Requests received by the token endpoints (any grant type, failures included).
    pub fn token_calls(&self) -> u64 {
        self.lock().token_calls
    }

    /// `grant_type=refresh_token` requests received (failures included).
    pub fn refresh_calls(&self) -> u64 {
        self.lock().refresh_calls
    }

    /// Successful revocation requests (any revocation endpoint).
    pub fn revocations(&self) -> u64 {
        self.lock().revocations
    }

    /// Times a superseded (rotated-away) refresh token was presented again, whether or not its
    /// grant was still alive. A correct client under any concurrency keeps this at zero.
    pub fn reuse_detections(&self) -> u64 {
        self.lock().reuse_detections
    }

    /// Successful `/userinfo` requests.
    pub fn userinfo_calls(&self) -> u64 {
        self.lock().userinfo_calls
    }

    /// Whether `token` (access or refresh) was revoked, alone or with its grant.
    pub fn is_revoked(&self, token: &str) -> bool {
        let s = self.lock();
        if s.revoked_tokens.contains(token) {
            return true;
        }
        let grant = s
            .access
            .get(token)
            .copied()
            .or_else(|| s.refresh.get(token).map(|r| r.grant));
        grant.is_some_and(|g| s.grants[g].revoked)
    }

    /// Whether `token` is the live refresh token of a live grant (issued, not superseded, not
    /// revoked): the one a client must hold after any number of rotations.
    pub fn is_current_refresh_token(&self, token: &str) -> bool {
        let s = self.lock();
        s.refresh.get(token).is_some_and(|r| {
            !r.superseded && !s.grants[r.grant].revoked && !s.revoked_tokens.contains(token)
        })
    }

    /// Whether `token` is a live access token.
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.lock().valid_access(token).is_some()
    }

    /// What the token endpoints saw, in order.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.lock().token_requests.clone()
    }

    /// The query parameters of each `/authorize` request, in order.
    pub fn authorize_queries(&self) -> Vec<BTreeMap<String, String>> {
        self.lock().authorize_queries.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn next(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}_{}_{}", self.port, self.seq)
    }

    fn new_grant(&mut self, subject: &str, client_id: &str, scopes: Vec<String>) -> usize {
        self.grants.push(Grant {
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scopes,
            revoked: false,
        });
        self.grants.len() - 1
    }

    fn new_access(&mut self, grant: usize) -> String {
        let token = self.next("at");
        self.access.insert(token.clone(), grant);
        token
    }

    fn new_refresh(&mut self, grant: usize) -> String {
        let token = self.next("rt");
        self.refresh.insert(
            token.clone(),
            RefreshEntry {
                grant,
                superseded: false,
            },
        );
        token
    }

    fn valid_access(&self, token: &str) -> Option<usize> {
        let grant = *self.access.get(token)?;
        (!self.grants[grant].revoked && !self.revoked_tokens.contains(token)).then_some(grant)
    }

    fn revoke_grant(&mut self, grant: usize) {
        self.grants[grant].revoked = true;
    }

    fn user_id(&mut self, subject: &str) -> u64 {
        let next = 1000 + self.user_ids.len() as u64;
        *self.user_ids.entry(subject.to_owned()).or_insert(next)
    }

    fn scope_sep(&self) -> &'static str {
        match self.config.dialect {
            Dialect::Slack | Dialect::Github => ",",
            _ => " ",
        }
    }
}

/// A request as the handlers need it.
struct FakeRequest {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

async fn handle(
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    let req = FakeRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .map(|q| form_map(q.as_bytes()))
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let base = format!("http://{addr}");
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/authorize") => authorize(&state, &req),
        (&Method::POST, "/token") | (&Method::POST, "/services/oauth2/token") => {
            token(&state, &req, &base).await
        }
        (&Method::GET, "/userinfo") => userinfo(&state, &req),
        (&Method::GET, "/tenants") => tenants(&state, &req),
        (&Method::POST, "/revoke") => revoke_rfc7009(&state, &req),
        (&Method::POST, "/api/auth.revoke") => revoke_bearer(&state, &req, true),
        (&Method::POST, "/2/auth/token/revoke") => revoke_bearer(&state, &req, false),
        // A token endpoint that redirects (the client must not follow).
        (&Method::POST, "/redirect") => {
            let mut r = redirect(&format!("{base}/token"));
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            r
        }
        (&Method::DELETE, p) if p.starts_with("/applications/") && p.ends_with("/grant") => {
            revoke_github(&state, &req)
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn form_map(bytes: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

fn header(req: &FakeRequest, name: hyper::header::HeaderName) -> Option<String> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn redirect(location: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// `redirect_uri` with extra query parameters appended.
fn with_params(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(redirect_uri).expect("registered redirect uris are urls");
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    url.to_string()
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn authorize(state: &Mutex<State>, req: &FakeRequest) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    s.authorize_queries.push(req.query.clone());
    let q = &req.query;
    let cfg = s.config.clone();
    if q.get("client_id") != Some(&cfg.client_id) {
        return text(StatusCode::BAD_REQUEST, "unknown client_id");
    }
    let Some(redirect_uri) = q
        .get("redirect_uri")
        .filter(|r| cfg.redirect_uris.contains(r))
    else {
        // Never redirect to an unregistered URI.
        return text(StatusCode::BAD_REQUEST, "redirect_uri not registered");
    };
    let state_param = q.get("state").cloned().unwrap_or_default();
    let fail = |error: &str| {
        redirect(&with_params(
            redirect_uri,
            &[("error", error), ("state", &state_param)],
        ))
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return fail("unsupported_response_type");
    }
    let challenge = q.get("code_challenge").cloned();
    if challenge.is_some() && q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return fail("invalid_request");
    }
    if cfg.pkce == Pkce::Required && challenge.is_none() {
        return fail("invalid_request");
    }
    if cfg.deny {
        return fail("access_denied");
    }
    let scope_param = if cfg.dialect == Dialect::Slack {
        q.get("user_scope").or_else(|| q.get("scope"))
    } else {
        q.get("scope")
    };
    let scopes = scope_param.map(|s| split_scopes(s)).unwrap_or_default();
    let code = s.next("code");
    s.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: cfg.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            challenge,
            subject: cfg.subject.clone(),
            scopes,
            used: false,
            grant: None,
        },
    );
    redirect(&with_params(
        redirect_uri,
        &[("code", &code), ("state", &state_param)],
    ))
}

/// The token endpoint's error kinds, rendered per dialect.
#[derive(Clone, Copy)]
enum TokenError {
    InvalidGrant,
    InvalidClient,
    InvalidRequest,
    UnsupportedGrantType,
    RedirectMismatch,
}

fn token_error(dialect: Dialect, kind: TokenError, refresh: bool) -> Response<Full<Bytes>> {
    match dialect {
        Dialect::Slack => {
            let code = match kind {
                TokenError::InvalidGrant if refresh => "invalid_refresh_token",
                TokenError::InvalidGrant => "invalid_code",
                TokenError::InvalidClient => "bad_client_secret",
                TokenError::InvalidRequest => "invalid_arguments",
                TokenError::UnsupportedGrantType => "invalid_grant_type",
                TokenError::RedirectMismatch => "bad_redirect_uri",
            };
            json_response(StatusCode::OK, &json!({"ok": false, "error": code}))
        }
        Dialect::Github => {
            let code = match kind {
                TokenError::InvalidGrant if refresh => "bad_refresh_token",
                TokenError::InvalidGrant => "bad_verification_code",
                TokenError::InvalidClient => "incorrect_client_credentials",
                TokenError::InvalidRequest => "invalid_request",
                TokenError::UnsupportedGrantType => "unsupported_grant_type",
                TokenError::RedirectMismatch => "redirect_uri_mismatch",
            };
            json_response(
                StatusCode::OK,
                &json!({"error": code, "error_description": "fake github error",
                        "error_uri": "https://docs.github.com/apps"}),
            )
        }
        _ => {
            let (status, code) = match kind {
                TokenError::InvalidGrant | TokenError::RedirectMismatch => {
                    (StatusCode::BAD_REQUEST, "invalid_grant")
                }
                TokenError::InvalidClient => (StatusCode::UNAUTHORIZED, "invalid_client"),
                TokenError::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
                TokenError::UnsupportedGrantType => {
                    (StatusCode::BAD_REQUEST, "unsupported_grant_type")
                }
            };
            json_response(
                status,
                &json!({"error": code, "error_description": "fake provider error"}),
            )
        }
    }
}

/// Client id and secret from `Authorization: Basic` (RFC 6749 §2.3.1 decoding).
fn basic_credentials(req: &FakeRequest) -> Option<(String, String)> {
    let value = header(req, AUTHORIZATION)?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |s: &str| -> String {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

fn bearer(req: &FakeRequest) -> Option<String> {
    header(req, AUTHORIZATION)?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// Checks client authentication; returns the client id or the error kind.
fn authenticate(
    cfg: &FakeConfig,
    req: &FakeRequest,
    params: &BTreeMap<String, String>,
) -> (&'static str, Result<String, TokenError>) {
    let basic = basic_credentials(req);
    let post = params.get("client_secret").map(|secret| {
        (
            params.get("client_id").cloned().unwrap_or_default(),
            secret.clone(),
        )
    });
    let (used, creds) = match (basic, post) {
        (Some(_), Some(_)) => return ("both", Err(TokenError::InvalidRequest)),
        (Some(b), None) => (AuthStyle::Basic, b),
        (None, Some(p)) => (AuthStyle::Post, p),
        (None, None) => return ("none", Err(TokenError::InvalidClient)),
    };
    let label = match used {
        AuthStyle::Basic => "basic",
        AuthStyle::Post => "post",
    };
    if cfg.client_auth.is_some_and(|want| want != used) {
        return (label, Err(TokenError::InvalidClient));
    }
    if creds.0 != cfg.client_id || creds.1 != cfg.client_secret {
        return (label, Err(TokenError::InvalidClient));
    }
    (label, Ok(creds.0))
}

/// Parses the request body: JSON for the Notion dialect, a form otherwise.
fn body_params(dialect: Dialect, req: &FakeRequest) -> Option<BTreeMap<String, String>> {
    let content_type = header(req, CONTENT_TYPE).unwrap_or_default();
    if dialect == Dialect::Notion {
        if !content_type.starts_with("application/json") {
            return None;
        }
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&req.body) else {
            return None;
        };
        Some(
            obj.into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
        )
    } else {
        if !content_type.starts_with("application/x-www-form-urlencoded") {
            return None;
        }
        Some(form_map(&req.body))
    }
}

async fn token(state: &Mutex<State>, req: &FakeRequest, base: &str) -> Response<Full<Bytes>> {
    // Count on arrival, then wait (outside the lock), then process.
    let (delay, failure, dialect) = {
        let mut s = lock(state);
        let params = body_params(s.config.dialect, req).unwrap_or_default();
        let grant_type = params.get("grant_type").cloned();
        s.token_calls += 1;
        if grant_type.as_deref() == Some("refresh_token") {
            s.refresh_calls += 1;
        }
        let (client_auth, _) = authenticate(&s.config, req, &params);
        s.token_requests.push(TokenRequestRecord {
            path: req.path.clone(),
            grant_type,
            client_auth,
            content_type: header(req, CONTENT_TYPE),
            accept: header(req, ACCEPT),
            has_code_verifier: params.contains_key("code_verifier"),
        });
        let failure = s.failures.pop_front().or(s.config.token_failure);
        (s.config.token_delay, failure, s.config.dialect)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(failure) = failure {
        return match failure {
            TokenFailure::ServerError => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            TokenFailure::RateLimited { retry_after_secs } => {
                let mut r = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"error": "rate_limited"}),
                );
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    r.headers_mut().insert(RETRY_AFTER, v);
                }
                r
            }
            TokenFailure::InvalidGrant => token_error(dialect, TokenError::InvalidGrant, true),
            TokenFailure::OversizedBody => {
                let padding = "x".repeat(512 * 1024);
                json_response(
                    StatusCode::OK,
                    &json!({"access_token": "at_oversized", "padding": padding}),
                )
            }
            TokenFailure::MalformedJson => text(StatusCode::OK, "{\"access_token\": "),
        };
    }
    let mut s = lock(state);
    process_token(&mut s, req, base)
}

fn process_token(s: &mut State, req: &FakeRequest, base: &str) -> Response<Full<Bytes>> {
    let cfg = s.config.clone();
    let dialect = cfg.dialect;
    let Some(params) = body_params(dialect, req) else {
        return token_error(dialect, TokenError::InvalidRequest, false);
    };
    let refresh = params.get("grant_type").map(String::as_str) == Some("refresh_token");
    let client_id = match authenticate(&cfg, req, &params).1 {
        Ok(id) => id,
        Err(kind) => return token_error(dialect, kind, refresh),
    };
    let (grant, new_refresh) = match params.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(code) = params.get("code") else {
                return token_error(dialect, TokenError::InvalidRequest, false);
            };
            let Some(entry) = s.codes.get_mut(code) else {
                return token_error(dialect, TokenError::InvalidGrant, false);
            };
            if entry.used {
                // RFC 6749 §4.1.2: a replayed code revokes what it produced.
                let grant = entry.grant;
                if let Some(g) = grant {
                    s.revoke_grant(g);
                }
                return token_error(dialect, TokenError::InvalidGrant, false);
            }
            if entry.client_id != client_id {
                return token_error(dialect, TokenError::InvalidGrant, false);
            }
            if params.get("redirect_uri") != Some(&entry.redirect_uri) {
                return token_error(dialect, TokenError::RedirectMismatch, false);
            }
            if let Some(challenge) = &entry.challenge {
                match params.get("code_verifier") {
                    Some(v) if s256(v) == *challenge => {}
                    _ => return token_error(dialect, TokenError::InvalidGrant, false),
                }
            }
            entry.used = true;
            let (subject, requested) = (entry.subject.clone(), entry.scopes.clone());
            let scopes = match &cfg.granted_scopes {
                Some(allowed) => requested
                    .into_iter()
                    .filter(|s| allowed.contains(s))
                    .collect(),
                None => requested,
            };
            let grant = s.new_grant(&subject, &client_id, scopes);
            if let Some(entry) = s.codes.get_mut(code) {
                entry.grant = Some(grant);
            }
            let rt = cfg.issue_refresh_tokens.then(|| s.new_refresh(grant));
            (grant, rt)
        }
        Some("refresh_token") => {
            let Some(token) = params.get("refresh_token") else {
                return token_error(dialect, TokenError::InvalidRequest, true);
            };
            let Some(entry) = s.refresh.get(token) else {
                return token_error(dialect, TokenError::InvalidGrant, true);
            };
            let (grant, superseded) = (entry.grant, entry.superseded);
            if s.grants[grant].client_id != client_id {
                return token_error(dialect, TokenError::InvalidGrant, true);
            }
            if superseded {
                s.reuse_detections += 1;
                if cfg.reuse_revokes_grant {
                    s.revoke_grant(grant);
                }
                return token_error(dialect, TokenError::InvalidGrant, true);
            }
            if s.grants[grant].revoked || s.revoked_tokens.contains(token) {
                return token_error(dialect, TokenError::InvalidGrant, true);
            }
            let rt = if cfg.rotate_refresh_tokens {
                if let Some(e) = s.refresh.get_mut(token) {
                    e.superseded = true;
                }
                Some(s.new_refresh(grant))
            } else {
                None
            };
            (grant, rt)
        }
        _ => return token_error(dialect, TokenError::UnsupportedGrantType, refresh),
    };
    let access = s.new_access(grant);
    let subject = s.grants[grant].subject.clone();
    let scope = s.grants[grant].scopes.join(s.scope_sep());
    let id_token = (cfg.issue_id_token && !refresh).then(|| {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(
                json!({"sub": subject, "email": format!("{subject}@example.com")}).to_string()
            )
        )
    });

    // GitHub answers form-encoded unless asked for JSON.
    if dialect == Dialect::Github
        && !header(req, ACCEPT).is_some_and(|a| a.contains("application/json"))
    {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", &access)
            .append_pair("scope", &scope)
            .append_pair("token_type", "bearer")
            .finish();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        return r;
    }

    let mut tokens = serde_json::Map::new();
    tokens.insert("access_token".into(), json!(access));
    tokens.insert(
        "token_type".into(),
        json!(match dialect {
            Dialect::Slack => "user",
            Dialect::Github | Dialect::Notion => "bearer",
            _ => "Bearer",
        }),
    );
    if let Some(rt) = &new_refresh {
        tokens.insert("refresh_token".into(), json!(rt));
    }
    if dialect != Dialect::Salesforce {
        if let Some(ttl) = cfg.access_token_ttl {
            tokens.insert("expires_in".into(), json!(ttl.as_secs()));
        }
        if let (Some(ttl), Some(_)) = (cfg.refresh_token_ttl, &new_refresh) {
            tokens.insert("refresh_token_expires_in".into(), json!(ttl.as_secs()));
        }
    }
    if cfg.return_scope {
        tokens.insert("scope".into(), json!(scope));
    }
    if let Some(id_token) = id_token {
        tokens.insert("id_token".into(), json!(id_token));
    }
    let user_id = s.user_id(&subject);
    let body = match dialect {
        Dialect::Slack if !refresh => {
            tokens.insert("id".into(), json!(subject));
            json!({"ok": true, "app_id": "A0FAKE", "team": {"id": "T0FAKE", "name": "Fake Team"},
                   "enterprise": null, "is_enterprise_install": false,
                   "authed_user": Value::Object(tokens)})
        }
        Dialect::Slack => {
            tokens.insert("ok".into(), json!(true));
            tokens.insert("team".into(), json!({"id": "T0FAKE", "name": "Fake Team"}));
            Value::Object(tokens)
        }
        Dialect::Notion => {
            tokens.insert("bot_id".into(), json!(format!("bot-{user_id}")));
            tokens.insert("workspace_id".into(), json!("ws-fake"));
            tokens.insert("workspace_name".into(), json!("Fake Workspace"));
            tokens.insert(
                "owner".into(),
                json!({"type": "user", "user": {"object": "user", "id": subject,
                       "name": subject, "person": {"email": format!("{subject}@example.com")}}}),
            );
            Value::Object(tokens)
        }
        Dialect::Salesforce => {
            tokens.insert("instance_url".into(), json!(base));
            tokens.insert("id".into(), json!(format!("{base}/id/00Dfake/{subject}")));
            tokens.insert("issued_at".into(), json!("1767225600000"));
            tokens.insert("signature".into(), json!("ZmFrZS1zaWduYXR1cmU="));
            Value::Object(tokens)
        }
        Dialect::Standard | Dialect::Github => Value::Object(tokens),
    };
    json_response(StatusCode::OK, &body)
}

fn userinfo(state: &Mutex<State>, req: &FakeRequest) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    let Some(grant) = bearer(req).and_then(|t| s.valid_access(&t)) else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_token", "error_description": "unknown or revoked token"}),
        );
    };
    s.userinfo_calls += 1;
    let subject = s.grants[grant].subject.clone();
    let id = s.user_id(&subject);
    json_response(
        StatusCode::OK,
        &json!({"sub": subject, "email": format!("{subject}@example.com"), "id": id,
                "login": subject, "name": format!("User {subject}")}),
    )
}

/// The sites/organisations the grant may access (Atlassian accessible-resources, Xero connections).
fn tenants(state: &Mutex<State>, req: &FakeRequest) -> Response<Full<Bytes>> {
    let s = lock(state);
    if bearer(req).and_then(|t| s.valid_access(&t)).is_none() {
        return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_token"}));
    }
    json_response(
        StatusCode::OK,
        &json!([{"id": format!("cloud-{}", s.port), "url": "https://acme.atlassian.net", "tenantId": format!("tenant-{}", s.port)}]),
    )
}

fn revoke_rfc7009(state: &Mutex<State>, req: &FakeRequest) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    let cfg = s.config.clone();
    if cfg.revoke_fails {
        return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let Some(params) = body_params(cfg.dialect, req) else {
        return token_error(cfg.dialect, TokenError::InvalidRequest, false);
    };
    if let Err(kind) = authenticate(&cfg, req, &params).1 {
        return token_error(cfg.dialect, kind, false);
    }
    let Some(token) = params.get("token") else {
        return token_error(cfg.dialect, TokenError::InvalidRequest, false);
    };
    if let Some(entry) = s.refresh.get(token) {
        // RFC 7009 §2.1: revoking a refresh token revokes the grant.
        let grant = entry.grant;
        s.revoke_grant(grant);
    } else if s.access.contains_key(token) {
        s.revoked_tokens.insert(token.clone());
    }
    s.revocations += 1;
    // RFC 7009 §2.2: unknown tokens are answered with 200 too.
    text(StatusCode::OK, "")
}

fn revoke_bearer(state: &Mutex<State>, req: &FakeRequest, slack: bool) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    if s.config.revoke_fails {
        return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let Some(grant) = bearer(req).and_then(|t| s.valid_access(&t)) else {
        return if slack {
            json_response(
                StatusCode::OK,
                &json!({"ok": false, "error": "invalid_auth"}),
            )
        } else {
            json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error_summary": "invalid_access_token/",
                        "error": {".tag": "invalid_access_token"}}),
            )
        };
    };
    s.revoke_grant(grant);
    s.revocations += 1;
    if slack {
        json_response(StatusCode::OK, &json!({"ok": true, "revoked": true}))
    } else {
        json_response(StatusCode::OK, &Value::Null)
    }
}

fn revoke_github(state: &Mutex<State>, req: &FakeRequest) -> Response<Full<Bytes>> {
    let mut s = lock(state);
    let cfg = s.config.clone();
    if cfg.revoke_fails {
        return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let path_client = req
        .path
        .trim_start_matches("/applications/")
        .trim_end_matches("/grant");
    match basic_credentials(req) {
        Some((id, secret))
            if id == cfg.client_id && secret == cfg.client_secret && path_client == id => {}
        _ => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"message": "Bad credentials"}),
            );
        }
    }
    let token = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned));
    let Some(grant) = token.and_then(|t| s.valid_access(&t)) else {
        return json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}));
    };
    s.revoke_grant(grant);
    s.revocations += 1;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}
