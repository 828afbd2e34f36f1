//! Reading the lifecycle event log: a paged list and a live watch. Events are written by the
//! use cases that change a credential, in the same transaction (see [`crate::health`]); here
//! they are only read, authorized and audited.
//!
//! A watch follows the log by cursor: it reads every event after the last one it sent, then
//! sleeps until the store's change feed announces a write (any replica: PostgreSQL
//! LISTEN/NOTIFY) or its poll interval passes, and reads again. Event ids commit in increasing
//! order, so following the cursor misses nothing and repeats nothing.

use crate::access::Caller;
use crate::audit::{Audit, Outcome};
use crate::clock::{Clock, Timestamp};
use crate::credential::Credential;
use crate::error::{BrokerError, reason};
use crate::health::{EventKind, HealthKind, event};
use crate::policy::{require_actor, require_owner_admin};
use crate::types::{CredentialId, WorkspaceId};
use cb_store::{CredentialEventRow, DeliveryRow, EventQuery, Store, WebhookEndpointRow};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// Default page size of ListCredentialEvents.
pub const EVENTS_DEFAULT_PAGE_SIZE: u32 = 100;
/// Maximum page size of ListCredentialEvents.
pub const EVENTS_MAX_PAGE_SIZE: u32 = 1000;
/// Events a watch reads per query.
const WATCH_BATCH: u32 = 200;
/// Messages a watch may have queued for a slow client before it waits.
const WATCH_BUFFER: usize = 64;

/// What to read.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this workspace (required when the call acts for a user).
    pub workspace_id: Option<WorkspaceId>,
    /// Only this credential.
    pub credential_id: Option<CredentialId>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    /// Events after this cursor.
    pub after: i64,
    /// Page size (already clamped).
    pub page_size: u32,
}

/// One message of a watch.
#[derive(Clone, Debug)]
pub enum WatchItem {
    /// An event.
    Event(CredentialEventRow),
    /// Nothing new; the cursor reached.
    Heartbeat {
        /// The last cursor sent (or started from).
        cursor: i64,
        /// Now.
        at: Timestamp,
    },
}

/// Timing of watches and the retention of the log.
#[derive(Clone, Copy, Debug)]
pub struct EventsConfig {
    /// Heartbeat on an idle watch.
    pub heartbeat: Duration,
    /// Re-read without a change announcement (a feed that is down or missed a write).
    pub poll: Duration,
    /// Events older than this are pruned (`None`: kept forever).
    pub retention: Option<Duration>,
    /// Grants ending within this are marked EXPIRING with an `expiring` event.
    pub expiring_warning: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            retention: Some(Duration::from_secs(90 * 86_400)),
            expiring_warning: Duration::from_secs(7 * 86_400),
        }
    }
}

/// The event log's read side.
pub struct EventService {
    store: Arc<dyn Store>,
    audit: Audit,
    clock: Arc<dyn Clock>,
    config: EventsConfig,
    /// Set when the process stops: every watch ends (clients resume elsewhere by cursor).
    stopping: tokio::sync::watch::Sender<bool>,
}

impl EventService {
    /// Wires the read side.
    pub fn new(
        store: Arc<dyn Store>,
        audit: Audit,
        clock: Arc<dyn Clock>,
        config: EventsConfig,
    ) -> Self {
        Self {
            store,
            audit,
            clock,
            config,
            stopping: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every open watch (the process is stopping): their streams close, and clients
    /// resume from their last cursor on another replica.
    pub fn stop_watches(&self) {
        self.stopping.send_replace(true);
    }

    /// One page of events, oldest first, and the token of the next page.
    pub async fn list(
        &self,
        caller: &Caller,
        f: EventFilter,
    ) -> Result<(Vec<CredentialEventRow>, Option<String>), BrokerError> {
        let detail = f.workspace_id.as_ref().map(|w| format!("workspace={w}"));
        let credential_id = f.credential_id.as_ref().map(ToString::to_string);
        let result = async {
            let mut q = query(caller, &f)?;
            q.limit = f.page_size.saturating_add(1);
            let rows = self.store.list_credential_events(&q).await?;
            Ok(page(rows, f.page_size, |r| r.id))
        }
        .await;
        self.audit.record_later(
            caller,
            "event.list",
            credential_id.as_deref(),
            Outcome::of(&result),
            detail,
        );
        result
    }

    /// One page of a webhook endpoint's delivery log after delivery `after` (oldest first),
    /// the endpoint, and the token of the next page. Admins of the endpoint's workspace and
    /// operators; others of that workspace are refused, anyone else is told it does not exist.
    pub async fn list_deliveries(
        &self,
        caller: &Caller,
        endpoint_id: &str,
        after: i64,
        page_size: u32,
    ) -> Result<(WebhookEndpointRow, Vec<DeliveryRow>, Option<String>), BrokerError> {
        let not_found = || BrokerError::NotFound {
            reason: reason::WEBHOOK_ENDPOINT_NOT_FOUND,
            what: "webhook endpoint",
        };
        let result = async {
            let endpoint = self
                .store
                .webhook_endpoint(endpoint_id)
                .await?
                .ok_or_else(not_found)?;
            require_owner_admin(
                caller,
                &endpoint.workspace_id,
                "webhook endpoints",
                not_found,
            )?;
            let rows = self
                .store
                .list_webhook_deliveries(endpoint_id, page_size.saturating_add(1), after)
                .await?;
            let (rows, next) = page(rows, page_size, |r| r.id);
            Ok((endpoint, rows, next))
        }
        .await;
        self.audit.record_later(
            caller,
            "webhook.list_deliveries",
            None,
            Outcome::of(&result),
            Some(format!("endpoint={endpoint_id}")),
        );
        result
    }

    /// Opens a watch: a channel of events after `f.after` (or after the newest event when
    /// `from_end`), then live ones, with heartbeats. The watch ends when the receiver is
    /// dropped. Authorized and audited when opened.
    pub async fn watch(
        &self,
        caller: &Caller,
        mut f: EventFilter,
        from_end: bool,
    ) -> Result<mpsc::Receiver<Result<WatchItem, BrokerError>>, BrokerError> {
        let detail = f.workspace_id.as_ref().map(|w| format!("workspace={w}"));
        let result = async {
            let q = query(caller, &f)?;
            if from_end {
                f.after = self.newest_cursor(&q).await?;
            }
            Ok(q)
        }
        .await;
        self.audit
            .record_later(caller, "event.watch", None, Outcome::of(&result), detail);
        let mut q = result?;
        q.after_id = f.after;
        q.limit = WATCH_BATCH;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.store.clone();
        let clock = self.clock.clone();
        let config = self.config;
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = follow(store, clock, config, q, tx) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        });
        Ok(rx)
    }

    /// The newest cursor matching `q` (0 when none).
    async fn newest_cursor(&self, q: &EventQuery) -> Result<i64, BrokerError> {
        let mut q = q.clone();
        q.limit = WATCH_BATCH;
        // Pages to the end: only the head of the log is read when starting at the end, and it
        // is short once retention runs; a bounded loop all the same.
        loop {
            let rows = self.store.list_credential_events(&q).await?;
            match rows.last() {
                Some(last) if rows.len() == WATCH_BATCH as usize => q.after_id = last.id,
                Some(last) => return Ok(last.id),
                None => return Ok(q.after_id),
            }
        }
    }

    /// Marks the ACTIVE credentials whose grant ends within the warning period EXPIRING and
    /// writes one `expiring` event for each (once: a credential already EXPIRING is skipped;
    /// reconnecting clears it). Returns how many were marked. Runs periodically on every
    /// replica; of replicas racing on one credential, one marks it.
    pub async fn warn_expiring(&self) -> Result<usize, BrokerError> {
        const BATCH: u32 = 500;
        let now = self.clock.now();
        let horizon = now.plus(self.config.expiring_warning);
        let mut marked = 0;
        loop {
            let rows = self.store.grants_ending(horizon.as_millis(), BATCH).await?;
            let full = rows.len() == BATCH as usize;
            let mut changed = 0;
            for row in rows {
                let c = Credential::from_row(row)?;
                let Some(end) = c.refresh_expires_at else {
                    continue;
                };
                let cause = "the grant ends soon and cannot be refreshed past its end: reconnect before it does";
                let events = [event(
                    &c,
                    EventKind::Expiring,
                    None,
                    Some(HealthKind::Expiring.class()),
                    Some(format!("ends_at={}", end.as_millis())),
                    now,
                )];
                if self
                    .store
                    .mark_health(
                        c.id.as_str(),
                        HealthKind::Expiring.as_str(),
                        cause,
                        now.as_millis(),
                        &events,
                    )
                    .await?
                {
                    changed += 1;
                }
            }
            marked += changed;
            // A full batch of which none changed (raced away) would repeat itself: stop.
            if !full || changed == 0 {
                return Ok(marked);
            }
        }
    }

    /// Deletes events older than the configured retention (runs periodically).
    pub async fn prune(&self) -> Result<u64, BrokerError> {
        let Some(retention) = self.config.retention else {
            return Ok(0);
        };
        let cutoff = self.clock.now().minus(retention);
        Ok(self
            .store
            .prune_credential_events(cutoff.as_millis())
            .await?)
    }
}

/// A page of `size` from `rows` (read with a limit of `size + 1`) and the token of the next
/// page: the id of its last row, when more follow.
fn page<T>(mut rows: Vec<T>, size: u32, id: fn(&T) -> i64) -> (Vec<T>, Option<String>) {
    if rows.len() > size as usize {
        rows.truncate(size as usize);
        let next = rows.last().map(|r| id(r).to_string());
        (rows, next)
    } else {
        (rows, None)
    }
}

/// The store query a caller may run for `f`: operators read everything; a user reads their
/// workspace's events if they administer it, else those of credentials they are a member of.
fn query(caller: &Caller, f: &EventFilter) -> Result<EventQuery, BrokerError> {
    let mut q = EventQuery {
        workspace_id: f.workspace_id.as_ref().map(ToString::to_string),
        credential_id: f.credential_id.as_ref().map(ToString::to_string),
        kinds: f.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        member: None,
        after_id: f.after,
        limit: f.page_size,
    };
    if caller.actor.is_none() && caller.role.reads_without_actor() {
        return Ok(q);
    }
    let actor = require_actor(caller)?;
    let Some(workspace) = &f.workspace_id else {
        return Err(BrokerError::invalid(
            "workspace_id",
            "is required when the call acts for a user",
        ));
    };
    if !actor.is_workspace_admin(workspace.as_str()) {
        q.member = Some((actor.user_id.to_string(), actor.email.to_string()));
    }
    Ok(q)
}

/// Feeds a watch until its receiver goes away.
async fn follow(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: EventsConfig,
    mut q: EventQuery,
    tx: mpsc::Sender<Result<WatchItem, BrokerError>>,
) {
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.reset(); // the first tick after one period, not at once
    loop {
        // Subscribed before reading: a write committed after the read is announced to us.
        let mut changes = store.subscribe_changes();
        let rows = match store.list_credential_events(&q).await {
            Ok(rows) => rows,
            Err(e) => {
                // The client resumes from its last cursor on another stream.
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let full = rows.len() == q.limit as usize;
        for row in rows {
            q.after_id = row.id;
            if tx.send(Ok(WatchItem::Event(row))).await.is_err() {
                return;
            }
            heartbeat.reset();
        }
        if full {
            continue;
        }
        tokio::select! {
            () = tx.closed() => return,
            () = announced(&mut changes) => {}
            () = tokio::time::sleep(config.poll) => {}
            _ = heartbeat.tick() => {
                let beat = WatchItem::Heartbeat { cursor: q.after_id, at: clock.now() };
                if tx.send(Ok(beat)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves on any announced change (or a possible miss); never when the feed is closed.
async fn announced(rx: &mut tokio::sync::broadcast::Receiver<cb_store::ChangeEvent>) {
    match rx.recv().await {
        Ok(_) | Err(RecvError::Lagged(_)) => {}
        Err(RecvError::Closed) => std::future::pending::<()>().await,
    }
}
