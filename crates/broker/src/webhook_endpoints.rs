//! Webhook endpoints a workspace manages through the API (decision 29): created, read, edited,
//! rotated and deleted by workspace admins and operators. The broker generates each signing
//! secret (`whsec_` + 32 random bytes) and returns it once, in the response that created it;
//! it is stored sealed (AAD bound to the endpoint and the secret's version) and never read back
//! through the API. Endpoints declared in the configuration are listed too, read-only.
//!
//! The dispatcher ([`crate::webhooks`]) opens an API endpoint's secrets from the database on
//! each pass that has deliveries for it ([`open_endpoint`]): a new, rotated or deleted endpoint
//! applies on every replica at its next pass, with no cache to invalidate.

use crate::access::Caller;
use crate::audit::{Audit, Write};
use crate::clock::{Clock, Timestamp};
use crate::error::{BrokerError, FieldViolation, reason};
use crate::health::EventKind;
use crate::policy;
use crate::sealing;
use crate::types::{Description, WorkspaceId};
use crate::webhooks::{SECRET_PREFIX, WebhookEndpoint, WebhookSecret};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cb_crypto::Envelope;
use cb_oauth::outbound::OutboundPolicy;
use cb_store::{Store, StoreError, WebhookEndpointRow};
use secrecy::{ExposeSecret as _, SecretString};
use std::sync::Arc;

/// Ids of API-managed endpoints start with this; configured ids may not.
pub const ENDPOINT_ID_PREFIX: &str = "whe_";
/// An endpoint holds at most this many secrets (rotation adds one, retiring removes the older).
pub const MAX_SECRETS: usize = 2;
/// Endpoints (configured and API-managed) a workspace may have: each event is delivered to
/// each of them.
pub const MAX_ENDPOINTS_PER_WORKSPACE: usize = 20;
/// Random bytes of a generated secret (the specification asks for 24 to 64).
const SECRET_BYTES: usize = 32;
const URL_MAX: usize = 2048;
const ID_MAX: usize = 200;

/// Where an endpoint is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `[[webhooks]]` in the configuration: read-only through the API.
    Config,
    /// Created through the API.
    Api,
}

/// An endpoint as callers see it (never its secrets).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Its id (`whe_…` for API endpoints, the configured name otherwise).
    pub id: String,
    /// The workspace whose events it receives.
    pub workspace_id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event kinds it receives (empty: every kind).
    pub event_types: Vec<EventKind>,
    /// Free text for people.
    pub description: String,
    /// Configured or API-managed.
    pub source: Source,
    /// When it was disabled after failing (`None`: enabled).
    pub disabled_at: Option<Timestamp>,
    /// Since when its deliveries fail (`None`: not failing).
    pub failing_since: Option<Timestamp>,
    /// Last change.
    pub updated_at: Timestamp,
    /// Versions of the signing secrets held, newest first (API endpoints).
    pub secret_versions: Vec<i64>,
}

/// An endpoint and the secret just generated for it: the only time the secret is shown.
#[derive(Debug)]
pub struct WithSecret {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `whsec_…`.
    pub secret: SecretString,
}

/// A CreateWebhookEndpoint request.
#[derive(Clone, Debug)]
pub struct CreateEndpoint {
    /// Owning workspace.
    pub workspace_id: WorkspaceId,
    /// Where to POST.
    pub url: url::Url,
    /// Kinds received (empty: every kind).
    pub event_types: Vec<EventKind>,
    /// Free text.
    pub description: Description,
}

/// An UpdateWebhookEndpoint request; `None` fields stay unchanged.
#[derive(Clone, Debug)]
pub struct UpdateEndpoint {
    /// The endpoint.
    pub id: String,
    /// New URL (re-enables the endpoint, like a changed URL in the configuration).
    pub url: Option<url::Url>,
    /// New kinds.
    pub event_types: Option<Vec<EventKind>>,
    /// New description.
    pub description: Option<Description>,
    /// Re-enable a disabled endpoint (and forget its failing period).
    pub enable: bool,
}

/// Parses an endpoint id (an API id or a configured name): 1 to 200 printable characters.
pub fn parse_endpoint_id(field: &str, raw: &str) -> Result<String, FieldViolation> {
    if raw.is_empty() || raw.len() > ID_MAX || raw.chars().any(char::is_control) {
        Err(FieldViolation::new(
            field,
            format!("must be 1 to {ID_MAX} printable characters"),
        ))
    } else {
        Ok(raw.to_owned())
    }
}

/// Parses an endpoint URL: absolute, at most 2048 characters. The outbound policy is checked
/// by the use case (OUTBOUND_REFUSED).
pub fn parse_url(field: &str, raw: &str) -> Result<url::Url, FieldViolation> {
    if raw.len() > URL_MAX {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {URL_MAX} characters"),
        ));
    }
    url::Url::parse(raw).map_err(|_| FieldViolation::new(field, "is not an absolute URL"))
}

fn not_found() -> BrokerError {
    BrokerError::NotFound {
        reason: reason::WEBHOOK_ENDPOINT_NOT_FOUND,
        what: "webhook endpoint",
    }
}

fn failed(reason: &'static str, message: impl Into<String>) -> BrokerError {
    BrokerError::FailedPrecondition {
        reason,
        message: message.into(),
    }
}

/// A fresh signing secret: `whsec_` and 32 random bytes, base64 (what every Standard Webhooks
/// library takes).
fn generate_secret() -> Result<SecretString, BrokerError> {
    let mut key = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    aws_lc_rs::rand::fill(key.as_mut())
        .map_err(|_| BrokerError::Internal("no randomness".into()))?;
    Ok(SecretString::from(format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(key.as_ref())
    )))
}

fn stored_kinds(kinds: &[EventKind]) -> Option<String> {
    let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    (!names.is_empty()).then(|| names.join(","))
}

fn parse_stored_kinds(stored: Option<&str>) -> Vec<EventKind> {
    stored
        .unwrap_or_default()
        .split(',')
        .filter_map(EventKind::parse)
        .collect()
}

/// An API endpoint ready to deliver to: its row and opened secrets, newest first. `None` when
/// the row is not an API endpoint (configured ones are the configuration's).
pub async fn open_endpoint(
    store: &dyn Store,
    envelope: &Envelope,
    row: &WebhookEndpointRow,
) -> Result<Option<WebhookEndpoint>, BrokerError> {
    if row.source != "API" {
        return Ok(None);
    }
    let url = url::Url::parse(&row.url)
        .map_err(|_| BrokerError::Internal("a stored webhook url does not parse".into()))?;
    let mut secrets = Vec::new();
    for s in store.list_webhook_secrets(&row.id).await? {
        let text = sealing::open_webhook_secret(envelope, &row.workspace_id, &s).await?;
        secrets.push(
            WebhookSecret::parse(text.expose_secret()).map_err(|_| {
                BrokerError::Internal("a stored webhook secret does not parse".into())
            })?,
        );
    }
    Ok(Some(WebhookEndpoint {
        id: row.id.clone(),
        workspace_id: row.workspace_id.clone(),
        url,
        secrets,
        event_types: parse_stored_kinds(row.event_types.as_deref()),
    }))
}

/// The webhook endpoint use cases.
pub struct WebhookEndpointService {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    clock: Arc<dyn Clock>,
    audit: Audit,
    outbound: OutboundPolicy,
}

impl WebhookEndpointService {
    /// Wires the use cases; URLs are checked against `outbound` when accepted.
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        clock: Arc<dyn Clock>,
        audit: Audit,
        outbound: OutboundPolicy,
    ) -> Self {
        Self {
            store,
            envelope,
            clock,
            audit,
            outbound,
        }
    }

    /// The outbound policy refuses the URL: OUTBOUND_REFUSED naming the field (deliveries are
    /// checked again, with name resolution, at every attempt).
    fn accept_url(&self, url: &url::Url) -> Result<String, BrokerError> {
        cb_oauth::outbound::check_url(&self.outbound, url)
            .map_err(|e| failed(reason::OUTBOUND_REFUSED, format!("url: {e}")))?;
        Ok(url.to_string())
    }

    async fn view(&self, row: WebhookEndpointRow) -> Result<Endpoint, BrokerError> {
        let source = if row.source == "API" {
            Source::Api
        } else {
            Source::Config
        };
        let secret_versions = match source {
            Source::Api => self
                .store
                .list_webhook_secrets(&row.id)
                .await?
                .into_iter()
                .map(|s| s.version)
                .collect(),
            Source::Config => Vec::new(),
        };
        Ok(Endpoint {
            event_types: parse_stored_kinds(row.event_types.as_deref()),
            disabled_at: row.disabled_at.map(Timestamp::from_millis),
            failing_since: row.failing_since.map(Timestamp::from_millis),
            updated_at: Timestamp::from_millis(row.updated_at),
            id: row.id,
            workspace_id: row.workspace_id,
            url: row.url,
            description: row.description,
            source,
            secret_versions,
        })
    }

    /// Loads an endpoint the caller may manage; unknown or of another workspace → NOT_FOUND.
    async fn load(&self, caller: &Caller, id: &str) -> Result<WebhookEndpointRow, BrokerError> {
        let row = self
            .store
            .webhook_endpoint(id)
            .await?
            .ok_or_else(not_found)?;
        policy::require_owner_admin(caller, &row.workspace_id, "webhook endpoints", not_found)?;
        Ok(row)
    }

    /// [`Self::load`] for a change: configured endpoints are read-only.
    async fn load_writable(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<WebhookEndpointRow, BrokerError> {
        let row = self.load(caller, id).await?;
        if row.source != "API" {
            return Err(failed(
                reason::WEBHOOK_ENDPOINT_READ_ONLY,
                format!(
                    "webhook endpoint {id} is declared in the broker's configuration ([[webhooks]]): change it there"
                ),
            ));
        }
        Ok(row)
    }

    /// Records `result` of `action` (never a secret in `detail`).
    async fn audited<T>(
        &self,
        caller: &Caller,
        (action, write): (&str, Write),
        detail: Option<String>,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        self.audit
            .recorded(write, caller, action, None, result, detail)
            .await
    }

    async fn seal(
        &self,
        workspace: &str,
        id: &str,
        version: i64,
        now: i64,
    ) -> Result<(SecretString, cb_store::WebhookSecretRow), BrokerError> {
        let secret = generate_secret()?;
        let row =
            sealing::seal_webhook_secret(&self.envelope, workspace, id, version, &secret, now)
                .await?;
        Ok((secret, row))
    }

    /// Creates an endpoint with a generated secret, returned once.
    pub async fn create(
        &self,
        caller: &Caller,
        req: CreateEndpoint,
    ) -> Result<WithSecret, BrokerError> {
        let id = format!("{ENDPOINT_ID_PREFIX}{}", uuid::Uuid::now_v7().simple());
        let detail = format!("endpoint={id} workspace={}", req.workspace_id);
        let result = async {
            policy::require_workspace_admin(caller, req.workspace_id.as_str(), "webhook endpoints")?;
            let url = self.accept_url(&req.url)?;
            let existing = self
                .store
                .list_webhook_endpoints(req.workspace_id.as_str())
                .await?;
            if existing.len() >= MAX_ENDPOINTS_PER_WORKSPACE {
                return Err(failed(
                    reason::WEBHOOK_ENDPOINT_LIMIT,
                    format!("workspace {} already has {MAX_ENDPOINTS_PER_WORKSPACE} webhook endpoints: delete one first", req.workspace_id),
                ));
            }
            let now = self.clock.now().as_millis();
            let row = WebhookEndpointRow {
                id: id.clone(),
                workspace_id: req.workspace_id.to_string(),
                url,
                event_types: stored_kinds(&req.event_types),
                description: req.description.to_string(),
                source: "API".to_owned(),
                failing_since: None,
                disabled_at: None,
                updated_at: now,
            };
            let (secret, sealed) = self.seal(&row.workspace_id, &id, 1, now).await?;
            self.store.insert_webhook_endpoint(&row, &sealed).await?;
            Ok(WithSecret {
                endpoint: self.view(row).await?,
                secret,
            })
        }
        .await;
        self.audited(
            caller,
            ("webhook_endpoint.create", Write::Inline),
            Some(detail),
            result,
        )
        .await
    }

    /// Reads one endpoint (never its secrets).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Endpoint, BrokerError> {
        let result = async { self.view(self.load(caller, id).await?).await }.await;
        let detail = Some(format!("endpoint={id}"));
        self.audited(
            caller,
            ("webhook_endpoint.get", Write::Buffered),
            detail,
            result,
        )
        .await
    }

    /// A workspace's endpoints, configured and API-managed, by id.
    pub async fn list(
        &self,
        caller: &Caller,
        workspace: &WorkspaceId,
    ) -> Result<Vec<Endpoint>, BrokerError> {
        let result = async {
            policy::require_workspace_admin(caller, workspace.as_str(), "webhook endpoints")?;
            let rows = self
                .store
                .list_webhook_endpoints(workspace.as_str())
                .await?;
            let mut endpoints = Vec::with_capacity(rows.len());
            for row in rows {
                endpoints.push(self.view(row).await?);
            }
            Ok(endpoints)
        }
        .await;
        let detail = Some(format!("workspace={workspace}"));
        self.audited(
            caller,
            ("webhook_endpoint.list", Write::Buffered),
            detail,
            result,
        )
        .await
    }

    /// Edits an API endpoint's URL, event types or description; a new URL or `enable`
    /// re-enables a disabled endpoint and forgets its failing period.
    pub async fn update(
        &self,
        caller: &Caller,
        req: UpdateEndpoint,
    ) -> Result<Endpoint, BrokerError> {
        let detail = Some(format!("endpoint={} enable={}", req.id, req.enable));
        let result = async {
            let mut row = self.load_writable(caller, &req.id).await?;
            let mut reset = req.enable;
            if let Some(url) = &req.url {
                let url = self.accept_url(url)?;
                reset |= url != row.url;
                row.url = url;
            }
            if let Some(kinds) = &req.event_types {
                row.event_types = stored_kinds(kinds);
            }
            if let Some(d) = &req.description {
                row.description = d.to_string();
            }
            row.updated_at = self.clock.now().as_millis();
            let stored = self
                .store
                .update_webhook_endpoint(&row, reset)
                .await?
                .ok_or_else(not_found)?;
            self.view(stored).await
        }
        .await;
        self.audited(
            caller,
            ("webhook_endpoint.update", Write::Inline),
            detail,
            result,
        )
        .await
    }

    /// Deletes an API endpoint, its secrets and its delivery log: nothing more is sent to it.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), BrokerError> {
        let result = async {
            self.load_writable(caller, id).await?;
            let now = self.clock.now().as_millis();
            if self.store.delete_webhook_endpoint(id, now).await? {
                Ok(())
            } else {
                Err(not_found())
            }
        }
        .await;
        let detail = Some(format!("endpoint={id}"));
        self.audited(
            caller,
            ("webhook_endpoint.delete", Write::Inline),
            detail,
            result,
        )
        .await
    }

    /// Generates a new secret, returned once; the previous one keeps signing every delivery
    /// (two signatures) until retired. At most [`MAX_SECRETS`].
    pub async fn rotate_secret(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<WithSecret, BrokerError> {
        let result = async {
            let row = self.load_writable(caller, id).await?;
            let held = self.store.list_webhook_secrets(id).await?;
            if held.len() >= MAX_SECRETS {
                return Err(failed(
                    reason::WEBHOOK_SECRET_LIMIT,
                    format!("webhook endpoint {id} already holds {MAX_SECRETS} secrets: retire the previous one (RetireWebhookSecret) before rotating again"),
                ));
            }
            let version = held.iter().map(|s| s.version).max().unwrap_or(0) + 1;
            let now = self.clock.now().as_millis();
            let (secret, sealed) = self.seal(&row.workspace_id, id, version, now).await?;
            self.store
                .insert_webhook_secret(&sealed)
                .await
                .map_err(|e| match e {
                    StoreError::Duplicate(_) => BrokerError::Conflict {
                        message: "another rotation of this endpoint's secret ran at the same time; read it again and retry".into(),
                    },
                    other => other.into(),
                })?;
            Ok(WithSecret {
                endpoint: self.view(row).await?,
                secret,
            })
        }
        .await;
        let detail = match &result {
            Ok(w) => format!(
                "endpoint={id} secret_version={}",
                w.endpoint
                    .secret_versions
                    .first()
                    .copied()
                    .unwrap_or_default()
            ),
            Err(_) => format!("endpoint={id}"),
        };
        self.audited(
            caller,
            ("webhook_endpoint.rotate_secret", Write::Inline),
            Some(detail),
            result,
        )
        .await
    }

    /// Retires every secret but the newest: deliveries carry one signature again.
    pub async fn retire_secret(&self, caller: &Caller, id: &str) -> Result<Endpoint, BrokerError> {
        let result = async {
            let row = self.load_writable(caller, id).await?;
            let held = self.store.list_webhook_secrets(id).await?;
            if held.len() < 2 {
                return Err(failed(
                    reason::WEBHOOK_NO_PREVIOUS_SECRET,
                    format!("webhook endpoint {id} holds only its current secret: there is nothing to retire"),
                ));
            }
            for old in &held[1..] {
                self.store.delete_webhook_secret(id, old.version).await?;
            }
            self.view(row).await
        }
        .await;
        let detail = Some(format!("endpoint={id}"));
        self.audited(
            caller,
            ("webhook_endpoint.retire_secret", Write::Inline),
            detail,
            result,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_standard_webhooks_secrets_and_differ() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert!(a.expose_secret().starts_with(SECRET_PREFIX));
        assert_ne!(a.expose_secret(), b.expose_secret());
        // Parses as a signing key of 32 bytes (the dispatcher's parser requires at least 24).
        WebhookSecret::parse(a.expose_secret()).unwrap();
        let key = STANDARD
            .decode(&a.expose_secret()[SECRET_PREFIX.len()..])
            .unwrap();
        assert_eq!(key.len(), SECRET_BYTES);
    }

    #[test]
    fn event_types_round_trip_through_storage() {
        let kinds = vec![EventKind::Disconnected, EventKind::NeedsReconnect];
        let stored = stored_kinds(&kinds);
        assert_eq!(parse_stored_kinds(stored.as_deref()), kinds);
        assert_eq!(stored_kinds(&[]), None);
        assert!(parse_stored_kinds(None).is_empty());
    }

    #[test]
    fn inputs_are_checked_without_echoing_them() {
        assert!(parse_url("url", "not a url").is_err());
        let long = format!("https://example.com/{}", "a".repeat(URL_MAX));
        assert!(parse_url("url", &long).is_err());
        assert!(parse_endpoint_id("endpoint_id", "").is_err());
    }
}
