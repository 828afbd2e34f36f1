//! Run grants: what one workflow run may use, on behalf of whom.
//!
//! When a run starts, the web backend (acting for the verified user whose run it is) asks for a
//! grant naming the credentials the run may use, its workflow and execution, and a lifetime. The
//! broker checks that the user may use each credential and returns an opaque, random grant
//! (`cbrg_` + 256 bits), stored only as its SHA-256. An executor presents it with
//! GetAccessToken; the actor, workflow and execution of the issuance are the grant's. A stolen
//! executor credential alone therefore yields nothing, and a stolen grant only the tokens of
//! one run until it expires or is revoked.
//!
//! Grants are verified from memory (a bounded cache keyed by the hash, invalidated through the
//! change feed like the token cache); membership is checked at each use against the token
//! cache's member snapshot, so removing the member or disconnecting ends what the grant gives.

use crate::access::{Actor, Caller, WorkspaceRole};
use crate::audit::{Audit, Outcome};
use crate::clock::{Clock, Timestamp};
use crate::credential::Status;
use crate::error::{BrokerError, reason};
use crate::policy::{Policy, require_actor};
use crate::types::{CredentialId, Email, UserId, WorkspaceId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_store::{RunGrantRow, Store};
use moka::sync::Cache;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every run grant starts with this (lets secret scanners recognise one).
pub const RUN_GRANT_PREFIX: &str = "cbrg_";

/// Random bytes in a grant (256 bits).
const GRANT_BYTES: usize = 32;

/// Most credentials one grant may name.
pub const MAX_CREDENTIALS_PER_GRANT: usize = 100;

/// Lifetimes and cache limits of run grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunGrantConfig {
    /// Lifetime when the request names none.
    pub default_lifetime: Duration,
    /// Longest lifetime a request may ask for.
    pub max_lifetime: Duration,
    /// Grants kept in memory at most.
    pub cache_max_entries: u64,
    /// How long a grant is served from memory before it is read again from the database.
    pub cache_max_age: Duration,
}

impl Default for RunGrantConfig {
    fn default() -> Self {
        Self {
            default_lifetime: Duration::from_secs(900),
            max_lifetime: Duration::from_secs(86_400),
            cache_max_entries: 100_000,
            cache_max_age: Duration::from_secs(60),
        }
    }
}

/// A request for a run grant.
#[derive(Clone, Debug)]
pub struct NewRunGrant {
    /// The credentials the run may use (at least one, no duplicates).
    pub credential_ids: Vec<CredentialId>,
    /// The workflow.
    pub workflow_id: String,
    /// The execution (run).
    pub execution_id: String,
    /// Requested lifetime (`None`: the default).
    pub lifetime: Option<Duration>,
}

/// A created grant: the secret goes to the caller once and is never stored.
#[derive(Debug)]
pub struct CreatedRunGrant {
    /// The grant to hand to the executor (`cbrg_…`).
    pub grant: SecretString,
    /// Its public id (audit, RevokeRunGrant).
    pub id: String,
    /// Not valid at or after this time.
    pub expires_at: Timestamp,
}

/// What a grant the executor presented stands for.
#[derive(Clone, Debug)]
pub struct RunGrant {
    /// Public id.
    pub id: String,
    /// The user the run acts for.
    pub actor: Actor,
    /// The workflow.
    pub workflow_id: String,
    /// The execution.
    pub execution_id: String,
    /// Credentials the run may use.
    pub credential_ids: Vec<String>,
    /// End of validity.
    pub expires_at: Timestamp,
    /// Revoked (RevokeRunGrant).
    pub revoked: bool,
}

impl RunGrant {
    fn from_row(r: RunGrantRow) -> Result<Self, BrokerError> {
        let bad = |what: &str| BrokerError::Internal(format!("stored run grant: bad {what}"));
        let workspace = match (r.workspace_id, r.workspace_role.as_deref()) {
            (Some(w), Some(role)) => Some((
                WorkspaceId::parse("workspace_id", &w).map_err(|_| bad("workspace"))?,
                match role {
                    "admin" => WorkspaceRole::Admin,
                    _ => WorkspaceRole::Member,
                },
            )),
            _ => None,
        };
        Ok(Self {
            actor: Actor {
                user_id: UserId::parse("user_id", &r.user_id).map_err(|_| bad("user id"))?,
                email: Email::parse("email", &r.email).map_err(|_| bad("email"))?,
                workspace,
            },
            id: r.id,
            workflow_id: r.workflow_id,
            execution_id: r.execution_id,
            credential_ids: r
                .credential_ids
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            expires_at: Timestamp::from_millis(r.expires_at),
            revoked: r.revoked_at.is_some(),
        })
    }
}

fn refused(reason: &'static str, message: &str) -> BrokerError {
    BrokerError::PermissionDenied {
        reason,
        message: message.into(),
    }
}

/// The hex SHA-256 under which a grant is stored.
fn grant_hash(grant: &str) -> String {
    cb_crypto::sha256_hex(grant.as_bytes())
}

/// Creates, revokes and verifies run grants.
pub struct RunGrants {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    audit: Audit,
    policy: Policy,
    config: RunGrantConfig,
    /// Valid-when-read grants by hash; never a negative entry.
    cache: Cache<String, Arc<RunGrant>>,
    /// Bumped by every invalidation: a grant read before one is not left in the cache.
    invalidations: AtomicU64,
}

impl std::fmt::Debug for RunGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunGrants")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RunGrants {
    /// Run grants over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        audit: Audit,
        config: RunGrantConfig,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.cache_max_entries)
            .time_to_live(config.cache_max_age)
            .build();
        Self {
            cache,
            invalidations: AtomicU64::new(0),
            config,
            policy: Policy::new(store.clone()),
            audit,
            clock,
            store,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RunGrantConfig {
        &self.config
    }

    /// Creates a grant for the caller's actor, who must be able to use every credential
    /// (Member, Admin or workspace admin; a disconnected credential is refused). Audited at once
    /// as `run_grant.create`, one event per credential.
    pub async fn create(
        &self,
        caller: &Caller,
        req: NewRunGrant,
    ) -> Result<CreatedRunGrant, BrokerError> {
        let result = self.create_inner(caller, &req).await;
        match &result {
            Ok(created) => {
                let detail = format!(
                    "run_grant={} workflow={} execution={} expires_at={}",
                    created.id,
                    req.workflow_id,
                    req.execution_id,
                    created.expires_at.as_millis()
                );
                for id in &req.credential_ids {
                    self.audit
                        .record(
                            caller,
                            "run_grant.create",
                            Some(id.as_str()),
                            Outcome::ok(),
                            Some(detail.clone()),
                        )
                        .await;
                }
            }
            Err(e) => {
                self.audit
                    .record(
                        caller,
                        "run_grant.create",
                        e.1.as_ref().map(CredentialId::as_str),
                        Outcome(e.0.reason().to_owned()),
                        None,
                    )
                    .await;
            }
        }
        result.map_err(|(e, _)| e)
    }

    async fn create_inner(
        &self,
        caller: &Caller,
        req: &NewRunGrant,
    ) -> Result<CreatedRunGrant, (BrokerError, Option<CredentialId>)> {
        let actor = require_actor(caller).map_err(|e| (e, None))?;
        let lifetime = req.lifetime.unwrap_or(self.config.default_lifetime);
        if lifetime.is_zero() || lifetime > self.config.max_lifetime {
            return Err((
                BrokerError::invalid(
                    "lifetime",
                    format!(
                        "must be more than 0 and at most {} seconds",
                        self.config.max_lifetime.as_secs()
                    ),
                ),
                None,
            ));
        }
        for id in &req.credential_ids {
            let (c, _) = self
                .policy
                .load_visible(caller, id)
                .await
                .map_err(|e| (e, Some(id.clone())))?;
            if c.status == Status::Disconnected {
                return Err((BrokerError::disconnected(), Some(id.clone())));
            }
        }
        let mut random = [0u8; GRANT_BYTES];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| (BrokerError::Internal("no randomness".into()), None))?;
        let grant = SecretString::from(format!(
            "{RUN_GRANT_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(random)
        ));
        let now = self.clock.now();
        let expires_at = now.plus(lifetime);
        let id = uuid::Uuid::now_v7().hyphenated().to_string();
        let (workspace_id, workspace_role) = match &actor.workspace {
            Some((w, r)) => (
                Some(w.to_string()),
                Some(match r {
                    WorkspaceRole::Admin => "admin".to_owned(),
                    WorkspaceRole::Member => "member".to_owned(),
                }),
            ),
            None => (None, None),
        };
        let row = RunGrantRow {
            id: id.clone(),
            grant_sha256: grant_hash(grant.expose_secret()),
            user_id: actor.user_id.to_string(),
            email: actor.email.to_string(),
            workspace_id,
            workspace_role,
            workflow_id: req.workflow_id.clone(),
            execution_id: req.execution_id.clone(),
            credential_ids: req
                .credential_ids
                .iter()
                .map(CredentialId::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            created_by: caller.service.clone(),
            created_at: now.as_millis(),
            expires_at: expires_at.as_millis(),
            revoked_at: None,
        };
        self.store
            .insert_run_grant(&row)
            .await
            .map_err(|e| (e.into(), None))?;
        Ok(CreatedRunGrant {
            grant,
            id,
            expires_at,
        })
    }

    /// Revokes a grant: by the user it acts for, a workspace admin of its workspace, or in
    /// development mode. Anyone else, or an unknown id: NOT_FOUND. Audited at once as
    /// `run_grant.revoke`.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<(), BrokerError> {
        let result = self.revoke_inner(caller, id).await;
        self.audit
            .record(
                caller,
                "run_grant.revoke",
                None,
                Outcome::of(&result),
                Some(format!("run_grant={id}")),
            )
            .await;
        result
    }

    async fn revoke_inner(&self, caller: &Caller, id: &str) -> Result<(), BrokerError> {
        let not_found = || BrokerError::NotFound {
            reason: reason::RUN_GRANT_NOT_FOUND,
            what: "run grant",
        };
        let row = self
            .store
            .get_run_grant_by_id(id)
            .await?
            .ok_or_else(not_found)?;
        let allowed = match &caller.actor {
            None => caller.role == crate::access::ServiceRole::Development,
            Some(a) => {
                a.user_id.as_str() == row.user_id
                    || row
                        .workspace_id
                        .as_deref()
                        .is_some_and(|w| a.is_workspace_admin(w))
            }
        };
        if !allowed {
            return Err(not_found());
        }
        self.store
            .revoke_run_grant(id, self.clock.now().as_millis())
            .await?;
        // This replica at once; the others through the change feed.
        self.invalidate(&row.grant_sha256);
        Ok(())
    }

    /// The grant an executor presented, checked for `credential`: unknown or malformed →
    /// `RUN_GRANT_INVALID`, revoked → `RUN_GRANT_REVOKED`, expired → `RUN_GRANT_EXPIRED`, not
    /// naming the credential → `RUN_GRANT_NOT_COVERING`. With `use_cache` a grant read before
    /// is served from memory (no database read).
    pub async fn resolve(
        &self,
        presented: &SecretString,
        credential: &CredentialId,
        use_cache: bool,
    ) -> Result<Arc<RunGrant>, BrokerError> {
        let invalid = || {
            refused(
                reason::RUN_GRANT_INVALID,
                "the run grant (x-run-grant) is not one this broker issued",
            )
        };
        let text = presented.expose_secret().trim();
        if !text.starts_with(RUN_GRANT_PREFIX) || text.len() > 128 {
            return Err(invalid());
        }
        let hash = grant_hash(text);
        let cached = if use_cache {
            self.cache.get(&hash)
        } else {
            None
        };
        let grant = match cached {
            Some(g) => g,
            None => {
                let seen = self.invalidations.load(Ordering::SeqCst);
                let row = self.store.get_run_grant(&hash).await?.ok_or_else(invalid)?;
                let g = Arc::new(RunGrant::from_row(row)?);
                // Revoked ones too: a revocation is final, so a revoked grant presented again
                // is refused from memory instead of reading the database on every call.
                if use_cache {
                    self.cache.insert(hash.clone(), g.clone());
                    // A revocation while the row was read may have missed the entry.
                    if self.invalidations.load(Ordering::SeqCst) != seen {
                        self.cache.invalidate(&hash);
                    }
                }
                g
            }
        };
        if grant.revoked {
            return Err(refused(
                reason::RUN_GRANT_REVOKED,
                "the run grant was revoked",
            ));
        }
        if self.clock.now() >= grant.expires_at {
            return Err(refused(
                reason::RUN_GRANT_EXPIRED,
                "the run grant has expired; the run must ask for a new one",
            ));
        }
        if !grant
            .credential_ids
            .iter()
            .any(|c| c == credential.as_str())
        {
            return Err(refused(
                reason::RUN_GRANT_NOT_COVERING,
                "the run grant does not cover this credential",
            ));
        }
        Ok(grant)
    }

    /// Forgets the grant with this hash (revoked on another replica).
    pub fn invalidate(&self, grant_sha256: &str) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(grant_sha256);
    }

    /// Forgets every grant (the change feed may have missed revocations).
    pub fn clear(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// Deletes grants expired for longer than `after` (runs periodically).
    pub async fn prune(&self, after: Duration) -> Result<u64, BrokerError> {
        let cutoff = self.clock.now().minus(after);
        Ok(self.store.prune_run_grants(cutoff.as_millis()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_hash_is_hex_sha256() {
        assert_eq!(
            grant_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
