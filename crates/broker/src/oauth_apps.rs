//! OAuth apps a workspace brings (its own client id and secret for a provider): created, read,
//! edited, rotated and deleted by workspace admins and operators; resolved by the connect flow,
//! token refresh and revocation ([`AppClients`]). Client secrets are sealed like tokens (AAD
//! bound to the app and the secret's version) and never leave the broker.

use crate::access::Caller;
use crate::audit::{Audit, Outcome};
use crate::clock::{Clock, Timestamp};
use crate::credential::{Credential, Status};
use crate::error::{BrokerError, FieldViolation, reason};
use crate::gateway::{
    AppClient, ClientProbe, Discovery, ProviderError, ProviderGateway, RedirectProbe,
};
use crate::health::{self, EventKind, HealthKind};
use crate::issuance::TokenCache;
use crate::policy;
use crate::sealing;
use crate::types::{DisplayName, ProviderId, Scopes, WorkspaceId};
use cb_crypto::Envelope;
use cb_store::{OAuthAppRow, Store, StoreError};
use secrecy::SecretString;
use std::future::Future;
use std::sync::Arc;

/// An app holds at most this many client secrets (the newest is used; rotation adds one).
pub const MAX_SECRETS: usize = 2;
const CLIENT_ID_MAX: usize = 512;
const CLIENT_SECRET_MAX: usize = 2048;

/// An OAuth app as callers see it (never its secrets).
#[derive(Clone, Debug)]
pub struct OAuthApp {
    /// Opaque id.
    pub id: String,
    /// Owning workspace.
    pub workspace_id: String,
    /// Provider catalog id.
    pub provider_id: String,
    /// Name shown to people.
    pub display_name: String,
    /// Client id at the provider.
    pub client_id: String,
    /// Scopes the app may request (empty: any the provider offers).
    pub allowed_scopes: Scopes,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Row version (optimistic concurrency).
    pub version: i64,
    /// Versions of the client secrets held, newest (the one used) first.
    pub secret_versions: Vec<i64>,
}

/// A CreateOAuthApp request.
#[derive(Debug)]
pub struct CreateOAuthApp {
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// Provider catalog id.
    pub provider_id: ProviderId,
    /// Name shown to people.
    pub display_name: DisplayName,
    /// Client id at the provider.
    pub client_id: String,
    /// Client secret (sealed at once; never returned).
    pub client_secret: SecretString,
    /// Scopes the app may request.
    pub allowed_scopes: Scopes,
}

/// An UpdateOAuthApp request; `None` fields stay unchanged.
#[derive(Debug)]
pub struct UpdateOAuthApp {
    /// The app.
    pub id: String,
    /// New name.
    pub display_name: Option<DisplayName>,
    /// New client id.
    pub client_id: Option<String>,
    /// New allowed scopes.
    pub allowed_scopes: Option<Scopes>,
    /// Reject unless the stored version equals this.
    pub expected_version: Option<i64>,
}

/// What DeleteOAuthApp did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// Credentials the app minted that now need a reconnect (forced delete).
    pub marked_needs_reconnect: Vec<String>,
}

/// A diagnosis check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed; the hint says what to do.
    Fail,
    /// The check could not run or does not apply; the detail says why.
    Skipped,
}

/// One check of TestOAuthApp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Stable name, e.g. `client_authentication`.
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was seen (never a secret).
    pub detail: String,
    /// What a person can do about a failure (empty when nothing is needed).
    pub hint: String,
}

fn check(
    name: &'static str,
    verdict: Verdict,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
        hint: hint.into(),
    }
}

/// Parses an app id (a UUID in canonical form) from request field `field`.
pub fn parse_app_id(field: &str, raw: &str) -> Result<String, FieldViolation> {
    match uuid::Uuid::try_parse(raw) {
        Ok(u) if u.hyphenated().to_string() == raw => Ok(raw.to_owned()),
        _ if raw.is_empty() => Err(FieldViolation::new(field, "must not be empty")),
        _ => Err(FieldViolation::new(field, "is not an OAuth app id")),
    }
}

/// `raw` when it is non-empty, printable and at most `max` characters; the violation never
/// repeats the value.
fn printable(field: &str, raw: &str, max: usize) -> Result<String, FieldViolation> {
    if raw.is_empty() {
        Err(FieldViolation::new(field, "must not be empty"))
    } else if raw.len() > max || raw.chars().any(char::is_control) {
        Err(FieldViolation::new(
            field,
            format!("must be at most {max} printable characters"),
        ))
    } else {
        Ok(raw.to_owned())
    }
}

/// Parses a client id: non-empty, printable, at most 512 characters.
pub fn parse_client_id(field: &str, raw: &str) -> Result<String, FieldViolation> {
    printable(field, raw, CLIENT_ID_MAX)
}

/// Parses a client secret: non-empty, printable, at most 2048 characters.
pub fn parse_client_secret(field: &str, raw: &str) -> Result<SecretString, FieldViolation> {
    printable(field, raw, CLIENT_SECRET_MAX).map(SecretString::from)
}

fn app_not_found() -> BrokerError {
    BrokerError::NotFound {
        reason: reason::OAUTH_APP_NOT_FOUND,
        what: "OAuth app",
    }
}

fn failed(reason: &'static str, message: impl Into<String>) -> BrokerError {
    BrokerError::FailedPrecondition {
        reason,
        message: message.into(),
    }
}

/// Workspace admins (of that workspace) and operators manage a workspace's apps.
fn require_workspace_admin(caller: &Caller, workspace: &str) -> Result<(), BrokerError> {
    policy::require_workspace_admin(caller, workspace, "OAuth apps")
}

/// An app's client as one call uses it: the newest secret opened, the older ones still sealed
/// (opened only when a call falls back to them).
#[derive(Clone)]
pub struct ResolvedApp {
    /// The app's id.
    pub app_id: String,
    /// Its display name (for messages).
    pub display_name: String,
    /// The workspace-defined provider the app is for (`None`: a catalog provider).
    pub provider: Option<Arc<cb_oauth::catalog::ProviderSpec>>,
    workspace_id: String,
    client_id: String,
    /// (version, client) of the newest secret; `None`: the app holds none.
    newest: Option<(i64, AppClient)>,
    /// The older secrets, sealed, newest first.
    older: Vec<cb_store::OAuthAppSecretRow>,
    envelope: Arc<Envelope>,
}

impl std::fmt::Debug for ResolvedApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedApp")
            .field("app_id", &self.app_id)
            .field("newest", &self.newest.as_ref().map(|(v, _)| v))
            .field(
                "older",
                &self.older.iter().map(|s| s.version).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ResolvedApp {
    /// The newest secret's version and client.
    pub fn newest(&self) -> Option<&(i64, AppClient)> {
        self.newest.as_ref()
    }

    /// Opens the secret held before the newest one (the fallback on `invalid_client`), if any.
    pub async fn previous(&self) -> Option<Result<(i64, AppClient), BrokerError>> {
        let row = self.older.first()?;
        Some(self.opened(row).await)
    }

    /// Every secret opened, newest first (the diagnosis probes each).
    pub async fn all(&self) -> Result<Vec<(i64, AppClient)>, BrokerError> {
        let mut all: Vec<(i64, AppClient)> = self.newest.iter().cloned().collect();
        for row in &self.older {
            all.push(self.opened(row).await?);
        }
        Ok(all)
    }

    async fn opened(
        &self,
        row: &cb_store::OAuthAppSecretRow,
    ) -> Result<(i64, AppClient), BrokerError> {
        let secret = sealing::open_app_secret(&self.envelope, &self.workspace_id, row).await?;
        Ok((
            row.version,
            AppClient {
                client_id: self.client_id.clone(),
                client_secret: secret,
                provider: self.provider.clone(),
            },
        ))
    }

    /// A label naming the app in messages and audit details.
    pub fn label(&self) -> String {
        format!("{} ({})", self.display_name, self.app_id)
    }
}

/// What a call through an app's client did with its secrets (see [`AppClients::call`]).
#[derive(Clone, Debug, Default)]
pub struct SecretUse {
    /// The secret version of the call's answer (`None`: the configured client).
    pub version: Option<i64>,
    /// The previous secret was tried after `invalid_client`:
    /// `previous_secret=accepted|rejected`, or `previous_secret=unreadable` when it could not
    /// be opened.
    pub fallback: Option<&'static str>,
    /// The client of the call's answer (`None`: the configured client).
    pub client: Option<AppClient>,
}

/// Finds and opens workspace app clients for the connect flow, issuance and revocation.
#[derive(Clone)]
pub struct AppClients {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
}

impl AppClients {
    /// Over `store`, opening secrets with `envelope`.
    pub fn new(store: Arc<dyn Store>, envelope: Arc<Envelope>) -> Self {
        Self { store, envelope }
    }

    async fn open(&self, app: &OAuthAppRow) -> Result<ResolvedApp, BrokerError> {
        // Read on every use: a provider defined or changed on any replica applies at once.
        let provider = crate::workspace_providers::load_spec(
            self.store.as_ref(),
            &app.workspace_id,
            &app.provider_id,
        )
        .await?
        .map(Arc::new);
        let mut held = self
            .store
            .list_oauth_app_secrets(&app.id)
            .await?
            .into_iter();
        let newest = held.next();
        let mut resolved = ResolvedApp {
            app_id: app.id.clone(),
            display_name: app.display_name.clone(),
            provider,
            workspace_id: app.workspace_id.clone(),
            client_id: app.client_id.clone(),
            newest: None,
            older: held.collect(),
            envelope: self.envelope.clone(),
        };
        // Only the newest is opened now: most calls use nothing else.
        if let Some(row) = newest {
            resolved.newest = Some(resolved.opened(&row).await?);
        }
        Ok(resolved)
    }

    /// The app a new connection uses: the one named (it must belong to the workspace and the
    /// provider), else the workspace's oldest app for the provider, else none (the
    /// deployment's configured client).
    pub async fn for_connect(
        &self,
        workspace: &str,
        provider: &str,
        named: Option<&str>,
    ) -> Result<Option<(OAuthAppRow, ResolvedApp)>, BrokerError> {
        let row = match named {
            Some(id) => {
                let row = self
                    .store
                    .get_oauth_app(id)
                    .await?
                    .filter(|a| a.workspace_id == workspace)
                    .ok_or_else(app_not_found)?;
                if row.provider_id != provider {
                    return Err(BrokerError::invalid(
                        "oauth_app_id",
                        format!(
                            "names an app for provider {}, not {provider}",
                            row.provider_id
                        ),
                    ));
                }
                Some(row)
            }
            None => self
                .store
                .list_oauth_apps(workspace, Some(provider))
                .await?
                .into_iter()
                .next(),
        };
        match row {
            Some(row) => {
                let resolved = self.open(&row).await?;
                Ok(Some((row, resolved)))
            }
            None => Ok(None),
        }
    }

    /// The app an imported token set is bound to: the one named (of the workspace and the
    /// provider); else, for a provider the workspace defined, its app for it (the oldest, as a
    /// connect resolves it; none is an error: such a provider has no other client); else none
    /// (a catalog provider, `in_catalog`: the deployment's configured client). An unknown
    /// provider is an invalid `provider_id`.
    pub async fn for_import(
        &self,
        workspace: &str,
        provider: &str,
        named: Option<&str>,
        in_catalog: bool,
    ) -> Result<Option<ResolvedApp>, BrokerError> {
        let defined =
            crate::workspace_providers::load_spec(self.store.as_ref(), workspace, provider)
                .await?
                .is_some();
        if !defined && !in_catalog {
            return Err(BrokerError::invalid(
                "provider_id",
                "is not a provider in the catalog (see ListProviders) nor one the workspace defined (ListWorkspaceProviders)",
            ));
        }
        if named.is_none() && !defined {
            return Ok(None);
        }
        match self.for_connect(workspace, provider, named).await? {
            Some((_, app)) => Ok(Some(app)),
            None => Err(crate::workspace_providers::without_app(provider)),
        }
    }

    /// The app recorded on a connect session or credential. A recorded app that was deleted
    /// is an error naming it: its grant cannot be used with another client.
    pub async fn recorded(&self, app_id: Option<&str>) -> Result<Option<ResolvedApp>, BrokerError> {
        let Some(id) = app_id else { return Ok(None) };
        let row = self.store.get_oauth_app(id).await?.ok_or_else(|| {
            failed(
                reason::OAUTH_APP_NOT_FOUND,
                format!(
                    "the OAuth app {id} this grant was made with no longer exists: reconnect with another app"
                ),
            )
        })?;
        self.open(&row).await.map(Some)
    }

    /// The app that minted a credential's grant, if any.
    pub async fn for_credential(&self, c: &Credential) -> Result<Option<ResolvedApp>, BrokerError> {
        Ok(self.with_version(c).await?.map(|(app, _)| app))
    }

    /// [`AppClients::for_credential`] with the secret version recorded for the credential.
    pub async fn with_version(
        &self,
        c: &Credential,
    ) -> Result<Option<(ResolvedApp, i64)>, BrokerError> {
        let Some((id, version)) = self.store.credential_app(c.id.as_str()).await? else {
            return Ok(None);
        };
        Ok(self.recorded(Some(&id)).await?.map(|app| (app, version)))
    }

    /// Records the app (and secret version) that minted a credential's grant.
    pub async fn record(
        &self,
        credential_id: &str,
        app: Option<&ResolvedApp>,
        version: Option<i64>,
    ) -> Result<(), BrokerError> {
        let binding = app.map(|a| (a.app_id.as_str(), version.unwrap_or(0)));
        self.store
            .set_credential_app(credential_id, binding)
            .await
            .map_err(Into::into)
    }

    /// Calls the provider with the app's newest secret (or the configured client without an
    /// app); on `invalid_client` with an older secret held, tries that one once. Says which
    /// secret answered and whether the previous one was tried.
    pub async fn call<T, F, Fut>(
        app: Option<&ResolvedApp>,
        mut f: F,
    ) -> (Result<T, ProviderError>, SecretUse)
    where
        F: FnMut(Option<AppClient>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let Some(app) = app else {
            return (f(None).await, SecretUse::default());
        };
        let Some((newest, client)) = app.newest() else {
            return (
                Err(ProviderError::Other(format!(
                    "the OAuth app {} holds no client secret",
                    app.label()
                ))),
                SecretUse::default(),
            );
        };
        let first = f(Some(client.clone())).await;
        let used = SecretUse {
            version: Some(*newest),
            fallback: None,
            client: Some(client.clone()),
        };
        if !matches!(first, Err(ProviderError::ClientRejected(_))) {
            return (first, used);
        }
        // Opened only now: a call the newest secret answers never decrypts the previous one.
        let (previous, fallback) = match app.previous().await {
            None => return (first, used),
            Some(Ok(previous)) => previous,
            Some(Err(e)) => {
                tracing::warn!(oauth_app = %app.app_id, error = %e, "the previous client secret could not be opened; not tried");
                let used = SecretUse {
                    fallback: Some("previous_secret=unreadable"),
                    ..used
                };
                return (first, used);
            }
        };
        let second = f(Some(fallback.clone())).await;
        let accepted = second.is_ok();
        tracing::warn!(
            oauth_app = %app.app_id,
            newest_secret = newest,
            previous_secret = previous,
            accepted,
            "the provider refused the newest client secret; tried the previous one"
        );
        let used = if accepted {
            SecretUse {
                version: Some(previous),
                fallback: Some("previous_secret=accepted"),
                client: Some(fallback),
            }
        } else {
            SecretUse {
                fallback: Some("previous_secret=rejected"),
                ..used
            }
        };
        (second, used)
    }
}

/// Who a created resource is recorded as created by: the actor, else the service.
pub(crate) fn creator(caller: &Caller) -> String {
    caller.actor.as_ref().map_or_else(
        || format!("service:{}", caller.service),
        |a| a.user_id.to_string(),
    )
}

/// The OAuth app use cases. Storage and sealing go through the [`AppClients`] they share
/// with the flows that use the apps.
pub struct OAuthAppService {
    apps: AppClients,
    clock: Arc<dyn Clock>,
    gateway: Arc<dyn ProviderGateway>,
    audit: Audit,
    cache: Arc<TokenCache>,
}

impl OAuthAppService {
    /// Wires the use cases: `gateway` knows the providers' scopes, `cache` forgets the tokens
    /// of credentials a forced delete disables.
    pub fn new(
        apps: AppClients,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn ProviderGateway>,
        cache: Arc<TokenCache>,
        audit: Audit,
    ) -> Self {
        Self {
            apps,
            clock,
            gateway,
            audit,
            cache,
        }
    }

    pub(crate) fn gateway(&self) -> &dyn ProviderGateway {
        self.gateway.as_ref()
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.apps.store.as_ref()
    }

    pub(crate) fn now_millis(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// The provider an app of `workspace` names: a catalog one, or the workspace's own.
    async fn provider_info(
        &self,
        workspace: &str,
        provider: &str,
    ) -> Result<Option<crate::gateway::ProviderInfo>, BrokerError> {
        if let Some(spec) =
            crate::workspace_providers::load_spec(self.store(), workspace, provider).await?
        {
            return Ok(Some(crate::workspace_providers::info(
                &spec, workspace, true,
            )));
        }
        Ok(self.gateway.get(provider))
    }

    async fn view(&self, row: OAuthAppRow) -> Result<OAuthApp, BrokerError> {
        let secret_versions = self
            .apps
            .store
            .list_oauth_app_secrets(&row.id)
            .await?
            .into_iter()
            .map(|s| s.version)
            .collect();
        Ok(OAuthApp {
            allowed_scopes: Scopes::from_stored(&row.allowed_scopes),
            created_at: Timestamp::from_millis(row.created_at),
            updated_at: Timestamp::from_millis(row.updated_at),
            version: row.row_version,
            id: row.id,
            workspace_id: row.workspace_id,
            provider_id: row.provider_id,
            display_name: row.display_name,
            client_id: row.client_id,
            created_by: row.created_by,
            secret_versions,
        })
    }

    /// Loads an app the caller may manage; unknown or in another workspace → NOT_FOUND for a
    /// workspace admin, so ids of other workspaces' apps reveal nothing.
    async fn load(&self, caller: &Caller, id: &str) -> Result<OAuthAppRow, BrokerError> {
        let row = self
            .apps
            .store
            .get_oauth_app(id)
            .await?
            .ok_or_else(app_not_found)?;
        policy::require_owner_admin(caller, &row.workspace_id, "OAuth apps", app_not_found)?;
        Ok(row)
    }

    /// [`Self::load`], with the app's sealed secrets, newest first.
    async fn load_with_secrets(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(OAuthAppRow, Vec<cb_store::OAuthAppSecretRow>), BrokerError> {
        let row = self.load(caller, id).await?;
        let held = self.apps.store.list_oauth_app_secrets(id).await?;
        Ok((row, held))
    }

    async fn check_scopes(
        &self,
        workspace: &str,
        provider: &str,
        scopes: &Scopes,
    ) -> Result<(), BrokerError> {
        let Some(p) = self.provider_info(workspace, provider).await? else {
            return Err(BrokerError::invalid(
                "provider_id",
                "is not a provider in the catalog (see ListProviders) nor one the workspace defined (ListWorkspaceProviders)",
            ));
        };
        let violations: Vec<FieldViolation> = scopes
            .as_slice()
            .iter()
            .enumerate()
            .filter(|(_, s)| !p.scopes.iter().any(|o| &o.name == *s))
            .map(|(i, _)| {
                FieldViolation::new(
                    format!("allowed_scopes[{i}]"),
                    format!("is not offered by {provider}"),
                )
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::InvalidArgument(violations))
        }
    }

    /// Audits `result`: changes at once, reads (`buffered`) through the audit buffer, which
    /// never makes a read wait for a database write.
    pub(crate) async fn audited<T>(
        &self,
        caller: &Caller,
        (action, buffered): (&str, bool),
        detail: String,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let outcome = Outcome::of(&result);
        if buffered {
            self.audit
                .record_later(caller, action, None, outcome, Some(detail));
        } else {
            self.audit
                .record(caller, action, None, outcome, Some(detail))
                .await;
        }
        result
    }

    /// Creates an app with its first client secret.
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateOAuthApp,
    ) -> Result<OAuthApp, BrokerError> {
        let id = uuid::Uuid::now_v7().hyphenated().to_string();
        let detail = format!("oauth_app={id} provider={}", req.provider_id);
        let result = async {
            require_workspace_admin(caller, req.workspace_id.as_str())?;
            self.check_scopes(
                req.workspace_id.as_str(),
                req.provider_id.as_str(),
                &req.allowed_scopes,
            )
            .await?;
            let now = self.clock.now().as_millis();
            let created_by = creator(caller);
            let row = OAuthAppRow {
                id: id.clone(),
                workspace_id: req.workspace_id.to_string(),
                provider_id: req.provider_id.to_string(),
                display_name: req.display_name.to_string(),
                client_id: req.client_id,
                allowed_scopes: req.allowed_scopes.to_space_separated(),
                created_by,
                created_at: now,
                updated_at: now,
                row_version: 1,
            };
            let secret = sealing::seal_app_secret(
                &self.apps.envelope,
                &row.workspace_id,
                &id,
                1,
                &req.client_secret,
                now,
            )
            .await?;
            self.apps.store.insert_oauth_app(&row, &secret).await?;
            self.view(row).await
        }
        .await;
        self.audited(caller, ("oauth_app.create", false), detail, result)
            .await
    }

    /// Reads one app.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<OAuthApp, BrokerError> {
        let result = async { self.view(self.load(caller, id).await?).await }.await;
        self.audited(
            caller,
            ("oauth_app.get", true),
            format!("oauth_app={id}"),
            result,
        )
        .await
    }

    /// Lists a workspace's apps (one provider's, or all), oldest first.
    pub async fn list(
        &self,
        caller: &Caller,
        workspace: &WorkspaceId,
        provider: Option<&ProviderId>,
    ) -> Result<Vec<OAuthApp>, BrokerError> {
        let result = async {
            require_workspace_admin(caller, workspace.as_str())?;
            let rows = self
                .apps
                .store
                .list_oauth_apps(workspace.as_str(), provider.map(ProviderId::as_str))
                .await?;
            let mut apps = Vec::with_capacity(rows.len());
            for row in rows {
                apps.push(self.view(row).await?);
            }
            Ok(apps)
        }
        .await;
        let detail = format!("workspace={workspace}");
        self.audited(caller, ("oauth_app.list", true), detail, result)
            .await
    }

    /// Edits an app's name, client id or allowed scopes.
    pub async fn update(
        &self,
        caller: &Caller,
        req: UpdateOAuthApp,
    ) -> Result<OAuthApp, BrokerError> {
        let detail = format!("oauth_app={}", req.id);
        let result = async {
            let mut row = self.load(caller, &req.id).await?;
            if let Some(v) = req.expected_version
                && v != row.row_version
            {
                return Err(BrokerError::Conflict {
                    message: format!(
                        "the OAuth app is at version {}, not {v}; read it again and retry",
                        row.row_version
                    ),
                });
            }
            if let Some(s) = &req.allowed_scopes {
                self.check_scopes(&row.workspace_id, &row.provider_id, s)
                    .await?;
                row.allowed_scopes = s.to_space_separated();
            }
            if let Some(n) = &req.display_name {
                row.display_name = n.to_string();
            }
            if let Some(c) = &req.client_id {
                row.client_id.clone_from(c);
            }
            row.updated_at = self.clock.now().as_millis();
            let expected = row.row_version;
            let stored = self
                .apps
                .store
                .update_oauth_app(&row, expected)
                .await
                .map_err(|e| match e {
                    StoreError::VersionConflict { .. } => BrokerError::Conflict {
                        message: "the OAuth app changed meanwhile; read it again and retry".into(),
                    },
                    StoreError::NotFound => app_not_found(),
                    other => other.into(),
                })?;
            self.view(stored).await
        }
        .await;
        self.audited(caller, ("oauth_app.update", false), detail, result)
            .await
    }

    /// Deletes an app. Refused while non-disconnected credentials were minted by it, unless
    /// `force`: they are then marked NEEDS_RECONNECT with a reason naming the app.
    pub async fn delete(
        &self,
        caller: &Caller,
        id: &str,
        force: bool,
    ) -> Result<Deleted, BrokerError> {
        let result = async {
            let row = self.load(caller, id).await?;
            let using = self.apps.store.credentials_using_app(id).await?;
            if !using.is_empty() && !force {
                return Err(failed(
                    reason::OAUTH_APP_IN_USE,
                    format!(
                        "{} credential(s) were connected through OAuth app {} ({id}) and would stop refreshing: reconnect them with another app, or delete with force (they then need a reconnect)",
                        using.len(),
                        row.display_name
                    ),
                ));
            }
            let why = format!(
                "the OAuth app {} ({id}) that minted this grant was deleted: reconnect with another app",
                row.display_name
            );
            let mut marked = Vec::new();
            for credential_id in using {
                if self.mark_needs_reconnect(&credential_id, &why).await? {
                    marked.push(credential_id);
                }
            }
            self.apps.store.delete_oauth_app(id).await?;
            Ok(Deleted {
                marked_needs_reconnect: marked,
            })
        }
        .await;
        let detail = match &result {
            Ok(d) => format!(
                "oauth_app={id} force={force} needs_reconnect={}",
                d.marked_needs_reconnect.len()
            ),
            Err(_) => format!("oauth_app={id} force={force}"),
        };
        self.audited(caller, ("oauth_app.delete", false), detail, result)
            .await
    }

    async fn mark_needs_reconnect(&self, id: &str, why: &str) -> Result<bool, BrokerError> {
        for _ in 0..5 {
            let Some(row) = self.apps.store.get_credential(id).await? else {
                return Ok(false);
            };
            let mut c = Credential::from_row(row)?;
            if c.is_disconnected() {
                return Ok(false);
            }
            let expected = c.version;
            let now = self.clock.now();
            // Like every other move to NEEDS_RECONNECT: health says why (the fix is the app,
            // not the user's grant) and a `needs_reconnect` event reaches watchers and webhooks.
            c.health = c.health.failed(
                HealthKind::ClientMisconfigured,
                why.to_owned(),
                "oauth_app_deleted".into(),
                now,
            );
            let events = [health::event(
                &c,
                EventKind::NeedsReconnect,
                None,
                Some(why.to_owned()),
                Some(HealthKind::ClientMisconfigured.class()),
                now,
            )];
            c.status = Status::NeedsReconnect {
                reason: why.to_owned(),
            };
            c.next_refresh_at = None;
            c.updated_at = now;
            match self
                .apps
                .store
                .update_credential_with_events(&c.to_row(), expected, &events)
                .await
            {
                Ok(_) => {
                    self.cache.invalidate(id);
                    return Ok(true);
                }
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BrokerError::Conflict {
            message: "a credential of this app is changing concurrently; retry".into(),
        })
    }

    /// Diagnosis of an app, without a user: is the provider's token endpoint answering, does it
    /// accept the app's client id and each secret (a deliberately invalid code must be refused
    /// with `invalid_grant`, not `invalid_client`), are the allowed scopes offered.
    pub async fn test(
        &self,
        caller: &Caller,
        id: &str,
        redirect_uri: &str,
    ) -> Result<Vec<Check>, BrokerError> {
        let result = self.test_inner(caller, id, redirect_uri).await;
        let detail = match &result {
            Ok(checks) => {
                let failed: Vec<&str> = checks
                    .iter()
                    .filter(|c| c.verdict == Verdict::Fail)
                    .map(|c| c.name)
                    .collect();
                format!("oauth_app={id} failed={}", failed.join(","))
            }
            Err(_) => format!("oauth_app={id}"),
        };
        self.audited(caller, ("oauth_app.test", false), detail, result)
            .await
    }

    async fn test_inner(
        &self,
        caller: &Caller,
        id: &str,
        redirect_uri: &str,
    ) -> Result<Vec<Check>, BrokerError> {
        let row = self.load(caller, id).await?;
        if !self.gateway.redirect_allowed(redirect_uri) {
            return Err(BrokerError::invalid(
                "redirect_uri",
                "is not one of the configured redirect URIs (exact match)",
            ));
        }
        let resolved = self.apps.open(&row).await?;
        let mut checks = Vec::new();
        for (i, (version, client)) in resolved.all().await?.iter().enumerate() {
            let name = if i == 0 {
                "client_authentication"
            } else {
                "previous_secret"
            };
            let probe = self
                .gateway
                .probe_client(&row.provider_id, Some(client), redirect_uri)
                .await;
            if i == 0 {
                checks.push(match &probe {
                    ClientProbe::Unreachable(d) => check(
                        "token_endpoint",
                        Verdict::Fail,
                        format!("the token endpoint of {} did not answer usably: {d}", row.provider_id),
                        "check the provider's status page and that the broker may reach it (proxy, firewall, outbound settings); then test again",
                    ),
                    _ => check("token_endpoint", Verdict::Pass, "the token endpoint answered with an OAuth error", ""),
                });
            }
            checks.push(match probe {
                ClientProbe::Accepted => check(
                    name,
                    Verdict::Pass,
                    format!("an invalid code sent as client {} with secret version {version} was refused with invalid_grant: the client authenticated", row.client_id),
                    "",
                ),
                ClientProbe::Refused(d) => check(
                    name,
                    Verdict::Fail,
                    format!("the provider refused client {} with secret version {version}: {d}", row.client_id),
                    if i == 0 {
                        "the provider does not accept this client id with the app's newest secret: copy the secret from the provider's console and add it with RotateOAuthAppSecret (then RetireOAuthAppSecret), or correct the client id with UpdateOAuthApp"
                    } else {
                        "the provider no longer accepts the previous secret: retire it with RetireOAuthAppSecret"
                    },
                ),
                ClientProbe::Unreachable(d) => check(
                    name,
                    Verdict::Skipped,
                    format!("not checked: the token endpoint did not answer usably ({d})"),
                    "",
                ),
                ClientProbe::Unexpected(d) => check(
                    name,
                    Verdict::Fail,
                    format!("the token endpoint answered an invalid code with neither invalid_grant nor invalid_client: {d}"),
                    format!("check that the app's client is registered for provider {} and for this redirect URI", row.provider_id),
                ),
            });
        }
        if let Some((_, client)) = resolved.newest() {
            checks.push(self.redirect_check(&row, client, redirect_uri).await);
        }
        let allowed = Scopes::from_stored(&row.allowed_scopes);
        checks.extend(
            self.discovery_checks(&row.provider_id, resolved.provider.as_deref(), &allowed)
                .await,
        );
        checks.push(if allowed.as_slice().is_empty() {
            check(
                "allowed_scopes",
                Verdict::Skipped,
                "the app allows every scope the provider offers",
                "",
            )
        } else {
            match self
                .check_scopes(&row.workspace_id, &row.provider_id, &allowed)
                .await
            {
                Ok(()) => check("allowed_scopes", Verdict::Pass, "every allowed scope is offered by the provider", ""),
                Err(e) => check(
                    "allowed_scopes",
                    Verdict::Fail,
                    format!("{e}"),
                    "remove the scopes the provider does not offer with UpdateOAuthApp (see ListProviders)",
                ),
            }
        });
        Ok(checks)
    }

    /// The `redirect_uri` check: the authorization endpoint, asked without a user for the app's
    /// client and `redirect_uri`, shows a page or redirects (accepted), or refuses without a
    /// redirect (an unregistered redirect URI, or an unknown client).
    async fn redirect_check(
        &self,
        row: &OAuthAppRow,
        client: &AppClient,
        redirect_uri: &str,
    ) -> Check {
        match self
            .gateway
            .probe_redirect(&row.provider_id, Some(client), redirect_uri)
            .await
        {
            RedirectProbe::Accepted(d) => check("redirect_uri", Verdict::Pass, d, ""),
            RedirectProbe::Refused(d) => check(
                "redirect_uri",
                Verdict::Fail,
                format!(
                    "the authorization endpoint refused client {} with redirect URI {redirect_uri}: {d}",
                    row.client_id
                ),
                format!(
                    "register {redirect_uri} exactly (scheme, host, port, path) as a redirect URI of client {} in the provider's console; if it is registered, check the client id (UpdateOAuthApp)",
                    row.client_id
                ),
            ),
            RedirectProbe::Unreachable(d) => check(
                "redirect_uri",
                Verdict::Skipped,
                format!("not checked: the authorization endpoint did not answer usably ({d})"),
                "",
            ),
        }
    }

    /// The `discovery` check (the provider's published metadata agrees with its entry, or with
    /// the definition a workspace stored: `runtime`) and, when the metadata lists
    /// `scopes_supported`, the `advertised_scopes` check (the scopes the app may request, or the
    /// provider's offered ones, are all advertised).
    async fn discovery_checks(
        &self,
        provider: &str,
        runtime: Option<&cb_oauth::catalog::ProviderSpec>,
        allowed: &Scopes,
    ) -> Vec<Check> {
        // Where the compared values live, and how to fix them.
        let (entry, fix) = match runtime {
            Some(_) => (
                "the workspace's definition",
                "the issuer's published metadata changed or disagrees with what the workspace stored: read it again with UpdateWorkspaceProvider (discover), or correct the issuer or endpoints given there",
            ),
            None => (
                "the provider's entry",
                "the provider's entry and its published metadata disagree: correct the entry's issuer or endpoints (docs/providers.md), or ask the provider which is right",
            ),
        };
        match self.gateway.discover(provider, runtime).await {
            Discovery::NoIssuer => vec![check(
                "discovery",
                Verdict::Skipped,
                format!("provider {provider} declares no issuer: there is no metadata to compare"),
                "",
            )],
            Discovery::Unreachable(why) => vec![check(
                "discovery",
                Verdict::Fail,
                format!("the metadata of provider {provider} could not be read: {why}"),
                format!(
                    "check the issuer declared in {entry} (its metadata must be at /.well-known/oauth-authorization-server or /.well-known/openid-configuration) and that the broker may reach it (outbound settings)"
                ),
            )],
            Discovery::Found {
                mismatches,
                scopes_supported,
            } => {
                let mut checks = vec![if mismatches.is_empty() {
                    check(
                        "discovery",
                        Verdict::Pass,
                        format!("the published metadata agrees with {entry}"),
                        "",
                    )
                } else {
                    check("discovery", Verdict::Fail, mismatches.join("; "), fix)
                }];
                if let Some(supported) = scopes_supported {
                    let wanted: Vec<String> = if allowed.as_slice().is_empty() {
                        match runtime {
                            Some(spec) => spec.scopes.iter().map(|s| s.name.clone()).collect(),
                            None => self
                                .gateway
                                .get(provider)
                                .map(|p| p.scopes.into_iter().map(|s| s.name).collect())
                                .unwrap_or_default(),
                        }
                    } else {
                        allowed.as_slice().to_vec()
                    };
                    let missing: Vec<&str> = wanted
                        .iter()
                        .filter(|s| !supported.contains(s))
                        .map(String::as_str)
                        .collect();
                    checks.push(if missing.is_empty() {
                        check(
                            "advertised_scopes",
                            Verdict::Pass,
                            "every scope the app may request is advertised in scopes_supported",
                            "",
                        )
                    } else {
                        check(
                            "advertised_scopes",
                            Verdict::Fail,
                            format!("not advertised in scopes_supported: {}", missing.join(", ")),
                            "connects asking for these scopes may be refused: limit the app's allowed scopes (UpdateOAuthApp) to advertised ones",
                        )
                    });
                }
                checks
            }
        }
    }

    /// Adds a new client secret, used from now on; the previous one stays as a fallback until
    /// retired. At most [`MAX_SECRETS`].
    pub async fn rotate_secret(
        &self,
        caller: &Caller,
        id: &str,
        secret: SecretString,
    ) -> Result<OAuthApp, BrokerError> {
        let result = async {
            let (row, held) = self.load_with_secrets(caller, id).await?;
            if held.len() >= MAX_SECRETS {
                return Err(failed(
                    reason::OAUTH_APP_SECRET_LIMIT,
                    format!(
                        "OAuth app {id} already holds {MAX_SECRETS} client secrets: retire the previous one (RetireOAuthAppSecret) before adding another"
                    ),
                ));
            }
            let version = held.iter().map(|s| s.version).max().unwrap_or(0) + 1;
            let now = self.clock.now().as_millis();
            let sealed = sealing::seal_app_secret(
                &self.apps.envelope,
                &row.workspace_id,
                id,
                version,
                &secret,
                now,
            )
            .await?;
            self.apps.store.insert_oauth_app_secret(&sealed).await.map_err(|e| match e {
                StoreError::Duplicate(_) => BrokerError::Conflict {
                    message: "another rotation of this app's secret ran at the same time; read it again and retry".into(),
                },
                other => other.into(),
            })?;
            self.view(row).await
        }
        .await;
        let detail = match &result {
            Ok(a) => format!(
                "oauth_app={id} secret_version={}",
                a.secret_versions.first().copied().unwrap_or_default()
            ),
            Err(_) => format!("oauth_app={id}"),
        };
        self.audited(caller, ("oauth_app.rotate_secret", false), detail, result)
            .await
    }

    /// Retires every secret but the newest.
    pub async fn retire_secret(&self, caller: &Caller, id: &str) -> Result<OAuthApp, BrokerError> {
        let result = async {
            let (row, held) = self.load_with_secrets(caller, id).await?;
            if held.len() < 2 {
                return Err(failed(
                    reason::OAUTH_APP_NO_PREVIOUS_SECRET,
                    format!("OAuth app {id} holds only its current client secret: there is nothing to retire"),
                ));
            }
            for old in &held[1..] {
                self.apps.store.delete_oauth_app_secret(id, old.version).await?;
            }
            self.view(row).await
        }
        .await;
        self.audited(
            caller,
            ("oauth_app.retire_secret", false),
            format!("oauth_app={id}"),
            result,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// An app with two secrets (`old` version 1, `new` version 2) in a fresh SQLite store.
    async fn two_secrets() -> (tempfile::TempDir, AppClients, Arc<Envelope>, String) {
        let (dir, store, envelope) = crate::test_support::sqlite_with_keys().await;
        let id = "0190c6d2-7a4e-7c39-9d3e-3b1f0d5c2a10".to_owned();
        let row = OAuthAppRow {
            id: id.clone(),
            workspace_id: "ws1".into(),
            provider_id: "fake".into(),
            display_name: "App".into(),
            client_id: "client".into(),
            allowed_scopes: String::new(),
            created_by: "u".into(),
            created_at: 1,
            updated_at: 1,
            row_version: 1,
        };
        let seal = |version, secret: &str| {
            let envelope = envelope.clone();
            let (id, secret) = (id.clone(), SecretString::from(secret.to_owned()));
            async move {
                sealing::seal_app_secret(&envelope, "ws1", &id, version, &secret, 1)
                    .await
                    .unwrap()
            }
        };
        store
            .insert_oauth_app(&row, &seal(1, "old").await)
            .await
            .unwrap();
        store
            .insert_oauth_app_secret(&seal(2, "new").await)
            .await
            .unwrap();
        let apps = AppClients::new(store, envelope.clone());
        (dir, apps, envelope, id)
    }

    /// Data-key uses of the envelope (each open is one).
    fn uses(envelope: &Envelope) -> u64 {
        let s = envelope.cache_stats();
        s.hits + s.misses
    }

    fn secret_of(client: Option<AppClient>) -> String {
        client.unwrap().client_secret.expose_secret().to_owned()
    }

    #[tokio::test]
    async fn the_previous_secret_is_opened_only_for_a_fallback() {
        let (_dir, apps, envelope, id) = two_secrets().await;
        let before = uses(&envelope);
        let app = apps.recorded(Some(&id)).await.unwrap().unwrap();
        assert_eq!(
            uses(&envelope) - before,
            1,
            "only the newest secret is opened"
        );

        // Answered by the newest: nothing else opened.
        let (answer, used) =
            AppClients::call(Some(&app), |c| async move { Ok(secret_of(c)) }).await;
        assert_eq!(answer.unwrap(), "new");
        assert_eq!((used.version, used.fallback), (Some(2), None));
        assert_eq!(uses(&envelope) - before, 1);

        // Refused as a client: the previous one is opened and tried once.
        let (answer, used) = AppClients::call(Some(&app), |c| async move {
            match secret_of(c).as_str() {
                "new" => Err(ProviderError::ClientRejected("invalid_client".into())),
                other => Ok(other.to_owned()),
            }
        })
        .await;
        assert_eq!(answer.unwrap(), "old");
        assert_eq!(
            (used.version, used.fallback),
            (Some(1), Some("previous_secret=accepted"))
        );
        assert_eq!(secret_of(used.client), "old");
        assert_eq!(uses(&envelope) - before, 2);
        // The diagnosis opens both.
        let all = app.all().await.unwrap();
        assert_eq!(all.iter().map(|(v, _)| *v).collect::<Vec<_>>(), [2, 1]);
    }
}
