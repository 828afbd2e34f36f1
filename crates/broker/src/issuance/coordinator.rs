//! The refresh coordinator: the single flight per credential in this process, the
//! cross-replica lease, and the refresh itself. The flight's leader takes the lease in the
//! database (a conditional update with a fencing token, expiry on the database clock, renewed
//! by a heartbeat), re-reads the row (another replica may have refreshed already), records its
//! refresh intent and only then calls the provider. The new token set, including a rotated
//! refresh token, is sealed and written under the fencing token (retried while the lease is
//! held, kept in memory if the database stays away) before anyone is answered. Followers on
//! other replicas wait for the row to change or the lease to lapse, then read it.

use super::cache::{Entry, TokenParts};
use super::lease::{Claim, LeaseKeeper, Pending, millis, token_sha256};
use super::schedule::{lifetime, merge, next_refresh_at, satisfies, valid_for};
use super::{TokenService, lock};
use crate::access::Role;
use crate::clock::Timestamp;
use crate::credential::{Credential, Status};
use crate::error::{BrokerError, reason};
use crate::gateway::{AppClient, GrantedTokens, ProviderError};
use crate::health::{self, EventKind, Health, HealthKind, event};
use crate::oauth_apps::AppClients;
use crate::sealing;
use crate::tokens::TokenBundle;
use crate::types::Scopes;
use cb_store::{ChangeEvent, NewCredentialEvent, RefreshFailure, RefreshIntent, StoreError};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tracing::Instrument;

/// What a flight's leader hands its followers: `None` until it has finished.
pub(super) type FlightResult = Option<Result<Arc<Entry>, BrokerError>>;

/// Flights one caller may take in turn when each falls short of its `min_valid`.
const FLIGHT_ROUNDS: u32 = 3;

/// Removes a leader's flight from the map however the leader ends, a panic included: a flight
/// left behind would make every later call for the credential join a leader that is gone.
struct FlightGuard {
    service: Arc<TokenService>,
    id: String,
    rx: watch::Receiver<FlightResult>,
}

impl FlightGuard {
    /// Removes the flight before its result is sent: callers after that start a new one.
    fn finish(&self) {
        let mut flights = lock(&self.service.flights);
        if flights
            .get(&self.id)
            .is_some_and(|(_, rx)| rx.same_channel(&self.rx))
        {
            flights.remove(&self.id);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Marks a NEEDS_RECONNECT reason whose refresh was interrupted by a crash: such credentials
/// answer [`reason::REFRESH_INTERRUPTED`] rather than a bare provider error.
pub(super) const INTERRUPTED_PREFIX: &str =
    "refresh interrupted by a crashed replica, then refused: ";

/// Polls of a waiting follower between two questions to the database about the lease.
const LAPSE_CHECK_POLLS: u32 = 10;
/// First and longest pause between attempts to write a refresh result.
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(1);

fn lease_lost() -> BrokerError {
    BrokerError::Unavailable {
        reason: reason::STORAGE_UNAVAILABLE,
        message: "the refresh lease expired before the new tokens were stored; retry".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

fn needs_reconnect(c: &Credential, why: &str) -> BrokerError {
    let reason = if why.starts_with(INTERRUPTED_PREFIX) {
        reason::REFRESH_INTERRUPTED
    } else {
        reason::CREDENTIAL_NEEDS_RECONNECT
    };
    BrokerError::FailedPrecondition {
        reason,
        message: format!(
            "the connection {:?} can no longer be refreshed ({why}): reconnect {} in Settings → Integrations",
            c.display_name.as_str(),
            c.display_name.as_str()
        ),
    }
}

/// A token set opened from a credential row, with the ciphertext it was opened from: the
/// refresh leader reuses it while the leased row still holds that ciphertext (one decryption
/// per refresh on a miss, not two).
struct Opened {
    ciphertext: Vec<u8>,
    bundle: TokenBundle,
}

impl Opened {
    fn of(c: &Credential, bundle: TokenBundle) -> Option<Self> {
        c.sealed.as_ref().map(|s| Self {
            ciphertext: s.ciphertext.clone(),
            bundle,
        })
    }

    /// The bundle, if `c` still holds the ciphertext it was opened from.
    fn still(self, c: &Credential) -> Option<TokenBundle> {
        (c.sealed.as_ref().map(|s| &s.ciphertext) == Some(&self.ciphertext)).then_some(self.bundle)
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
        Status::Disconnected => Err(BrokerError::disconnected()),
    }
}

impl TokenService {
    /// Joins (or leads) the single flight for `id`. The leader runs in its own task, so a
    /// cancelled caller never abandons a refresh that others wait for. A caller that joined a
    /// flight led for a smaller `min_valid` re-checks the result against its own and, when it
    /// falls short, takes another flight (at most [`FLIGHT_ROUNDS`] in all).
    pub(super) async fn flight(
        self: &Arc<Self>,
        id: &str,
        min_valid: Duration,
        force: bool,
        mut claim: Option<Claim>,
    ) -> Result<Arc<Entry>, BrokerError> {
        let mut round = 1;
        loop {
            let (rx, led_for) = self.join_or_lead(id, min_valid, force, claim.take());
            let result = settled(rx).await;
            if !self.too_short(led_for, min_valid, &result) || round >= FLIGHT_ROUNDS {
                return result;
            }
            round += 1;
        }
    }

    /// The result of the flight already under way for `id`, if there is one and it satisfies
    /// `min_valid`; `None`: no flight, or one led for a shorter validity (lead one instead).
    pub(super) async fn join_existing(
        self: &Arc<Self>,
        id: &str,
        min_valid: Duration,
    ) -> Option<Result<Arc<Entry>, BrokerError>> {
        let (rx, led_for) = {
            let flights = lock(&self.flights);
            let (led_for, rx) = flights.get(id)?;
            (rx.clone(), *led_for)
        };
        self.stats.flight_joins.fetch_add(1, Ordering::Relaxed);
        let result = settled(rx).await;
        (!self.too_short(Some(led_for), min_valid, &result)).then_some(result)
    }

    /// Whether a flight led for `led_for` answered with a token too short for `min_valid`.
    fn too_short(
        &self,
        led_for: Option<Duration>,
        min_valid: Duration,
        result: &Result<Arc<Entry>, BrokerError>,
    ) -> bool {
        led_for.is_some_and(|leader| leader < min_valid)
            && result
                .as_ref()
                .is_ok_and(|e| !e.satisfies(self.clock.now(), min_valid))
    }

    /// The receiver of the flight for `id`: another caller's (with the `min_valid` it was led
    /// for) or a new one led by this call.
    fn join_or_lead(
        self: &Arc<Self>,
        id: &str,
        min_valid: Duration,
        force: bool,
        claim: Option<Claim>,
    ) -> (watch::Receiver<FlightResult>, Option<Duration>) {
        let mut flights = lock(&self.flights);
        if let Some((led_for, rx)) = flights.get(id) {
            // A flight here already refreshes it: a claimed lease is released, not waited on.
            drop(claim);
            self.stats.flight_joins.fetch_add(1, Ordering::Relaxed);
            return (rx.clone(), Some(*led_for));
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(id.to_owned(), (min_valid, rx.clone()));
        let guard = FlightGuard {
            service: self.clone(),
            id: id.to_owned(),
            rx: rx.clone(),
        };
        // The leader's spans belong to the request that started the flight.
        tokio::spawn(
            async move {
                let this = &guard.service;
                // Someone still waits if a receiver besides the map's and the guard's exists.
                let wanted = || tx.receiver_count() > 2;
                // Taken before anything is read: an invalidation from now on refuses the put.
                let seen = this.cache.generation(&guard.id);
                let result = this
                    .resolve(&guard.id, min_valid, force, &wanted, claim)
                    .await;
                #[cfg(test)]
                let pause = lock(&this.before_put).take();
                #[cfg(test)]
                if let Some((reached, resume)) = pause {
                    reached.notify_one();
                    resume.notified().await;
                }
                if let Ok(e) = &result {
                    this.cache.put(&guard.id, e.clone(), seen);
                }
                guard.finish();
                tx.send_replace(Some(result));
            }
            .in_current_span(),
        );
        (rx, None)
    }

    /// Loads the credential and refreshes it if needed, through the lease.
    /// `wanted` says whether anyone still waits for the result: a flight whose callers all went
    /// away (cancelled or past their deadline) is abandoned before it calls the provider. Once a
    /// refresh request is sent it always completes and is stored — a provider that rotated the
    /// refresh token must have its answer kept (in memory while the database is away).
    async fn resolve(
        &self,
        id: &str,
        min_valid: Duration,
        force: bool,
        wanted: &(dyn Fn() -> bool + Send + Sync),
        mut claim: Option<Claim>,
    ) -> Result<Arc<Entry>, BrokerError> {
        // A bound in real time, not on the injected clock: a test's manual clock may never move.
        let give_up =
            tokio::time::Instant::now() + self.config.lease_duration * 2 + Duration::from_secs(5);
        let mut waited = false;
        // The row a follower read when the leader's write woke it: not read again.
        let mut woken_by: Option<cb_store::CredentialRow> = None;
        loop {
            let now = self.clock.now();
            let row = match woken_by.take() {
                Some(row) => row,
                None => self
                    .store
                    .get_credential(id)
                    .await?
                    .ok_or_else(BrokerError::credential_not_found)?,
            };
            if let Some(p) = self.pending.get(id) {
                // A token set the provider already answered waits to be written: write it, and
                // never call the provider again with the refresh token it replaced.
                if let Some(done) = self.write_pending(id, &row, p).await? {
                    return Ok(done);
                }
                if self.pending.get(id).is_none() {
                    continue; // it no longer applied: start over with the stored tokens
                }
            } else {
                let (row_fence, row_holder) = (row.lease.fence, row.lease.holder.clone());
                let claimed_row = claim.is_some().then(|| row.clone());
                let c = Credential::from_row(row)?;
                check_usable(&c)?;
                let bundle = sealing::open(&self.envelope, &c).await?.ok_or_else(|| {
                    BrokerError::Internal("active credential without tokens".into())
                })?;
                let due = force && c.next_refresh_at.is_some_and(|t| t <= now);
                if satisfies(bundle.access_expires_at, lifetime(&bundle), now, min_valid) && !due {
                    return self.entry(&c, &bundle).await;
                }
                if bundle.refresh_token.is_none() {
                    return self.without_refresh_token(c, bundle, now).await;
                }
                // A configuration error is not transient: no lease, no provider call, no
                // retries, and the provider's circuit stays as it is.
                if let Err(e) = self.provider_configured(&c).await {
                    if valid_for(bundle.access_expires_at, now, Duration::ZERO) {
                        tracing::warn!(credential_id = %id, provider = %c.provider_id, "provider not configured; serving the still-valid token");
                        return self.entry(&c, &bundle).await;
                    }
                    return Err(e);
                }
                if !wanted() {
                    return Err(abandoned());
                }
                // The refresh-ahead claim already holds the lease (unless it was lost since).
                let claimed = claim.take().filter(|c| {
                    c.fence() == row_fence && row_holder.as_deref() == Some(self.holder.as_str())
                });
                // What was just opened, for the leader to reuse while the row still holds it.
                let opened = Opened::of(&c, bundle);
                if let (Some(keeper), Some(leased)) =
                    (claimed.and_then(Claim::into_keeper), claimed_row)
                {
                    return self
                        .refresh_under_lease(leased, opened, min_valid, force, wanted, &keeper)
                        .await;
                }
                if let Some(leased) = self.take_lease(id).await? {
                    let keeper = LeaseKeeper::start(
                        self.store.clone(),
                        self.clock.clone(),
                        id,
                        leased.lease.fence,
                        self.config.lease_duration,
                    );
                    return self
                        .refresh_under_lease(leased, opened, min_valid, force, wanted, &keeper)
                        .await;
                }
            }
            // Another replica holds the lease: wait for its write (or for the lease to lapse,
            // judged by the database clock).
            if !waited {
                waited = true;
                self.stats.lease_waits.fetch_add(1, Ordering::Relaxed);
            }
            // Subscribed before reading the version: the leader's write cannot slip between.
            let mut changes = self.store.subscribe_changes();
            let version = self.store.get_credential(id).await?.map(|r| r.row_version);
            let mut polls: u32 = 0;
            loop {
                if tokio::time::Instant::now() > give_up {
                    return Err(BrokerError::Unavailable {
                        reason: reason::STORAGE_UNAVAILABLE,
                        message:
                            "another replica is refreshing this credential and has not finished"
                                .into(),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                // Woken by the change feed when the leader writes (any replica: LISTEN/NOTIFY),
                // so waiters are answered at provider speed; the poll is the fallback for a
                // lease released without a write, or a feed that is down.
                tokio::select! {
                    () = announced(&mut changes, id) => {}
                    () = tokio::time::sleep(self.config.follower_poll) => {}
                }
                polls += 1;
                let Some(r) = self.store.get_credential(id).await? else {
                    break;
                };
                if Some(r.row_version) != version || r.lease.holder.is_none() {
                    woken_by = Some(r);
                    break;
                }
                // Asking the database whether the lease lapsed costs a query: every few polls.
                if polls.is_multiple_of(LAPSE_CHECK_POLLS)
                    && self
                        .store
                        .refresh_lease_lapsed(id, self.clock.now().as_millis())
                        .await?
                {
                    break;
                }
            }
        }
    }

    /// Takes the lease of `id` (free or lapsed by the database clock).
    async fn take_lease(&self, id: &str) -> Result<Option<cb_store::CredentialRow>, BrokerError> {
        Ok(self
            .store
            .take_refresh_lease(
                id,
                &self.holder,
                millis(self.config.lease_duration),
                self.clock.now().as_millis(),
            )
            .await?)
    }

    /// Writes a pending token set if the row still holds the tokens it replaced: under its own
    /// fence if nobody took the lease since, else under a lease taken now. `None`: it could not
    /// be written yet (another replica holds the lease; the caller waits), or it no longer
    /// applies (dropped).
    async fn write_pending(
        &self,
        id: &str,
        row: &cb_store::CredentialRow,
        p: Pending,
    ) -> Result<Option<Arc<Entry>>, BrokerError> {
        let base = row.sealed.as_ref().map(|s| s.ciphertext.as_slice());
        if base.is_some() && base == p.row.sealed.as_ref().map(|s| s.ciphertext.as_slice()) {
            // A write whose answer was lost did commit.
            self.pending.remove(id);
            return Ok(None);
        }
        if base != Some(p.base.as_slice()) {
            // Another writer replaced the tokens (a reconnect, a disconnect): theirs stand.
            tracing::error!(credential_id = %id, "the tokens changed while a refreshed token set waited to be written; dropping it");
            self.pending.remove(id);
            return Ok(None);
        }
        let stored = match self.store.complete_refresh(&p.row, p.fence).await {
            Ok(stored) => stored,
            Err(StoreError::LeaseLost) => {
                let Some(leased) = self.take_lease(id).await? else {
                    return Ok(None);
                };
                match self
                    .store
                    .complete_refresh(&p.row, leased.lease.fence)
                    .await
                {
                    Ok(stored) => stored,
                    Err(e) => {
                        let _ = self
                            .store
                            .release_refresh_lease(id, leased.lease.fence)
                            .await;
                        return Err(e.into());
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.pending.remove(id);
        tracing::info!(credential_id = %id, "refreshed token set written after the database came back");
        let c = Credential::from_row(stored)?;
        let bundle = sealing::open(&self.envelope, &c)
            .await?
            .ok_or_else(|| BrokerError::Internal("refreshed credential without tokens".into()))?;
        self.entry(&c, &bundle).await.map(Some)
    }

    /// Writes a refresh result under the fence, retrying with backoff (the injected sleeper)
    /// while the database is unavailable and the lease is still ours.
    async fn store_refreshed(
        &self,
        row: &cb_store::CredentialRow,
        fence: i64,
        keeper: &LeaseKeeper,
        events: &[NewCredentialEvent],
    ) -> Result<cb_store::CredentialRow, StoreError> {
        let mut delay = WRITE_RETRY_FIRST;
        let mut attempt: u32 = 1;
        loop {
            match self
                .store
                .complete_refresh_with_events(row, fence, events)
                .await
            {
                Ok(stored) => return Ok(stored),
                Err(StoreError::LeaseLost) if attempt > 1 => {
                    // An earlier attempt may have committed with its answer lost on the way.
                    let written = self.store.get_credential(&row.id).await?;
                    return match written {
                        Some(w)
                            if w.sealed.as_ref().map(|s| &s.ciphertext)
                                == row.sealed.as_ref().map(|s| &s.ciphertext) =>
                        {
                            Ok(w)
                        }
                        _ => Err(StoreError::LeaseLost),
                    };
                }
                Err(e @ (StoreError::LeaseLost | StoreError::NotFound)) => return Err(e),
                // Connection errors do not all map to Unavailable (a cut connection can read as
                // a protocol error): anything but a definite answer is worth another attempt.
                Err(e) if keeper.held() => {
                    tracing::warn!(credential_id = %row.id, attempt, error = %e, "refreshed tokens not written yet; retrying");
                    self.retry.sleeper().sleep(delay).await;
                    delay = (delay * 2).min(WRITE_RETRY_MAX);
                    attempt += 1;
                }
                Err(e) => return Err(e),
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
        c.health = c.health.failed(
            HealthKind::GrantRevoked,
            why.clone(),
            "token_expired".into(),
            now,
        );
        let events = [event(
            &c,
            EventKind::NeedsReconnect,
            None,
            Some(why.clone()),
            Some(HealthKind::GrantRevoked.class()),
            now,
        )];
        c.status = Status::NeedsReconnect { reason: why };
        c.next_refresh_at = None;
        c.updated_at = now;
        self.store
            .update_credential_with_events(&c.to_row(), expected, &events)
            .await?;
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
        opened: Option<Opened>,
        min_valid: Duration,
        force: bool,
        wanted: &(dyn Fn() -> bool + Send + Sync),
        keeper: &LeaseKeeper,
    ) -> Result<Arc<Entry>, BrokerError> {
        let fence = row.lease.fence;
        let base = row
            .sealed
            .as_ref()
            .map(|s| s.ciphertext.clone())
            .unwrap_or_default();
        let mut c = Credential::from_row(row)?;
        let id = c.id.to_string();
        let provider = c.provider_id.clone();
        let now = self.clock.now();
        let result = async {
            // Opened again only if the row changed since it was read (another writer).
            let bundle = match opened.and_then(|o| o.still(&c)) {
                Some(bundle) => bundle,
                None => sealing::open(&self.envelope, &c).await?.ok_or_else(|| BrokerError::Internal("active credential without tokens".into()))?,
            };
            let refresh_token = bundle.refresh_token.clone().ok_or_else(|| BrokerError::Internal("refresh token vanished".into()))?;
            let token_hash = token_sha256(&refresh_token);
            // A previous holder that recorded an intent for the refresh token still stored and
            // never wrote a result died mid-refresh or lost its answer (a timeout): the provider
            // may have rotated that token.
            let interrupted = self
                .store
                .refresh_intent(&id)
                .await?
                .filter(|i| i.fence != fence && i.token_sha256 == token_hash);
            if let Some(i) = &interrupted {
                tracing::warn!(credential_id = %id, previous_holder = %i.holder, previous_fence = i.fence, "found an interrupted refresh; retrying at once with the stored refresh token");
            }
            // Re-check after taking the lease: another replica may have refreshed meanwhile.
            // An interrupted refresh is retried whatever the validity: whether the grant survived
            // is better learnt now, with the reason known.
            let due = force && c.next_refresh_at.is_some_and(|t| t <= now);
            if interrupted.is_none() && satisfies(bundle.access_expires_at, lifetime(&bundle), now, min_valid) && !due {
                self.store.release_refresh_lease(&id, fence).await?;
                self.count_refresh(&c.provider_id, "already_fresh");
                return self.entry(&c, &bundle).await;
            }
            if !wanted() {
                self.store.release_refresh_lease(&id, fence).await?;
                return Err(abandoned());
            }
            // The client that minted the grant: a workspace app (newest secret, the previous one
            // once on invalid_client) or the deployment's configured client. Resolved before the
            // intent is recorded: a failure here never reaches the provider, so it must not
            // leave an intent that the next leader would take for an interrupted refresh.
            let (app, recorded) = self.apps.with_version(&c).await?.unzip();
            let intent = RefreshIntent {
                holder: self.holder.clone(),
                fence,
                started_at: now.as_millis(),
                token_sha256: token_hash,
            };
            if !self.store.record_refresh_intent(&id, &intent).await? {
                return Err(lease_lost());
            }
            let (answer, used) = AppClients::call(app.as_ref(), |client| {
                self.call_refresh(&c.provider_id, client, &refresh_token, &bundle.extras)
            })
            .await;
            // Written only when another secret answered than the one on record.
            if let (Some(a), Some(version)) = (&app, used.version)
                && recorded != Some(version)
            {
                self.apps.record(&id, Some(a), Some(version)).await?;
            }
            match answer {
                Ok(granted) => {
                    let fresh = merge(&bundle, granted.clone(), now);
                    let previous = (c.scopes.clone(), c.refresh_expires_at);
                    if let Some(s) = granted.scopes.as_ref() {
                        c.scopes = Scopes::from_stored(&s.join(" "));
                    }
                    sealing::seal_into(&self.envelope, &mut c, &fresh).await?;
                    let idle = self.gateway.get(&c.provider_id).and_then(|p| p.refresh_token_idle);
                    c.next_refresh_at = next_refresh_at(now, &fresh, self.config.refresh_ahead_window, idle, self.random.fraction());
                    c.last_refreshed_at = Some(now);
                    c.updated_at = now;
                    // A refresh never moves the grant's end unless the provider says so.
                    c.refresh_expires_at = c.refresh_expires_at.or(previous.1);
                    let events = self.refreshed_health(&mut c, (&previous.0, previous.1), &granted, now);
                    let new_row = c.to_row();
                    let stored = match self.store_refreshed(&new_row, fence, keeper, &events).await {
                        Ok(stored) => stored,
                        Err(StoreError::LeaseLost) => {
                            // The provider may have rotated the refresh token we hold: say so loudly.
                            tracing::error!(credential_id = %id, "refresh lease lost before the new tokens were written");
                            return Err(lease_lost());
                        }
                        Err(e @ (StoreError::Unavailable(_) | StoreError::Database(_))) => {
                            // Kept for the next leader here: the rotated refresh token must not be lost.
                            tracing::error!(credential_id = %id, error = %e, "database unavailable after the provider answered; the refreshed tokens wait in memory");
                            self.pending.put(&id, Pending { base, row: new_row, fence });
                            return Err(BrokerError::Unavailable {
                                reason: reason::STORAGE_UNAVAILABLE,
                                message: "the token was refreshed but cannot be stored yet; retry".into(),
                                retry_after: Some(Duration::from_secs(1)),
                            });
                        }
                        Err(other) => return Err(other.into()),
                    };
                    self.count_refresh(&c.provider_id, "refreshed");
                    self.entry(&Credential::from_row(stored)?, &fresh).await
                }
                Err(e @ ProviderError::Permanent(_)) => {
                    let code = e.code();
                    let why = match &app {
                        Some(a) => format!("{e} (OAuth app {})", a.label()),
                        None => e.to_string(),
                    };
                    let (kind, why) = match &interrupted {
                        Some(_) => (HealthKind::RefreshInterrupted, format!("{INTERRUPTED_PREFIX}{why}")),
                        None => (HealthKind::GrantRevoked, why),
                    };
                    let err = needs_reconnect(&c, &why);
                    c.health = c.health.failed(kind, why.clone(), code.clone(), now);
                    let events = [
                        event(&c, EventKind::RefreshFailed, None, Some(kind.class()), Some(code), now),
                        event(&c, EventKind::NeedsReconnect, None, Some(why.clone()), Some(kind.class()), now),
                    ];
                    c.status = Status::NeedsReconnect { reason: why.clone() };
                    c.next_refresh_at = None;
                    c.updated_at = now;
                    self.store.complete_refresh_with_events(&c.to_row(), fence, &events).await?;
                    self.cache.invalidate(&id);
                    self.count_refresh(&c.provider_id, "needs_reconnect");
                    tracing::warn!(credential_id = %id, provider = %c.provider_id, reason = %why, "grant can no longer be refreshed: needs reconnect");
                    Err(err)
                }
                Err(e) => {
                    // Neither an outage nor a rejected client says the grant is dead: the
                    // status stays ACTIVE, the health records the cause.
                    self.record_failure(&c, &e, now).await?;
                    self.store.release_refresh_lease(&id, fence).await?;
                    if valid_for(bundle.access_expires_at, now, Duration::ZERO) {
                        self.count_refresh(&c.provider_id, "served_stale");
                        tracing::warn!(credential_id = %id, error = %e, "refresh failed; serving the still-valid token");
                        return self.entry(&c, &bundle).await;
                    }
                    if let ProviderError::ClientRejected(why) = &e {
                        self.count_refresh(&c.provider_id, "client_rejected");
                        let client = match (&app, used.fallback) {
                            (Some(a), Some(_)) => format!("OAuth app {} (its previous client secret was refused too)", a.label()),
                            (Some(a), None) => format!("OAuth app {}", a.label()),
                            (None, _) => "the broker's client registration".to_owned(),
                        };
                        return Err(BrokerError::FailedPrecondition {
                            reason: reason::PROVIDER_CLIENT_REJECTED,
                            message: format!("the provider {} rejected {client} ({why}): an admin must fix the app's client id, secret or permissions; the connection itself is kept", c.provider_id),
                        });
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
                reason::CREDENTIAL_NEEDS_RECONNECT
                    | reason::REFRESH_INTERRUPTED
                    | reason::PROVIDER_UNAVAILABLE
                    | reason::PROVIDER_CLIENT_REJECTED
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

    /// The health after a successful refresh, and the events it raises: `recovered` when the
    /// credential was failing; `refresh_failed` (scopes revoked) when the provider granted
    /// fewer scopes than before.
    fn refreshed_health(
        &self,
        c: &mut Credential,
        (previous, previous_end): (&Scopes, Option<Timestamp>),
        granted: &GrantedTokens,
        now: Timestamp,
    ) -> Vec<NewCredentialEvent> {
        let mut events = Vec::new();
        let before = c.health.kind;
        // A refresh does not move an absolute end: the warning stands until a reconnect (or a
        // provider that extends the grant).
        if before == HealthKind::Expiring && c.refresh_expires_at <= previous_end {
            return events;
        }
        if before != HealthKind::Healthy {
            events.push(event(
                c,
                EventKind::Recovered,
                None,
                Some(before.class()),
                None,
                now,
            ));
        }
        c.health = Health::healthy(Some(now));
        if let Some(granted) = granted.scopes.as_ref() {
            let lost: Vec<&str> = previous
                .as_slice()
                .iter()
                .map(String::as_str)
                .filter(|s| !granted.iter().any(|g| g == s))
                .collect();
            if !lost.is_empty() {
                let cause = format!("scopes no longer granted: {}", lost.join(" "));
                c.health = Health::healthy(Some(now)).failed(
                    HealthKind::ScopesRevoked,
                    cause,
                    "scopes_reduced".into(),
                    now,
                );
                events.push(event(
                    c,
                    EventKind::RefreshFailed,
                    None,
                    Some(HealthKind::ScopesRevoked.class()),
                    Some(lost.join(" ")),
                    now,
                ));
            }
        }
        events
    }

    /// Records a refresh failure that leaves the status alone; a `refresh_failed` event is
    /// written when the health class changes (not on every retry of a long outage).
    async fn record_failure(
        &self,
        c: &Credential,
        e: &ProviderError,
        now: Timestamp,
    ) -> Result<(), BrokerError> {
        let kind = health::classify(e);
        let code = e.code();
        let events = if c.health.kind == kind {
            Vec::new()
        } else {
            vec![event(
                c,
                EventKind::RefreshFailed,
                None,
                Some(kind.class()),
                Some(code.clone()),
                now,
            )]
        };
        let failure = RefreshFailure {
            health: kind.as_str().to_owned(),
            cause: e.to_string(),
            error_code: Some(code),
            at: now.as_millis(),
        };
        self.store
            .record_refresh_failure(c.id.as_str(), &failure, &events)
            .await?;
        Ok(())
    }

    /// Calls the provider with bounded retries (backoff with jitter) behind a circuit breaker.
    #[tracing::instrument(name = "provider.refresh", skip_all, fields(provider = %provider, attempts = tracing::field::Empty))]
    async fn call_refresh(
        &self,
        provider: &str,
        client: Option<AppClient>,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError> {
        self.retry
            .run(provider, || {
                self.stats
                    .provider_refreshes
                    .fetch_add(1, Ordering::Relaxed);
                self.gateway
                    .refresh(provider, client.as_ref(), refresh_token, extras)
            })
            .await
    }

    /// Whether refreshes can be sent for this credential at all: through the workspace app that
    /// minted it, or the provider's configured client.
    async fn provider_configured(&self, c: &Credential) -> Result<(), BrokerError> {
        let provider = c.provider_id.as_str();
        let spec = self.gateway.get(provider);
        // The common case answers without a database read (this is on a cold leader's path).
        if spec.as_ref().is_some_and(|p| p.configured) {
            return Ok(());
        }
        let has_app = self.store.credential_app(c.id.as_str()).await?.is_some();
        let message = match spec {
            Some(_) if has_app => return Ok(()),
            Some(_) => format!(
                "the provider {provider} has no client credentials configured: an operator must configure it before its tokens can be refreshed"
            ),
            // A provider the workspace defined: its app's client is the only one.
            None if crate::workspace_providers::load_spec(
                self.store.as_ref(),
                &c.workspace_id,
                provider,
            )
            .await?
            .is_some() =>
            {
                if has_app {
                    return Ok(());
                }
                format!(
                    "the provider {provider} is defined by workspace {} and this credential was not connected through an OAuth app for it: reconnect it through one (CreateOAuthApp)",
                    c.workspace_id
                )
            }
            None => format!(
                "the provider {provider} is no longer in the configuration: an operator must add it back before its tokens can be refreshed"
            ),
        };
        Err(BrokerError::FailedPrecondition {
            reason: reason::PROVIDER_NOT_CONFIGURED,
            message,
        })
    }

    /// Builds (and caches) the in-memory entry for an open bundle.
    pub(super) async fn entry(
        &self,
        c: &Credential,
        bundle: &TokenBundle,
    ) -> Result<Arc<Entry>, BrokerError> {
        let users = self
            .store
            .list_members(c.id.as_str())
            .await?
            .into_iter()
            .filter(|m| m.state == "ACTIVE" && Role::from_stored(&m.role).is_some())
            .map(|m| (m.email, m.user_id));
        let token = TokenParts {
            access_token: bundle.access_token.clone(),
            token_type: bundle.token_type.clone(),
            expires_at: bundle.access_expires_at,
            scopes: c.scopes.as_slice().to_vec(),
            extras: bundle.extras.clone(),
        };
        Ok(Arc::new(Entry::new(
            &c.workspace_id,
            token,
            lifetime(bundle),
            users,
            self.clock.now(),
        )))
    }
}

/// What a flight answered.
async fn settled(mut rx: watch::Receiver<FlightResult>) -> Result<Arc<Entry>, BrokerError> {
    match rx.wait_for(Option::is_some).await {
        Ok(settled) => settled
            .clone()
            .unwrap_or_else(|| Err(BrokerError::Internal("empty flight result".into()))),
        // The leader's task died (a bug) before answering; its guard removed the flight.
        Err(_) => Err(BrokerError::Internal(
            "refresh task ended without a result".into(),
        )),
    }
}

/// Resolves when the change feed announces `id`, or may have missed it (a resync, a lagging
/// receiver); never when the feed is closed (the caller's poll then decides).
async fn announced(rx: &mut broadcast::Receiver<ChangeEvent>, id: &str) {
    loop {
        match rx.recv().await {
            Ok(ChangeEvent::Changed(changed)) if changed == id => return,
            Ok(ChangeEvent::Changed(_)) => {}
            Ok(ChangeEvent::Resync) | Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
