//! The OAuth connect flow: StartConnect / StartReconnect store a single-use connect session and
//! return the authorization URL; CompleteConnect consumes the session, exchanges the code,
//! identifies the account and creates, updates or reconnects the credential. Nothing is written
//! before every check has passed, so a failure never leaves a half-created credential.

use crate::access::{Caller, Role};
use crate::audit::{Audit, Write};
use crate::clock::{Clock, Timestamp};
use crate::credential::{Credential, CredentialView, Status};
use crate::error::{BrokerError, FieldViolation, reason};
use crate::gateway::{
    AppClient, AuthorizeRequest, CodeExchange, CodeGrant, GrantedTokens, ProviderError,
    ProviderGateway, ProviderInfo, RevokeResult, ScopeInfo,
};
use crate::health::{EventKind, Health, HealthKind, event};
use crate::issuance::TokenCache;
use crate::oauth_apps::{AppClients, ResolvedApp};
use crate::policy::{Policy, require_actor};
use crate::sealing;
use crate::service::CredentialService;
use crate::tokens::TokenBundle;
use crate::types::{
    CredentialId, Description, DisplayName, ProviderAccount, ProviderId, Scopes, WorkspaceId,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cb_crypto::{EncryptionContext, Envelope, KeyRef, SealedBlob, WrappedDek};
use cb_store::{ConnectSessionRow, MemberRow, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;

/// How long a connect session (the `state`) stays valid.
pub const SESSION_TTL: Duration = Duration::from_secs(600);

/// A StartConnect request.
#[derive(Clone, Debug)]
pub struct StartConnect {
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// Provider.
    pub provider_id: ProviderId,
    /// Requested scopes (empty: the provider's defaults).
    pub scopes: Scopes,
    /// Redirect URI (must be allowed exactly).
    pub redirect_uri: String,
    /// Draft display name.
    pub display_name: Option<DisplayName>,
    /// Draft description.
    pub description: Option<Description>,
    /// The workspace OAuth app to connect through (default: the workspace's app for the
    /// provider, else the deployment's configured client).
    pub oauth_app_id: Option<String>,
}

/// A StartReconnect request.
#[derive(Clone, Debug)]
pub struct StartReconnect {
    /// The credential.
    pub id: CredentialId,
    /// Redirect URI.
    pub redirect_uri: String,
    /// Requested scopes (empty: the credential's current ones).
    pub scopes: Scopes,
}

/// What to show the user before they leave for the provider.
#[derive(Clone, Debug)]
pub struct ConnectStarted {
    /// Authorization URL.
    pub authorization_url: String,
    /// Opaque state (single use).
    pub state: String,
    /// The requested scopes with descriptions.
    pub requested_scopes: Vec<ScopeInfo>,
    /// Session expiry.
    pub expires_at: Timestamp,
}

/// The provider's callback parameters.
#[derive(Clone, Debug)]
pub struct CompleteConnect {
    /// `state`.
    pub state: String,
    /// `code` (absent on error).
    pub code: Option<SecretString>,
    /// `error`.
    pub error: Option<String>,
    /// `error_description`.
    pub error_description: Option<String>,
    /// Other callback parameters (e.g. QuickBooks `realmId`).
    pub params: std::collections::BTreeMap<String, String>,
    /// `iss` (RFC 9207): the issuer the authorization response names, if any.
    pub iss: Option<String>,
}

/// What CompleteConnect did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// New credential.
    Created,
    /// Existing credential of the same account updated.
    UpdatedExisting,
    /// Reconnected via StartReconnect.
    Reconnected,
}

fn state_hash(state: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, state.as_bytes()))
}

fn pkce_aad(hash: &str) -> Vec<u8> {
    format!("credential-broker/v1|connect|{hash}|pkce").into_bytes()
}

fn pkce_context(workspace: &str, hash: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("workspace_id", workspace)
        .with("connect_session", hash)
        .with("purpose", "pkce")
}

fn failed(reason: &'static str, message: impl Into<String>) -> BrokerError {
    BrokerError::FailedPrecondition {
        reason,
        message: message.into(),
    }
}

/// Keeps provider-supplied text printable and short before it reaches a response.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

fn provider_error(e: ProviderError) -> BrokerError {
    match e {
        ProviderError::Transient {
            detail,
            retry_after,
        } => BrokerError::Unavailable {
            reason: reason::PROVIDER_UNAVAILABLE,
            message: format!("the provider is not answering: {detail}"),
            retry_after: Some(retry_after.unwrap_or(Duration::from_secs(5))),
        },
        ProviderError::Denied(d) => failed(
            reason::PROVIDER_DENIED,
            format!("the provider refused: {d}"),
        ),
        ProviderError::Permanent(d)
        | ProviderError::ClientRejected(d)
        | ProviderError::Other(d) => failed(
            reason::CODE_EXCHANGE_FAILED,
            format!("the provider rejected the authorization code: {d}"),
        ),
    }
}

/// The refusal of a non-member connecting an account that is already a credential of the
/// workspace: it names the credential so they can ask one of its Admins for an invitation.
fn already_connected(c: &Credential) -> BrokerError {
    BrokerError::AlreadyExists {
        reason: reason::CREDENTIAL_ALREADY_CONNECTED,
        message: format!(
            "this account is already connected in this workspace as credential {}, and you are not a member of it: ask one of its Admins to invite you (or accept your invitation) and use that credential",
            c.id
        ),
    }
}

/// Whether a failed completion certainly stored nothing, so the grant just minted is orphaned.
/// A storage failure may hide a commit that happened: that grant is kept rather than risked.
fn stored_nothing(e: &BrokerError) -> bool {
    e.reason() != reason::STORAGE_UNAVAILABLE && !matches!(e, BrokerError::Internal(_))
}

/// The grant a reconnect replaced, when it should be revoked: only where the provider issued a
/// new refresh token (an unchanged one may be the very grant just stored).
fn replaced_grant(old: Option<TokenBundle>, new: &TokenBundle) -> Option<TokenBundle> {
    let old = old?;
    let (Some(before), Some(after)) = (&old.refresh_token, &new.refresh_token) else {
        return None;
    };
    (before.expose_secret() != after.expose_secret()).then_some(old)
}

/// What CompleteConnect records in its audit event besides the outcome.
#[derive(Default)]
struct Trail {
    /// The credential concerned, once known (also on failure).
    credential_id: Option<String>,
    /// Non-secret notes, e.g. `new_grant=revoked`.
    notes: Vec<String>,
}

impl Trail {
    fn detail(&self) -> Option<String> {
        (!self.notes.is_empty()).then(|| self.notes.join(" "))
    }
}

/// What a connect session will produce.
enum Target<'a> {
    /// A new credential with optional drafts.
    New {
        display_name: Option<DisplayName>,
        description: Option<Description>,
    },
    /// New tokens for an existing credential.
    Reconnect(&'a Credential),
}

/// The connect flow use cases.
pub struct ConnectService {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    clock: Arc<dyn Clock>,
    gateway: Arc<dyn ProviderGateway>,
    policy: Policy,
    audit: Audit,
    cache: Arc<TokenCache>,
    credentials: Arc<CredentialService>,
    apps: AppClients,
}

impl ConnectService {
    /// Wires the flow.
    #[allow(clippy::too_many_arguments)] // each collaborator is needed
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        clock: Arc<dyn Clock>,
        gateway: Arc<dyn ProviderGateway>,
        audit: Audit,
        cache: Arc<TokenCache>,
        credentials: Arc<CredentialService>,
    ) -> Self {
        Self {
            policy: Policy::new(store.clone()),
            apps: AppClients::new(store.clone(), envelope.clone()),
            store,
            envelope,
            clock,
            gateway,
            audit,
            cache,
            credentials,
        }
    }

    /// The catalog; with a workspace, also the providers it defined at runtime, and
    /// `configured` counts its OAuth apps as clients. Audited through the buffer.
    pub async fn providers(
        &self,
        caller: &Caller,
        workspace: Option<&WorkspaceId>,
        configured_only: bool,
    ) -> Result<Vec<ProviderInfo>, BrokerError> {
        let result = self.providers_in(workspace).await.map(|all| {
            all.into_iter()
                .filter(|p| p.configured || !configured_only)
                .collect()
        });
        let detail = workspace.map(|w| format!("workspace={w}"));
        self.audit
            .recorded(
                Write::Buffered,
                caller,
                "provider.list",
                None,
                result,
                detail,
            )
            .await
    }

    async fn providers_in(
        &self,
        workspace: Option<&WorkspaceId>,
    ) -> Result<Vec<ProviderInfo>, BrokerError> {
        let mut all = self.gateway.list();
        let Some(workspace) = workspace.map(WorkspaceId::as_str) else {
            return Ok(all);
        };
        let with_app: std::collections::HashSet<String> = self
            .store
            .list_oauth_apps(workspace, None)
            .await?
            .into_iter()
            .map(|a| a.provider_id)
            .collect();
        for p in &mut all {
            if !p.configured && with_app.contains(&p.id) {
                p.configured = true;
                p.missing_settings.clear();
            }
        }
        for spec in crate::workspace_providers::load_all(self.store.as_ref(), workspace).await? {
            let has_app = with_app.contains(&spec.id);
            all.push(crate::workspace_providers::info(&spec, workspace, has_app));
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    /// The provider, which must have a client: the workspace's app (`has_app`) or the
    /// deployment's configured one.
    async fn provider(
        &self,
        workspace: &str,
        id: &str,
        app: Option<&ResolvedApp>,
    ) -> Result<ProviderInfo, BrokerError> {
        let has_app = app.is_some();
        if let Some(spec) = app.and_then(|a| a.provider.as_ref()) {
            return Ok(crate::workspace_providers::info(spec, workspace, true));
        }
        // A provider the workspace defined, without an app: its only client would be one.
        if crate::workspace_providers::load_spec(self.store.as_ref(), workspace, id)
            .await?
            .is_some()
        {
            return Err(crate::workspace_providers::without_app(id));
        }
        let p = self.gateway.get(id).ok_or(BrokerError::NotFound {
            reason: reason::PROVIDER_NOT_FOUND,
            what: "provider",
        })?;
        if !p.configured && !has_app {
            return Err(failed(
                reason::PROVIDER_NOT_CONFIGURED,
                format!(
                    "provider {id} has no OAuth client: a workspace admin can create an OAuth app for {id} in this workspace (CreateOAuthApp), or an operator can set {} (see docs/providers.md)",
                    p.missing_settings.join(" and ")
                ),
            ));
        }
        Ok(p)
    }

    /// Refuses scopes the app does not allow (an app without a list allows every scope).
    fn check_app_scopes(
        app: Option<&cb_store::OAuthAppRow>,
        requested: &[ScopeInfo],
    ) -> Result<(), BrokerError> {
        let Some(app) = app.filter(|a| !a.allowed_scopes.is_empty()) else {
            return Ok(());
        };
        let allowed = Scopes::from_stored(&app.allowed_scopes);
        let violations: Vec<FieldViolation> = requested
            .iter()
            .enumerate()
            .filter(|(_, s)| !allowed.as_slice().contains(&s.name))
            .map(|(i, _)| {
                FieldViolation::new(
                    format!("scopes[{i}]"),
                    format!(
                        "is not allowed by OAuth app {} ({})",
                        app.display_name, app.id
                    ),
                )
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::InvalidArgument(violations))
        }
    }

    fn check_request(
        &self,
        p: &ProviderInfo,
        scopes: &Scopes,
        redirect_uri: &str,
    ) -> Result<Vec<ScopeInfo>, BrokerError> {
        let mut violations = Vec::new();
        if !self.gateway.redirect_allowed(redirect_uri) {
            violations.push(FieldViolation::new(
                "redirect_uri",
                "is not one of the configured redirect URIs (exact match)",
            ));
        }
        let requested: Vec<ScopeInfo> = if scopes.as_slice().is_empty() {
            p.scopes
                .iter()
                .filter(|s| s.default_selected)
                .cloned()
                .collect()
        } else {
            let mut out = Vec::new();
            for (i, s) in scopes.as_slice().iter().enumerate() {
                match p.scopes.iter().find(|o| &o.name == s) {
                    Some(o) => out.push(o.clone()),
                    None => violations.push(FieldViolation::new(
                        format!("scopes[{i}]"),
                        format!("is not offered by {}", p.id),
                    )),
                }
            }
            out
        };
        if violations.is_empty() {
            Ok(requested)
        } else {
            Err(BrokerError::InvalidArgument(violations))
        }
    }

    #[allow(clippy::too_many_arguments)] // the flow's parts, each needed; the app names the client
    async fn start(
        &self,
        caller: &Caller,
        workspace_id: &str,
        p: &ProviderInfo,
        requested: Vec<ScopeInfo>,
        redirect_uri: &str,
        target: Target<'_>,
        app: Option<&ResolvedApp>,
    ) -> Result<ConnectStarted, BrokerError> {
        let (reconnect, drafts) = match target {
            Target::New {
                display_name,
                description,
            } => (None, (display_name, description)),
            Target::Reconnect(c) => (Some(c), (None, None)),
        };
        let actor = require_actor(caller)?;
        let now = self.clock.now();
        let state = cb_oauth::pkce::random_state();
        let hash = state_hash(state.expose_secret());
        let names: Vec<String> = requested.iter().map(|s| s.name.clone()).collect();
        let uses_pkce = match app.and_then(|a| a.provider.as_ref()) {
            Some(spec) => spec.pkce != cb_oauth::catalog::Pkce::None,
            None => self.gateway.uses_pkce(&p.id),
        };
        let (challenge, sealed_verifier) = if uses_pkce {
            let pair = cb_oauth::pkce::pkce_pair();
            let blob = self
                .envelope
                .seal_new(
                    &pkce_context(workspace_id, &hash),
                    &pkce_aad(&hash),
                    pair.verifier.expose_secret().as_bytes(),
                )
                .await?;
            (Some(pair.challenge), Some(blob))
        } else {
            (None, None)
        };
        let url = self
            .gateway
            .authorize_url(
                &p.id,
                app.and_then(ResolvedApp::newest).map(|(_, c)| c),
                AuthorizeRequest {
                    redirect_uri,
                    scopes: &names,
                    state: state.expose_secret(),
                    pkce_challenge: challenge.as_deref(),
                },
            )
            .map_err(|e| BrokerError::Internal(format!("authorization url: {e}")))?;
        let expires_at = now.plus(SESSION_TTL);
        let row = ConnectSessionRow {
            state_hash: hash,
            workspace_id: workspace_id.to_owned(),
            provider_id: p.id.clone(),
            scopes: names.join(" "),
            redirect_uri: redirect_uri.to_owned(),
            pkce_verifier: sealed_verifier.as_ref().map(|b| b.ciphertext.clone()),
            pkce_dek_wrapped: sealed_verifier
                .as_ref()
                .map(|b| b.wrapped_dek.ciphertext.clone()),
            pkce_dek_key_id: sealed_verifier
                .as_ref()
                .map(|b| b.wrapped_dek.key.key_id.clone()),
            pkce_dek_key_version: sealed_verifier
                .as_ref()
                .map(|b| i64::from(b.wrapped_dek.key.version)),
            reconnect_credential_id: reconnect.map(|c| c.id.to_string()),
            display_name: drafts.0.map(|d| d.to_string()),
            description: drafts.1.map(|d| d.to_string()),
            created_by: actor.user_id.to_string(),
            created_by_email: actor.email.to_string(),
            created_at: now.as_millis(),
            expires_at: expires_at.as_millis(),
            consumed_at: None,
            oauth_app_id: app.map(|a| a.app_id.clone()),
        };
        self.store.insert_connect_session(&row).await?;
        Ok(ConnectStarted {
            authorization_url: url,
            state: state.expose_secret().to_owned(),
            requested_scopes: requested,
            expires_at,
        })
    }

    /// Starts connecting a new account.
    pub async fn start_connect(
        &self,
        caller: &Caller,
        req: StartConnect,
    ) -> Result<ConnectStarted, BrokerError> {
        let result = async {
            require_actor(caller)?;
            let app = self
                .apps
                .for_connect(
                    req.workspace_id.as_str(),
                    req.provider_id.as_str(),
                    req.oauth_app_id.as_deref(),
                )
                .await?;
            let p = self
                .provider(
                    req.workspace_id.as_str(),
                    req.provider_id.as_str(),
                    app.as_ref().map(|(_, resolved)| resolved),
                )
                .await?;
            let requested = self.check_request(&p, &req.scopes, &req.redirect_uri)?;
            Self::check_app_scopes(app.as_ref().map(|(row, _)| row), &requested)?;
            self.start(
                caller,
                req.workspace_id.as_str(),
                &p,
                requested,
                &req.redirect_uri,
                Target::New {
                    display_name: req.display_name,
                    description: req.description,
                },
                app.as_ref().map(|(_, resolved)| resolved),
            )
            .await
        }
        .await;
        // Through the buffer: starting a flow writes only its session, never an audit row inline.
        self.audit
            .recorded(
                Write::Buffered,
                caller,
                "connect.start",
                None,
                result,
                Some(format!("provider={}", req.provider_id)),
            )
            .await
    }

    /// Starts re-authorizing an existing credential. Admin only.
    pub async fn start_reconnect(
        &self,
        caller: &Caller,
        req: StartReconnect,
    ) -> Result<ConnectStarted, BrokerError> {
        let result = async {
            let (c, _) = self
                .policy
                .load_with_role(caller, &req.id, Role::Admin)
                .await?;
            if c.is_disconnected() {
                return Err(BrokerError::disconnected());
            }
            // The app that minted the grant while it exists, else today's resolution.
            let recorded = self.store.credential_app(c.id.as_str()).await?;
            let named = match recorded {
                Some((id, _)) if self.store.get_oauth_app(&id).await?.is_some() => Some(id),
                _ => None,
            };
            let app = self
                .apps
                .for_connect(&c.workspace_id, &c.provider_id, named.as_deref())
                .await?;
            let p = self
                .provider(
                    &c.workspace_id,
                    &c.provider_id,
                    app.as_ref().map(|(_, resolved)| resolved),
                )
                .await?;
            let scopes = if req.scopes.as_slice().is_empty() {
                c.scopes.clone()
            } else {
                req.scopes.clone()
            };
            let mut requested = self.check_request(&p, &scopes, &req.redirect_uri);
            // A credential imported with scopes outside the catalog is reconnected with the catalog defaults.
            if let Err(BrokerError::InvalidArgument(v)) = &requested
                && req.scopes.as_slice().is_empty()
                && v.iter().all(|f| f.field.starts_with("scopes"))
            {
                requested = self.check_request(&p, &Scopes::default(), &req.redirect_uri);
            }
            self.start(
                caller,
                &c.workspace_id,
                &p,
                requested?,
                &req.redirect_uri,
                Target::Reconnect(&c),
                app.as_ref().map(|(_, resolved)| resolved),
            )
            .await
        }
        .await;
        self.audit
            .recorded(
                Write::Buffered,
                caller,
                "connect.reconnect_start",
                Some(req.id.as_str()),
                result,
                None,
            )
            .await
    }

    /// Finishes a connect or reconnect.
    pub async fn complete(
        &self,
        caller: &Caller,
        req: CompleteConnect,
    ) -> Result<(CredentialView, ConnectOutcome), BrokerError> {
        let mut trail = Trail::default();
        let result = self.complete_inner(caller, req, &mut trail).await;
        let (action, id) = match &result {
            Ok((v, ConnectOutcome::Reconnected)) => {
                ("credential.reconnect", Some(v.credential.id.to_string()))
            }
            Ok((v, _)) => ("credential.connect", Some(v.credential.id.to_string())),
            Err(_) => ("credential.connect", trail.credential_id.clone()),
        };
        self.audit
            .recorded(
                Write::Inline,
                caller,
                action,
                id.as_deref(),
                result,
                trail.detail(),
            )
            .await
    }

    async fn complete_inner(
        &self,
        caller: &Caller,
        req: CompleteConnect,
        trail: &mut Trail,
    ) -> Result<(CredentialView, ConnectOutcome), BrokerError> {
        let actor = require_actor(caller)?;
        if req.state.is_empty() || req.state.len() > 256 {
            return Err(BrokerError::invalid(
                "state",
                "must be the state returned by StartConnect",
            ));
        }
        let hash = state_hash(&req.state);
        let now = self.clock.now();
        let session = self
            .store
            .get_connect_session(&hash)
            .await?
            .ok_or_else(|| {
                failed(
                    reason::CONNECT_STATE_UNKNOWN,
                    "this connect attempt is unknown: start connecting again",
                )
            })?;
        if verify_slices_are_equal(session.state_hash.as_bytes(), hash.as_bytes()).is_err() {
            return Err(failed(
                reason::CONNECT_STATE_UNKNOWN,
                "this connect attempt is unknown: start connecting again",
            ));
        }
        if session.consumed_at.is_some() {
            return Err(failed(
                reason::CONNECT_STATE_REPLAYED,
                "this connect attempt was already completed: start connecting again",
            ));
        }
        if session.expires_at <= now.as_millis() {
            return Err(failed(
                reason::CONNECT_STATE_EXPIRED,
                "this connect attempt expired (10 minutes): start connecting again",
            ));
        }
        if session.created_by != actor.user_id.as_str() {
            return Err(BrokerError::PermissionDenied {
                reason: reason::CONNECT_STATE_OTHER_USER,
                message: "this connect attempt was started by another user".into(),
            });
        }
        // Single use: exactly one completion wins, even when two race.
        if !self
            .store
            .consume_connect_session(&hash, now.as_millis())
            .await?
        {
            return Err(failed(
                reason::CONNECT_STATE_REPLAYED,
                "this connect attempt was already completed: start connecting again",
            ));
        }
        // The app (and the workspace provider it may carry, with its issuer); an app deleted
        // since is reported after the provider's own answer.
        let app = self.apps.recorded(session.oauth_app_id.as_deref()).await;
        let declared = app.as_ref().ok().and_then(Option::as_ref);
        self.check_issuer(&session.provider_id, declared, req.iss.as_deref())?;
        if let Some(error) = &req.error {
            let detail = req
                .error_description
                .as_deref()
                .map(sanitize)
                .unwrap_or_default();
            return Err(failed(
                reason::PROVIDER_DENIED,
                format!("the provider returned {}: {detail}", sanitize(error)),
            ));
        }
        let code = req
            .code
            .as_ref()
            .ok_or_else(|| BrokerError::invalid("code", "is required when error is not set"))?;
        let verifier = self.open_verifier(&session).await?;
        let app = app?;
        let gateway = self.gateway.as_ref();
        let provider = session.provider_id.as_str();
        let exchange = CodeExchange {
            grant: CodeGrant {
                code,
                redirect_uri: &session.redirect_uri,
                pkce_verifier: verifier.as_ref(),
            },
            callback_params: &req.params,
        };
        let (exchanged, used) = AppClients::call(app.as_ref(), |client| async move {
            gateway
                .exchange_code(provider, client.as_ref(), exchange)
                .await
        })
        .await;
        if let Some(note) = used.fallback {
            trail.notes.push(note.to_owned());
        }
        let (granted, account) = exchanged.map_err(provider_error)?;
        let client = used.client.clone();
        let account = ProviderAccount {
            subject: account.subject,
            label: account.label,
        };
        let requested = Scopes::from_stored(&session.scopes);
        let scopes = granted
            .scopes
            .as_ref()
            .map(|s| Scopes::from_stored(&s.join(" ")))
            .unwrap_or(requested);
        let tokens = bundle(granted, now);
        let subject = account.subject.clone();
        let result = match &session.reconnect_credential_id {
            Some(id) => {
                trail.credential_id = Some(id.clone());
                self.reconnect(caller, id, &account, scopes, &tokens, now, trail)
                    .await
            }
            None => {
                self.connect(caller, &session, account, scopes, &tokens, now, trail)
                    .await
            }
        };
        // The credential now holds a grant of this client: refresh and revocation use it.
        if let Ok((v, _)) = &result {
            self.apps
                .record(v.credential.id.as_str(), app.as_ref(), used.version)
                .await?;
            if let Some(a) = &app {
                trail.notes.push(format!("oauth_app={}", a.app_id));
            }
        }
        // A grant the broker does not keep (refused, mismatched account, lost role) must not
        // stay alive at the provider.
        if let Err(e) = &result
            && stored_nothing(e)
        {
            let revoked = if self
                .shares_a_kept_grant(&session.provider_id, &subject)
                .await
            {
                "kept_shared_authorization"
            } else {
                self.revoke_grant(
                    &session.provider_id,
                    client.as_ref(),
                    trail.credential_id.as_deref(),
                    &tokens,
                    "new",
                )
                .await
            };
            trail.notes.push(format!("new_grant={revoked}"));
        }
        result
    }

    /// RFC 9207 mix-up defence: where the provider declares its issuer, an authorization
    /// response (error responses included) must name exactly it, or the code could be sent to a
    /// token endpoint it was not issued for. Without a declared issuer, `iss` is not compared.
    fn check_issuer(
        &self,
        provider: &str,
        app: Option<&ResolvedApp>,
        iss: Option<&str>,
    ) -> Result<(), BrokerError> {
        // A workspace-defined provider declares its issuer in its definition.
        let declared = match app.and_then(|a| a.provider.as_ref()) {
            Some(spec) => spec.issuer.clone(),
            None => self.gateway.issuer(provider),
        };
        let Some(expected) = declared else {
            return Ok(());
        };
        let message = match iss {
            Some(got) if got == expected => return Ok(()),
            Some(got) => format!(
                "the authorization response names issuer {} but provider {provider} is {expected}: it may come from another server, so the code was not used; start connecting again",
                sanitize(got)
            ),
            None => format!(
                "the authorization response has no iss but provider {provider} declares issuer {expected}: pass the redirect's iss parameter; start connecting again"
            ),
        };
        Err(failed(reason::ISSUER_MISMATCH, message))
    }

    /// Revokes a grant at the provider, best effort: the outcome goes to the audit detail and
    /// the log (never a token), and never changes the answer.
    async fn revoke_grant(
        &self,
        provider: &str,
        client: Option<&AppClient>,
        credential_id: Option<&str>,
        tokens: &TokenBundle,
        grant: &'static str,
    ) -> &'static str {
        match self.gateway.revoke(provider, client, tokens).await {
            Ok(RevokeResult::Revoked) => "revoked",
            Ok(RevokeResult::NotSupported) => "not_supported",
            Err(e) => {
                tracing::warn!(
                    credential_id = credential_id.unwrap_or_default(),
                    provider,
                    grant,
                    error = %e,
                    "grant revocation failed"
                );
                "failed"
            }
        }
    }

    /// Whether revoking a grant of this account would end a grant a credential keeps.
    async fn shares_a_kept_grant(&self, provider: &str, subject: &str) -> bool {
        crate::revocation::would_end_a_kept_grant(
            self.store.as_ref(),
            self.gateway.as_ref(),
            provider,
            subject,
            None,
        )
        .await
    }

    /// Revokes the grant `store_tokens` replaced, once the new one is stored.
    async fn revoke_replaced(
        &self,
        c: &Credential,
        replaced: Option<TokenBundle>,
        tokens: &TokenBundle,
        trail: &mut Trail,
    ) {
        let outcome = match replaced_grant(replaced, tokens) {
            // `c` keeps the new grant of this very account.
            Some(_)
                if self
                    .shares_a_kept_grant(&c.provider_id, &c.account.subject)
                    .await =>
            {
                "kept_shared_authorization"
            }
            Some(old) => {
                // The replaced grant belongs to the client that minted it.
                let app = self.apps.for_credential(c).await.ok().flatten();
                let client = app.as_ref().and_then(ResolvedApp::newest).map(|(_, c)| c);
                self.revoke_grant(
                    &c.provider_id,
                    client,
                    Some(c.id.as_str()),
                    &old,
                    "replaced",
                )
                .await
            }
            None => "kept",
        };
        trail.notes.push(format!("replaced_grant={outcome}"));
    }

    async fn open_verifier(
        &self,
        s: &ConnectSessionRow,
    ) -> Result<Option<SecretString>, BrokerError> {
        let (Some(ct), Some(wrapped), Some(key_id), Some(version)) = (
            &s.pkce_verifier,
            &s.pkce_dek_wrapped,
            &s.pkce_dek_key_id,
            s.pkce_dek_key_version,
        ) else {
            return Ok(None);
        };
        let blob = SealedBlob {
            ciphertext: ct.clone(),
            wrapped_dek: WrappedDek {
                key: KeyRef {
                    key_id: key_id.clone(),
                    version: u32::try_from(version).unwrap_or(0),
                },
                ciphertext: wrapped.clone(),
            },
        };
        let plain = self
            .envelope
            .open(
                &blob,
                &pkce_context(&s.workspace_id, &s.state_hash),
                &pkce_aad(&s.state_hash),
            )
            .await?;
        self.envelope.forget(&blob.wrapped_dek);
        let text = String::from_utf8(plain.expose().to_vec())
            .map_err(|_| BrokerError::Internal("stored verifier is not text".into()))?;
        Ok(Some(SecretString::from(text)))
    }

    #[allow(clippy::too_many_arguments)] // the completed flow's parts, each needed
    async fn reconnect(
        &self,
        caller: &Caller,
        id: &str,
        account: &ProviderAccount,
        scopes: Scopes,
        tokens: &TokenBundle,
        now: Timestamp,
        trail: &mut Trail,
    ) -> Result<(CredentialView, ConnectOutcome), BrokerError> {
        let id = CredentialId::from_stored(id.to_owned());
        let (mut c, role) = self.policy.load_with_role(caller, &id, Role::Admin).await?;
        if c.is_disconnected() {
            return Err(BrokerError::disconnected());
        }
        if c.account.subject != account.subject {
            return Err(failed(
                reason::ACCOUNT_MISMATCH,
                format!(
                    "you authorized {} but this credential belongs to {}: sign in to the provider as that account, or connect a new credential",
                    sanitize(&account.label),
                    c.account.label
                ),
            ));
        }
        let (stored, replaced) = self
            .store_tokens(
                &mut c,
                Some(account),
                scopes,
                tokens,
                now,
                caller.actor_label(),
            )
            .await?;
        self.revoke_replaced(&stored, replaced, tokens, trail).await;
        Ok((
            CredentialView {
                credential: stored,
                caller_role: Some(role),
            },
            ConnectOutcome::Reconnected,
        ))
    }

    #[allow(clippy::too_many_arguments)] // the completed flow's parts, each needed
    async fn connect(
        &self,
        caller: &Caller,
        s: &ConnectSessionRow,
        account: ProviderAccount,
        scopes: Scopes,
        tokens: &TokenBundle,
        now: Timestamp,
        trail: &mut Trail,
    ) -> Result<(CredentialView, ConnectOutcome), BrokerError> {
        let actor = require_actor(caller)?;
        for _ in 0..3 {
            if let Some(row) = self
                .store
                .find_credential_by_account(&s.workspace_id, &s.provider_id, &account.subject)
                .await?
            {
                let mut c = Credential::from_row(row)?;
                trail.credential_id = Some(c.id.to_string());
                // Its members (any role) and the workspace's admins refresh it by connecting
                // again. Controlling the account at the provider (a shared mailbox's password)
                // grants no role: an Admin must invite them.
                let Some(role) = self.policy.role_of(actor, &c).await? else {
                    return Err(already_connected(&c));
                };
                let (stored, replaced) = self
                    .store_tokens(
                        &mut c,
                        Some(&account),
                        scopes.clone(),
                        tokens,
                        now,
                        caller.actor_label(),
                    )
                    .await?;
                self.revoke_replaced(&stored, replaced, tokens, trail).await;
                return Ok((
                    CredentialView {
                        credential: stored,
                        caller_role: Some(role),
                    },
                    ConnectOutcome::UpdatedExisting,
                ));
            }
            let provider_name = self
                .gateway
                .get(&s.provider_id)
                .map_or_else(|| s.provider_id.clone(), |p| p.display_name);
            let default_name = if account.label.is_empty() {
                provider_name
            } else {
                format!("{provider_name} ({})", account.label)
            };
            let name = match &s.display_name {
                Some(n) => DisplayName::from_stored(n.clone()),
                None => DisplayName::parse(
                    "display_name",
                    &default_name
                        .chars()
                        .take(crate::types::DISPLAY_NAME_MAX)
                        .collect::<String>(),
                )
                .map_err(|v| BrokerError::InvalidArgument(vec![v]))?,
            };
            let mut c = Credential::new(
                CredentialId::generate(),
                s.workspace_id.clone(),
                s.provider_id.clone(),
                account.clone(),
                name,
                Description::from_stored(s.description.clone().unwrap_or_default()),
                scopes.clone(),
                actor.user_id.to_string(),
                now,
            );
            sealing::seal_into(&self.envelope, &mut c, tokens).await?;
            self.credentials.schedule_refresh(&mut c, tokens, now);
            c.last_refreshed_at = Some(now);
            let events = [event(
                &c,
                EventKind::Connected,
                caller.actor_label().as_deref(),
                None,
                None,
                now,
            )];
            match self
                .store
                .insert_credential_with_events(&c.to_row(), &[admin_row(&c, caller, now)], &events)
                .await
            {
                Ok(()) => {
                    return Ok((
                        CredentialView {
                            credential: c,
                            caller_role: Some(Role::Admin),
                        },
                        ConnectOutcome::Created,
                    ));
                }
                // Someone connected the same account a moment ago: update that one instead.
                Err(StoreError::Duplicate(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BrokerError::Conflict {
            message: "the account is being connected concurrently; retry".into(),
        })
    }

    /// Seals new tokens into an existing credential and makes it ACTIVE again. Also returns
    /// the tokens it replaced, where they could be read.
    async fn store_tokens(
        &self,
        c: &mut Credential,
        account: Option<&ProviderAccount>,
        scopes: Scopes,
        tokens: &TokenBundle,
        now: Timestamp,
        actor: Option<String>,
    ) -> Result<(Credential, Option<TokenBundle>), BrokerError> {
        for _ in 0..3 {
            let expected = c.version;
            // An unreadable credential is exactly what a reconnect repairs: it is not refused.
            let replaced = match sealing::open(&self.envelope, c).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(credential_id = %c.id, error = %e, "replaced tokens unreadable; not revoked");
                    None
                }
            };
            if let Some(a) = account
                && !a.label.is_empty()
            {
                c.account.label = a.label.clone();
            }
            c.scopes = scopes.clone();
            // Reconnecting repairs whatever was wrong with the grant.
            let cause = (c.health.kind != HealthKind::Healthy).then(|| c.health.kind.class());
            c.status = Status::Active;
            c.health = Health::healthy(Some(now));
            c.last_refreshed_at = Some(now);
            c.updated_at = now;
            sealing::seal_into(&self.envelope, c, tokens).await?;
            self.credentials.schedule_refresh(c, tokens, now);
            let events = [event(
                c,
                EventKind::Reconnected,
                actor.as_deref(),
                cause,
                None,
                now,
            )];
            match self
                .store
                .update_credential_with_events(&c.to_row(), expected, &events)
                .await
            {
                Ok(stored) => {
                    self.cache.invalidate(c.id.as_str());
                    return Ok((Credential::from_row(stored)?, replaced));
                }
                Err(StoreError::VersionConflict { .. }) => {
                    let row = self
                        .store
                        .get_credential(c.id.as_str())
                        .await?
                        .ok_or_else(BrokerError::credential_not_found)?;
                    *c = Credential::from_row(row)?;
                    if c.is_disconnected() {
                        return Err(BrokerError::disconnected());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(BrokerError::Conflict {
            message: "the credential is changing concurrently; retry".into(),
        })
    }
}

fn admin_row(c: &Credential, caller: &Caller, now: Timestamp) -> MemberRow {
    let actor = caller.actor.as_ref();
    MemberRow {
        credential_id: c.id.to_string(),
        email: actor.map(|a| a.email.to_string()).unwrap_or_default(),
        user_id: actor.map(|a| a.user_id.to_string()),
        role: Role::Admin.as_str().to_owned(),
        state: "ACTIVE".to_owned(),
        invited_by: actor.map(|a| a.user_id.to_string()).unwrap_or_default(),
        created_at: now.as_millis(),
        updated_at: now.as_millis(),
    }
}

/// The token bundle for tokens fresh from the provider.
pub fn bundle(g: GrantedTokens, now: Timestamp) -> TokenBundle {
    TokenBundle {
        access_token: g.access_token,
        refresh_token: g.refresh_token,
        id_token: g.id_token,
        token_type: g.token_type,
        access_expires_at: g.expires_in.map(|d| now.plus(d)),
        refresh_expires_at: g.refresh_expires_in.map(|d| now.plus(d)),
        obtained_at: Some(now),
        extras: g.extras,
    }
}
