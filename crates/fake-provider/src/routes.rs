//! The HTTP surface: one axum route per endpoint, parsing requests into `State` calls and rendering
//! the outcomes in the configured [`Dialect`] (error formats, body encodings, response fields).

use crate::config::{Dialect, TokenFailure};
use crate::state::{
    Authorization, Issued, State, TokenError, TokenRequestRecord, authenticate, presented_client_id,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request};
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Request bodies beyond this are refused (no client sends more than a few hundred bytes).
const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// `http://127.0.0.1:<port>`, for answers that name the server (Salesforce `instance_url`).
    pub base_url: String,
    /// Called after a refresh succeeded, before its answer is sent (tests act "at the moment
    /// the provider answered": cut the database, kill the client).
    pub on_refresh_answered: Mutex<Option<RefreshHook>>,
}

/// See [`Shared::on_refresh_answered`].
pub(crate) type RefreshHook = Arc<dyn Fn() + Send + Sync>;

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type App = axum::extract::State<Arc<Shared>>;

/// Every endpoint of the fake.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server_metadata),
        )
        .route("/authorize", get(authorize))
        .route("/callback", get(callback))
        .route("/token", post(token))
        .route("/services/oauth2/token", post(token))
        .route("/userinfo", get(userinfo))
        .route("/tenants", get(tenants))
        .route("/revoke", post(revoke))
        .route(
            "/api/auth.revoke",
            post(|app: App, headers: HeaderMap| revoke_bearer(app, headers, true)),
        )
        .route(
            "/2/auth/token/revoke",
            post(|app: App, headers: HeaderMap| revoke_bearer(app, headers, false)),
        )
        .route("/applications/{client_id}/grant", delete(revoke_github))
        .route("/redirect", post(redirect_token))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found") })
        .with_state(shared)
}

/// A request as the handlers need it.
struct FakeRequest {
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for FakeRequest {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| text(StatusCode::BAD_REQUEST, "unreadable body"))?;
        Ok(Self {
            path: parts.uri.path().to_owned(),
            query: parts
                .uri
                .query()
                .map(|q| form_map(q.as_bytes()))
                .unwrap_or_default(),
            headers: parts.headers,
            body,
        })
    }
}

impl FakeRequest {
    fn header(&self, name: HeaderName) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Client id and secret from `Authorization: Basic` (RFC 6749 §2.3.1 decoding).
    fn basic_credentials(&self) -> Option<(String, String)> {
        let value = self.header(AUTHORIZATION)?;
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

    /// The body's parameters: JSON for the Notion dialect, a form otherwise; `None` when the
    /// content type or the body does not match.
    fn params(&self, dialect: Dialect) -> Option<BTreeMap<String, String>> {
        let content_type = self.header(CONTENT_TYPE).unwrap_or_default();
        if dialect == Dialect::Notion {
            if !content_type.starts_with("application/json") {
                return None;
            }
            let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&self.body) else {
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
            Some(form_map(&self.body))
        }
    }
}

// --- authorization endpoint and the development callback -----------------------------------------

async fn authorize(app: App, req: FakeRequest) -> Response {
    match app.lock().authorize(&req.query) {
        Authorization::Refused(why) => text(StatusCode::BAD_REQUEST, why),
        Authorization::Redirect(url) => redirect(StatusCode::FOUND, &url),
    }
}

/// A redirect target that answers with the JSON body CompleteConnect takes, so a person can walk
/// the connect flow with curl (`redirect_uri` = this server's `/callback`).
async fn callback(req: FakeRequest) -> Response {
    let q = &req.query;
    let mut body = json!({"state": q.get("state"), "code": q.get("code"), "error": q.get("error")});
    // Only when sent (RFC 9207), so the body stays as it was for a provider without an issuer.
    if let (Some(iss), Some(fields)) = (q.get("iss"), body.as_object_mut()) {
        fields.insert("iss".into(), json!(iss));
    }
    json_response(StatusCode::OK, &body)
}

// --- metadata --------------------------------------------------------------------------------

/// RFC 8414 authorization server metadata, issued under the configured `issuer` (the base URL
/// when none is set).
async fn authorization_server_metadata(app: App) -> Response {
    let s = app.lock();
    let base = &app.base_url;
    let issuer = s.config.issuer.clone().unwrap_or_else(|| base.clone());
    let mut metadata = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "revocation_endpoint": format!("{base}/revoke"),
            "userinfo_endpoint": format!("{base}/userinfo"),
            "scopes_supported": ["read", "write"],
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    });
    for (field, value) in &s.config.metadata_overrides {
        metadata[field.as_str()] = json!(value);
    }
    json_response(StatusCode::OK, &metadata)
}

// --- token endpoint ------------------------------------------------------------------------------

async fn token(app: App, req: FakeRequest) -> Response {
    // Count on arrival, then wait (outside the lock), then process.
    let (delay, failure, dialect) = {
        let mut s = app.lock();
        let params = req.params(s.config.dialect).unwrap_or_default();
        let basic = req.basic_credentials();
        let client_id = presented_client_id(&s.config, basic.as_ref(), &params);
        let (client_auth, _) = authenticate(&s.config, basic, &params);
        let record = TokenRequestRecord {
            client_id,
            path: req.path.clone(),
            grant_type: params.get("grant_type").cloned(),
            client_auth,
            content_type: req.header(CONTENT_TYPE),
            accept: req.header(ACCEPT),
            has_code_verifier: params.contains_key("code_verifier"),
            received_at: Instant::now(),
        };
        let failure = s.arrive(record, params.get("refresh_token").map(String::as_str));
        (s.config.token_delay, failure, s.config.dialect)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(failure) = failure {
        return injected_failure(dialect, failure);
    }
    let mut s = app.lock();
    let dialect = s.config.dialect;
    let Some(params) = req.params(dialect) else {
        return token_error(dialect, s.refuse(TokenError::InvalidRequest), false);
    };
    let refresh = params.get("grant_type").map(String::as_str) == Some("refresh_token");
    let client_id = match authenticate(&s.config, req.basic_credentials(), &params).1 {
        Ok(id) => id,
        Err(kind) => return token_error(dialect, s.refuse(kind), refresh),
    };
    match s.token(&params, &client_id) {
        Ok(issued) => {
            let answer = token_answer(&s, &req, &app.base_url, &issued, refresh);
            drop(s);
            let hook = app
                .on_refresh_answered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let (true, Some(hook)) = (refresh, hook) {
                hook();
            }
            answer
        }
        Err(kind) => token_error(dialect, kind, refresh),
    }
}

fn injected_failure(dialect: Dialect, failure: TokenFailure) -> Response {
    match failure {
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
        TokenFailure::InvalidClient => token_error(dialect, TokenError::InvalidClient, true),
        TokenFailure::OversizedBody => {
            let padding = "x".repeat(512 * 1024);
            json_response(
                StatusCode::OK,
                &json!({"access_token": "at_oversized", "padding": padding}),
            )
        }
        TokenFailure::MalformedJson => text(StatusCode::OK, "{\"access_token\": "),
    }
}

/// A successful token response in the dialect's shape.
fn token_answer(
    s: &State,
    req: &FakeRequest,
    base_url: &str,
    issued: &Issued,
    refresh: bool,
) -> Response {
    let cfg = &s.config;
    let dialect = cfg.dialect;
    let Issued {
        access,
        subject,
        user_id,
        ..
    } = issued;
    let scope = issued.scopes.join(s.scope_separator());

    // GitHub answers form-encoded unless asked for JSON.
    if dialect == Dialect::Github
        && !req
            .header(ACCEPT)
            .is_some_and(|a| a.contains("application/json"))
    {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", access)
            .append_pair("scope", &scope)
            .append_pair("token_type", "bearer")
            .finish();
        return (
            StatusCode::OK,
            [(CONTENT_TYPE, "application/x-www-form-urlencoded")],
            body,
        )
            .into_response();
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
    if let Some(rt) = &issued.refresh {
        tokens.insert("refresh_token".into(), json!(rt));
    }
    if dialect != Dialect::Salesforce && issued.expiring {
        if let Some(ttl) = cfg.access_token_ttl {
            tokens.insert("expires_in".into(), json!(ttl.as_secs()));
        }
        if let (Some(ttl), Some(_)) = (cfg.refresh_token_ttl, &issued.refresh) {
            tokens.insert(cfg.refresh_expiry_field.clone(), json!(ttl.as_secs()));
        }
    }
    if cfg.return_scope {
        tokens.insert("scope".into(), json!(scope));
    }
    if cfg.issue_id_token && !refresh {
        tokens.insert("id_token".into(), json!(id_token(subject)));
    }
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
            tokens.insert("instance_url".into(), json!(base_url));
            tokens.insert(
                "id".into(),
                json!(format!("{base_url}/id/00Dfake/{subject}")),
            );
            tokens.insert("issued_at".into(), json!("1767225600000"));
            tokens.insert("signature".into(), json!("ZmFrZS1zaWduYXR1cmU="));
            Value::Object(tokens)
        }
        Dialect::Standard | Dialect::Github => Value::Object(tokens),
    };
    json_response(StatusCode::OK, &body)
}

/// An unsigned OpenID Connect id token (`alg: none`) naming `subject`.
fn id_token(subject: &str) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD
            .encode(json!({"sub": subject, "email": format!("{subject}@example.com")}).to_string())
    )
}

/// A token endpoint error in the dialect's format (`refresh`: the request was a refresh, which
/// Slack and GitHub name differently).
fn token_error(dialect: Dialect, kind: TokenError, refresh: bool) -> Response {
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

/// A token endpoint that redirects to the real one (a client must not follow).
async fn redirect_token(app: App) -> Response {
    redirect(
        StatusCode::TEMPORARY_REDIRECT,
        &format!("{}/token", app.base_url),
    )
}

// --- resources -----------------------------------------------------------------------------------

async fn userinfo(app: App, headers: HeaderMap) -> Response {
    let found = bearer(&headers).and_then(|t| app.lock().userinfo(&t));
    let Some((subject, id)) = found else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_token", "error_description": "unknown or revoked token"}),
        );
    };
    json_response(
        StatusCode::OK,
        &json!({"sub": subject, "email": format!("{subject}@example.com"), "id": id,
                "login": subject, "name": format!("User {subject}")}),
    )
}

/// The sites/organisations the grant may access (Atlassian accessible-resources, Xero connections).
async fn tenants(app: App, headers: HeaderMap) -> Response {
    let s = app.lock();
    if bearer(&headers).and_then(|t| s.valid_access(&t)).is_none() {
        return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_token"}));
    }
    json_response(
        StatusCode::OK,
        &json!([{"id": format!("cloud-{}", s.port), "url": "https://acme.atlassian.net",
                 "tenantId": format!("tenant-{}", s.port)}]),
    )
}

// --- revocation ----------------------------------------------------------------------------------

/// RFC 7009 token revocation.
async fn revoke(app: App, req: FakeRequest) -> Response {
    let mut s = app.lock();
    let dialect = s.config.dialect;
    if s.config.revoke_fails {
        return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let Some(params) = req.params(dialect) else {
        return token_error(dialect, TokenError::InvalidRequest, false);
    };
    let client_id = match authenticate(&s.config, req.basic_credentials(), &params).1 {
        Ok(id) => id,
        Err(kind) => return token_error(dialect, kind, false),
    };
    let Some(token) = params.get("token") else {
        return token_error(dialect, TokenError::InvalidRequest, false);
    };
    s.revoke(token);
    s.revocation_clients.push(client_id);
    // RFC 7009 §2.2: unknown tokens are answered with 200 too.
    text(StatusCode::OK, "")
}

/// Slack `auth.revoke` (`slack`: `ok` in an HTTP 200 body) and Dropbox `/2/auth/token/revoke`:
/// the access token as Bearer revokes its grant.
async fn revoke_bearer(app: App, headers: HeaderMap, slack: bool) -> Response {
    let mut s = app.lock();
    if s.config.revoke_fails {
        return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    let revoked = bearer(&headers).is_some_and(|t| s.revoke_by_access_token(&t));
    match (slack, revoked) {
        (true, true) => json_response(StatusCode::OK, &json!({"ok": true, "revoked": true})),
        (true, false) => json_response(
            StatusCode::OK,
            &json!({"ok": false, "error": "invalid_auth"}),
        ),
        (false, true) => json_response(StatusCode::OK, &Value::Null),
        (false, false) => json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error_summary": "invalid_access_token/",
                    "error": {".tag": "invalid_access_token"}}),
        ),
    }
}

/// GitHub `DELETE /applications/{client_id}/grant`: Basic client credentials, the access token
/// in a JSON body.
async fn revoke_github(app: App, Path(path_client): Path<String>, req: FakeRequest) -> Response {
    let mut s = app.lock();
    if s.config.revoke_fails {
        return text(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    match req.basic_credentials() {
        Some((id, secret))
            if s.config.secret_of(&id) == Some(secret.as_str()) && path_client == id => {}
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
    if token.is_some_and(|t| s.revoke_by_access_token(&t)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}))
    }
}

// --- helpers -------------------------------------------------------------------------------------

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn form_map(bytes: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

fn text(status: StatusCode, body: &str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain")], body.to_owned()).into_response()
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}
