//! Health that means something: a background task pings the database (every few seconds) and
//! does a key-provider round trip (less often), and turns `grpc.health.v1` NOT_SERVING for ""
//! and both API services while either fails, SERVING again once both answer. The extra service
//! name `liveness` stays SERVING until shutdown: a liveness probe must not restart pods because
//! PostgreSQL is down (they could not start without it either). On shutdown everything turns
//! NOT_SERVING before the listener drains.

use crate::runtime::config::HealthConfig;
use crate::runtime::metrics::Metrics;
use cb_crypto::Envelope;
use cb_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Health service name that only says the process runs (for liveness probes).
pub const LIVENESS: &str = "liveness";

/// The health service names that follow the dependencies: "" and both API services.
pub const READINESS: [&str; 3] = [
    "",
    "credentialbroker.v1.CredentialService",
    "credentialbroker.v1.MembershipService",
];

/// Sets the readiness names (not `liveness`) to `status`.
pub async fn set_ready(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in READINESS {
        reporter.set_service_status(name, status).await;
    }
}

/// Shutdown: turns every name NOT_SERVING (load balancers and health-checking clients stop
/// sending new calls), then forgets them, which ends open `Watch` streams after they delivered
/// NOT_SERVING (an endless stream would otherwise hold the drain until the grace period ends).
pub async fn set_stopping(reporter: &mut HealthReporter) {
    set_ready(reporter, false).await;
    reporter
        .set_service_status(LIVENESS, ServingStatus::NotServing)
        .await;
    for name in READINESS.into_iter().chain([LIVENESS]) {
        reporter.clear_service_status(name).await;
    }
}

/// What the monitor checks.
pub struct Dependencies {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The envelope (its key provider is the KMS).
    pub envelope: Arc<Envelope>,
}

/// One checked dependency and whether its last check passed.
struct Dependency {
    /// Its name in the `dependency_up` metric.
    metric: &'static str,
    /// Its name in the log.
    label: &'static str,
    up: bool,
}

impl Dependency {
    /// Up: start-up just used it.
    fn new(metric: &'static str, label: &'static str) -> Self {
        Self {
            metric,
            label,
            up: true,
        }
    }

    /// Runs one check within `timeout`; a failure is logged when it is new, a change of state
    /// goes to the metric.
    async fn check<E: std::fmt::Display>(
        &mut self,
        timeout: Duration,
        check: impl Future<Output = Result<(), E>>,
        metrics: &Metrics,
    ) {
        let label = self.label;
        let up = match tokio::time::timeout(timeout, check).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if self.up {
                    tracing::warn!(error = %e, "{label} check failed");
                }
                false
            }
            Err(_) => {
                if self.up {
                    tracing::warn!(
                        timeout_seconds = timeout.as_secs(),
                        "{label} check timed out"
                    );
                }
                false
            }
        };
        if up != self.up {
            metrics.set_dependency_up(self.metric, up);
            if up {
                tracing::info!("{label} reachable again");
            }
        }
        self.up = up;
    }
}

/// Starts the monitor; the statuses start SERVING (start-up just used both dependencies).
pub async fn spawn_monitor(
    reporter: HealthReporter,
    deps: Dependencies,
    config: &HealthConfig,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    set_ready(&reporter, true).await;
    metrics.set_dependency_up("database", true);
    metrics.set_dependency_up("kms", true);
    let timeout = Duration::from_secs(config.check_timeout_seconds);
    let mut db_tick = tokio::time::interval(Duration::from_secs(config.database_check_seconds));
    let mut kms_tick = tokio::time::interval(Duration::from_secs(config.kms_check_seconds));
    db_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    kms_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        let mut db = Dependency::new("database", "database");
        let mut kms = Dependency::new("kms", "key provider");
        let mut ready = true;
        loop {
            tokio::select! {
                _ = db_tick.tick() => db.check(timeout, deps.store.ping(), &metrics).await,
                _ = kms_tick.tick() => kms.check(timeout, deps.envelope.self_check(), &metrics).await,
            }
            let (db_up, kms_up) = (db.up, kms.up);
            let now_ready = db_up && kms_up;
            if now_ready != ready {
                if now_ready {
                    tracing::info!("health: SERVING");
                } else {
                    tracing::warn!(database = db_up, kms = kms_up, "health: NOT_SERVING");
                }
                set_ready(&reporter, now_ready).await;
                ready = now_ready;
            }
        }
    })
}
