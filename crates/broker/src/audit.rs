//! The audit trail: who did what to which credential, and how it ended. Never a secret.

use crate::access::Caller;
use crate::clock::Clock;
use crate::error::BrokerError;
use cb_store::{NewAuditEvent, Store};
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
}

impl Audit {
    /// An audit writer on `store`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
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
        let event = NewAuditEvent {
            at: self.clock.now().as_millis(),
            service: caller.service.clone(),
            actor: caller.actor_label(),
            action: action.to_owned(),
            credential_id: credential_id.map(str::to_owned),
            outcome: outcome.0,
            detail,
        };
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(action, error = %e, "audit event could not be written");
        }
    }
}
