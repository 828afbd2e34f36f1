//! Signed webhooks (Standard Webhooks): every lifecycle event is delivered to the endpoints of
//! its workspace, at least once, ordered per credential, retried with exponential backoff, by
//! whichever replica claims the delivery first (a lease in the database: never two replicas at
//! once). An endpoint that keeps failing for the configured period is disabled, and a
//! `webhook_endpoint_disabled` workspace event records it (decision 28).
//!
//! Signing follows <https://www.standardwebhooks.com/>: `webhook-id` (the event's stable id, the
//! same on every retry), `webhook-timestamp` (seconds), `webhook-signature` = space-separated
//! `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per secret (two during a
//! rotation), where the key is the base64 part of a `whsec_<base64>` secret.

use crate::clock::{Clock, Timestamp};
use crate::health::EventKind;
use crate::random::Random;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cb_crypto::Envelope;
use cb_store::{ClaimedDelivery, CredentialEventRow, DeliveryAttempt, NewCredentialEvent, Store};
use secrecy::{ExposeSecret, SecretBox};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A webhook signing key (the decoded bytes of a `whsec_` secret). Redacted in `Debug`.
pub struct WebhookSecret(SecretBox<Vec<u8>>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (at least 24 bytes of key). The error never echoes the secret.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let encoded = raw
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {SECRET_PREFIX}"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| format!("must be {SECRET_PREFIX} followed by base64"))?;
        if key.len() < 24 {
            return Err("the key must be at least 24 bytes".into());
        }
        Ok(Self(SecretBox::new(Box::new(key))))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.expose_secret());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses event type names (`connected`, `needs_reconnect`, …) of an endpoint's filter; the
/// error lists the known names.
pub fn parse_event_types(raw: &[String]) -> Result<Vec<EventKind>, String> {
    raw.iter()
        .map(|t| {
            EventKind::parse(t).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("`{t}` is not an event type (one of {})", known.join(", "))
            })
        })
        .collect()
}

/// An endpoint ready to deliver to: configured, or API-managed with its secrets opened
/// ([`crate::webhook_endpoints::open_endpoint`]).
#[derive(Debug)]
pub struct WebhookEndpoint {
    /// Its id: the configured name, or `whe_…` for an API endpoint.
    pub id: String,
    /// The workspace whose events it receives.
    pub workspace_id: String,
    /// Where to POST.
    pub url: url::Url,
    /// Signing secrets, newest first; each signs every delivery.
    pub secrets: Vec<WebhookSecret>,
    /// The event kinds it receives (empty: every kind).
    pub event_types: Vec<EventKind>,
}

/// What sending a webhook produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// The receiver answered with this HTTP status.
    Answered(u16),
    /// No usable answer (refused by the outbound policy, unreachable, timed out); never holds
    /// the URL's path or query.
    Failed(String),
}

/// Renders and sends webhook requests; the server implements it with the outbound HTTP guard.
#[async_trait::async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    /// The JSON body of an event (Standard Webhooks' `type`, `timestamp`, `data`).
    fn payload(&self, e: &CredentialEventRow) -> Vec<u8>;

    /// POSTs `body` (JSON) to `url` with `headers`.
    async fn post(
        &self,
        url: &url::Url,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> SendOutcome;
}

/// Retry and disable settings.
#[derive(Clone, Copy, Debug)]
pub struct WebhookConfig {
    /// First retry delay; doubles per failed attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// An endpoint failing for this long is disabled.
    pub disable_after: Duration,
    /// How long a claimed delivery is reserved for its sender.
    pub lease: Duration,
    /// Deliveries claimed per pass.
    pub batch: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            disable_after: Duration::from_secs(3 * 86_400),
            lease: Duration::from_secs(60),
            batch: 50,
        }
    }
}

/// Delivers webhooks: claims due deliveries and sends them, on every replica.
pub struct WebhookDispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    sender: Arc<dyn WebhookSender>,
    /// The configured endpoints; API endpoints are read from the database on each pass.
    endpoints: HashMap<String, WebhookEndpoint>,
    envelope: Arc<Envelope>,
    config: WebhookConfig,
    holder: String,
    stats: Stats,
}

impl fmt::Debug for WebhookDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookDispatcher")
            .field("holder", &self.holder)
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl WebhookDispatcher {
    /// Wires the dispatcher of the configured `endpoints` and of the API-managed ones (their
    /// secrets opened with `envelope`); `holder` names this replica's claims (unique per
    /// process).
    #[allow(clippy::too_many_arguments)] // each is a distinct dependency of the dispatcher
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn Random>,
        sender: Arc<dyn WebhookSender>,
        endpoints: Vec<WebhookEndpoint>,
        config: WebhookConfig,
        holder: String,
    ) -> Self {
        Self {
            store,
            envelope,
            clock,
            random,
            sender,
            endpoints: endpoints.into_iter().map(|e| (e.id.clone(), e)).collect(),
            config,
            holder,
            stats: Stats::default(),
        }
    }

    /// Delivery outcomes and endpoints disabled by this process.
    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            rejected: self.stats.rejected.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            endpoints_disabled: self.stats.disabled.load(Ordering::Relaxed),
        }
    }

    /// Declares the configured endpoints in the database (every replica does, at start).
    pub async fn declare_endpoints(&self) -> Result<(), crate::BrokerError> {
        let now = self.clock.now().as_millis();
        for e in self.endpoints.values() {
            let kinds: Vec<&str> = e.event_types.iter().map(|k| k.as_str()).collect();
            let event_types = (!kinds.is_empty()).then(|| kinds.join(","));
            self.store
                .upsert_webhook_endpoint(
                    &e.id,
                    &e.workspace_id,
                    e.url.as_str(),
                    now,
                    event_types.as_deref(),
                )
                .await?;
        }
        Ok(())
    }

    /// One pass: claims the due deliveries and sends them in order; returns how many were
    /// attempted.
    pub async fn dispatch_due(&self) -> Result<usize, crate::BrokerError> {
        let now = self.clock.now();
        let claimed = self
            .store
            .claim_webhook_deliveries(
                &self.holder,
                now.as_millis(),
                millis(self.config.lease),
                self.config.batch,
            )
            .await?;
        let attempted = claimed.len();
        // API endpoints are read once per pass: a change made on any replica applies at the
        // next pass, with nothing cached across passes.
        let mut api: HashMap<String, Option<WebhookEndpoint>> = HashMap::new();
        for d in claimed {
            if let Some(endpoint) = self.endpoints.get(&d.endpoint_id) {
                self.deliver(d, endpoint).await?;
                continue;
            }
            if !api.contains_key(&d.endpoint_id) {
                let opened = self.open_api_endpoint(&d.endpoint_id).await;
                api.insert(d.endpoint_id.clone(), opened);
            }
            // `None`: declared by another replica's configuration, or deleted meanwhile: left
            // to it (the claim lapses).
            if let Some(Some(endpoint)) = api.get(&d.endpoint_id) {
                self.deliver(d, endpoint).await?;
            }
        }
        Ok(attempted)
    }

    /// An API endpoint with its secrets opened; `None` when it is not one (or is gone), or its
    /// secrets cannot be opened now (logged; its deliveries wait for a later pass).
    async fn open_api_endpoint(&self, id: &str) -> Option<WebhookEndpoint> {
        let opened = async {
            match self.store.webhook_endpoint(id).await? {
                Some(row) => {
                    crate::webhook_endpoints::open_endpoint(
                        self.store.as_ref(),
                        &self.envelope,
                        &row,
                    )
                    .await
                }
                None => Ok(None),
            }
        }
        .await;
        match opened {
            Ok(endpoint) => endpoint.filter(|e| !e.secrets.is_empty()),
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "webhook endpoint secrets not opened; its deliveries wait");
                None
            }
        }
    }

    async fn deliver(
        &self,
        d: ClaimedDelivery,
        endpoint: &WebhookEndpoint,
    ) -> Result<(), crate::BrokerError> {
        let now = self.clock.now();
        let body = self.sender.payload(&d.event);
        let timestamp = now.as_millis().div_euclid(1000);
        let headers = [
            ("webhook-id", d.event.event.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature(&endpoint.secrets, &d.event.event.event_id, timestamp, &body),
            ),
            ("content-type", "application/json".to_owned()),
        ];
        let outcome = self.sender.post(&endpoint.url, &headers, body).await;
        let (delivered, status, error) = match &outcome {
            SendOutcome::Answered(s) if (200..300).contains(s) => (true, Some(i64::from(*s)), None),
            SendOutcome::Answered(s) => (false, Some(i64::from(*s)), Some(format!("HTTP {s}"))),
            SendOutcome::Failed(why) => (false, None, Some(why.clone())),
        };
        let attempt = DeliveryAttempt {
            id: d.id,
            endpoint_id: d.endpoint_id.clone(),
            holder: self.holder.clone(),
            delivered,
            status,
            error: error.clone(),
            at: now.as_millis(),
            next_attempt_at: now.plus(self.backoff(d.attempts + 1)).as_millis(),
            disable_failing_since: now.minus(self.config.disable_after).as_millis(),
            disabled_event: (!delivered).then(|| disabled_event(endpoint, now)),
        };
        let disabled = self.store.finish_webhook_delivery(&attempt).await?;
        if let Some(error) = error {
            tracing::warn!(endpoint = %d.endpoint_id, event_id = %d.event.event.event_id, attempt = d.attempts + 1, error = %error, "webhook delivery failed; will retry");
        }
        self.stats.record(&outcome, delivered, disabled);
        if disabled {
            tracing::error!(endpoint = %d.endpoint_id, "webhook endpoint disabled after failing for the configured period");
        }
        Ok(())
    }

    /// Delay before attempt `attempt + 1`: base × 2^(attempt-1), capped, plus up to a quarter
    /// of jitter.
    fn backoff(&self, attempt: i64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.config.backoff_max);
        delay + self.random.fraction().of(delay / 4)
    }

    /// Delivers until dropped: a pass whenever the change feed announces a write (a new event
    /// may have deliveries) and every `poll` otherwise (retries fall due with time).
    pub async fn run(self: Arc<Self>, poll: Duration) {
        if let Err(e) = self.declare_endpoints().await {
            tracing::warn!(error = %e, "webhook endpoints not declared; retrying on the next pass");
        }
        let mut changes = self.store.subscribe_changes();
        let mut declared = true;
        loop {
            if !declared {
                declared = self.declare_endpoints().await.is_ok();
            }
            loop {
                match self.dispatch_due().await {
                    Ok(n) if n == self.config.batch as usize => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook dispatch failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = changes.recv() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// The workspace event written when `endpoint` is disabled (names the endpoint, never its URL).
fn disabled_event(endpoint: &WebhookEndpoint, now: Timestamp) -> NewCredentialEvent {
    NewCredentialEvent {
        event_id: uuid::Uuid::now_v7().hyphenated().to_string(),
        at: now.as_millis(),
        workspace_id: endpoint.workspace_id.clone(),
        credential_id: None,
        kind: EventKind::WebhookEndpointDisabled.as_str().to_owned(),
        actor: None,
        cause: Some("failing_too_long".to_owned()),
        detail: Some(format!("endpoint={}", endpoint.id)),
    }
}

/// Counters of this process's deliveries, for metrics.
#[derive(Debug, Default)]
struct Stats {
    delivered: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    disabled: AtomicU64,
}

impl Stats {
    fn record(&self, outcome: &SendOutcome, delivered: bool, disabled: bool) {
        let counter = match outcome {
            _ if delivered => &self.delivered,
            SendOutcome::Answered(_) => &self.rejected,
            SendOutcome::Failed(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if disabled {
            self.disabled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What this process's dispatcher did since it started (read by the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Attempts the receiver accepted (2xx).
    pub delivered: u64,
    /// Attempts the receiver answered with another status.
    pub rejected: u64,
    /// Attempts without a usable answer (unreachable, timed out, refused by the outbound policy).
    pub failed: u64,
    /// Endpoints this process disabled after their failing period.
    pub endpoints_disabled: u64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_like_the_specification() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(
                &[secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_never_echoed() {
        let e = WebhookSecret::parse("not-a-secret-at-all").unwrap_err();
        assert!(!e.contains("not-a-secret"), "{e}");
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err(), "too short");
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{s:?}"), "WebhookSecret(redacted)");
    }
}
