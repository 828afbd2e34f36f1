//! Prometheus metrics: one registry per running broker, scraped at `GET /metrics` on
//! `[telemetry] metrics_listen`. Counters the domain keeps itself (issuance, refreshes, single
//! flight, lease waits, circuit breakers, the DEK cache) are read at scrape time; the rest is
//! recorded by the RPC layer, the provider/KMS/database decorators and the health monitor.
//! Metric names and example alerts: docs/operations.md.

use crate::layers::rpc::Rpc;
use cb_broker::audit::Audit;
use cb_broker::health::HealthKind;
use cb_broker::issuance::TokenService;
use cb_broker::webhooks::{WebhookDispatcher, WebhookStats};
use cb_crypto::Envelope;
use cb_store::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::Code;

/// Every metric name starts with this.
pub const PREFIX: &str = "credential_broker";

/// The statuses the credentials gauge always reports (0 when none).
const STATUSES: [&str; 3] = ["ACTIVE", "NEEDS_RECONNECT", "DISCONNECTED"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectedLabels {
    caller: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCallLabels {
    provider: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderOpLabels {
    provider: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KmsCallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KmsOpLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets: 1 ms … ~16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every gRPC status code, by number (`Code as usize`).
const CODES: usize = 17;

/// The count and latency series of one (RPC, status code), resolved once.
type RpcSeries = (Counter, Histogram);

/// The broker's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    /// The series of `rpc_requests` and `rpc_duration` by `Rpc as usize * CODES + code`, filled on
    /// first use (a series appears once it has a sample): a finished call takes neither family's
    /// lock nor hashes labels.
    rpc_series: Box<[OnceLock<RpcSeries>]>,
    rpc_rejected: Family<RejectedLabels, Counter>,
    provider_calls: Family<ProviderCallLabels, Counter>,
    provider_duration: HistogramFamily<ProviderOpLabels>,
    kms_calls: Family<KmsCallLabels, Counter>,
    kms_duration: HistogramFamily<KmsOpLabels>,
    credentials: Family<StatusLabels, Gauge>,
    credential_health: Family<HealthLabels, Gauge>,
    dependency_up: Family<DependencyLabels, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

/// The canonical gRPC name of a status code (`OK`, `NOT_FOUND`, …), as metric label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Metrics {
    /// A registry with every metric this module records.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix(PREFIX);
        let m = Self {
            registry: Mutex::new(Registry::default()),
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram),
            rpc_series: (0..Rpc::ALL.len() * CODES)
                .map(|_| OnceLock::new())
                .collect(),
            rpc_rejected: Family::default(),
            provider_calls: Family::default(),
            provider_duration: Family::new_with_constructor(latency_histogram),
            kms_calls: Family::default(),
            kms_duration: Family::new_with_constructor(latency_histogram),
            credentials: Family::default(),
            credential_health: Family::default(),
            dependency_up: Family::default(),
        };
        r.register(
            "rpc_requests",
            "Finished RPCs by service, method and gRPC status code",
            m.rpc_requests.clone(),
        );
        r.register_with_unit(
            "rpc_duration",
            "RPC latency by service, method and gRPC status code",
            Unit::Seconds,
            m.rpc_duration.clone(),
        );
        r.register(
            "rpc_rejected",
            "RPCs refused before running, by calling service and reason (concurrency_limit, overloaded, max_connections)",
            m.rpc_rejected.clone(),
        );
        r.register(
            "provider_calls",
            "HTTP calls to OAuth providers by provider, operation (refresh, exchange_code, revoke) and outcome (ok, permanent, transient, denied, error)",
            m.provider_calls.clone(),
        );
        r.register_with_unit(
            "provider_call_duration",
            "Latency of HTTP calls to OAuth providers",
            Unit::Seconds,
            m.provider_duration.clone(),
        );
        r.register(
            "kms_calls",
            "Key provider (KMS) calls by operation and outcome (ok, unavailable, denied, error)",
            m.kms_calls.clone(),
        );
        r.register_with_unit(
            "kms_call_duration",
            "Latency of key provider (KMS) calls",
            Unit::Seconds,
            m.kms_duration.clone(),
        );
        r.register(
            "credentials",
            "Stored credentials by status, every workspace (read from the database periodically)",
            m.credentials.clone(),
        );
        r.register(
            "credential_health",
            "Credentials not disconnected by health (HEALTHY, PROVIDER_OUTAGE, GRANT_REVOKED, CLIENT_MISCONFIGURED, SCOPES_REVOKED, REFRESH_INTERRUPTED, EXPIRING), every workspace (read from the database periodically)",
            m.credential_health.clone(),
        );
        r.register(
            "dependency_up",
            "1 while the dependency (database, kms) answers the health checks, else 0",
            m.dependency_up.clone(),
        );
        *m.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = r;
        Arc::new(m)
    }

    /// Adds the domain's own counters (read at scrape time).
    pub fn register_domain(&self, tokens: Arc<TokenService>, envelope: Arc<Envelope>) {
        self.register_collector(Box::new(DomainCollector { tokens, envelope }));
    }

    fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .register_collector(collector);
    }

    /// Adds the webhook dispatcher's counters (read at scrape time).
    pub fn register_webhooks(&self, dispatcher: Arc<WebhookDispatcher>) {
        self.register_collector(Box::new(WebhookCollector { dispatcher }));
    }

    /// Adds the buffered audit writer's counters (read at scrape time).
    pub fn register_audit(&self, audit: Audit) {
        self.register_collector(Box::new(AuditCollector { audit }));
    }

    /// Records one finished RPC.
    pub fn observe_rpc(&self, rpc: Rpc, code: Code, elapsed: Duration) {
        let create = || {
            let labels = RpcLabels {
                service: rpc.service(),
                method: rpc.method(),
                code: code_name(code),
            };
            (
                self.rpc_requests.get_or_create(&labels).clone(),
                self.rpc_duration.get_or_create(&labels).clone(),
            )
        };
        let slot = (code as usize) < CODES;
        let slot = slot.then(|| rpc as usize * CODES + code as usize);
        let fallback;
        let (count, duration) = match slot.and_then(|i| self.rpc_series.get(i)) {
            Some(series) => series.get_or_init(create),
            None => {
                fallback = create();
                &fallback
            }
        };
        count.inc();
        duration.observe(elapsed.as_secs_f64());
    }

    /// Records an RPC refused before it ran.
    pub fn rejected(&self, caller: &str, reason: &'static str) {
        self.rpc_rejected
            .get_or_create(&RejectedLabels {
                caller: caller.to_owned(),
                reason,
            })
            .inc();
    }

    /// Records one HTTP call to a provider.
    pub fn observe_provider_call(
        &self,
        provider: &str,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.provider_calls
            .get_or_create(&ProviderCallLabels {
                provider: provider.to_owned(),
                operation,
                outcome,
            })
            .inc();
        self.provider_duration
            .get_or_create(&ProviderOpLabels {
                provider: provider.to_owned(),
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one key provider call.
    pub fn observe_kms_call(
        &self,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        self.kms_calls
            .get_or_create(&KmsCallLabels { operation, outcome })
            .inc();
        self.kms_duration
            .get_or_create(&KmsOpLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the per-health gauge from [`cb_store::Store::count_credentials_by_health`]; a
    /// health with no credential reads 0.
    pub fn set_credential_health(&self, counts: &[(String, i64)]) {
        for health in HealthKind::ALL {
            let n = counts
                .iter()
                .find(|(h, _)| h == health.as_str())
                .map_or(0, |(_, n)| *n);
            self.credential_health
                .get_or_create(&HealthLabels {
                    health: health.as_str().to_owned(),
                })
                .set(n);
        }
    }

    /// Replaces the credentials-by-status gauge (statuses absent from `counts` read 0).
    pub fn set_credentials(&self, counts: &[(String, i64)]) {
        for status in STATUSES {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.credentials
                .get_or_create(&StatusLabels {
                    status: status.to_owned(),
                })
                .set(n);
        }
        for (status, n) in counts
            .iter()
            .filter(|(s, _)| !STATUSES.contains(&s.as_str()))
        {
            self.credentials
                .get_or_create(&StatusLabels {
                    status: status.clone(),
                })
                .set(*n);
        }
    }

    /// Sets whether a dependency (`database`, `kms`) answers.
    pub fn set_dependency_up(&self, dependency: &'static str, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabels { dependency })
            .set(i64::from(up));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }

    /// Reads the credentials-by-status counts from the database now and every `every`.
    pub fn spawn_credentials_gauge(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        every: Duration,
    ) -> JoinHandle<()> {
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match tokio::time::timeout(every, store.count_credentials_by_status()).await {
                    Ok(Ok(counts)) => metrics.set_credentials(&counts),
                    Ok(Err(e)) => tracing::debug!(error = %e, "credentials gauge not refreshed"),
                    Err(_) => tracing::debug!("credentials gauge not refreshed: timeout"),
                }
                match tokio::time::timeout(every, store.count_credentials_by_health()).await {
                    Ok(Ok(counts)) => metrics.set_credential_health(&counts),
                    Ok(Err(e)) => tracing::debug!(error = %e, "health gauge not refreshed"),
                    Err(_) => tracing::debug!("health gauge not refreshed: timeout"),
                }
            }
        })
    }

    /// Serves `GET /metrics` on `addr`; returns the bound address and the server task.
    pub async fn serve(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let metrics = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let metrics = metrics.clone();
                        async move { Ok::<_, std::convert::Infallible>(scrape(&metrics, &req)) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        tracing::info!(addr = %local, path = "/metrics", "metrics endpoint listening");
        Ok((local, task))
    }
}

fn scrape(
    metrics: &Metrics,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    use hyper::{Method, StatusCode, header};
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Reads the domain's counters at scrape time.
struct DomainCollector {
    tokens: Arc<TokenService>,
    envelope: Arc<Envelope>,
}

impl fmt::Debug for DomainCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DomainCollector")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let c = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// A gauge of a size read at scrape time.
fn size_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl TryInto<i64>,
) -> Result<(), fmt::Error> {
    let g = ConstGauge::new(value.try_into().unwrap_or(i64::MAX));
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// A counter with one label, one sample per `(label value, count)`.
fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> Result<(), fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(*n).encode(m.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

impl Collector for DomainCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.tokens.stats();
        {
            let mut m = encoder.encode_descriptor(
                "token_issuance",
                "GetAccessToken results (OK or the error reason) and whether the token came from memory (cache hit) or needed the database/provider (miss)",
                None,
                MetricType::Counter,
            )?;
            for (result, hit, n) in self.tokens.issuance_results() {
                let labels = [
                    ("result", result),
                    ("cache", if hit { "hit" } else { "miss" }),
                ];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "refreshes",
                "Token refreshes under the lease by provider and outcome (refreshed, already_fresh, needs_reconnect, served_stale, failed, error)",
                None,
                MetricType::Counter,
            )?;
            for (provider, outcome, n) in self.tokens.refresh_outcomes() {
                let labels = [("provider", provider.as_str()), ("outcome", outcome)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "singleflight_joins",
            "GetAccessToken calls that joined a refresh already in flight in this process",
            stats.flight_joins,
        )?;
        counter(
            &mut encoder,
            "lease_waits",
            "Refreshes that found the lease held by another replica and waited for its result",
            stats.lease_waits,
        )?;
        counter(
            &mut encoder,
            "provider_refresh_attempts",
            "Refresh requests sent to providers, retries included",
            stats.provider_refreshes,
        )?;
        {
            let mut m = encoder.encode_descriptor(
                "provider_circuit_open",
                "1 while the provider's circuit breaker rejects refreshes after repeated failures, else 0",
                None,
                MetricType::Gauge,
            )?;
            for (provider, open) in self.tokens.circuit_states() {
                let labels = [("provider", provider.as_str())];
                ConstGauge::new(i64::from(open)).encode(m.encode_family(&labels)?)?;
            }
        }
        let cache = self.envelope.cache_stats();
        counter(
            &mut encoder,
            "dek_cache_hits",
            "Data-key lookups answered from memory (no KMS call)",
            cache.hits,
        )?;
        counter(
            &mut encoder,
            "dek_cache_misses",
            "Data-key lookups that had to ask the key provider",
            cache.misses,
        )?;
        size_gauge(
            &mut encoder,
            "dek_cache_entries",
            "Unwrapped data keys held in memory",
            cache.entries,
        )
    }
}

/// Reads the audit writer's counters at scrape time.
struct AuditCollector {
    audit: Audit,
}

impl fmt::Debug for AuditCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditCollector")
    }
}

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = self.audit.stats();
        counter(
            &mut encoder,
            "audit_events_recorded",
            "Events handed to the buffered audit writer (reads, denials, issued tokens)",
            s.recorded,
        )?;
        counter(
            &mut encoder,
            "audit_events_written",
            "Buffered events written, as the sum of the counts of the rows written",
            s.events_written,
        )?;
        counter(
            &mut encoder,
            "audit_rows_written",
            "Rows written by the buffered audit writer",
            s.rows_written,
        )?;
        counter(
            &mut encoder,
            "audit_flushes",
            "Flushes of the buffered audit writer that wrote rows (one transaction each)",
            s.flushes,
        )?;
        counter(
            &mut encoder,
            "audit_events_merged",
            "Events counted in an `overflow` row without their detail because the audit buffer held its maximum of distinct events",
            s.merged,
        )?;
        counter_family(
            &mut encoder,
            "audit_events_dropped",
            "Audit events lost: buffer_full (even rows without detail were at their maximum) or write_failed (the database refused the batch)",
            "reason",
            &[
                ("buffer_full", s.dropped_full),
                ("write_failed", s.dropped_write_failed),
            ],
        )?;
        size_gauge(
            &mut encoder,
            "audit_pending",
            "Distinct audit events waiting for the next flush",
            s.pending,
        )
    }
}

/// Reads the webhook dispatcher's counters at scrape time.
#[derive(Debug)]
struct WebhookCollector {
    dispatcher: Arc<WebhookDispatcher>,
}

impl Collector for WebhookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let WebhookStats {
            delivered,
            rejected,
            failed,
            endpoints_disabled,
        } = self.dispatcher.stats();
        let outcomes = [
            ("delivered", delivered),
            ("rejected", rejected),
            ("failed", failed),
        ];
        counter_family(
            &mut encoder,
            "webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), rejected (another HTTP status), failed (no answer: unreachable, timed out, refused by the outbound policy)",
            "outcome",
            &outcomes,
        )?;
        counter(
            &mut encoder,
            "webhook_endpoints_disabled",
            "Webhook endpoints this replica disabled after they failed for events.webhook_disable_after_seconds",
            endpoints_disabled,
        )
    }
}
