//! Token issuance and the refresh coordinator.
//!
//! `GetAccessToken` is served from memory when a cached token stays valid long enough (no
//! database, no KMS). Otherwise the caller joins the single flight for that credential in this
//! process; the flight's leader takes the cross-replica refresh lease in the database (a
//! conditional update with a fencing token), re-reads the row — another replica may have refreshed
//! already — and only then calls the provider. The new token set, including a rotated refresh
//! token, is sealed and written under the fencing token before anyone is answered. Followers on
//! other replicas wait for the row to change, then read it.

use crate::access::{Caller, Role, ServiceRole};
use crate::audit::{Audit, Outcome};
use crate::clock::{Clock, Timestamp};
use crate::credential::{Credential, Status};
use crate::error::{BrokerError, reason};
use crate::gateway::{GrantedTokens, ProviderError, ProviderGateway};
use crate::policy::{Policy, actor_required, require_token_issuer};
use crate::sealing;
use crate::tokens::TokenBundle;
use crate::types::{CredentialId, Scopes};
use cb_crypto::Envelope;
use cb_store::{ChangeEvent, Store, StoreError, UsageRecord};
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Tunables of issuance and refresh.
#[derive(Clone, Debug)]
pub struct IssuanceConfig {
    /// `min_valid_for` when the caller gives none (Google's libraries use 3 min 45 s).
    pub default_min_valid: Duration,
    /// Largest `min_valid_for` accepted.
    pub max_min_valid: Duration,
    /// Refresh lease lifetime; longer than every provider attempt together.
    pub lease_duration: Duration,
    /// Provider attempts per refresh (transient failures only).
    pub provider_attempts: u32,
    /// First backoff delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// Refresh ahead when the access token expires within this window.
    pub refresh_ahead_window: Duration,
    /// How often a waiting replica re-reads the row.
    pub follower_poll: Duration,
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
            lease_duration: Duration::from_secs(60),
            provider_attempts: 3,
            backoff_base: Duration::from_millis(200),
            refresh_ahead_window: Duration::from_secs(600),
            follower_poll: Duration::from_millis(50),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// An issued access token: the only value of the domain that carries a token out.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: SecretString,
    /// Token type.
    pub token_type: String,
    /// Expiry, if known.
    pub expires_at: Option<Timestamp>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Non-secret provider extras.
    pub extras: BTreeMap<String, String>,
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
    /// Issuance results: (`OK` or the error reason, answered from memory) → count.
    pub issued: Mutex<BTreeMap<(&'static str, bool), u64>>,
    /// Refreshes under the lease: (provider, outcome) → count. Outcomes: `refreshed`,
    /// `already_fresh` (another replica did it), `needs_reconnect`, `served_stale` (provider
    /// failed, the old token is still valid), `failed`.
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

/// One credential's token as kept in memory, with what authorization needs.
#[derive(Debug)]
struct Entry {
    workspace_id: String,
    token: IssuedToken,
    /// Active members allowed to use the credential: (email, bound user id).
    users: Vec<(String, Option<String>)>,
}

type FlightResult = Option<Result<Arc<Entry>, BrokerError>>;

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// The in-memory token cache shared with the other use cases, which invalidate it on writes.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections leaves consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TokenCache {
    /// Forgets one credential (after a write to it here or on another replica).
    pub fn invalidate(&self, id: &str) {
        lock(&self.entries).remove(id);
    }
    /// Forgets everything (change notifications may have been missed).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }
    fn get(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.entries).get(id).cloned()
    }
    fn put(&self, id: &str, e: Arc<Entry>) {
        lock(&self.entries).insert(id.to_owned(), e);
    }
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
    flights: Mutex<HashMap<String, watch::Receiver<FlightResult>>>,
    usage: Mutex<HashMap<(String, Option<String>), i64>>,
    breakers: Mutex<HashMap<String, Breaker>>,
    stats: IssuanceStats,
}

fn valid_for(expires_at: Option<Timestamp>, now: Timestamp, min_valid: Duration) -> bool {
    expires_at.is_none_or(|e| e > now.plus(min_valid))
}

fn needs_reconnect(c: &Credential, why: &str) -> BrokerError {
    BrokerError::FailedPrecondition {
        reason: reason::CREDENTIAL_NEEDS_RECONNECT,
        message: format!(
            "the connection {:?} can no longer be refreshed ({why}): reconnect {} in Settings → Integrations",
            c.display_name.as_str(),
            c.display_name.as_str()
        ),
    }
}

/// The result of a flight nobody waits for any more (never seen by a caller).
fn abandoned() -> BrokerError {
    BrokerError::Unavailable {
        reason: reason::PROVIDER_UNAVAILABLE,
        message: "the refresh was abandoned: every caller went away before it started".into(),
        retry_after: None,
    }
}

fn check_usable(c: &Credential) -> Result<(), BrokerError> {
    match &c.status {
        Status::Active => Ok(()),
        Status::NeedsReconnect { reason } => Err(needs_reconnect(c, reason)),
        Status::Disconnected => Err(crate::service::disconnected()),
    }
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(u64::from(u32::from_le_bytes(b)) % ms)
    }
}

/// When the background refresher should next look at a credential: ahead of the access token's
/// expiry, and before a refresh token that lapses when unused expires. `None` when nothing will
/// ever need refreshing (no refresh token, or a token that does not expire and cannot lapse).
pub fn next_refresh_at(
    now: Timestamp,
    bundle: &TokenBundle,
    window: Duration,
    refresh_token_idle: Option<Duration>,
) -> Option<Timestamp> {
    bundle.refresh_token.as_ref()?;
    let ahead = bundle.access_expires_at.map(|e| {
        let remaining = Duration::from_millis(
            u64::try_from(e.as_millis().saturating_sub(now.as_millis())).unwrap_or(0),
        );
        let lead = window.min(remaining / 2);
        e.minus(lead + jitter(lead / 4))
    });
    let idle = refresh_token_idle
        .map(|i| now.plus(i.saturating_sub((i / 10).max(Duration::from_secs(86_400)).min(i / 2))));
    match (ahead, idle) {
        (Some(a), Some(i)) => Some(a.min(i)),
        (a, i) => a.or(i),
    }
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
        Self {
            policy: Policy::new(store.clone()),
            store,
            envelope,
            clock,
            gateway,
            audit,
            config,
            cache,
            holder,
            flights: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
            stats: IssuanceStats::default(),
        }
    }

    /// Issuance results since start: (`OK` or the error reason, cache hit, count).
    pub fn issuance_results(&self) -> Vec<(&'static str, bool, u64)> {
        lock(&self.stats.issued)
            .iter()
            .map(|(&(result, hit), &n)| (result, hit, n))
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
        let now = Instant::now();
        lock(&self.breakers)
            .iter()
            .map(|(p, b)| (p.clone(), b.open_until.is_some_and(|u| now < u)))
            .collect()
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

    /// Issues a token valid for at least `min_valid` (default when `None`).
    pub async fn get_access_token(
        self: &Arc<Self>,
        caller: &Caller,
        id: &CredentialId,
        min_valid: Option<Duration>,
        ctx: UsageContext,
    ) -> Result<IssuedToken, BrokerError> {
        let mut hit = false;
        let result = self.issue(caller, id, min_valid, &ctx, &mut hit).await;
        let label = result.as_ref().map_or_else(BrokerError::reason, |_| "OK");
        *lock(&self.stats.issued).entry((label, hit)).or_default() += 1;
        let detail = [
            ("workflow", &ctx.workflow_id),
            ("block", &ctx.block_id),
            ("execution", &ctx.execution_id),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
        let detail = (!detail.is_empty()).then_some(detail);
        // Issued tokens are audited through the buffer: no database write on the hot path.
        self.audit.record_later(
            caller,
            "token.issue",
            Some(id.as_str()),
            Outcome::of(&result),
            detail,
        );
        if result.is_ok() {
            let at = self.clock.now().as_millis();
            lock(&self.usage)
                .entry((id.to_string(), ctx.workflow_id))
                .and_modify(|t| *t = (*t).max(at))
                .or_insert(at);
        }
        result
    }

    async fn issue(
        self: &Arc<Self>,
        caller: &Caller,
        id: &CredentialId,
        min_valid: Option<Duration>,
        _ctx: &UsageContext,
        hit: &mut bool,
    ) -> Result<IssuedToken, BrokerError> {
        require_token_issuer(caller)?;
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
        if let Some(e) = self.cache.get(id.as_str()) {
            *hit = true;
            authorize(caller, &e)?;
            if valid_for(e.token.expires_at, now, min_valid) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(e.token.clone());
            }
        } else {
            // Cold path: check membership before doing any work for this caller.
            self.policy.load_visible(caller, id).await?;
        }
        *hit = false;
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let entry = self.flight(id.as_str(), min_valid, false).await?;
        authorize(caller, &entry)?;
        Ok(entry.token.clone())
    }

    /// Joins (or leads) the single flight for `id`. The leader runs in its own task, so a
    /// cancelled caller never abandons a refresh that others wait for.
    async fn flight(
        self: &Arc<Self>,
        id: &str,
        min_valid: Duration,
        force: bool,
    ) -> Result<Arc<Entry>, BrokerError> {
        let mut rx = {
            let mut flights = lock(&self.flights);
            match flights.get(id) {
                Some(rx) => {
                    self.stats.flight_joins.fetch_add(1, Ordering::Relaxed);
                    rx.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(id.to_owned(), rx.clone());
                    let this = self.clone();
                    let id = id.to_owned();
                    // The leader's spans belong to the request that started the flight.
                    tokio::spawn(
                        async move {
                            // Someone still waits if a receiver besides the map's own exists.
                            let wanted = || tx.receiver_count() > 1;
                            let result = this.resolve(&id, min_valid, force, &wanted).await;
                            if let Ok(e) = &result {
                                this.cache.put(&id, e.clone());
                            }
                            lock(&this.flights).remove(&id);
                            tx.send_replace(Some(result));
                        }
                        .in_current_span(),
                    );
                    rx
                }
            }
        };
        let settled = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| BrokerError::Internal("refresh task ended without a result".into()))?;
        settled
            .clone()
            .unwrap_or_else(|| Err(BrokerError::Internal("empty flight result".into())))
    }

    /// Loads the credential and refreshes it if needed, through the lease.
    /// `wanted` says whether anyone still waits for the result: a flight whose callers all went
    /// away (cancelled or past their deadline) is abandoned before it calls the provider. Once a
    /// refresh request is sent it always completes and is stored — a provider that rotated the
    /// refresh token must have its answer kept.
    async fn resolve(
        &self,
        id: &str,
        min_valid: Duration,
        force: bool,
        wanted: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Arc<Entry>, BrokerError> {
        let give_up = Instant::now() + self.config.lease_duration * 2 + Duration::from_secs(5);
        loop {
            let now = self.clock.now();
            let row = self
                .store
                .get_credential(id)
                .await?
                .ok_or_else(BrokerError::credential_not_found)?;
            let c = Credential::from_row(row)?;
            check_usable(&c)?;
            let bundle = sealing::open(&self.envelope, &c)
                .await?
                .ok_or_else(|| BrokerError::Internal("active credential without tokens".into()))?;
            let due = force && c.next_refresh_at.is_some_and(|t| t <= now);
            if valid_for(bundle.access_expires_at, now, min_valid) && !due {
                return self.entry(&c, &bundle).await;
            }
            if bundle.refresh_token.is_none() {
                return self.without_refresh_token(c, bundle, now).await;
            }
            if !wanted() {
                return Err(abandoned());
            }
            let until = now.plus(self.config.lease_duration);
            if let Some(leased) = self
                .store
                .acquire_refresh_lease(id, &self.holder, now.as_millis(), until.as_millis())
                .await?
            {
                return self
                    .refresh_under_lease(leased, min_valid, force, wanted)
                    .await;
            }
            // Another replica holds the lease: wait for its write (or for the lease to expire).
            self.stats.lease_waits.fetch_add(1, Ordering::Relaxed);
            loop {
                if Instant::now() > give_up {
                    return Err(BrokerError::Unavailable {
                        reason: reason::STORAGE_UNAVAILABLE,
                        message:
                            "another replica is refreshing this credential and has not finished"
                                .into(),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                tokio::time::sleep(self.config.follower_poll).await;
                let Some(r) = self.store.get_credential(id).await? else {
                    break;
                };
                let lease_expired = r
                    .lease
                    .expires_at
                    .is_none_or(|t| t <= self.clock.now().as_millis());
                if r.row_version != c.version || lease_expired {
                    break;
                }
            }
        }
    }

    async fn without_refresh_token(
        &self,
        mut c: Credential,
        bundle: TokenBundle,
        now: Timestamp,
    ) -> Result<Arc<Entry>, BrokerError> {
        if valid_for(bundle.access_expires_at, now, Duration::ZERO) {
            // Less validity than asked for, but the best there is until it expires.
            return self.entry(&c, &bundle).await;
        }
        let why = "the access token expired and the grant has no refresh token".to_owned();
        let err = needs_reconnect(&c, &why);
        let expected = c.version;
        c.status = Status::NeedsReconnect { reason: why };
        c.next_refresh_at = None;
        c.updated_at = now;
        self.store.update_credential(&c.to_row(), expected).await?;
        self.cache.invalidate(c.id.as_str());
        Err(err)
    }

    #[tracing::instrument(
        name = "refresh",
        skip_all,
        fields(credential_id = %row.id, provider = %row.provider_id, outcome = tracing::field::Empty)
    )]
    async fn refresh_under_lease(
        &self,
        row: cb_store::CredentialRow,
        min_valid: Duration,
        force: bool,
        wanted: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Arc<Entry>, BrokerError> {
        let fence = row.lease.fence;
        let mut c = Credential::from_row(row)?;
        let id = c.id.to_string();
        let provider = c.provider_id.clone();
        let now = self.clock.now();
        let result = async {
            let bundle = sealing::open(&self.envelope, &c).await?.ok_or_else(|| BrokerError::Internal("active credential without tokens".into()))?;
            // Re-check after taking the lease: another replica may have refreshed meanwhile.
            let due = force && c.next_refresh_at.is_some_and(|t| t <= now);
            if valid_for(bundle.access_expires_at, now, min_valid) && !due {
                self.store.release_refresh_lease(&id, fence).await?;
                self.count_refresh(&c.provider_id, "already_fresh");
                return self.entry(&c, &bundle).await;
            }
            let refresh_token = bundle.refresh_token.clone().ok_or_else(|| BrokerError::Internal("refresh token vanished".into()))?;
            if !wanted() {
                self.store.release_refresh_lease(&id, fence).await?;
                return Err(abandoned());
            }
            match self.call_refresh(&c.provider_id, &refresh_token, &bundle.extras).await {
                Ok(granted) => {
                    let fresh = merge(&bundle, granted.clone(), now);
                    if let Some(s) = granted.scopes.as_ref() {
                        c.scopes = Scopes::from_stored(&s.join(" "));
                    }
                    sealing::seal_into(&self.envelope, &mut c, &fresh).await?;
                    let idle = self.gateway.get(&c.provider_id).and_then(|p| p.refresh_token_idle);
                    c.next_refresh_at = next_refresh_at(now, &fresh, self.config.refresh_ahead_window, idle);
                    c.last_refreshed_at = Some(now);
                    c.updated_at = now;
                    let stored = self.store.complete_refresh(&c.to_row(), fence).await.map_err(|e| match e {
                        StoreError::LeaseLost => {
                            // The provider may have rotated the refresh token we hold: say so loudly.
                            tracing::error!(credential_id = %id, "refresh lease lost before the new tokens were written");
                            BrokerError::Unavailable {
                                reason: reason::STORAGE_UNAVAILABLE,
                                message: "the refresh lease expired before the new tokens were stored; retry".into(),
                                retry_after: Some(Duration::from_secs(1)),
                            }
                        }
                        other => other.into(),
                    })?;
                    self.count_refresh(&c.provider_id, "refreshed");
                    self.entry(&Credential::from_row(stored)?, &fresh).await
                }
                Err(ProviderError::Permanent(why)) => {
                    let err = needs_reconnect(&c, &why);
                    c.status = Status::NeedsReconnect { reason: why.clone() };
                    c.next_refresh_at = None;
                    c.updated_at = now;
                    self.store.complete_refresh(&c.to_row(), fence).await?;
                    self.cache.invalidate(&id);
                    self.count_refresh(&c.provider_id, "needs_reconnect");
                    tracing::warn!(credential_id = %id, provider = %c.provider_id, reason = %why, "grant can no longer be refreshed: needs reconnect");
                    Err(err)
                }
                Err(e) => {
                    self.store.release_refresh_lease(&id, fence).await?;
                    if valid_for(bundle.access_expires_at, now, Duration::ZERO) {
                        self.count_refresh(&c.provider_id, "served_stale");
                        tracing::warn!(credential_id = %id, error = %e, "refresh failed; serving the still-valid token");
                        return self.entry(&c, &bundle).await;
                    }
                    let retry_after = match &e {
                        ProviderError::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    self.count_refresh(&c.provider_id, "failed");
                    Err(BrokerError::Unavailable {
                        reason: reason::PROVIDER_UNAVAILABLE,
                        message: format!("the provider could not refresh the token: {e}"),
                        retry_after: Some(retry_after.unwrap_or(Duration::from_secs(5))),
                    })
                }
            }
        }
        .await;
        if let Err(e) = &result
            && !matches!(
                e.reason(),
                reason::CREDENTIAL_NEEDS_RECONNECT | reason::PROVIDER_UNAVAILABLE
            )
        {
            // A database or KMS error on the way: not counted above.
            self.count_refresh(&provider, "error");
        }
        if result.is_err() {
            // Failure paths that did not already release it (database errors) leave the lease to expire.
            let _ = self.store.release_refresh_lease(&id, fence).await;
        }
        result
    }

    /// Calls the provider with bounded retries (backoff with jitter) behind a circuit breaker.
    #[tracing::instrument(name = "provider.refresh", skip_all, fields(provider = %provider, attempts = tracing::field::Empty))]
    async fn call_refresh(
        &self,
        provider: &str,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError> {
        let started = Instant::now();
        let budget = self.config.lease_duration / 2;
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::Span::current().record("attempts", attempt);
            if let Some(until) = lock(&self.breakers)
                .get(provider)
                .and_then(|b| b.open_until)
                && Instant::now() < until
            {
                return Err(ProviderError::Transient {
                    detail: format!("provider {provider} is failing; calls paused (circuit open)"),
                    retry_after: Some(until - Instant::now()),
                });
            }
            self.stats
                .provider_refreshes
                .fetch_add(1, Ordering::Relaxed);
            let result = self.gateway.refresh(provider, refresh_token, extras).await;
            let transient = matches!(
                result,
                Err(ProviderError::Transient { .. }) | Err(ProviderError::Other(_))
            );
            {
                let mut breakers = lock(&self.breakers);
                let b = breakers.entry(provider.to_owned()).or_default();
                if transient {
                    b.failures += 1;
                    if b.failures >= self.config.breaker_threshold {
                        b.open_until = Some(Instant::now() + self.config.breaker_cooldown);
                        tracing::warn!(provider, "provider circuit opened after repeated failures");
                    }
                } else {
                    *b = Breaker::default();
                }
            }
            let retry_after = match &result {
                Err(ProviderError::Transient { retry_after, .. }) => *retry_after,
                _ => None,
            };
            if !transient || attempt >= self.config.provider_attempts {
                return result;
            }
            let backoff = self.config.backoff_base * 2u32.saturating_pow(attempt - 1);
            let delay = retry_after.unwrap_or(backoff + jitter(backoff));
            if started.elapsed() + delay > budget {
                return result;
            }
            tracing::info!(
                provider,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "refresh failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Builds (and caches) the in-memory entry for an open bundle.
    async fn entry(&self, c: &Credential, bundle: &TokenBundle) -> Result<Arc<Entry>, BrokerError> {
        let users = self
            .store
            .list_members(c.id.as_str())
            .await?
            .into_iter()
            .filter(|m| m.state == "ACTIVE" && Role::from_stored(&m.role).is_some())
            .map(|m| (m.email, m.user_id))
            .collect();
        Ok(Arc::new(Entry {
            workspace_id: c.workspace_id.clone(),
            token: IssuedToken {
                access_token: bundle.access_token.clone(),
                token_type: bundle.token_type.clone(),
                expires_at: bundle.access_expires_at,
                scopes: c.scopes.as_slice().to_vec(),
                extras: bundle.extras.clone(),
            },
            users,
        }))
    }

    /// Refreshes credentials whose `next_refresh_at` has come (the background refresher).
    /// Returns how many were refreshed or found fresh; failures are logged.
    pub async fn refresh_due(self: &Arc<Self>, limit: u32) -> usize {
        let now = self.clock.now();
        let ids = match self.store.due_for_refresh(now.as_millis(), limit).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "refresh-ahead scan failed");
                return 0;
            }
        };
        let mut done = 0;
        for id in ids {
            match self.flight(&id, Duration::ZERO, true).await {
                Ok(_) => done += 1,
                Err(e) => tracing::warn!(credential_id = %id, error = %e, "refresh-ahead failed"),
            }
        }
        done
    }

    /// Writes buffered usage (last used, recent workflows) to the database.
    pub async fn flush_usage(&self) {
        let batch: Vec<UsageRecord> = std::mem::take(&mut *lock(&self.usage))
            .into_iter()
            .map(|((credential_id, workflow_id), at)| UsageRecord {
                credential_id,
                workflow_id,
                at,
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
                Ok(ChangeEvent::Changed(id)) => self.cache.invalidate(&id),
                Ok(ChangeEvent::Resync)
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.cache.clear(),
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
        Some(a) if a.is_workspace_admin(&e.workspace_id) => Ok(()),
        Some(a) => {
            let member = e.users.iter().any(|(email, user)| {
                email == a.email.as_str() && user.as_deref().is_none_or(|u| u == a.user_id.as_str())
            });
            if member {
                Ok(())
            } else {
                Err(BrokerError::credential_not_found())
            }
        }
    }
}

/// The token set after a refresh: new values where the provider gave them, the old refresh
/// token kept when none was returned.
fn merge(old: &TokenBundle, g: GrantedTokens, now: Timestamp) -> TokenBundle {
    let mut extras = old.extras.clone();
    extras.extend(g.extras);
    TokenBundle {
        access_token: g.access_token,
        refresh_token: g.refresh_token.or_else(|| old.refresh_token.clone()),
        id_token: g.id_token.or_else(|| old.id_token.clone()),
        token_type: g.token_type,
        access_expires_at: g.expires_in.map(|d| now.plus(d)),
        refresh_expires_at: g
            .refresh_expires_in
            .map(|d| now.plus(d))
            .or(old.refresh_expires_at),
        extras,
    }
}
