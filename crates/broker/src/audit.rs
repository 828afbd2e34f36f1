//! The audit trail: who did what to which credential, and how it ended. Never a secret.

use crate::access::Caller;
use crate::clock::Clock;
use crate::clock::Timestamp;
use crate::error::BrokerError;
use crate::error::reason;
use crate::sharded::{Equivalent, ShardedMap};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_store::{AuditQuery, AuditRow, NewAuditEvent, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every action an audit event can name (docs/api.md, section Audit, lists each; a test keeps
/// them equal). `rpc.<Method>` stands for a call the auth layer refused before any use case ran.
pub const ACTIONS: &[&str] = &[
    "audit.list",
    "connect.reconnect_start",
    "connect.start",
    "credential.connect",
    "credential.disconnect",
    "credential.get",
    "credential.import",
    "credential.list",
    "credential.reconnect",
    "credential.update",
    "event.list",
    "event.watch",
    "member.accept",
    "member.add",
    "member.list",
    "member.remove",
    "member.update_role",
    "oauth_app.create",
    "oauth_app.delete",
    "oauth_app.get",
    "oauth_app.list",
    "oauth_app.retire_secret",
    "oauth_app.rotate_secret",
    "oauth_app.test",
    "oauth_app.update",
    "provider.list",
    "rpc.<Method>",
    "run_grant.create",
    "run_grant.revoke",
    "token.issue",
    "webhook.list_deliveries",
    "webhook_endpoint.create",
    "webhook_endpoint.delete",
    "webhook_endpoint.get",
    "webhook_endpoint.list",
    "webhook_endpoint.retire_secret",
    "webhook_endpoint.rotate_secret",
    "webhook_endpoint.update",
    "workspace_provider.create",
    "workspace_provider.delete",
    "workspace_provider.get",
    "workspace_provider.list",
    "workspace_provider.update",
];

/// How an audited action ended: `ok` or the error's stable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome(pub String);

/// How [`Audit::recorded`] writes an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Before the call answers (writes).
    Inline,
    /// Through the buffer (reads, issued tokens): the call never waits for a database write.
    Buffered,
}

impl Outcome {
    /// The outcome of a result.
    pub fn of<T>(r: &Result<T, BrokerError>) -> Self {
        match r {
            Ok(_) => Self::ok(),
            Err(e) => Self(e.reason().to_owned()),
        }
    }

    /// Success.
    pub fn ok() -> Self {
        Self("ok".into())
    }
}

/// Appends audit events.
#[derive(Clone)]
pub struct Audit {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    pending: Arc<Pending>,
}

/// Identical events recorded with [`Audit::record_later`] between two flushes become one row.
#[derive(Clone, Debug)]
struct Key {
    service: String,
    actor: Option<String>,
    action: String,
    credential_id: Option<String>,
    outcome: String,
    detail: Option<String>,
    /// Merged without its detail because the buffer held its maximum of distinct events.
    overflow: bool,
}

/// A [`Key`] borrowed from the event being recorded: the buffer is searched with it, and an
/// owned key is only made for an event not pending yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    service: &'a str,
    actor: Option<&'a str>,
    action: &'a str,
    credential_id: Option<&'a str>,
    outcome: &'a str,
    detail: Option<&'a str>,
    overflow: bool,
}

impl Key {
    fn view(&self) -> KeyRef<'_> {
        KeyRef {
            service: &self.service,
            actor: self.actor.as_deref(),
            action: &self.action,
            credential_id: self.credential_id.as_deref(),
            outcome: &self.outcome,
            detail: self.detail.as_deref(),
            overflow: self.overflow,
        }
    }
}

impl KeyRef<'_> {
    fn to_key(self) -> Key {
        Key {
            service: self.service.to_owned(),
            actor: self.actor.map(str::to_owned),
            action: self.action.to_owned(),
            credential_id: self.credential_id.map(str::to_owned),
            outcome: self.outcome.to_owned(),
            detail: self.detail.map(str::to_owned),
            overflow: self.overflow,
        }
    }
}

// A key hashes and compares as its borrowed view, so the two find the same entry.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl Eq for Key {}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self == key.view()
    }
}

#[derive(Clone, Copy, Debug)]
struct Tally {
    first: i64,
    last: i64,
    count: u64,
}

/// Distinct pending events (rows of the next flush) kept with their full detail. Beyond it a new
/// event is merged into a row without detail (counted as `merged`), so its count is kept.
pub const MAX_PENDING: usize = 100_000;
/// Rows without detail kept beyond [`MAX_PENDING`]; past both, new events are dropped (counted).
pub const MAX_OVERFLOW: usize = 50_000;

/// How many distinct events the buffer of [`Audit::record_later`] holds between two flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditLimits {
    /// Rows kept with their detail ([`MAX_PENDING`] by default).
    pub max_pending: usize,
    /// Further rows without detail ([`MAX_OVERFLOW`] by default).
    pub max_overflow: usize,
}

impl Default for AuditLimits {
    fn default() -> Self {
        Self {
            max_pending: MAX_PENDING,
            max_overflow: MAX_OVERFLOW,
        }
    }
}
/// Distinct pending events that wake the writer before its next tick.
const FLUSH_SOON: usize = 20_000;
/// How often buffered events are written.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// At most one log line per this interval about merged or dropped events.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters of the buffered writer, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events handed to [`Audit::record_later`].
    pub recorded: u64,
    /// Events kept in a row without their detail because the buffer was full (still counted).
    pub merged: u64,
    /// Events lost because the buffer was full even for rows without detail.
    pub dropped_full: u64,
    /// Events lost because the database refused the batch holding them.
    pub dropped_write_failed: u64,
    /// Rows written by flushes.
    pub rows_written: u64,
    /// Events those rows account for (sum of their counts).
    pub events_written: u64,
    /// Flushes that wrote at least one row.
    pub flushes: u64,
    /// Distinct events waiting for the next flush.
    pub pending: u64,
}

/// The buffer of [`Audit::record_later`]: a sharded map, so the hot path takes one lock out of
/// many, chosen by the event's hash, instead of one process-wide lock.
struct Pending {
    limits: AuditLimits,
    map: ShardedMap<Key, Tally>,
    distinct: AtomicUsize,
    wake: tokio::sync::Notify,
    recorded: AtomicU64,
    merged: AtomicU64,
    dropped_full: AtomicU64,
    dropped_write_failed: AtomicU64,
    rows_written: AtomicU64,
    events_written: AtomicU64,
    flushes: AtomicU64,
    /// Serialises flushes (the periodic task, shutdown, tests) and rate-limits the loss log.
    writer: tokio::sync::Mutex<WriterState>,
}

#[derive(Default)]
struct WriterState {
    last_log: Option<Instant>,
    logged_merged: u64,
    logged_dropped: u64,
}

impl Pending {
    fn new(limits: AuditLimits) -> Self {
        Self {
            limits,
            map: ShardedMap::default(),
            distinct: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            recorded: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_write_failed: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            events_written: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            writer: tokio::sync::Mutex::default(),
        }
    }
}

impl Pending {
    /// Counts `key` at `at` if it is pending or fewer than `limit` distinct events are;
    /// `false` (nothing counted) otherwise.
    fn add(&self, key: KeyRef<'_>, at: i64, limit: usize) -> bool {
        let mut shard = self.map.shard(&key);
        if let Some(t) = shard.get_mut(&key) {
            t.count += 1;
            t.first = t.first.min(at);
            t.last = t.last.max(at);
            return true;
        }
        let before = self.distinct.fetch_add(1, Ordering::Relaxed);
        if before >= limit {
            self.distinct.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        shard.insert(
            key.to_key(),
            Tally {
                first: at,
                last: at,
                count: 1,
            },
        );
        drop(shard);
        if before + 1 == FLUSH_SOON {
            self.wake.notify_one();
        }
        true
    }

    /// Empties every shard.
    fn take(&self) -> Vec<(Key, Tally)> {
        let all = self.map.take();
        self.distinct.fetch_sub(all.len(), Ordering::Relaxed);
        all
    }
}

impl Audit {
    /// An audit writer on `store`. Inside a tokio runtime it also starts the task that writes
    /// what [`Audit::record_later`] buffers, every 250 ms (sooner when many events wait), in one
    /// transaction of multi-row INSERTs.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::with_limits(store, clock, AuditLimits::default())
    }

    /// [`Audit::new`] with other buffer limits (tests reach the limits without 100,000 events).
    pub fn with_limits(store: Arc<dyn Store>, clock: Arc<dyn Clock>, limits: AuditLimits) -> Self {
        let audit = Self {
            store,
            clock,
            pending: Arc::new(Pending::new(limits)),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // The task holds only a weak reference: it ends when the last `Audit` is dropped.
            let weak = Arc::downgrade(&audit.pending);
            let store = audit.store.clone();
            rt.spawn(async move {
                loop {
                    {
                        let Some(pending) = weak.upgrade() else {
                            return;
                        };
                        // Either the tick or a full-enough buffer, whichever comes first.
                        let _ = tokio::time::timeout(FLUSH_EVERY, pending.wake.notified()).await;
                    }
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

    /// The buffered writer's counters.
    pub fn stats(&self) -> AuditStats {
        let p = &self.pending;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AuditStats {
            recorded: get(&p.recorded),
            merged: get(&p.merged),
            dropped_full: get(&p.dropped_full),
            dropped_write_failed: get(&p.dropped_write_failed),
            rows_written: get(&p.rows_written),
            events_written: get(&p.events_written),
            flushes: get(&p.flushes),
            pending: p.distinct.load(Ordering::Relaxed) as u64,
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

    /// Records one event without waiting for the database (reads, denials, hot paths): it is
    /// written by a background task within 250 ms. Identical events in that window (same
    /// service, actor, action, credential, outcome and detail) become one row whose detail
    /// carries `count=N last_at=<ms>`, so every occurrence is accounted for at any request rate.
    /// When [`AuditLimits::max_pending`] distinct events wait, a new one is merged into a row without its
    /// detail (marked `overflow`); past that too it is dropped. Both are counted ([`Audit::stats`])
    /// and logged at most every 10 s.
    pub fn record_later(
        &self,
        caller: &Caller,
        action: &str,
        credential_id: Option<&str>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let at = self.clock.now().as_millis();
        let key = KeyRef {
            service: &caller.service,
            actor: caller.actor.as_ref().map(|a| a.user_id.as_str()),
            action,
            credential_id,
            outcome: &outcome.0,
            detail: detail.as_deref(),
            overflow: false,
        };
        let p = &self.pending;
        p.recorded.fetch_add(1, Ordering::Relaxed);
        if p.add(key, at, p.limits.max_pending) {
            return;
        }
        let coarse = KeyRef {
            detail: None,
            overflow: true,
            ..key
        };
        let limit = p.limits.max_pending.saturating_add(p.limits.max_overflow);
        if p.add(coarse, at, limit) {
            p.merged.fetch_add(1, Ordering::Relaxed);
        } else {
            p.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        // The writer may be sleeping: make it write now.
        p.wake.notify_one();
    }

    /// Records how `result` of `action` ended (its outcome, with `detail`) as `write` says,
    /// then returns it: the tail of every audited call.
    pub async fn recorded<T>(
        &self,
        write: Write,
        caller: &Caller,
        action: &str,
        credential_id: Option<&str>,
        result: Result<T, BrokerError>,
        detail: Option<String>,
    ) -> Result<T, BrokerError> {
        let outcome = Outcome::of(&result);
        match write {
            Write::Inline => {
                self.record(caller, action, credential_id, outcome, detail)
                    .await;
            }
            Write::Buffered => self.record_later(caller, action, credential_id, outcome, detail),
        }
        result
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
    /// Only this outcome (`ok` or a reason).
    pub outcome: Option<String>,
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
        let credential_id = f.credential_id.clone();
        let result = self.list_inner(caller, f).await;
        // Reading the log is itself audited, through the buffer like every read.
        self.recorded(
            Write::Buffered,
            caller,
            "audit.list",
            credential_id.as_deref(),
            result,
            None,
        )
        .await
    }

    async fn list_inner(
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
                outcome: f.outcome,
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

/// Writes the buffered events in one transaction of multi-row INSERTs; on failure they are
/// counted and logged as lost.
async fn write_pending(store: &dyn Store, pending: &Pending) {
    let mut writer = pending.writer.lock().await;
    let taken = pending.take();
    if !taken.is_empty() {
        let mut events: Vec<(NewAuditEvent, u64)> = taken
            .into_iter()
            .map(|(k, t)| {
                let mut detail = k.detail;
                if k.overflow {
                    detail = Some("overflow".to_owned());
                }
                if t.count > 1 {
                    let tally = format!("count={} last_at={}", t.count, t.last);
                    detail = Some(detail.map_or_else(|| tally.clone(), |d| format!("{d} {tally}")));
                }
                let event = NewAuditEvent {
                    at: t.first,
                    service: k.service,
                    actor: k.actor,
                    action: k.action,
                    credential_id: k.credential_id,
                    outcome: k.outcome,
                    detail,
                };
                (event, t.count)
            })
            .collect();
        events.sort_by_key(|(e, _)| e.at);
        let count: u64 = events.iter().map(|(_, n)| n).sum();
        let rows: Vec<NewAuditEvent> = events.into_iter().map(|(e, _)| e).collect();
        match store.append_audit_batch(&rows).await {
            Ok(()) => {
                pending.flushes.fetch_add(1, Ordering::Relaxed);
                pending
                    .rows_written
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                pending.events_written.fetch_add(count, Ordering::Relaxed);
            }
            Err(err) => {
                pending
                    .dropped_write_failed
                    .fetch_add(count, Ordering::Relaxed);
                tracing::error!(rows = rows.len(), events = count, error = %err, "audit events could not be written");
            }
        }
    }
    // Merged or dropped events are reported here, not per event: one line per 10 s at most.
    let merged = pending.merged.load(Ordering::Relaxed);
    let dropped = pending.dropped_full.load(Ordering::Relaxed);
    let quiet = writer.last_log.is_some_and(|t| t.elapsed() < LOG_EVERY);
    if (merged > writer.logged_merged || dropped > writer.logged_dropped) && !quiet {
        tracing::error!(
            merged_since_last = merged - writer.logged_merged,
            dropped_since_last = dropped - writer.logged_dropped,
            merged_total = merged,
            dropped_total = dropped,
            max_pending = pending.limits.max_pending,
            "audit buffer full: events merged without detail or dropped"
        );
        writer.last_log = Some(Instant::now());
        writer.logged_merged = merged;
        writer.logged_dropped = dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Action-shaped string literals (`word.word`) of `source` whose first word is one of
    /// `prefixes`; tracing span names (`instrument(name = ...)`) are not actions.
    fn action_literals(source: &str, prefixes: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for line in source.lines().filter(|l| !l.contains("instrument(")) {
            for (i, lit) in line.split('"').enumerate() {
                let Some((head, tail)) = lit.split_once('.') else {
                    continue;
                };
                let word = |s: &str| {
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                };
                if i % 2 == 1 && prefixes.contains(&head) && (word(tail) || tail == "{}") {
                    found.push(lit.replace("{}", "<Method>"));
                }
            }
        }
        found
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }

    /// `ACTIONS` is written by hand: it must name every action the broker's use cases, the
    /// RPC adapters and the auth layer record, and nothing else.
    #[test]
    fn actions_lists_every_action_the_code_records() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        // Every RPC adapter (a new one cannot record an action unseen) and the auth layers.
        sources(&root.join("../server/src/layers"), &mut files);
        sources(&root.join("../server/src/grpc"), &mut files);
        // Field paths (`credential.credential_id`) look like actions; no action is recorded there.
        files.retain(|(path, _)| !path.ends_with("grpc/convert.rs"));
        let prefixes: Vec<&str> = ACTIONS
            .iter()
            .filter_map(|a| a.split_once('.'))
            .map(|(p, _)| p)
            .collect();
        let mut used = std::collections::BTreeSet::new();
        for (path, text) in &files {
            if path.ends_with("audit.rs") {
                continue;
            }
            for a in action_literals(text, &prefixes) {
                assert!(
                    ACTIONS.contains(&a.as_str()),
                    "{}: {a:?} is not in audit::ACTIONS",
                    path.display()
                );
                used.insert(a);
            }
        }
        // audit.list is recorded here, in this file.
        used.insert("audit.list".to_owned());
        let listed: std::collections::BTreeSet<String> =
            ACTIONS.iter().map(|a| (*a).to_owned()).collect();
        assert_eq!(listed, used, "audit::ACTIONS names actions nothing records");
    }

    fn executor(actor: &str) -> Caller {
        use crate::types::{Email, UserId};
        Caller {
            service: "executor".into(),
            role: crate::access::ServiceRole::Executor,
            actor: Some(crate::access::Actor {
                user_id: UserId::parse("x-actor-id", actor).unwrap(),
                email: Email::parse("x-actor-email", &format!("{actor}@example.com")).unwrap(),
                workspace: None,
            }),
        }
    }

    /// A migrated store on a fresh SQLite file (`pool` connections) and a runtime to drive it.
    fn sqlite_store(pool: u32) -> (tempfile::TempDir, tokio::runtime::Runtime, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let store = rt.block_on(async {
            let store = cb_store::open(&url, pool).await.unwrap();
            store.migrate().await.unwrap();
            store
        });
        (dir, rt, store)
    }

    /// A store on a fresh SQLite file and an `Audit` made outside the runtime: without the
    /// background writer, the test decides when the one flush happens.
    fn kit(
        limits: AuditLimits,
    ) -> (
        tempfile::TempDir,
        tokio::runtime::Runtime,
        Arc<dyn Store>,
        Audit,
    ) {
        let (dir, rt, store) = sqlite_store(2);
        let clock = crate::clock::ManualClock::new(Timestamp::from_millis(1_767_225_600_000));
        let audit = Audit::with_limits(store.clone(), Arc::new(clock), limits);
        (dir, rt, store, audit)
    }

    fn rows(rt: &tokio::runtime::Runtime, store: &dyn Store) -> Vec<AuditRow> {
        rt.block_on(store.list_audit(&AuditQuery {
            limit: 1_000_000,
            ..AuditQuery::default()
        }))
        .unwrap()
    }

    fn count(r: &AuditRow) -> u64 {
        r.detail
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .find_map(|w| w.strip_prefix("count="))
            .map_or(1, |n| n.parse().unwrap())
    }

    /// Threads recording at once, each execution several times: one flush writes one row per
    /// execution whose counts add up to every call.
    #[test]
    fn concurrent_events_with_distinct_executions_are_one_row_each_and_all_counted() {
        const EXECUTIONS: usize = 2_000;
        const REPEATS: usize = 5;
        let (_dir, rt, store, audit) = kit(AuditLimits::default());
        std::thread::scope(|s| {
            for t in 0..8 {
                let audit = &audit;
                s.spawn(move || {
                    let caller = executor("u-alice");
                    for n in (t..EXECUTIONS * REPEATS).step_by(8) {
                        let detail = format!("workflow=wf-1 execution=ex-{}", n % EXECUTIONS);
                        audit.record_later(
                            &caller,
                            "token.issue",
                            Some("c1"),
                            Outcome::ok(),
                            Some(detail),
                        );
                    }
                });
            }
        });
        rt.block_on(audit.flush());
        let rows = rows(&rt, store.as_ref());
        assert_eq!(rows.len(), EXECUTIONS);
        assert_eq!(
            rows.iter().map(count).sum::<u64>(),
            (EXECUTIONS * REPEATS) as u64
        );
        let stats = audit.stats();
        assert_eq!(stats.flushes, 1);
        assert_eq!(stats.rows_written, EXECUTIONS as u64);
        assert_eq!(stats.events_written, (EXECUTIONS * REPEATS) as u64);
        assert_eq!((stats.merged, stats.dropped_full, stats.pending), (0, 0, 0));
    }

    /// Past the limit, events lose their detail but keep their count; past the overflow rows
    /// too they are dropped; both are counted.
    #[test]
    fn a_full_buffer_merges_then_drops_and_counts_both() {
        let limits = AuditLimits {
            max_pending: 100,
            max_overflow: 2,
        };
        let (_dir, rt, store, audit) = kit(limits);
        let alice = executor("u-alice");
        let issue = |caller: &Caller, n: usize| {
            let detail = Some(format!("execution=ex-{n}"));
            audit.record_later(caller, "token.issue", Some("c1"), Outcome::ok(), detail);
        };
        (0..150).for_each(|n| issue(&alice, n));
        // Other actors need rows of their own: one fits, the rest are dropped.
        for actor in ["u-b", "u-c", "u-d", "u-e", "u-f"] {
            issue(&executor(actor), 0);
        }
        let stats = audit.stats();
        assert_eq!(
            (stats.recorded, stats.merged, stats.dropped_full),
            (155, 51, 4)
        );
        rt.block_on(audit.flush());
        let rows = rows(&rt, store.as_ref());
        assert_eq!(rows.len(), 102);
        assert_eq!(rows.iter().map(count).sum::<u64>(), 151);
        let overflow: Vec<_> = rows
            .iter()
            .filter(|r| {
                r.detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with("overflow"))
            })
            .map(|r| (r.actor.as_deref().unwrap(), count(r)))
            .collect();
        assert_eq!(overflow.len(), 2, "{overflow:?}");
        assert!(overflow.contains(&("u-alice", 50)));
        assert!(overflow.contains(&("u-b", 1)));
        assert_eq!(audit.stats().events_written, 151);
    }

    /// Flushing empties the buffer: the limit applies per flush window, not for ever.
    #[test]
    fn a_flush_makes_room_again() {
        let limits = AuditLimits {
            max_pending: 10,
            max_overflow: 1,
        };
        let (_dir, rt, store, audit) = kit(limits);
        let alice = executor("u-alice");
        for round in 0..3 {
            for n in 0..10 {
                let detail = Some(format!("execution=ex-{round}-{n}"));
                audit.record_later(&alice, "token.issue", None, Outcome::ok(), detail);
            }
            rt.block_on(audit.flush());
        }
        assert_eq!(rows(&rt, store.as_ref()).len(), 30);
        assert_eq!(audit.stats().merged, 0);
    }

    /// Records distinct-execution `token.issue` events from two threads for `secs`, paced to
    /// `rate` events/s (`None`: as fast as they go), with the background writer running as in
    /// production; prints what was recorded, written, merged and dropped.
    fn drive(rate: Option<u64>, secs: u64) {
        let (dir, rt, store) = sqlite_store(5);
        let audit = rt.block_on(async {
            let clock = crate::clock::ManualClock::new(Timestamp::from_millis(0));
            // Made inside the runtime: the periodic writer runs.
            Audit::new(store.clone(), Arc::new(clock))
        });
        const THREADS: u64 = 2;
        const BATCH: u64 = 500;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let audit = &audit;
                s.spawn(move || {
                    let caller = executor("u-alice");
                    let mut n: u64 = 0;
                    while Instant::now() < deadline {
                        for _ in 0..BATCH {
                            let detail = format!("workflow=wf-1 execution=ex-{t}-{n}");
                            audit.record_later(
                                &caller,
                                "token.issue",
                                Some("c1"),
                                Outcome::ok(),
                                Some(detail),
                            );
                            n += 1;
                        }
                        if let Some(rate) = rate {
                            // Pacing (measurement only): the batch's place in the schedule.
                            let due = start
                                + Duration::from_secs_f64(n as f64 * THREADS as f64 / rate as f64);
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                    }
                });
            }
        });
        let produced = start.elapsed();
        rt.block_on(audit.flush());
        let total = start.elapsed();
        let s = audit.stats();
        let written: u64 = rows(&rt, store.as_ref()).iter().map(count).sum();
        println!(
            "rate {rate:?}: recorded {} in {:.2}s ({:.0}/s); written {} rows in {} flushes, \
             {:.0} rows/s until the last flush ended ({:.2}s); counts sum {written}; merged {}, dropped {}",
            s.recorded,
            produced.as_secs_f64(),
            s.recorded as f64 / produced.as_secs_f64(),
            s.rows_written,
            s.flushes,
            s.rows_written as f64 / total.as_secs_f64(),
            total.as_secs_f64(),
            s.merged,
            s.dropped_full + s.dropped_write_failed,
        );
        drop(dir);
    }

    /// The audit ceiling of docs/benchmarks.md. A measurement, never a check:
    /// `cargo test --release -p cb-broker --lib -- --ignored --nocapture audit_ceiling`.
    #[test]
    #[ignore = "measurement for docs/benchmarks.md; asserts nothing about time"]
    fn audit_ceiling() {
        drive(Some(50_000), 5);
        drive(None, 5);
    }
}
