//! The audit trail: who did what to which credential, and how it ended. Never a secret.

use crate::access::Caller;
use crate::clock::Clock;
use crate::clock::Timestamp;
use crate::error::BrokerError;
use crate::error::reason;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_store::{AuditQuery, AuditRow, NewAuditEvent, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How an audited action ended: `ok` or the error's stable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome(pub String);

impl Outcome {
    /// The outcome of a result.
    pub fn of<T>(r: &Result<T, BrokerError>) -> Self {
        match r {
            Ok(_) => Self("ok".into()),
            Err(e) => Self(e.reason().to_owned()),
        }
    }
}

/// Appends audit events.
#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    pending: Arc<Mutex<HashMap<Key, Tally>>>,
    dropped: Arc<AtomicU64>,
}

/// Identical events recorded with [`Audit::record_later`] between two flushes become one row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    service: String,
    actor: Option<String>,
    action: String,
    credential_id: Option<String>,
    outcome: String,
    detail: Option<String>,
}

#[derive(Clone, Copy, Debug)]
struct Tally {
    first: i64,
    last: i64,
    count: u64,
}

/// Distinct pending events kept before `record_later` starts dropping (and counting) them.
const MAX_PENDING: usize = 100_000;
/// How often buffered events are written.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Audit {
    /// An audit writer on `store`. Inside a tokio runtime it also starts the task that writes
    /// what [`Audit::record_later`] buffers, every 250 ms, in one transaction.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let audit = Self {
            store,
            clock,
            pending: Arc::default(),
            dropped: Arc::default(),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // The task holds only a weak reference: it ends when the last `Audit` is dropped.
            let weak = Arc::downgrade(&audit.pending);
            let store = audit.store.clone();
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(FLUSH_EVERY).await;
                    let Some(pending) = weak.upgrade() else {
                        return;
                    };
                    write_pending(store.as_ref(), &pending).await;
                }
            });
        }
        audit
    }

    /// Writes everything buffered now (shutdown, tests).
    pub async fn flush(&self) {
        write_pending(self.store.as_ref(), &self.pending).await;
    }

    fn event(
        &self,
        caller: &Caller,
        action: &str,
        credential_id: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) -> NewAuditEvent {
        NewAuditEvent {
            at: self.clock.now().as_millis(),
            service: caller.service.clone(),
            actor: caller.actor_label(),
            action: action.to_owned(),
            credential_id: credential_id.map(str::to_owned),
            outcome: outcome.0,
            detail,
        }
    }

    /// Records one event without waiting for the database (hot paths): it is written by a
    /// background task within 250 ms. Identical events in that window (same service, actor,
    /// action, credential, outcome and detail) become one row whose detail carries
    /// `count=N last_at=<ms>`, so every occurrence is accounted for at any request rate.
    pub fn record_later(
        &self,
        caller: &Caller,
        action: &str,
        credential_id: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let at = self.clock.now().as_millis();
        let key = Key {
            service: caller.service.clone(),
            actor: caller.actor_label(),
            action: action.to_owned(),
            credential_id: credential_id.map(str::to_owned),
            outcome: outcome.0,
            detail,
        };
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = pending.len() >= MAX_PENDING;
        match pending.get_mut(&key) {
            Some(t) => {
                t.count += 1;
                t.last = t.last.max(at);
            }
            None if !full => {
                pending.insert(
                    key,
                    Tally {
                        first: at,
                        last: at,
                        count: 1,
                    },
                );
            }
            None => {
                drop(pending);
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per power of two: a flood of drops does not flood the log.
                if n.is_power_of_two() {
                    tracing::error!(
                        action,
                        dropped_total = n,
                        "audit buffer full: events dropped"
                    );
                }
            }
        }
    }

    /// Records one event. A failed write is logged, not returned: the action already happened.
    pub async fn record(
        &self,
        caller: &Caller,
        action: &str,
        credential_id: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let event = self.event(caller, action, credential_id, outcome, detail);
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(action, error = %e, "audit event could not be written");
        }
    }
}

/// Filters for reading the audit log.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only this credential.
    pub credential_id: Option<String>,
    /// Only this actor (user id).
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// At or after.
    pub start: Option<Timestamp>,
    /// Before.
    pub end: Option<Timestamp>,
    /// Page size.
    pub page_size: u32,
    /// Token from a previous page.
    pub page_token: Option<String>,
}

/// Default page size of ListAuditEvents.
pub const AUDIT_DEFAULT_PAGE_SIZE: u32 = 100;
/// Maximum page size of ListAuditEvents.
pub const AUDIT_MAX_PAGE_SIZE: u32 = 1000;

impl Audit {
    /// Reads events newest first. Operators (and the development listener) only.
    pub async fn list(
        &self,
        caller: &Caller,
        f: AuditFilter,
    ) -> Result<(Vec<AuditRow>, Option<String>), BrokerError> {
        if !caller.role.reads_without_actor() {
            return Err(BrokerError::PermissionDenied {
                reason: reason::CALLER_NOT_ALLOWED,
                message: "only operator services may read the audit log".into(),
            });
        }
        let before_id = match &f.page_token {
            Some(t) => Some(decode_token(t)?),
            None => None,
        };
        let limit = f.page_size;
        let rows = self
            .store
            .list_audit(&AuditQuery {
                credential_id: f.credential_id,
                actor: f.actor,
                action: f.action,
                start_at: f.start.map(Timestamp::as_millis),
                end_at: f.end.map(Timestamp::as_millis),
                before_id,
                limit: limit.saturating_add(1),
            })
            .await?;
        let mut rows = rows;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| URL_SAFE_NO_PAD.encode(format!("a1:{}", r.id)))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Deletes events older than `retention` (runs periodically).
    pub async fn prune(&self, retention: std::time::Duration) -> Result<u64, BrokerError> {
        let cutoff = self.clock.now().minus(retention);
        Ok(self.store.prune_audit(cutoff.as_millis()).await?)
    }
}

fn decode_token(t: &str) -> Result<i64, BrokerError> {
    let bad = || BrokerError::invalid("page_token", "is not a token from a previous response");
    let raw = URL_SAFE_NO_PAD.decode(t).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    s.strip_prefix("a1:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

/// Writes the buffered events in one transaction; on failure they are logged as lost.
async fn write_pending(store: &dyn Store, pending: &Mutex<HashMap<Key, Tally>>) {
    let taken = std::mem::take(
        &mut *pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if taken.is_empty() {
        return;
    }
    let mut events: Vec<NewAuditEvent> = taken
        .into_iter()
        .map(|(k, t)| NewAuditEvent {
            at: t.first,
            service: k.service,
            actor: k.actor,
            action: k.action,
            credential_id: k.credential_id,
            outcome: k.outcome,
            detail: if t.count > 1 {
                let tally = format!("count={} last_at={}", t.count, t.last);
                Some(
                    k.detail
                        .map_or_else(|| tally.clone(), |d| format!("{d} {tally}")),
                )
            } else {
                k.detail
            },
        })
        .collect();
    events.sort_by_key(|e| e.at);
    if let Err(err) = store.append_audit_batch(&events).await {
        tracing::error!(events = events.len(), error = %err, "audit events could not be written");
    }
}
