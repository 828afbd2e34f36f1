//! A fake OAuth 2.0 authorization server on loopback (real HTTP, axum): the one behind
//! `credential-broker serve --dev-provider`, the end-to-end tests and the benchmark.
//!
//! It implements the authorization code grant with PKCE (auto-approving as a configured
//! subject), refresh with optional rotation and reuse detection (reusing a rotated refresh token
//! revokes the whole grant, as real servers do), RFC 7009 revocation plus the GitHub / Slack /
//! Dropbox revocation APIs, a userinfo and a tenants endpoint, and `/callback`, a redirect target
//! that echoes `code` and `state` as JSON. [`Dialect`]s reproduce provider quirks (Slack `ok:false`
//! with HTTP 200, GitHub errors with HTTP 200 and form-encoded answers without
//! `Accept: application/json`, Notion JSON bodies, Salesforce `instance_url` and no `expires_in`);
//! options reproduce others (TikTok's `client_key` and `refresh_expires_in`, Shopify's expiring
//! tokens only with `expiring=1`, Basic-only client authentication). Failures (500, 429,
//! delays, invalid_grant, oversized or malformed bodies) can be switched on while it runs, and
//! counters (global and per grant) tell what it was asked.
//!
//! It knows nothing of the broker: the broker-side description of it (a catalog entry) is written
//! by whoever points a broker at it.
//!
//! Endpoints: `GET /authorize`, `GET /callback`, `POST /token`, `POST /services/oauth2/token`,
//! `GET /userinfo`, `GET /tenants`, `POST /revoke`, `POST /api/auth.revoke`,
//! `POST /2/auth/token/revoke`, `DELETE /applications/{client_id}/grant`, and `POST /redirect`
//! (a token endpoint that redirects, which a client must not follow).
//!
//! Where things go: a new behaviour is a [`FakeConfig`] field (default: today's behaviour), read
//! in `state.rs` when it changes a protocol decision (which grant, which token, accept or refuse)
//! or in `routes.rs` when it changes only the wire format (parameters, fields, status codes).

mod config;
mod routes;
mod state;
#[cfg(test)]
mod tests;

pub use config::{ClientAuth, Dialect, FakeConfig, TokenFailure, TokenStyle};
pub use state::{Counters, GrantStats, TokenRequestRecord};

use routes::Shared;
use state::State;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// A running fake authorization server; stops accepting connections when dropped.
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Starts it on 127.0.0.1 with a free port.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeProvider> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts it on `addr` (port 0: a free one).
    pub async fn start_on(addr: SocketAddr, config: FakeConfig) -> std::io::Result<FakeProvider> {
        use axum::serve::ListenerExt as _;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config, addr.port())),
            base_url: format!("http://{addr}"),
            on_refresh_answered: Mutex::new(None),
        });
        // Small request/response pairs: do not let Nagle hold them back (benchmark latency).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = routes::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeProvider { addr, shared, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Changes the configuration while running.
    pub fn configure(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut self.shared.lock().config);
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> FakeConfig {
        self.shared.lock().config.clone()
    }

    /// Calls `hook` after each successful refresh, right before its answer is sent: a test acts
    /// at the moment the provider answered (the client has not seen the answer yet).
    pub fn on_refresh_answered(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self
            .shared
            .on_refresh_answered
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// Removes the hook set with [`FakeProvider::on_refresh_answered`].
    pub fn clear_refresh_hook(&self) {
        *self
            .shared
            .on_refresh_answered
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Makes the next token endpoint request fail with `failure` (queued, one per request,
    /// before any sticky [`FakeConfig::token_failure`]).
    pub fn push_token_failure(&self, failure: TokenFailure) {
        self.shared.lock().failures.push_back(failure);
    }

    /// Issues a grant directly (as if `subject` had connected, scope `read`), for tests and
    /// benchmarks that import credentials: returns (access token, refresh token).
    pub fn issue_grant(&self, subject: &str) -> (String, String) {
        let client_id = self.config().client_id;
        self.issue_grant_to(subject, &client_id)
    }

    /// [`FakeProvider::issue_grant`] to another registered client (a workspace's OAuth app).
    pub fn issue_grant_to(&self, subject: &str, client_id: &str) -> (String, String) {
        self.shared.lock().issue_grant(subject, client_id)
    }

    /// All counters at once.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
    }

    /// Requests received by the token endpoints (any grant type, failures included).
    pub fn token_calls(&self) -> u64 {
        self.counters().token_calls
    }

    /// `grant_type=refresh_token` requests received (failures included).
    pub fn refresh_calls(&self) -> u64 {
        self.counters().refresh_calls
    }

    /// Token endpoint requests answered with an error (injected failures included).
    pub fn token_errors(&self) -> u64 {
        self.counters().token_errors
    }

    /// Successful revocation requests (any revocation endpoint).
    pub fn revocations(&self) -> u64 {
        self.counters().revocations
    }

    /// Times a superseded (rotated-away) refresh token was presented again, whether or not its
    /// grant was still alive. A correct client under any concurrency keeps this at zero.
    pub fn reuse_detections(&self) -> u64 {
        self.counters().reuse_detections
    }

    /// Successful `/userinfo` requests.
    pub fn userinfo_calls(&self) -> u64 {
        self.counters().userinfo_calls
    }

    /// The grant `token` (access or refresh, current or not) belongs to, with its counters.
    pub fn grant_stats(&self, token: &str) -> Option<GrantStats> {
        self.shared.lock().grant_stats(token)
    }

    /// Whether `token` (access or refresh) was revoked, alone or with its grant.
    pub fn is_revoked(&self, token: &str) -> bool {
        self.shared.lock().is_revoked(token)
    }

    /// Whether `token` is the live refresh token of a live grant (issued, not superseded, not
    /// revoked): the one a client must hold after any number of rotations.
    pub fn is_current_refresh_token(&self, token: &str) -> bool {
        self.shared.lock().is_current_refresh_token(token)
    }

    /// Whether `token` is a live access token.
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.shared.lock().valid_access(token).is_some()
    }

    /// What the token endpoints saw, in order of arrival.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        self.shared.lock().token_requests.clone()
    }

    /// The client id of each accepted RFC 7009 revocation (`/revoke`), in order.
    pub fn revocation_clients(&self) -> Vec<String> {
        self.shared.lock().revocation_clients.clone()
    }

    /// The query parameters of each `/authorize` request, in order.
    pub fn authorize_queries(&self) -> Vec<BTreeMap<String, String>> {
        self.shared.lock().authorize_queries.clone()
    }
}
