//! Building and running the server: storage, keys, services, health, reflection, shutdown.

use crate::grpc::credential::CredentialApi;
use crate::grpc::membership::MembershipApi;
use crate::grpc::oauth_app::OAuthAppApi;
use crate::grpc::webhook::WebhookApi;
use crate::layers::assertion::{ActorPolicy, ActorVerifier};
use crate::layers::auth::AuthLayer;
use crate::layers::workload::WorkloadVerifier;
use crate::runtime::config::{Config, EnvSource, ProcessEnv};
use crate::runtime::error::StartupError;
use crate::runtime::keys::{self, KeyHealth, KeyOptions};
use crate::runtime::providers::OAuthGateway;
use cb_broker::audit::Audit;
use cb_broker::clock::{Clock, SystemClock};
use cb_broker::connect::ConnectService;
use cb_broker::events::EventService;
use cb_broker::gateway::ProviderGateway;
use cb_broker::grants::RunGrantConfig;
use cb_broker::issuance::{
    IssuanceConfig, StatsSnapshot, TokenCache, TokenCacheConfig, TokenService,
};
use cb_broker::members::MembershipService;
use cb_broker::oauth_apps::{AppClients, OAuthAppService};
use cb_broker::service::CredentialService;
use cb_broker::webhook_endpoints::WebhookEndpointService;
use cb_crypto::Envelope;
use cb_proto::v1::credential_service_server::CredentialServiceServer;
use cb_proto::v1::membership_service_server::MembershipServiceServer;
use cb_proto::v1::o_auth_app_service_server::OAuthAppServiceServer;
use cb_proto::v1::webhook_service_server::WebhookServiceServer;
use cb_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Replaceable parts for tests (time, environment); production uses the defaults.
#[derive(Clone)]
pub struct BuildOptions {
    /// Source of "now".
    pub clock: Arc<dyn Clock>,
    /// Where provider client ids/secrets overrides are read from.
    pub env: Arc<dyn EnvSource + Send + Sync>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            env: Arc::new(ProcessEnv),
        }
    }
}

/// Opens and migrates the configured database.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    let url = config.database.url.redacted();
    let db_err = |source| StartupError::Database {
        url: url.clone(),
        source,
    };
    let store = cb_store::open(
        config.database.url.expose(),
        config.database.max_connections,
    )
    .await
    .map_err(db_err)?;
    store.migrate().await.map_err(db_err)?;
    Ok(store)
}

/// Opens the configured key provider (creating a local key file on first start) and runs the
/// start-up self-check through it: a round trip through the key. A failure refuses the start,
/// naming the key and what to check, unless `keys.start_degraded` (then [`KeyHealth::Degraded`]).
pub async fn open_envelope(
    config: &Config,
    env: &dyn EnvSource,
) -> Result<(Arc<Envelope>, KeyHealth), StartupError> {
    let degraded = config.keys.start_degraded;
    let provider = keys::open_key_provider(
        &config.keys,
        env,
        KeyOptions {
            create_local: true,
            allow_degraded: degraded,
            ..KeyOptions::default()
        },
    )
    .await?;
    let envelope = Arc::new(Envelope::new(provider, keys::dek_cache(&config.keys)));
    let health = keys::self_check(&envelope, &config.keys, degraded).await?;
    Ok((envelope, health))
}

/// A started broker.
pub struct Application {
    local_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The plaintext health-only listener (`health.listen`), stopped with the main one.
    probes: Option<JoinHandle<()>>,
    probes_addr: Option<SocketAddr>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    tokens: Arc<TokenService>,
    events: Arc<EventService>,
    audit: Audit,
    health: tonic_health::server::HealthReporter,
    metrics: Arc<crate::runtime::metrics::Metrics>,
    metrics_addr: Option<SocketAddr>,
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "broker".into())
}

/// Background work: cache invalidation from every replica, refresh-ahead, usage and audit upkeep.
fn spawn_background(
    config: &Config,
    store: &Arc<dyn Store>,
    tokens: &Arc<TokenService>,
    audit: &Audit,
    clock: &Arc<dyn Clock>,
    events: &Arc<EventService>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(tokens.clone().follow_changes())];
    let t = tokens.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            t.flush_usage().await;
        }
    }));
    let scan = config.tokens.refresh_scan_interval_seconds;
    if scan > 0 {
        let t = tokens.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(scan));
            loop {
                tick.tick().await;
                t.refresh_due(100).await;
            }
        }));
    }
    let retention = (config.audit.retention_days > 0)
        .then(|| Duration::from_secs(config.audit.retention_days.saturating_mul(86_400)));
    let (audit, store, clock, events) =
        (audit.clone(), store.clone(), clock.clone(), events.clone());
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Some(r) = retention {
                match audit.prune(r).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "old audit events pruned"),
                    Err(e) => tracing::warn!(error = %e, "audit pruning failed"),
                }
            }
            match events.warn_expiring().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(marked = n, "grants ending soon marked EXPIRING"),
                Err(e) => tracing::warn!(error = %e, "expiring scan failed"),
            }
            match events.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "old credential events pruned"),
                Err(e) => tracing::warn!(error = %e, "credential event pruning failed"),
            }
            let day_ago = clock.now().minus(Duration::from_secs(86_400)).as_millis();
            if let Err(e) = store.prune_connect_sessions(day_ago).await {
                tracing::warn!(error = %e, "connect session pruning failed");
            }
            // Kept a day past expiry: a late executor is told EXPIRED rather than INVALID.
            if let Err(e) = store.prune_run_grants(day_ago).await {
                tracing::warn!(error = %e, "run grant pruning failed");
            }
        }
    }));
    tasks
}

impl Application {
    /// Opens storage and keys, checks them, binds the listener and starts serving.
    pub async fn start(config: &Config, options: BuildOptions) -> Result<Self, StartupError> {
        config.validate()?;
        let metrics = crate::runtime::metrics::Metrics::new();
        let store = open_store(config).await?;
        let (envelope, key_health) = open_envelope(config, options.env.as_ref()).await?;
        // The same key provider behind spans and metrics, with a fresh DEK cache.
        let envelope = Arc::new(Envelope::new(
            crate::runtime::instrument::InstrumentedKeyProvider::wrap(
                envelope.provider().clone(),
                metrics.clone(),
            ),
            keys::dek_cache(&config.keys),
        ));
        let gateway: Arc<dyn ProviderGateway> =
            crate::runtime::instrument::InstrumentedGateway::wrap(
                Arc::new(
                    OAuthGateway::from_config(config, options.env.as_ref())
                        .map_err(StartupError::Providers)?,
                ),
                metrics.clone(),
            );
        let clock = options.clock;
        let audit = Audit::new(store.clone(), clock.clone());
        let audit_for_shutdown = audit.clone();
        let cache = Arc::new(TokenCache::new(TokenCacheConfig {
            max_entries: config.tokens.cache_max_entries,
            ..TokenCacheConfig::default()
        }));
        let issuance_config = IssuanceConfig {
            default_min_valid: Duration::from_secs(config.tokens.default_min_valid_seconds),
            lease_duration: Duration::from_secs(config.tokens.lease_seconds),
            retry_budget: Duration::from_secs(
                config
                    .oauth
                    .http_timeout_seconds
                    .saturating_mul(u64::from(config.tokens.provider_attempts.max(1))),
            ),
            provider_attempts: config.tokens.provider_attempts,
            refresh_ahead_window: Duration::from_secs(config.tokens.refresh_ahead_seconds),
            breaker_cooldown: Duration::from_secs(config.tokens.breaker_cooldown_seconds),
            membership_max_age: Duration::from_secs(config.tokens.cache_max_age_seconds),
            refresh_ahead_concurrency: config.tokens.refresh_ahead_concurrency,
            ..IssuanceConfig::default()
        };
        let credentials = Arc::new(CredentialService::new(
            store.clone(),
            envelope.clone(),
            clock.clone(),
            gateway.clone(),
            cache.clone(),
            audit.clone(),
            issuance_config.refresh_ahead_window,
        ));
        match key_health {
            KeyHealth::Ok => {
                keys::check_stored_tokens_open(store.as_ref(), &credentials, config).await?;
            }
            KeyHealth::Degraded => tracing::warn!(
                "stored credentials not checked at start: the key provider is not usable yet"
            ),
        }
        let holder = format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple());
        let tokens = Arc::new(
            TokenService::new(
                store.clone(),
                envelope.clone(),
                clock.clone(),
                gateway.clone(),
                audit.clone(),
                cache.clone(),
                issuance_config,
                holder,
            )
            .with_run_grants(RunGrantConfig {
                default_lifetime: Duration::from_secs(config.run_grants.default_lifetime_seconds),
                max_lifetime: Duration::from_secs(config.run_grants.max_lifetime_seconds),
                cache_max_entries: config.run_grants.cache_max_entries,
                cache_max_age: Duration::from_secs(config.tokens.cache_max_age_seconds),
            }),
        );
        metrics.register_domain(tokens.clone(), envelope.clone());
        metrics.register_audit(audit.clone());
        let kms_check = envelope.clone();
        let (app_envelope, app_gateway) = (envelope.clone(), gateway.clone());
        let webhook_envelope = envelope.clone();
        let connect = Arc::new(ConnectService::new(
            store.clone(),
            envelope,
            clock.clone(),
            gateway,
            audit.clone(),
            cache.clone(),
            credentials.clone(),
        ));
        let oauth_apps = Arc::new(OAuthAppService::new(
            AppClients::new(store.clone(), app_envelope),
            clock.clone(),
            app_gateway,
            cache.clone(),
            audit.clone(),
        ));
        let webhook_endpoints = Arc::new(WebhookEndpointService::new(
            store.clone(),
            webhook_envelope.clone(),
            clock.clone(),
            audit.clone(),
            config.outbound.policy(),
        ));
        let members = Arc::new(MembershipService::new(
            store.clone(),
            clock.clone(),
            audit.clone(),
            cache,
        ));
        let callers = config.callers();
        if callers.is_development() {
            tracing::warn!(
                listen = %config.listen,
                "no calling services configured: caller authentication is OFF (development mode, loopback only)"
            );
        }
        if config.plaintext_bearer_off_loopback() {
            tracing::warn!(
                listen = %config.listen,
                "PLAINTEXT LISTENER OFF LOOPBACK: bearer tokens are protected only by the service \
                 mesh (tls.mesh_terminates_tls = true); make sure every caller reaches the broker \
                 through it"
            );
        }
        let actors = actor_policy(config, &clock)?;
        let workloads = crate::layers::workload::Verifiers {
            kubernetes: match &config.workload_identity {
                Some(w) => Some(Arc::new(WorkloadVerifier::from_config(
                    w,
                    &callers.workloads,
                    clock.clone(),
                )?)),
                None => None,
            },
            spiffe: match &config.spiffe {
                Some(sp) => Some(Arc::new(WorkloadVerifier::from_spiffe(
                    sp,
                    &callers.spiffe,
                    clock.clone(),
                )?)),
                None => None,
            },
        };
        let events = Arc::new(EventService::new(
            store.clone(),
            audit.clone(),
            clock.clone(),
            config.events.domain(),
        ));
        let mut background = spawn_background(config, &store, &tokens, &audit, &clock, &events);
        let holder = format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple());
        let dispatcher =
            crate::runtime::webhooks::dispatcher(config, &store, webhook_envelope, &clock, holder)?;
        metrics.register_webhooks(dispatcher.clone());
        let poll = Duration::from_millis(config.events.webhook_poll_ms.max(10));
        background.push(tokio::spawn(dispatcher.run(poll)));
        // Each JWT issuer with a JWKS (URL or file) gets its refresher.
        let issuers = [
            (
                actors.verifier.as_ref().map(|v| v.keys()),
                "actor assertions",
                config
                    .actor_assertions
                    .as_ref()
                    .map(|a| a.jwks_refresh_seconds),
            ),
            (
                workloads.kubernetes.as_ref().map(|w| w.keys()),
                "workload identity",
                config
                    .workload_identity
                    .as_ref()
                    .map(|w| w.jwks_refresh_seconds),
            ),
            (
                workloads.spiffe.as_ref().map(|w| w.keys()),
                "spiffe bundle",
                config.spiffe.as_ref().map(|sp| sp.jwks_refresh_seconds),
            ),
        ];
        for (keys, what, every) in issuers {
            if let Some(keys) = keys.filter(|k| k.has_jwks()) {
                let every = every.unwrap_or(300);
                let refresher = crate::layers::jwt::start_refreshing(keys.clone(), what, every);
                background.push(refresher.await);
            }
        }
        background.push(metrics.spawn_credentials_gauge(
            store.clone(),
            Duration::from_secs(config.telemetry.credentials_gauge_seconds),
        ));
        let metrics_addr = match config.telemetry.metrics_listen {
            Some(addr) => {
                let (bound, task) = metrics
                    .serve(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?;
                background.push(task);
                Some(bound)
            }
            None => None,
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        background.push(
            crate::runtime::health::spawn_monitor(
                health.clone(),
                crate::runtime::health::Dependencies {
                    store: store.clone(),
                    envelope: kms_check,
                },
                &config.health,
                metrics.clone(),
            )
            .await,
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cb_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.ErrorInfo & co., so grpcurl can print the reasons of errors.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(StartupError::Reflection)?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(StartupError::Reflection)?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: config.listen,
            source,
        })?;
        let api = CredentialApi::new(
            credentials,
            tokens.clone(),
            connect,
            config.run_grant_required_callers(),
            events.clone(),
        );
        let limits = &config.limits;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits.max_streams_per_connection))
            .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_seconds)))
            .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_seconds)));
        if config.tls.enabled() {
            builder = builder
                .tls_config(server_tls(&config.tls)?)
                .map_err(|e| StartupError::Tls(e.to_string()))?;
        }
        let max_request = config.limits.max_request_bytes;
        // Outermost first: span + metrics + deadline, load shedding, workload tokens, then
        // authentication, the caller's concurrency limit (it needs the identity the auth layer
        // found) and the actor (verified assertion or, where allowed, plain metadata).
        let router = builder
            .layer(crate::layers::observe::ObserveLayer::new(metrics.clone()))
            .layer(crate::layers::overload::OverloadLayer::new(
                limits.max_concurrent_calls,
                metrics.clone(),
            ))
            .layer(crate::layers::workload::WorkloadLayer::new(workloads))
            .layer(AuthLayer::new(callers, audit.clone()))
            .layer(crate::layers::limits::CallerLimitLayer::new(
                config.limits.max_concurrent_per_caller,
                metrics.clone(),
            ))
            .layer(crate::layers::assertion::ActorLayer::new(actors, audit))
            .add_service(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(CredentialServiceServer::new(api).max_decoding_message_size(max_request))
            .add_service(
                MembershipServiceServer::new(MembershipApi::new(members))
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                OAuthAppServiceServer::new(OAuthAppApi::new(oauth_apps))
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                WebhookServiceServer::new(WebhookApi::new(webhook_endpoints))
                    .max_decoding_message_size(max_request),
            );
        let incoming =
            crate::runtime::listener::incoming(listener, limits.connections(), metrics.clone());
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let (mut probes, mut probes_addr) = (None, None);
        if let Some(addr) = config.health.listen {
            let probe_listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })?;
            probes_addr = probe_listener.local_addr().ok();
            let only_health =
                tonic::transport::Server::builder().add_service(health_service.clone());
            probes = Some(tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(probe_listener);
                if let Err(e) = only_health.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "health listener failed");
                }
            }));
            tracing::info!(addr = ?probes_addr, "health checks (plaintext, grpc.health.v1 only) listening");
        }
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        // Logged once bound: with `listen = "…:0"` this line is how a supervisor (and the e2e
        // tests' child brokers) learns the port, so keep its message and `addr` field stable.
        tracing::info!(addr = %local_addr, database = %config.database.url.redacted(), "credential broker listening");
        Ok(Self {
            local_addr,
            shutdown: stop_tx,
            probes,
            probes_addr,
            server,
            background,
            tokens,
            events,
            audit: audit_for_shutdown,
            health,
            metrics,
            metrics_addr,
        })
    }

    /// Where the Prometheus endpoint listens, when `telemetry.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics in OpenMetrics text (what `GET /metrics` returns).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Runs one refresh-ahead pass now (the background task does this periodically).
    pub async fn refresh_due(&self) -> usize {
        self.tokens.refresh_due(100).await
    }

    /// One pass of the expiring-grant scan (it runs hourly in the background).
    pub async fn warn_expiring(&self) -> Result<usize, cb_broker::BrokerError> {
        self.events.warn_expiring().await
    }

    /// Issuance counters (cache hits, provider refreshes, …).
    pub fn issuance_stats(&self) -> StatsSnapshot {
        self.tokens.stats()
    }

    /// Writes the audit events that hot paths buffer now, instead of at the writer's next tick:
    /// tests read the audit log right after the calls they audit.
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
    }

    /// The buffered audit writer's counters (also exported as metrics).
    pub fn audit_stats(&self) -> cb_broker::audit::AuditStats {
        self.audit.stats()
    }

    /// Where the plaintext health-only listener is bound, when `health.listen` is set.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.probes_addr
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls and waits up to `grace` for in-flight calls to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        for task in &self.background {
            task.abort();
        }
        // Probes and health-checking clients see NOT_SERVING before the listener drains.
        crate::runtime::health::set_stopping(&mut self.health).await;
        self.tokens.flush_usage().await;
        self.audit.flush().await;
        // Watch streams never end by themselves: close them so the listener can drain.
        self.events.stop_watches();
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(grace, &mut self.server).await {
            Ok(Ok(Ok(()))) => tracing::info!("stopped"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
            Ok(Err(e)) => tracing::error!(error = %e, "server task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "in-flight calls did not finish in time"
                );
                self.server.abort();
            }
        }
        // Probes answered NOT_SERVING while the main listener drained; now they stop too.
        if let Some(probes) = self.probes.take() {
            probes.abort();
        }
    }
}

/// Who must prove the actor with a signed assertion, and the verifier of those assertions.
fn actor_policy(config: &Config, clock: &Arc<dyn Clock>) -> Result<ActorPolicy, StartupError> {
    let verifier = match &config.actor_assertions {
        Some(a) => {
            let v = ActorVerifier::from_config(a, clock.clone())?;
            tracing::info!(
                issuer = %a.issuer,
                audience = %a.audience,
                jwks_url = a.jwks_url.as_deref().unwrap_or(""),
                static_keys = a.public_keys.len(),
                "actor assertions verified"
            );
            Some(Arc::new(v))
        }
        None => None,
    };
    let unsigned_callers = config.unsigned_actor_callers();
    for name in &unsigned_callers {
        tracing::warn!(
            caller = %name,
            "caller may name the actor in plain metadata (unsigned_actor = true): its actors are not verified"
        );
    }
    Ok(ActorPolicy {
        unsigned_callers,
        verifier,
    })
}

/// The listener's TLS settings: server identity and, for mTLS callers, the client CA. Client
/// certificates are optional at the TLS layer so token-authenticated callers can share the port;
/// the auth layer decides who may call.
fn server_tls(
    tls: &crate::runtime::config::TlsConfig,
) -> Result<tonic::transport::ServerTlsConfig, StartupError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StartupError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Err(StartupError::Tls(
            "cert_file and key_file are required".into(),
        ));
    };
    let mut cfg = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
    );
    if let Some(ca) = &tls.client_ca_file {
        cfg = cfg
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(cfg)
}
