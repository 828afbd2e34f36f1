//! Token issuance: `GetAccessToken` and the refresh that keeps it exactly-once.
//!
//! A request is served from memory ([`cache`]) when a cached token stays valid long enough (no
//! database, no KMS). Otherwise the caller joins the single flight for that credential in this
//! process ([`coordinator`]): its leader takes the cross-replica refresh lease, re-reads the row
//! and only then calls the provider, through the retry and circuit-breaker policy ([`retry`]).
//! The lease's heartbeat, the refresh intent and the token sets waiting for the database live
//! in `lease`. Expiry arithmetic and the token merge are pure functions ([`schedule`]).

mod cache;
mod coordinator;
mod lease;
mod retry;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use cache::{TokenCache, TokenCacheConfig};
pub use retry::{Sleeper, TokioSleeper};
pub use schedule::next_refresh_at;

use crate::access::{Caller, ServiceRole};
use crate::audit::{Audit, Outcome};
use crate::clock::{Clock, Timestamp};
use crate::error::BrokerError;
use crate::gateway::ProviderGateway;
use crate::grants::{RunGrantConfig, RunGrants};
use crate::policy::{Policy, actor_required, require_token_issuer};
use crate::random::{Random, SystemRandom};
use crate::sharded::ShardedMap;
use crate::types::CredentialId;
use cache::Entry;
use cb_crypto::Envelope;
use cb_store::{ChangeEvent, RUN_GRANT_CHANGE_PREFIX, Store, UsageRecord};
use coordinator::FlightResult;
use retry::{RetryLimits, RetryPolicy};
use secrecy::SecretString;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Tunables of issuance and refresh.
#[derive(Clone, Debug)]
pub struct IssuanceConfig {
    /// `min_valid_for` when the caller gives none (Google's libraries use 3 min 45 s).
    pub default_min_valid: Duration,
    /// Largest `min_valid_for` accepted.
    pub max_min_valid: Duration,
    /// Refresh lease lifetime without renewal: the holder renews it every third of it, so a
    /// dead holder is noticed within it. Longer than one provider attempt.
    pub lease_duration: Duration,
    /// Provider attempts of one refresh start within this time after the first.
    pub retry_budget: Duration,
    /// Provider attempts per refresh (transient failures only).
    pub provider_attempts: u32,
    /// First backoff delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// Refresh ahead when the access token expires within this window.
    pub refresh_ahead_window: Duration,
    /// Longest a cached entry (the token with the members allowed to use it) is served before
    /// the database is read again, should an invalidation have been missed without the change
    /// feed noticing.
    pub membership_max_age: Duration,
    /// How often a waiting replica re-reads the row.
    pub follower_poll: Duration,
    /// Refresh-ahead refreshes run at once, at most.
    pub refresh_ahead_concurrency: usize,
    /// Consecutive transient failures that open a provider's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit rejects calls before letting one through.
    pub breaker_cooldown: Duration,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            default_min_valid: Duration::from_secs(225),
            max_min_valid: Duration::from_secs(3600),
            lease_duration: Duration::from_secs(15),
            retry_budget: Duration::from_secs(30),
            provider_attempts: 3,
            backoff_base: Duration::from_millis(200),
            refresh_ahead_window: Duration::from_secs(600),
            membership_max_age: Duration::from_secs(60),
            follower_poll: Duration::from_millis(50),
            refresh_ahead_concurrency: 8,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// An issued access token: the only value of the domain that carries a token out. A view of the
/// cached entry, not a copy: the response is built from it with the token copied once.
#[derive(Clone, Debug)]
pub struct IssuedToken(Arc<Entry>);

impl IssuedToken {
    /// The access token.
    pub fn access_token(&self) -> &SecretString {
        self.0.access_token()
    }

    /// Token type ("Bearer" for nearly every provider).
    pub fn token_type(&self) -> &str {
        self.0.token_type()
    }

    /// Expiry, if known.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.0.expires_at()
    }

    /// Granted scopes.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.scopes()
    }

    /// Non-secret provider extras.
    pub fn extras(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.extras()
    }
}

/// Where a token request comes from (recorded as usage and in the audit log).
#[derive(Clone, Debug, Default)]
pub struct UsageContext {
    /// Workflow id.
    pub workflow_id: Option<String>,
    /// Block id.
    pub block_id: Option<String>,
    /// Execution id.
    pub execution_id: Option<String>,
    /// The run grant the caller presented, and whether it had to present one.
    pub run_grant: RunGrantUse,
}

/// The run grant of a token request ([`crate::grants`]).
#[derive(Clone, Debug, Default)]
pub struct RunGrantUse {
    /// The grant presented (`x-run-grant`), if any.
    pub presented: Option<SecretString>,
    /// The caller must present one (`run_grants = "required"`).
    pub required: bool,
}

/// The context an issuance is recorded with, after the run grant was applied.
struct Served {
    usage: UsageContext,
    /// The id of the run grant that authorized it.
    run_grant_id: Option<String>,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct IssuanceStats {
    /// Requests answered from memory.
    pub cache_hits: AtomicU64,
    /// Requests that needed the database.
    pub cache_misses: AtomicU64,
    /// Requests that joined a flight led by another request.
    pub flight_joins: AtomicU64,
    /// Provider refresh calls made.
    pub provider_refreshes: AtomicU64,
    /// Times a leader found the lease held by another replica and waited.
    pub lease_waits: AtomicU64,
    /// Successful issuances answered from memory (the hot path: an atomic, no lock).
    pub issued_ok_hit: AtomicU64,
    /// Successful issuances that needed the database.
    pub issued_ok_miss: AtomicU64,
    /// Failed issuances: (error reason, answered from memory) → count.
    pub issued: Mutex<BTreeMap<(&'static str, bool), u64>>,
    /// Refreshes under the lease: (provider, outcome) → count. Outcomes: `refreshed`,
    /// `already_fresh` (another replica did it), `needs_reconnect`, `served_stale` (provider
    /// failed, the old token is still valid), `client_rejected` (the provider refused the
    /// client registration), `failed`.
    pub refreshes: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// A snapshot of [`IssuanceStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`IssuanceStats::cache_hits`].
    pub cache_hits: u64,
    /// See [`IssuanceStats::cache_misses`].
    pub cache_misses: u64,
    /// See [`IssuanceStats::flight_joins`].
    pub flight_joins: u64,
    /// See [`IssuanceStats::provider_refreshes`].
    pub provider_refreshes: u64,
    /// See [`IssuanceStats::lease_waits`].
    pub lease_waits: u64,
}

/// Token issuance with exactly-once refresh.
pub struct TokenService {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    clock: Arc<dyn Clock>,
    gateway: Arc<dyn ProviderGateway>,
    audit: Audit,
    policy: Policy,
    config: IssuanceConfig,
    cache: Arc<TokenCache>,
    holder: String,
    random: Arc<dyn Random>,
    retry: RetryPolicy,
    /// The flight per credential in this process: the leader's `min_valid` and its result.
    flights: Mutex<HashMap<String, (Duration, watch::Receiver<FlightResult>)>>,
    /// Refreshed token sets the database could not take yet (see [`lease::Pending`]).
    pending: lease::PendingWrites,
    /// The change feed session the cache was last emptied for (see `cache_usable`).
    feed_session: AtomicU64,
    /// Tests pause a leader between its reads and its cache put: (reached, resume).
    #[cfg(test)]
    before_put: Mutex<Option<(Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>>,
    /// Last use per credential and workflow ("" for none) since the last flush: sharded, so a
    /// cache hit takes no process-wide lock, and allocating only for a pair not seen yet.
    usage: ShardedMap<String, crate::sharded::Map<String, i64>>,
    stats: IssuanceStats,
    grants: Arc<RunGrants>,
    apps: crate::oauth_apps::AppClients,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections leaves consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TokenService {
    /// Wires issuance; `holder` names this replica in refresh leases.
    #[allow(clippy::too_many_arguments)] // the coordinator's collaborators, each needed
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn ProviderGateway>,
        audit: Audit,
        cache: Arc<TokenCache>,
        config: IssuanceConfig,
        holder: String,
    ) -> Self {
        let random: Arc<dyn Random> = Arc::new(SystemRandom);
        let limits = RetryLimits {
            attempts: config.provider_attempts,
            backoff_base: config.backoff_base,
            budget: config.retry_budget,
            breaker_threshold: config.breaker_threshold,
            breaker_cooldown: config.breaker_cooldown,
        };
        let grants = Arc::new(RunGrants::new(
            store.clone(),
            clock.clone(),
            audit.clone(),
            RunGrantConfig::default(),
        ));
        Self {
            grants,
            apps: crate::oauth_apps::AppClients::new(store.clone(), envelope.clone()),
            policy: Policy::new(store.clone()),
            retry: RetryPolicy::new(
                limits,
                clock.clone(),
                random.clone(),
                Arc::new(TokioSleeper),
            ),
            store,
            envelope,
            clock,
            gateway,
            audit,
            config,
            cache,
            holder,
            random,
            flights: Mutex::new(HashMap::new()),
            pending: lease::PendingWrites::default(),
            feed_session: AtomicU64::new(0),
            #[cfg(test)]
            before_put: Mutex::new(None),
            usage: ShardedMap::default(),
            stats: IssuanceStats::default(),
        }
    }

    /// Sets the lifetimes and cache limits of run grants.
    pub fn with_run_grants(mut self, config: RunGrantConfig) -> Self {
        self.grants = Arc::new(RunGrants::new(
            self.store.clone(),
            self.clock.clone(),
            self.audit.clone(),
            config,
        ));
        self
    }

    /// The run grants GetAccessToken verifies (created and revoked through it too).
    pub fn run_grants(&self) -> &Arc<RunGrants> {
        &self.grants
    }

    /// Replaces the source of jitter (tests pin the draw).
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.retry.set_random(random.clone());
        self.random = random;
        self
    }

    /// Replaces how retry delays are waited out (tests move a clock instead of sleeping).
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.retry.set_sleeper(sleeper);
        self
    }

    /// Issuance results since start: (`OK` or the error reason, cache hit, count).
    pub fn issuance_results(&self) -> Vec<(&'static str, bool, u64)> {
        let ok = [
            ("OK", true, self.stats.issued_ok_hit.load(Ordering::Relaxed)),
            (
                "OK",
                false,
                self.stats.issued_ok_miss.load(Ordering::Relaxed),
            ),
        ];
        let failed = lock(&self.stats.issued)
            .iter()
            .map(|(&(result, hit), &n)| (result, hit, n))
            .collect::<Vec<_>>();
        ok.into_iter()
            .filter(|(_, _, n)| *n > 0)
            .chain(failed)
            .collect()
    }

    /// Refreshes under the lease since start: (provider, outcome, count).
    pub fn refresh_outcomes(&self) -> Vec<(String, &'static str, u64)> {
        lock(&self.stats.refreshes)
            .iter()
            .map(|((provider, outcome), &n)| (provider.clone(), *outcome, n))
            .collect()
    }

    /// Each provider's circuit breaker: (provider, open now) for every provider seen so far.
    pub fn circuit_states(&self) -> Vec<(String, bool)> {
        self.retry.circuit_states()
    }

    fn count_refresh(&self, provider: &str, outcome: &'static str) {
        tracing::Span::current().record("outcome", outcome);
        *lock(&self.stats.refreshes)
            .entry((provider.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Counters since start.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        StatsSnapshot {
            cache_hits: s.cache_hits.load(Ordering::Relaxed),
            cache_misses: s.cache_misses.load(Ordering::Relaxed),
            flight_joins: s.flight_joins.load(Ordering::Relaxed),
            provider_refreshes: s.provider_refreshes.load(Ordering::Relaxed),
            lease_waits: s.lease_waits.load(Ordering::Relaxed),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &IssuanceConfig {
        &self.config
    }

    /// Issues a token valid for at least `min_valid` (default when `None`). A run grant in
    /// `ctx` (required when `ctx.run_grant.required`) must cover `id`; the actor, workflow and
    /// execution are then the grant's, whatever the call claimed.
    pub async fn get_access_token(
        self: &Arc<Self>,
        caller: &Caller,
        id: &CredentialId,
        min_valid: Option<Duration>,
        ctx: UsageContext,
    ) -> Result<IssuedToken, BrokerError> {
        let mut hit = false;
        // The caller's role first: one that may not receive tokens learns nothing about grants.
        let granted = match require_token_issuer(caller) {
            Ok(()) => self.apply_run_grant(caller, id, ctx).await,
            Err(e) => Err((
                Served {
                    usage: ctx,
                    run_grant_id: None,
                },
                e,
            )),
        };
        let (caller, ctx, result) = match granted {
            Ok((caller, ctx)) => {
                let result = self.issue(&caller, id, min_valid, &mut hit).await;
                (caller, ctx, result)
            }
            Err((ctx, e)) => (Cow::Borrowed(caller), ctx, Err(e)),
        };
        match (&result, hit) {
            (Ok(_), true) => {
                self.stats.issued_ok_hit.fetch_add(1, Ordering::Relaxed);
            }
            (Ok(_), false) => {
                self.stats.issued_ok_miss.fetch_add(1, Ordering::Relaxed);
            }
            (Err(e), hit) => {
                *lock(&self.stats.issued)
                    .entry((e.reason(), hit))
                    .or_default() += 1;
            }
        }
        // `run_grant=… workflow=… block=… execution=…`, built in one allocation (every call).
        let parts = [
            ("run_grant", &ctx.run_grant_id),
            ("workflow", &ctx.usage.workflow_id),
            ("block", &ctx.usage.block_id),
            ("execution", &ctx.usage.execution_id),
        ];
        let size = parts
            .iter()
            .filter_map(|(k, v)| Some(k.len() + v.as_ref()?.len() + 2))
            .sum();
        let mut detail = String::with_capacity(size);
        for (k, v) in parts {
            if let Some(v) = v {
                if !detail.is_empty() {
                    detail.push(' ');
                }
                detail.extend([k, "=", v.as_str()]);
            }
        }
        let detail = (!detail.is_empty()).then_some(detail);
        // Issued tokens are audited through the buffer: no database write on the hot path.
        self.audit.record_later(
            &caller,
            "token.issue",
            Some(id.as_str()),
            Outcome::of(&result),
            detail,
        );
        if result.is_ok() {
            let at = self.clock.now().as_millis();
            let workflow = ctx.usage.workflow_id.unwrap_or_default();
            let mut shard = self.usage.shard(id.as_str());
            let workflows = match shard.get_mut(id.as_str()) {
                Some(w) => w,
                None => shard.entry(id.to_string()).or_default(),
            };
            match workflows.get_mut(&workflow) {
                Some(t) => *t = (*t).max(at),
                None => {
                    workflows.insert(workflow, at);
                }
            }
        }
        result
    }

    /// The caller and context a request is served as: unchanged without a run grant (refused
    /// when one is required), else the grant's actor, workflow and execution.
    async fn apply_run_grant<'c>(
        &self,
        caller: &'c Caller,
        id: &CredentialId,
        mut usage: UsageContext,
    ) -> Result<(Cow<'c, Caller>, Served), (Served, BrokerError)> {
        let presented = usage.run_grant.presented.take();
        let required = usage.run_grant.required;
        let Some(presented) = presented else {
            let served = Served {
                usage,
                run_grant_id: None,
            };
            if required {
                return Err((
                    served,
                    BrokerError::PermissionDenied {
                        reason: crate::error::reason::RUN_GRANT_REQUIRED,
                        message: "this caller must present the run's grant in x-run-grant".into(),
                    },
                ));
            }
            return Ok((Cow::Borrowed(caller), served));
        };
        let grant = match self
            .grants
            .resolve(&presented, id, self.cache_usable())
            .await
        {
            Ok(g) => g,
            Err(e) => {
                let served = Served {
                    usage,
                    run_grant_id: None,
                };
                return Err((served, e));
            }
        };
        usage.workflow_id = Some(grant.workflow_id.clone());
        usage.execution_id = Some(grant.execution_id.clone());
        let caller = Caller {
            service: caller.service.clone(),
            role: caller.role,
            actor: Some(grant.actor.clone()),
        };
        Ok((
            Cow::Owned(caller),
            Served {
                usage,
                run_grant_id: Some(grant.id.clone()),
            },
        ))
    }

    async fn issue(
        self: &Arc<Self>,
        caller: &Caller,
        id: &CredentialId,
        min_valid: Option<Duration>,
        hit: &mut bool,
    ) -> Result<IssuedToken, BrokerError> {
        let min_valid = min_valid.unwrap_or(self.config.default_min_valid);
        if min_valid > self.config.max_min_valid {
            return Err(BrokerError::invalid(
                "min_valid_for",
                format!(
                    "must be at most {} seconds",
                    self.config.max_min_valid.as_secs()
                ),
            ));
        }
        let now = self.clock.now();
        let cached = self
            .cache_usable()
            .then(|| self.cache.get(id.as_str()))
            .flatten()
            .filter(|e| e.loaded_at.plus(self.config.membership_max_age) > now);
        if let Some(e) = &cached {
            *hit = true;
            authorize(caller, e)?;
            if e.satisfies(now, min_valid) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(IssuedToken(e.clone()));
            }
        }
        *hit = false;
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        // A flight already under way for this credential costs this caller nothing to join: it
        // is authorized against the flight's entry (members read by the leader). In a storm only
        // the caller that starts a flight reads the database first.
        let entry = match self.join_existing(id.as_str(), min_valid).await {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => {
                // A failure says something about the credential: only to whom may see it.
                if cached.is_none() {
                    self.policy.load_visible(caller, id).await?;
                }
                return Err(e);
            }
            None => {
                if cached.is_none() {
                    // Cold path: check membership before doing any work for this caller.
                    self.policy.load_visible(caller, id).await?;
                }
                self.flight(id.as_str(), min_valid, false, None).await?
            }
        };
        authorize(caller, &entry)?;
        Ok(IssuedToken(entry))
    }

    /// Whether the cache may be served: only while the change feed delivers every other
    /// replica's invalidations. A new feed session (it reconnected) may have missed some: the
    /// cache is emptied first.
    fn cache_usable(&self) -> bool {
        let Some(session) = self.store.change_feed() else {
            return false;
        };
        // Read first: a write on every cache hit would bounce this cache line between cores.
        if self.feed_session.load(Ordering::Acquire) != session
            && self.feed_session.swap(session, Ordering::SeqCst) != session
        {
            self.cache.clear();
            self.grants.clear();
        }
        true
    }

    /// Refreshes credentials whose `next_refresh_at` has come (the background refresher): claims
    /// the leases of up to `limit` of them in one statement (skipping those other replicas hold
    /// or are claiming, never waiting on them) and refreshes them, at most
    /// `refresh_ahead_concurrency` at a time. Returns how many were refreshed or found fresh;
    /// failures are logged.
    pub async fn refresh_due(self: &Arc<Self>, limit: u32) -> usize {
        let now = self.clock.now();
        let lease = self.config.lease_duration;
        let claimed = match self
            .store
            .claim_due_refreshes(&self.holder, now.as_millis(), lease::millis(lease), limit)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "refresh-ahead scan failed");
                return 0;
            }
        };
        let permits = Arc::new(Semaphore::new(self.config.refresh_ahead_concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for row in claimed {
            // The heartbeat starts now: a claim waiting for a permit keeps its lease.
            let claim = lease::Claim::new(self.store.clone(), self.clock.clone(), row, lease);
            let (this, permits) = (self.clone(), permits.clone());
            tasks.spawn(
                async move {
                    let _permit = permits.acquire_owned().await.ok();
                    let id = claim.id().to_owned();
                    let result = this.flight(&id, Duration::ZERO, true, Some(claim)).await;
                    (id, result)
                }
                .in_current_span(),
            );
        }
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Ok(_))) => done += 1,
                Ok((id, Err(e))) => {
                    tracing::warn!(credential_id = %id, error = %e, "refresh-ahead failed")
                }
                Err(e) => tracing::warn!(error = %e, "refresh-ahead task failed"),
            }
        }
        done
    }

    /// Writes buffered usage (last used, recent workflows) to the database.
    pub async fn flush_usage(&self) {
        let batch: Vec<UsageRecord> = self
            .usage
            .take()
            .into_iter()
            .flat_map(|(credential_id, workflows)| {
                workflows
                    .into_iter()
                    .map(move |(workflow, at)| UsageRecord {
                        credential_id: credential_id.clone(),
                        workflow_id: (!workflow.is_empty()).then_some(workflow),
                        at,
                    })
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_usage(&batch).await {
            tracing::warn!(error = %e, records = batch.len(), "usage could not be recorded");
        }
    }

    /// Applies change notifications from every replica to the cache until the feed closes.
    pub async fn follow_changes(self: Arc<Self>) {
        let mut rx = self.store.subscribe_changes();
        loop {
            match rx.recv().await {
                Ok(ChangeEvent::Changed(id)) => match id.strip_prefix(RUN_GRANT_CHANGE_PREFIX) {
                    Some(grant) => self.grants.invalidate(grant),
                    None => self.cache.invalidate(&id),
                },
                Ok(ChangeEvent::Resync)
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.cache.clear();
                    self.grants.clear();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// May the caller receive this credential's token? Non-members: NOT_FOUND.
fn authorize(caller: &Caller, e: &Entry) -> Result<(), BrokerError> {
    match &caller.actor {
        None if caller.role == ServiceRole::Development => Ok(()),
        None => Err(actor_required()),
        Some(a) if a.is_workspace_admin(e.workspace_id()) => Ok(()),
        Some(a) => {
            if e.has_member(a.email.as_str(), a.user_id.as_str()) {
                Ok(())
            } else {
                Err(BrokerError::credential_not_found())
            }
        }
    }
}
