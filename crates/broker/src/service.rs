//! The credential use cases: import, read, list, edit, disconnect. Authorization is checked here,
//! in the domain, so every transport gets the same rules.

use crate::access::{Caller, Role};
use crate::audit::{Audit, Write};
use crate::clock::{Clock, Timestamp};
use crate::credential::{Credential, CredentialView, Status, StatusKind};
use crate::error::{BrokerError, reason};
use crate::gateway::{ProviderGateway, RevokeResult};
use crate::health::{EventKind, HealthKind, event};
use crate::issuance::TokenCache;
use crate::issuance::schedule::next_refresh_at;
use crate::oauth_apps::{AppClients, ResolvedApp};
use crate::policy::Policy;
use crate::random::{Random, SystemRandom};
use crate::sealing;
use crate::tokens::TokenBundle;
use crate::types::{
    CredentialId, Description, DisplayName, Email, ProviderAccount, ProviderId, Scopes, WorkspaceId,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_crypto::Envelope;
use cb_store::{CredentialQuery, MemberRow, Store};
use std::sync::Arc;
use std::time::Duration;

/// Default and maximum page sizes for ListCredentials.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Maximum page size for ListCredentials.
pub const MAX_PAGE_SIZE: u32 = 500;

/// An operator bringing an existing token set.
#[derive(Debug)]
pub struct ImportCredential {
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// Provider catalog id.
    pub provider_id: ProviderId,
    /// The account the tokens belong to.
    pub account: ProviderAccount,
    /// Display name.
    pub display_name: DisplayName,
    /// Description.
    pub description: Description,
    /// Granted scopes.
    pub scopes: Scopes,
    /// The tokens.
    pub tokens: TokenBundle,
    /// The first Admin (default: the actor).
    pub admin_email: Option<Email>,
    /// The workspace OAuth app whose client minted the tokens (default: see
    /// [`AppClients::for_import`]).
    pub oauth_app_id: Option<String>,
}

/// A ListCredentials query.
#[derive(Clone, Debug)]
pub struct ListCredentials {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Only this provider.
    pub provider_id: Option<ProviderId>,
    /// Page size (already clamped to 1..=MAX_PAGE_SIZE).
    pub page_size: u32,
    /// Opaque token from a previous page.
    pub page_token: Option<String>,
    /// Include DISCONNECTED credentials.
    pub include_disconnected: bool,
    /// Only these states (empty: all).
    pub statuses: Vec<StatusKind>,
    /// Only this health.
    pub health: Option<HealthKind>,
}

/// A metadata edit; `None` fields stay unchanged.
#[derive(Clone, Debug)]
pub struct UpdateCredential {
    /// The credential.
    pub id: CredentialId,
    /// New display name.
    pub display_name: Option<DisplayName>,
    /// New description.
    pub description: Option<Description>,
    /// Reject the edit unless the stored version equals this.
    pub expected_version: Option<i64>,
}

/// One page of credentials.
#[derive(Debug)]
pub struct CredentialPage {
    /// The credentials.
    pub items: Vec<CredentialView>,
    /// Token for the next page, if any.
    pub next_page_token: Option<String>,
}

/// What happened at the provider when disconnecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The provider revoked the grant.
    Revoked,
    /// The provider cannot revoke.
    NotSupported(String),
    /// Revocation failed; tokens were destroyed anyway.
    Failed(String),
    /// Nothing to revoke.
    Skipped(String),
}

/// The broker's credential use cases.
pub struct CredentialService {
    store: Arc<dyn Store>,
    policy: Policy,
    envelope: Arc<Envelope>,
    clock: Arc<dyn Clock>,
    gateway: Arc<dyn ProviderGateway>,
    cache: Arc<TokenCache>,
    audit: Audit,
    refresh_ahead_window: Duration,
    random: Arc<dyn Random>,
    apps: AppClients,
}

impl CredentialService {
    /// Wires the use cases to their dependencies.
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn ProviderGateway>,
        cache: Arc<TokenCache>,
        audit: Audit,
        refresh_ahead_window: Duration,
    ) -> Self {
        Self {
            policy: Policy::new(store.clone()),
            apps: AppClients::new(store.clone(), envelope.clone()),
            store,
            envelope,
            clock,
            gateway,
            cache,
            audit,
            refresh_ahead_window,
            random: Arc::new(SystemRandom),
        }
    }

    /// Replaces the source of refresh-ahead jitter (tests pin the draw).
    pub fn with_random(mut self, random: Arc<dyn Random>) -> Self {
        self.random = random;
        self
    }

    /// When the background refresher should look at a credential holding `tokens`.
    /// Where the provider says nothing of the grant's end, the catalog's absolute lifetime
    /// (counted from now, the consent) stands in, so the grant is warned about before it ends.
    pub fn schedule_refresh(&self, c: &mut Credential, tokens: &TokenBundle, now: Timestamp) {
        let provider = self.gateway.get(&c.provider_id);
        let idle = provider.as_ref().and_then(|p| p.refresh_token_idle);
        if c.refresh_expires_at.is_none() {
            c.refresh_expires_at = provider
                .and_then(|p| p.refresh_token_absolute)
                .map(|a| now.plus(a));
        }
        c.next_refresh_at = next_refresh_at(
            now,
            tokens,
            self.refresh_ahead_window,
            idle,
            self.random.fraction(),
        );
    }

    /// Writes `c` against version `expected` with the caller's lifecycle event `kind` in the
    /// same transaction, and drops its cached tokens.
    async fn write_with_event(
        &self,
        caller: &Caller,
        c: &Credential,
        expected: i64,
        kind: EventKind,
    ) -> Result<cb_store::CredentialRow, BrokerError> {
        let actor = caller.actor_label();
        let events = [event(c, kind, actor.as_deref(), None, None, c.updated_at)];
        let stored = self
            .store
            .update_credential_with_events(&c.to_row(), expected, &events)
            .await?;
        self.cache.invalidate(c.id.as_str());
        Ok(stored)
    }

    /// The audit writer shared with other services.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Imports a token set as a new credential; the named admin (or the actor) becomes Admin.
    pub async fn import(
        &self,
        caller: &Caller,
        req: ImportCredential,
    ) -> Result<CredentialView, BrokerError> {
        let result = self.import_inner(caller, req).await;
        let id = result.as_ref().ok().map(|v| v.credential.id.to_string());
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "credential.import",
                id.as_deref(),
                result,
                None,
            )
            .await
    }

    async fn import_inner(
        &self,
        caller: &Caller,
        req: ImportCredential,
    ) -> Result<CredentialView, BrokerError> {
        let admin_email = match (req.admin_email, &caller.actor) {
            (Some(e), _) => e,
            (None, Some(a)) => a.email.clone(),
            (None, None) => {
                return Err(BrokerError::invalid(
                    "admin_email",
                    "is required when the call carries no actor metadata",
                ));
            }
        };
        let now = self.clock.now();
        let created_by = caller.actor.as_ref().map_or_else(
            || format!("service:{}", caller.service),
            |a| a.user_id.to_string(),
        );
        let mut c = Credential::new(
            CredentialId::generate(),
            req.workspace_id.to_string(),
            req.provider_id.to_string(),
            req.account,
            req.display_name,
            req.description,
            req.scopes,
            created_by.clone(),
            now,
        );
        // The client the tokens are refreshed and revoked with.
        let app = self
            .apps
            .for_import(
                req.workspace_id.as_str(),
                req.provider_id.as_str(),
                req.oauth_app_id.as_deref(),
                self.gateway.get(req.provider_id.as_str()).is_some(),
            )
            .await?;
        sealing::seal_into(&self.envelope, &mut c, &req.tokens).await?;
        self.schedule_refresh(&mut c, &req.tokens, now);
        let actor_user = caller
            .actor
            .as_ref()
            .filter(|a| a.email == admin_email)
            .map(|a| a.user_id.to_string());
        let admin = MemberRow {
            credential_id: c.id.to_string(),
            email: admin_email.to_string(),
            user_id: actor_user,
            role: Role::Admin.as_str().to_owned(),
            state: "ACTIVE".to_owned(),
            invited_by: created_by,
            created_at: now.as_millis(),
            updated_at: now.as_millis(),
        };
        let events = [event(
            &c,
            EventKind::Connected,
            caller.actor_label().as_deref(),
            Some("imported".into()),
            None,
            c.created_at,
        )];
        self.store.insert_credential_with_events(&c.to_row(), &[admin], &events).await.map_err(|e| match e {
            cb_store::StoreError::Duplicate(_) => BrokerError::AlreadyExists {
                reason: reason::CREDENTIAL_ALREADY_EXISTS,
                message: "this provider account is already connected in the workspace; reconnect or disconnect that credential instead".into(),
            },
            other => other.into(),
        })?;
        if let Some(app) = &app {
            let version = app.newest().map(|(v, _)| *v);
            self.apps.record(c.id.as_str(), Some(app), version).await?;
        }
        let role = caller
            .actor
            .as_ref()
            .filter(|a| a.email == admin_email)
            .map(|_| Role::Admin);
        Ok(CredentialView {
            credential: c,
            caller_role: role,
        })
    }

    /// The OAuth app (id and secret version) recorded as having minted a credential's grant,
    /// if any (GetCredential shows it).
    pub async fn oauth_app_of(&self, c: &Credential) -> Result<Option<(String, i64)>, BrokerError> {
        Ok(self.store.credential_app(c.id.as_str()).await?)
    }

    /// Returns one credential's metadata.
    pub async fn get(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<CredentialView, BrokerError> {
        let result = self.policy.load_visible(caller, id).await;
        // Reads are audited through the buffer: a read never waits for a database write.
        let (c, role) = self
            .audit
            .recorded(
                Write::Buffered,
                caller,
                "credential.get",
                Some(id.as_str()),
                result,
                None,
            )
            .await?;
        Ok(CredentialView {
            credential: c,
            caller_role: role,
        })
    }

    /// Lists the workspace's credentials visible to the caller, ordered by id.
    pub async fn list(
        &self,
        caller: &Caller,
        q: ListCredentials,
    ) -> Result<CredentialPage, BrokerError> {
        let detail = format!("workspace={}", q.workspace_id);
        let result = self.list_inner(caller, q).await;
        self.audit
            .recorded(
                Write::Buffered,
                caller,
                "credential.list",
                None,
                result,
                Some(detail),
            )
            .await
    }

    async fn list_inner(
        &self,
        caller: &Caller,
        q: ListCredentials,
    ) -> Result<CredentialPage, BrokerError> {
        let provider = q.provider_id.as_ref().map(ToString::to_string);
        let mut after = match &q.page_token {
            Some(t) => Some(decode_page_token(
                t,
                q.workspace_id.as_str(),
                provider.as_deref(),
            )?),
            None => None,
        };
        let mut items = Vec::new();
        // Visibility is per row; keep reading until the page is full or the rows run out.
        loop {
            let rows = self
                .store
                .list_credentials(&CredentialQuery {
                    workspace_id: q.workspace_id.to_string(),
                    provider_id: provider.clone(),
                    after_id: after.clone(),
                    limit: q.page_size,
                    include_disconnected: q.include_disconnected
                        || q.statuses.contains(&StatusKind::Disconnected),
                    health: q.health.map(|h| h.as_str().to_owned()),
                })
                .await?;
            let exhausted = rows.len() < q.page_size as usize;
            for row in rows {
                after = Some(row.id.clone());
                let c = Credential::from_row(row)?;
                if !q.statuses.is_empty() && !q.statuses.contains(&c.status.kind()) {
                    continue;
                }
                if let Some(role) = self.policy.visibility(caller, &c).await? {
                    items.push(CredentialView {
                        credential: c,
                        caller_role: role,
                    });
                    if items.len() == q.page_size as usize {
                        let next = (!exhausted).then(|| {
                            encode_page_token(
                                q.workspace_id.as_str(),
                                provider.as_deref(),
                                after.as_deref().unwrap_or(""),
                            )
                        });
                        return Ok(CredentialPage {
                            items,
                            next_page_token: next,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(CredentialPage {
                    items,
                    next_page_token: None,
                });
            }
        }
    }

    /// Renames a credential or edits its description. Admin only.
    pub async fn update(
        &self,
        caller: &Caller,
        req: UpdateCredential,
    ) -> Result<CredentialView, BrokerError> {
        let mut result = self.update_inner(caller, &req).await;
        // A refresh may bump the row version between read and write; when the client did not
        // pin a version, re-read and apply the edit again.
        for _ in 0..3 {
            match &result {
                Err(BrokerError::Conflict { .. }) if req.expected_version.is_none() => {
                    result = self.update_inner(caller, &req).await;
                }
                _ => break,
            }
        }
        let mut fields = Vec::new();
        if req.display_name.is_some() {
            fields.push("display_name");
        }
        if req.description.is_some() {
            fields.push("description");
        }
        let detail = format!("fields={}", fields.join(","));
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "credential.update",
                Some(req.id.as_str()),
                result,
                Some(detail),
            )
            .await
    }

    async fn update_inner(
        &self,
        caller: &Caller,
        req: &UpdateCredential,
    ) -> Result<CredentialView, BrokerError> {
        let (mut c, role) = self
            .policy
            .load_with_role(caller, &req.id, Role::Admin)
            .await?;
        if c.is_disconnected() {
            return Err(BrokerError::disconnected());
        }
        if let Some(v) = req.expected_version
            && v != c.version
        {
            return Err(BrokerError::Conflict {
                message: format!(
                    "the credential is at version {}, not {v}; read it again and retry",
                    c.version
                ),
            });
        }
        if let Some(n) = &req.display_name {
            c.display_name = n.clone();
        }
        if let Some(d) = &req.description {
            c.description = d.clone();
        }
        c.updated_at = self.clock.now();
        let stored = self
            .write_with_event(caller, &c, c.version, EventKind::Updated)
            .await?;
        Ok(CredentialView {
            credential: Credential::from_row(stored)?,
            caller_role: Some(role),
        })
    }

    /// Disconnects: destroys the sealed tokens and marks the credential DISCONNECTED. Admin only.
    pub async fn disconnect(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<(CredentialView, Revocation), BrokerError> {
        let result = self.disconnect_inner(caller, id).await;
        self.audit
            .recorded(
                Write::Inline,
                caller,
                "credential.disconnect",
                Some(id.as_str()),
                result,
                None,
            )
            .await
    }

    async fn disconnect_inner(
        &self,
        caller: &Caller,
        id: &CredentialId,
    ) -> Result<(CredentialView, Revocation), BrokerError> {
        let (mut c, role) = self.policy.load_with_role(caller, id, Role::Admin).await?;
        if c.is_disconnected() {
            let note = Revocation::Skipped("the credential was already disconnected".into());
            return Ok((
                CredentialView {
                    credential: c,
                    caller_role: Some(role),
                },
                note,
            ));
        }
        // Destroy first, then revoke with the tokens held in memory: a slow or failing provider
        // never keeps tokens alive here.
        let tokens = sealing::open(&self.envelope, &c).await;
        // Revoked with the client that minted the grant (an app deleted since: none left).
        let app = self.apps.for_credential(&c).await.ok().flatten();
        let expected = c.version;
        let provider = c.provider_id.clone();
        sealing::shred(&self.envelope, &mut c)?;
        c.status = Status::Disconnected;
        c.updated_at = self.clock.now();
        let stored = self
            .write_with_event(caller, &c, expected, EventKind::Disconnected)
            .await?;
        let revocation = if crate::revocation::would_end_a_kept_grant(
            self.store.as_ref(),
            self.gateway.as_ref(),
            &provider,
            &c.account.subject,
            Some(c.id.as_str()),
        )
        .await
        {
            Revocation::Skipped(
                "another credential keeps a grant of this account, and this provider's revocation \
                 would end it too; the tokens here are destroyed"
                    .into(),
            )
        } else {
            self.revoke(&provider, app.as_ref(), c.id.as_str(), tokens)
                .await
        };
        Ok((
            CredentialView {
                credential: Credential::from_row(stored)?,
                caller_role: Some(role),
            },
            revocation,
        ))
    }

    /// Revokes the grant at the provider where it can; never fails the disconnect.
    async fn revoke(
        &self,
        provider: &str,
        app: Option<&ResolvedApp>,
        id: &str,
        tokens: Result<Option<TokenBundle>, BrokerError>,
    ) -> Revocation {
        let tokens = match tokens {
            Ok(Some(t)) => t,
            Ok(None) => return Revocation::Skipped("no tokens are stored".into()),
            Err(e) => {
                return Revocation::Failed(format!("the stored tokens could not be opened: {e}"));
            }
        };
        let (revoked, _) = AppClients::call(app, |client| {
            let tokens = &tokens;
            async move { self.gateway.revoke(provider, client.as_ref(), tokens).await }
        })
        .await;
        match revoked {
            Ok(RevokeResult::Revoked) => Revocation::Revoked,
            Ok(RevokeResult::NotSupported) => Revocation::NotSupported(
                "the provider offers no revocation; the grant stays valid there until it expires or the user removes it".into(),
            ),
            Err(e) => {
                tracing::warn!(credential_id = %id, provider, error = %e, "revocation failed");
                Revocation::Failed(format!("the provider did not confirm the revocation: {e}"))
            }
        }
    }

    /// Recent workflows that used a credential, and how many distinct workflows did.
    pub async fn usage(
        &self,
        c: &Credential,
    ) -> Result<(Vec<(String, Timestamp)>, u64), BrokerError> {
        let (recent, total) = self.store.recent_workflows(c.id.as_str(), 10).await?;
        Ok((
            recent
                .into_iter()
                .map(|(w, at)| (w, Timestamp::from_millis(at)))
                .collect(),
            total,
        ))
    }

    /// Opens a credential's tokens (used by token issuance and the start-up key check).
    pub async fn open_tokens(&self, c: &Credential) -> Result<Option<TokenBundle>, BrokerError> {
        sealing::open(&self.envelope, c).await
    }

    /// Current time of the injected clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

const PAGE_TOKEN_PREFIX: &str = "v1";

fn encode_page_token(workspace: &str, provider: Option<&str>, after_id: &str) -> String {
    let raw = format!(
        "{PAGE_TOKEN_PREFIX}\n{workspace}\n{}\n{after_id}",
        provider.unwrap_or("")
    );
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a page token, checking it was issued for the same query.
fn decode_page_token(
    token: &str,
    workspace: &str,
    provider: Option<&str>,
) -> Result<String, BrokerError> {
    let bad = || {
        BrokerError::invalid(
            "page_token",
            "is not a token from a previous response to this query",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(bytes).map_err(|_| bad())?;
    let parts: Vec<&str> = raw.split('\n').collect();
    match parts.as_slice() {
        [PAGE_TOKEN_PREFIX, w, p, after]
            if *w == workspace && *p == provider.unwrap_or("") && !after.is_empty() =>
        {
            Ok((*after).to_owned())
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_token_is_bound_to_its_query() {
        let t = encode_page_token("ws1", Some("gmail"), "abc");
        assert_eq!(decode_page_token(&t, "ws1", Some("gmail")).unwrap(), "abc");
        assert!(decode_page_token(&t, "ws2", Some("gmail")).is_err());
        assert!(decode_page_token(&t, "ws1", None).is_err());
        assert!(decode_page_token("garbage!", "ws1", None).is_err());
    }
}
