//! OAuth 2.0 providers a workspace defines at runtime (decision 27): endpoints given, or
//! discovered from an issuer (RFC 8414, then OpenID discovery), used with a workspace OAuth
//! app's client. Every URL is checked against the outbound policy when accepted, and every call
//! to such a provider goes through the outbound guard (the gateway sees the runtime spec on the
//! app's client). Definitions are read from the store on every use: every replica sees a change
//! at once, with no cache to invalidate.

use crate::access::Caller;
use crate::clock::Timestamp;
use crate::error::{BrokerError, FieldViolation, reason};
use crate::gateway::{MetadataError, ProviderInfo};
use crate::oauth_apps::OAuthAppService;
use crate::types::{ProviderId, WorkspaceId};
use cb_oauth::catalog::{
    AccountSource, AuthStyle, Catalog, Pkce, ProviderSpec, Quirk, RefreshBehaviour, ScopeSpec,
};
use cb_store::{Store, StoreError, WorkspaceProviderRow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Workspace admins (of that workspace) and operators manage a workspace's providers.
fn require_workspace_admin(caller: &Caller, workspace: &str) -> Result<(), BrokerError> {
    crate::policy::require_workspace_admin(caller, workspace, "providers")
}

/// A stored definition (the `definition` JSON document). Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Name shown to people.
    pub display_name: String,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// RFC 7009 revocation endpoint, if any.
    pub revocation_url: Option<String>,
    /// Userinfo endpoint identifying the account.
    pub userinfo_url: String,
    /// JSON pointer to the account's stable id in the userinfo answer.
    pub subject_pointer: String,
    /// JSON pointer to the account's label (email, login).
    pub label_pointer: String,
    /// Issuer for the RFC 9207 `iss` check, if declared.
    pub issuer: Option<String>,
    /// Client authentication at the token endpoint: `basic` or `post`.
    pub client_auth: String,
    /// Whether PKCE (S256) is used.
    pub pkce: bool,
    /// Scope separator in the authorization request: `" "` or `","`.
    pub scope_separator: String,
    /// Scopes offered.
    pub scopes: Vec<String>,
    /// Scopes requested when a connect names none.
    pub default_scopes: Vec<String>,
    /// The issuer the endpoints were discovered from, if any.
    pub discovered_from: Option<String>,
}

/// A workspace-defined provider as callers see it.
#[derive(Clone, Debug)]
pub struct WorkspaceProvider {
    /// Provider id (unique in the workspace, never a catalog id).
    pub id: String,
    /// Owning workspace.
    pub workspace_id: String,
    /// The definition.
    pub definition: Definition,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Row version (optimistic concurrency).
    pub version: i64,
}

/// What a Create/UpdateWorkspaceProvider request asks for; unset values come from the
/// issuer's metadata when `discover` is set, else from the defaults (basic, PKCE, space).
#[derive(Clone, Debug)]
pub struct ProviderInput {
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// Provider id.
    pub id: ProviderId,
    /// Name shown to people.
    pub display_name: String,
    /// Issuer (RFC 9207 check, and where to discover from).
    pub issuer: Option<String>,
    /// Read the endpoints from the issuer's metadata.
    pub discover: bool,
    /// Authorization endpoint.
    pub authorize_url: Option<String>,
    /// Token endpoint.
    pub token_url: Option<String>,
    /// Revocation endpoint.
    pub revocation_url: Option<String>,
    /// Userinfo endpoint.
    pub userinfo_url: Option<String>,
    /// JSON pointer to the subject (default `/sub`).
    pub subject_pointer: Option<String>,
    /// JSON pointer to the label (default `/email`).
    pub label_pointer: Option<String>,
    /// `basic` or `post`.
    pub client_auth: Option<String>,
    /// PKCE on or off.
    pub pkce: Option<bool>,
    /// `" "` or `","`.
    pub scope_separator: Option<String>,
    /// Scopes offered (default: the metadata's `scopes_supported`).
    pub scopes: Vec<String>,
    /// Default scopes.
    pub default_scopes: Vec<String>,
    /// For updates: reject unless the stored version equals this.
    pub expected_version: Option<i64>,
}

impl Definition {
    /// The catalog entry the OAuth client calls this provider by.
    pub fn to_spec(&self, id: &str) -> ProviderSpec {
        let origin = url::Url::parse(&self.authorize_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| self.authorize_url.clone());
        ProviderSpec {
            id: id.to_owned(),
            display_name: self.display_name.clone(),
            icon_url: format!("{origin}/favicon.ico"),
            category: "custom".into(),
            authorize_url: self.authorize_url.clone(),
            token_url: self.token_url.clone(),
            revocation_url: self.revocation_url.clone(),
            revocation_ends_authorization: false,
            issuer: self.issuer.clone(),
            account: AccountSource::Userinfo {
                url: self.userinfo_url.clone(),
                subject_pointer: self.subject_pointer.clone(),
                label_pointer: self.label_pointer.clone(),
                headers: BTreeMap::new(),
                body: None,
                token_header: None,
            },
            default_scopes: self.default_scopes.clone(),
            scopes: self
                .scopes
                .iter()
                .map(|s| ScopeSpec {
                    name: s.clone(),
                    description: s.clone(),
                })
                .collect(),
            auth_style: if self.client_auth == "post" {
                AuthStyle::Post
            } else {
                AuthStyle::Basic
            },
            pkce: if self.pkce {
                Pkce::Required
            } else {
                Pkce::None
            },
            extra_authorize_params: BTreeMap::new(),
            extra_token_params: BTreeMap::new(),
            extra_refresh_params: BTreeMap::new(),
            client_id_param: None,
            refresh: RefreshBehaviour::default(),
            quirks: if self.scope_separator == "," {
                vec![Quirk::CommaSeparatedScopes]
            } else {
                Vec::new()
            },
            docs_url: origin,
            sources: Vec::new(),
            checked: None,
            verified: false,
            unsure: Vec::new(),
            post_connect: None,
        }
    }
}

/// The runtime spec of `workspace`'s provider `id`, if the workspace defined one.
pub async fn load_spec(
    store: &dyn Store,
    workspace: &str,
    id: &str,
) -> Result<Option<ProviderSpec>, BrokerError> {
    match store.get_workspace_provider(workspace, id).await? {
        Some(row) => Ok(Some(parse_row(&row)?.to_spec(id))),
        None => Ok(None),
    }
}

/// The runtime specs of every provider `workspace` defined, by id.
pub async fn load_all(
    store: &dyn Store,
    workspace: &str,
) -> Result<Vec<ProviderSpec>, BrokerError> {
    store
        .list_workspace_providers(workspace)
        .await?
        .iter()
        .map(|row| Ok(parse_row(row)?.to_spec(&row.id)))
        .collect()
}

/// The provider `workspace` defined, as connect flows and ListProviders see it: `configured`
/// only with an app (the workspace's own client is the only client a workspace provider has).
pub fn info(spec: &ProviderSpec, workspace: &str, has_app: bool) -> ProviderInfo {
    ProviderInfo {
        workspace_id: Some(workspace.to_owned()),
        ..ProviderInfo::from_spec(
            spec,
            has_app,
            if has_app {
                Vec::new()
            } else {
                vec![format!(
                    "an OAuth app for provider {} in this workspace (CreateOAuthApp)",
                    spec.id
                )]
            },
            true,
        )
    }
}

/// The error for a use of workspace provider `id` without an OAuth app of the workspace for it
/// (its only possible client).
pub(crate) fn without_app(id: &str) -> BrokerError {
    BrokerError::FailedPrecondition {
        reason: reason::PROVIDER_NOT_CONFIGURED,
        message: format!(
            "provider {id} is defined by this workspace and has no OAuth client: a workspace admin must create an OAuth app for provider {id} in this workspace (CreateOAuthApp) with the client id and secret registered at the provider"
        ),
    }
}

fn parse_row(row: &WorkspaceProviderRow) -> Result<Definition, BrokerError> {
    serde_json::from_str(&row.definition).map_err(|e| {
        BrokerError::Internal(format!(
            "stored definition of workspace provider {} is unreadable: {e}",
            row.id
        ))
    })
}

fn view(row: WorkspaceProviderRow) -> Result<WorkspaceProvider, BrokerError> {
    Ok(WorkspaceProvider {
        definition: parse_row(&row)?,
        id: row.id,
        workspace_id: row.workspace_id,
        created_by: row.created_by,
        created_at: Timestamp::from_millis(row.created_at),
        updated_at: Timestamp::from_millis(row.updated_at),
        version: row.row_version,
    })
}

fn encode(definition: &Definition) -> Result<String, BrokerError> {
    serde_json::to_string(definition).map_err(|e| BrokerError::Internal(e.to_string()))
}

fn not_found() -> BrokerError {
    BrokerError::NotFound {
        reason: reason::WORKSPACE_PROVIDER_NOT_FOUND,
        what: "workspace provider",
    }
}

/// The text of metadata field `name`, when it is a string.
fn text(metadata: &serde_json::Value, name: &str) -> Option<String> {
    metadata
        .get(name)
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}

fn strings(metadata: &serde_json::Value, name: &str) -> Option<Vec<String>> {
    metadata
        .get(name)
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
}

impl OAuthAppService {
    /// Checks one URL a workspace sets: a URL at all (INVALID_ARGUMENT), allowed by the outbound
    /// policy (OUTBOUND_REFUSED naming the field).
    fn accept_url(&self, field: &str, raw: &str) -> Result<String, BrokerError> {
        let url = url::Url::parse(raw)
            .map_err(|_| BrokerError::invalid(field, "is not an absolute URL"))?;
        self.gateway().check_outbound_url(&url).map_err(|e| {
            let mut err = BrokerError::outbound(&e);
            if let BrokerError::FailedPrecondition { message, .. } = &mut err {
                *message = format!("{field}: {message}");
            }
            err
        })?;
        Ok(raw.to_owned())
    }

    /// Builds and checks a definition: discovery first (when asked), then the request's values.
    async fn definition(&self, input: &ProviderInput) -> Result<Definition, BrokerError> {
        let issuer = match &input.issuer {
            Some(i) => Some(self.accept_url("issuer", i)?),
            None => None,
        };
        let metadata = match (&issuer, input.discover) {
            (Some(issuer), true) => {
                let metadata =
                    self.gateway()
                        .issuer_metadata(issuer)
                        .await
                        .map_err(|e| match e {
                            MetadataError::Outbound(o) if o.is_refusal() => {
                                BrokerError::outbound(&o)
                            }
                            other => BrokerError::FailedPrecondition {
                                reason: reason::PROVIDER_DISCOVERY_FAILED,
                                message: format!(
                                    "the metadata of issuer {issuer} could not be read: {other}"
                                ),
                            },
                        })?;
                // RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
                if text(&metadata, "issuer").as_deref() != Some(issuer.as_str()) {
                    return Err(BrokerError::FailedPrecondition {
                        reason: reason::PROVIDER_DISCOVERY_FAILED,
                        message: format!(
                            "the metadata fetched for issuer {issuer} names issuer {:?}",
                            text(&metadata, "issuer").unwrap_or_default()
                        ),
                    });
                }
                Some(metadata)
            }
            (None, true) => return Err(BrokerError::invalid("issuer", "is required to discover")),
            _ => None,
        };
        let found = |name: &str| metadata.as_ref().and_then(|m| text(m, name));
        let required = |field: &str, given: &Option<String>, meta: &str| {
            given.clone().or_else(|| found(meta)).ok_or_else(|| {
                BrokerError::invalid(field, "is required (or discover it from an issuer)")
            })
        };
        let authorize_url = required(
            "authorize_url",
            &input.authorize_url,
            "authorization_endpoint",
        )?;
        let token_url = required("token_url", &input.token_url, "token_endpoint")?;
        let userinfo_url = required("userinfo_url", &input.userinfo_url, "userinfo_endpoint")?;
        let revocation_url = input
            .revocation_url
            .clone()
            .or_else(|| found("revocation_endpoint"));
        let authorize_url = self.accept_url("authorize_url", &authorize_url)?;
        let token_url = self.accept_url("token_url", &token_url)?;
        let userinfo_url = self.accept_url("userinfo_url", &userinfo_url)?;
        let revocation_url = match revocation_url {
            Some(u) => Some(self.accept_url("revocation_url", &u)?),
            None => None,
        };
        let listed = |name: &str| metadata.as_ref().and_then(|m| strings(m, name));
        let client_auth = match input.client_auth.as_deref() {
            Some(m @ ("basic" | "post")) => m.to_owned(),
            Some(_) => return Err(BrokerError::invalid("client_auth", "must be basic or post")),
            None => match listed("token_endpoint_auth_methods_supported") {
                Some(m)
                    if !m.iter().any(|x| x == "client_secret_basic")
                        && m.iter().any(|x| x == "client_secret_post") =>
                {
                    "post".into()
                }
                _ => "basic".into(),
            },
        };
        let pkce = input.pkce.unwrap_or_else(|| {
            listed("code_challenge_methods_supported").is_none_or(|m| m.iter().any(|x| x == "S256"))
        });
        let scope_separator = match input.scope_separator.as_deref() {
            None | Some(" ") => " ".to_owned(),
            Some(",") => ",".to_owned(),
            Some(_) => {
                return Err(BrokerError::invalid(
                    "scope_separator",
                    "must be a space or a comma",
                ));
            }
        };
        let scopes = if input.scopes.is_empty() {
            listed("scopes_supported").unwrap_or_default()
        } else {
            input.scopes.clone()
        };
        let definition = Definition {
            display_name: if input.display_name.is_empty() {
                input.id.to_string()
            } else {
                input.display_name.clone()
            },
            authorize_url,
            token_url,
            revocation_url,
            userinfo_url,
            subject_pointer: input
                .subject_pointer
                .clone()
                .unwrap_or_else(|| "/sub".into()),
            label_pointer: input
                .label_pointer
                .clone()
                .unwrap_or_else(|| "/email".into()),
            issuer,
            client_auth,
            pkce,
            scope_separator,
            scopes,
            default_scopes: input.default_scopes.clone(),
            discovered_from: metadata.as_ref().and(input.issuer.clone()),
        };
        let spec = definition.to_spec(input.id.as_str());
        Catalog::validate(&spec, self.gateway().outbound_allows_loopback()).map_err(
            |problems| {
                BrokerError::InvalidArgument(
                    problems
                        .into_iter()
                        .map(|p| FieldViolation::new("provider", p))
                        .collect(),
                )
            },
        )?;
        Ok(definition)
    }

    /// The stored row of a workspace's provider; NOT_FOUND when the workspace defines none.
    async fn stored(
        &self,
        workspace: &WorkspaceId,
        id: &ProviderId,
    ) -> Result<WorkspaceProviderRow, BrokerError> {
        self.store()
            .get_workspace_provider(workspace.as_str(), id.as_str())
            .await?
            .ok_or_else(not_found)
    }

    /// Reads one workspace provider.
    pub async fn get_provider(
        &self,
        caller: &Caller,
        workspace: &WorkspaceId,
        id: &ProviderId,
    ) -> Result<WorkspaceProvider, BrokerError> {
        let result = async {
            require_workspace_admin(caller, workspace.as_str())?;
            view(self.stored(workspace, id).await?)
        }
        .await;
        let detail = format!("workspace={workspace} provider={id}");
        self.audited(caller, ("workspace_provider.get", true), detail, result)
            .await
    }

    /// Lists a workspace's providers, by id.
    pub async fn list_providers(
        &self,
        caller: &Caller,
        workspace: &WorkspaceId,
    ) -> Result<Vec<WorkspaceProvider>, BrokerError> {
        let result = async {
            require_workspace_admin(caller, workspace.as_str())?;
            self.store()
                .list_workspace_providers(workspace.as_str())
                .await?
                .into_iter()
                .map(view)
                .collect()
        }
        .await;
        let detail = format!("workspace={workspace}");
        self.audited(caller, ("workspace_provider.list", true), detail, result)
            .await
    }

    /// Defines a provider in a workspace.
    pub async fn create_provider(
        &self,
        caller: &Caller,
        input: ProviderInput,
    ) -> Result<WorkspaceProvider, BrokerError> {
        self.write_provider(caller, input, true).await
    }

    /// Replaces a provider's definition (discovering again when asked).
    pub async fn update_provider(
        &self,
        caller: &Caller,
        input: ProviderInput,
    ) -> Result<WorkspaceProvider, BrokerError> {
        self.write_provider(caller, input, false).await
    }

    /// Creates (`create`) or replaces a definition, authorized and audited.
    async fn write_provider(
        &self,
        caller: &Caller,
        input: ProviderInput,
        create: bool,
    ) -> Result<WorkspaceProvider, BrokerError> {
        let detail = format!("workspace={} provider={}", input.workspace_id, input.id);
        let result = async {
            require_workspace_admin(caller, input.workspace_id.as_str())?;
            let row = if create {
                self.insert_provider(caller, &input).await?
            } else {
                self.replace_provider(&input).await?
            };
            view(row)
        }
        .await;
        let action = if create {
            "workspace_provider.create"
        } else {
            "workspace_provider.update"
        };
        self.audited(caller, (action, false), detail, result).await
    }

    async fn insert_provider(
        &self,
        caller: &Caller,
        input: &ProviderInput,
    ) -> Result<WorkspaceProviderRow, BrokerError> {
        if self.gateway().get(input.id.as_str()).is_some() {
            return Err(BrokerError::AlreadyExists {
                reason: reason::WORKSPACE_PROVIDER_EXISTS,
                message: format!(
                    "{} is a catalog provider: choose another id for the workspace's provider",
                    input.id
                ),
            });
        }
        let definition = self.definition(input).await?;
        let now = self.now_millis();
        let row = WorkspaceProviderRow {
            workspace_id: input.workspace_id.to_string(),
            id: input.id.to_string(),
            definition: encode(&definition)?,
            created_by: crate::oauth_apps::creator(caller),
            created_at: now,
            updated_at: now,
            row_version: 1,
        };
        self.store()
            .insert_workspace_provider(&row)
            .await
            .map_err(|e| match e {
                StoreError::Duplicate(_) => BrokerError::AlreadyExists {
                    reason: reason::WORKSPACE_PROVIDER_EXISTS,
                    message: format!(
                        "workspace {} already defines provider {}",
                        input.workspace_id, input.id
                    ),
                },
                other => other.into(),
            })?;
        Ok(row)
    }

    async fn replace_provider(
        &self,
        input: &ProviderInput,
    ) -> Result<WorkspaceProviderRow, BrokerError> {
        let current = self.stored(&input.workspace_id, &input.id).await?;
        let definition = self.definition(input).await?;
        let row = WorkspaceProviderRow {
            definition: encode(&definition)?,
            updated_at: self.now_millis(),
            ..current.clone()
        };
        let expected = input.expected_version.unwrap_or(current.row_version);
        self.store()
            .update_workspace_provider(&row, expected)
            .await
            .map_err(|e| match e {
                StoreError::VersionConflict { .. } => BrokerError::Conflict {
                    message: "the workspace provider changed meanwhile; read it again and retry"
                        .into(),
                },
                StoreError::NotFound => not_found(),
                other => other.into(),
            })
    }

    /// Deletes a provider; refused while OAuth apps of the workspace are for it.
    pub async fn delete_provider(
        &self,
        caller: &Caller,
        workspace: &WorkspaceId,
        id: &ProviderId,
    ) -> Result<(), BrokerError> {
        let result = async {
            require_workspace_admin(caller, workspace.as_str())?;
            let apps = self
                .store()
                .list_oauth_apps(workspace.as_str(), Some(id.as_str()))
                .await?;
            if let Some(app) = apps.first() {
                return Err(BrokerError::FailedPrecondition {
                    reason: reason::WORKSPACE_PROVIDER_IN_USE,
                    message: format!(
                        "{} OAuth app(s) of this workspace are for provider {id} (first: {} ({})): delete them first (DeleteOAuthApp)",
                        apps.len(),
                        app.display_name,
                        app.id
                    ),
                });
            }
            if self
                .store()
                .delete_workspace_provider(workspace.as_str(), id.as_str())
                .await?
            {
                Ok(())
            } else {
                Err(not_found())
            }
        }
        .await;
        let detail = format!("workspace={workspace} provider={id}");
        self.audited(caller, ("workspace_provider.delete", false), detail, result)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition() -> Definition {
        Definition {
            display_name: "Acme".into(),
            authorize_url: "https://id.acme.example/authorize".into(),
            token_url: "https://id.acme.example/token".into(),
            revocation_url: None,
            userinfo_url: "https://id.acme.example/userinfo".into(),
            subject_pointer: "/sub".into(),
            label_pointer: "/email".into(),
            issuer: Some("https://id.acme.example".into()),
            client_auth: "post".into(),
            pkce: true,
            scope_separator: ",".into(),
            scopes: vec!["read".into(), "write".into()],
            default_scopes: vec!["read".into()],
            discovered_from: None,
        }
    }

    #[test]
    fn a_definition_becomes_a_valid_catalog_entry() {
        let spec = definition().to_spec("acme");
        assert_eq!(Catalog::validate(&spec, false), Ok(()));
        assert_eq!(spec.auth_style, AuthStyle::Post);
        assert_eq!(spec.pkce, Pkce::Required);
        assert_eq!(spec.quirks, [Quirk::CommaSeparatedScopes]);
        assert_eq!(spec.issuer.as_deref(), Some("https://id.acme.example"));
        assert!(
            !spec.is_verified(),
            "never presented as a verified catalog entry"
        );
        let info = info(&spec, "ws1", false);
        assert!(!info.configured && info.custom);
        assert_eq!(info.workspace_id.as_deref(), Some("ws1"));
        assert!(info.missing_settings[0].contains("CreateOAuthApp"));
    }

    #[test]
    fn the_stored_document_round_trips() {
        let d = definition();
        let row = WorkspaceProviderRow {
            workspace_id: "ws1".into(),
            id: "acme".into(),
            definition: encode(&d).unwrap(),
            created_by: "u".into(),
            created_at: 1,
            updated_at: 1,
            row_version: 1,
        };
        assert_eq!(parse_row(&row).unwrap(), d);
    }
}
