//! The audit trail: who did what to which credential, and how it ended. Never a secret.

use crate::access::Caller;
use crate::clock::Clock;
use crate::clock::Timestamp;
use crate::error::BrokerError;
use crate::error::reason;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_store::{AuditQuery, AuditRow, NewAuditEvent, Store};
use std::sync::Arc;

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
    buffer: Option<tokio::sync::mpsc::Sender<NewAuditEvent>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

/// Events the buffer holds before `record_later` starts dropping (and logging) them.
const BUFFER: usize = 10_000;
/// Events written per transaction by the buffered writer.
const BATCH: usize = 1_000;

impl Audit {
    /// An audit writer on `store`. Inside a tokio runtime it also starts the writer task behind
    /// [`Audit::record_later`].
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let buffer = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<NewAuditEvent>(BUFFER);
            let store = store.clone();
            rt.spawn(async move {
                // Write whatever has queued up in one transaction: one commit per batch keeps
                // up with token issuance at full speed.
                let mut batch = Vec::with_capacity(BATCH);
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    if let Err(err) = store.append_audit_batch(&batch).await {
                        tracing::error!(events = batch.len(), error = %err, "audit events could not be written");
                    }
                    batch.clear();
                }
            });
            tx
        });
        Self {
            store,
            clock,
            buffer,
            dropped: Arc::default(),
        }
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

    /// Records one event without waiting for the database (hot paths). The event is written by
    /// a background task within moments; if the buffer is full it is dropped and logged.
    pub fn record_later(
        &self,
        caller: &Caller,
        action: &str,
        credential_id: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let event = self.event(caller, action, credential_id, outcome, detail);
        match &self.buffer {
            Some(tx) => {
                if tx.try_send(event).is_err() {
                    let n = self
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        + 1;
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
            None => tracing::error!(action, "audit buffer not running: event dropped"),
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
