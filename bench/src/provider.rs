//! A minimal OAuth 2.0 token endpoint on 127.0.0.1 (hyper, HTTP/1.1) for the refresh storm:
//! `POST /token` with `grant_type=refresh_token`, rotating refresh tokens, an artificial delay,
//! and counters. Reusing a rotated-away refresh token is answered `invalid_grant` and counted.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The client registration the broker is configured with.
pub const CLIENT_ID: &str = "bench-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "bench-secret";

/// A running token endpoint.
pub struct Provider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    latency: Duration,
    refresh_calls: AtomicU64,
    reuse_detections: AtomicU64,
    rejected: AtomicU64,
    tokens: Mutex<Tokens>,
}

#[derive(Default)]
struct Tokens {
    seq: u64,
    /// When the first and the latest token request arrived.
    arrivals: Option<(Instant, Instant)>,
    /// Live refresh token → grant number.
    live: HashMap<String, u64>,
    /// Refresh tokens replaced by a rotation.
    superseded: HashSet<String>,
}

impl Provider {
    /// Listens on a free loopback port; every token request waits `latency` first.
    pub async fn start(latency: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            latency,
            refresh_calls: AtomicU64::new(0),
            reuse_detections: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            tokens: Mutex::new(Tokens::default()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a grant and returns its first refresh token.
    pub fn issue_grant(&self) -> String {
        let mut t = lock(&self.shared.tokens);
        t.seq += 1;
        let grant = t.seq;
        let token = format!("rt_{grant}_0");
        t.live.insert(token.clone(), grant);
        token
    }

    /// Token requests received (answered or not).
    pub fn refresh_calls(&self) -> u64 {
        self.shared.refresh_calls.load(Ordering::Relaxed)
    }

    /// Requests that presented a refresh token already rotated away.
    pub fn reuse_detections(&self) -> u64 {
        self.shared.reuse_detections.load(Ordering::Relaxed)
    }

    /// When the first and the latest token request arrived, if any did.
    pub fn arrivals(&self) -> Option<(Instant, Instant)> {
        lock(&self.shared.tokens).arrivals
    }

    /// Requests answered with an error.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Tokens>) -> MutexGuard<'_, Tokens> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handle(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/token" {
        return answer(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    s.refresh_calls.fetch_add(1, Ordering::Relaxed);
    {
        let now = Instant::now();
        let mut t = lock(&s.tokens);
        t.arrivals = Some(t.arrivals.map_or((now, now), |(first, _)| (first, now)));
    }
    let basic = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Basic "));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reject(s, StatusCode::BAD_REQUEST, "invalid_request"),
    };
    tokio::time::sleep(s.latency).await;
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if !basic && form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return reject(s, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return reject(s, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(old) = form.get("refresh_token") else {
        return reject(s, StatusCode::BAD_REQUEST, "invalid_request");
    };
    let (access, refresh) = {
        let mut t = lock(&s.tokens);
        let Some(grant) = t.live.remove(old) else {
            if t.superseded.contains(old) {
                s.reuse_detections.fetch_add(1, Ordering::Relaxed);
            }
            drop(t);
            return reject(s, StatusCode::BAD_REQUEST, "invalid_grant");
        };
        t.superseded.insert(old.clone());
        t.seq += 1;
        let n = t.seq;
        let refresh = format!("rt_{grant}_{n}");
        t.live.insert(refresh.clone(), grant);
        (format!("at_{grant}_{n}"), refresh)
    };
    answer(
        StatusCode::OK,
        &json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                "refresh_token": refresh, "scope": "read"}),
    )
}

fn reject(s: &Shared, status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    s.rejected.fetch_add(1, Ordering::Relaxed);
    answer(status, &json!({"error": error}))
}

fn answer(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
