//! A local OAuth 2.0 authorization server for development (`serve --dev-provider`), so a newcomer
//! can walk the whole connect flow with grpcurl and curl without registering an app anywhere.
//! It auto-approves every authorization request, issues random tokens, rotates refresh tokens,
//! checks PKCE (S256) and client authentication, and serves `/callback`, which answers the
//! provider's redirect with the JSON body CompleteConnect expects. Never enable it in production.

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use cb_oauth::catalog::ProviderSpec;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// Provider id of the development provider.
pub const ID: &str = "dev";
/// Its client id.
pub const CLIENT_ID: &str = "dev-client";

#[derive(Default)]
struct State {
    codes: HashMap<String, (String, Option<String>, String)>, // code → (redirect_uri, code_challenge, scope)
    refresh: HashMap<String, (bool, String)>, // refresh token → (still current, scope)
    access: HashMap<String, ()>,
}

/// The running development provider.
pub struct DevProvider {
    addr: SocketAddr,
    secret: String,
    task: JoinHandle<()>,
}

fn random() -> String {
    let mut b = [0u8; 24];
    let _ = aws_lc_rs::rand::fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn oauth_error(error: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": error }),
    )
}

fn query(raw: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

impl DevProvider {
    /// Starts it on `addr` (use 127.0.0.1).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let secret = random();
        let state = Arc::new(Mutex::new(State::default()));
        let client_secret = secret.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let secret = client_secret.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let secret = secret.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(req, &state, &secret).await)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        tracing::warn!(%addr, "DEVELOPMENT OAuth provider running (auto-approves everything): never use it in production");
        Ok(Self { addr, secret, task })
    }

    /// The redirect URI whose page answers with CompleteConnect's JSON.
    pub fn redirect_uri(&self) -> String {
        format!("http://{}/callback", self.addr)
    }

    /// Its client secret (random per start).
    pub fn client_secret(&self) -> &str {
        &self.secret
    }

    /// The catalog entry pointing at it.
    pub fn spec(&self) -> Result<ProviderSpec, String> {
        let base = format!("http://{}", self.addr);
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
        let catalog = cb_oauth::catalog::Catalog::new().with_http_loopback(true);
        let mut catalog = catalog;
        catalog.extend_from_toml(&text).map_err(|e| e.to_string())?;
        catalog
            .get(ID)
            .cloned()
            .ok_or_else(|| "dev provider spec missing".into())
    }
}

impl Drop for DevProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    state: &Mutex<State>,
    secret: &str,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let q = query(req.uri().query());
    let basic = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match (method, path.as_str()) {
        (Method::GET, "/authorize") => {
            let (Some(redirect), Some(st)) = (q.get("redirect_uri"), q.get("state")) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "redirect_uri and state are required\n".into(),
                );
            };
            if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "unknown client_id\n".into(),
                );
            }
            let code = random();
            let scope = q.get("scope").cloned().unwrap_or_else(|| "profile".into());
            s.codes.insert(
                code.clone(),
                (redirect.clone(), q.get("code_challenge").cloned(), scope),
            );
            let sep = if redirect.contains('?') { '&' } else { '?' };
            let location = format!(
                "{redirect}{sep}code={code}&state={}",
                url::form_urlencoded::byte_serialize(st.as_bytes()).collect::<String>()
            );
            let mut r = reply(StatusCode::FOUND, "text/plain", "approved\n".into());
            if let Ok(v) = location.parse() {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            r
        }
        (Method::GET, "/callback") => json(
            StatusCode::OK,
            serde_json::json!({ "state": q.get("state"), "code": q.get("code"), "error": q.get("error") }),
        ),
        (Method::POST, "/token") => {
            let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{secret}")));
            if basic.as_deref() != Some(expected.as_str()) {
                return json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "error": "invalid_client" }),
                );
            }
            match form.get("grant_type").map(String::as_str) {
                Some("authorization_code") => {
                    let Some((redirect, challenge, scope)) =
                        form.get("code").and_then(|c| s.codes.remove(c))
                    else {
                        return oauth_error("invalid_grant");
                    };
                    if form.get("redirect_uri") != Some(&redirect) {
                        return oauth_error("invalid_grant");
                    }
                    if let Some(ch) = challenge {
                        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                        if URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes())) != ch {
                            return oauth_error("invalid_grant");
                        }
                    }
                    tokens(&mut s, scope)
                }
                Some("refresh_token") => {
                    let rt = form.get("refresh_token").cloned().unwrap_or_default();
                    match s.refresh.get(&rt).cloned() {
                        Some((true, scope)) => {
                            s.refresh.insert(rt, (false, scope.clone()));
                            tokens(&mut s, scope)
                        }
                        _ => oauth_error("invalid_grant"),
                    }
                }
                _ => oauth_error("unsupported_grant_type"),
            }
        }
        (Method::GET, "/userinfo") => {
            let token = basic
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            if s.access.contains_key(token) {
                json(
                    StatusCode::OK,
                    serde_json::json!({ "sub": "dev-user-1", "email": "dev.user@example.com" }),
                )
            } else {
                json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "error": "invalid_token" }),
                )
            }
        }
        (Method::POST, "/revoke") => {
            if let Some(t) = form.get("token") {
                s.refresh.remove(t);
                s.access.remove(t);
            }
            reply(StatusCode::OK, "text/plain", String::new())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn tokens(s: &mut State, scope: String) -> Response<Full<Bytes>> {
    let access = format!("dev-at-{}", random());
    let refresh = format!("dev-rt-{}", random());
    s.access.insert(access.clone(), ());
    s.refresh.insert(refresh.clone(), (true, scope.clone()));
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": scope,
        }),
    )
}
