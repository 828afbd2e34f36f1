//! Proto <-> domain conversion at the boundary. Requests are parsed into domain types that cannot
//! hold invalid values; every bad field is reported at once.

use cb_broker::access::Role;
use cb_broker::audit::{AUDIT_DEFAULT_PAGE_SIZE, AUDIT_MAX_PAGE_SIZE, AuditFilter};
use cb_broker::clock::Timestamp;
use cb_broker::connect::{
    CompleteConnect, ConnectOutcome, ConnectStarted, StartConnect, StartReconnect,
};
use cb_broker::credential::{CredentialView, Status, StatusKind};
use cb_broker::events::{EVENTS_DEFAULT_PAGE_SIZE, EVENTS_MAX_PAGE_SIZE, EventFilter, WatchItem};
use cb_broker::grants::{CreatedRunGrant, MAX_CREDENTIALS_PER_GRANT, NewRunGrant};
use cb_broker::health::{EventKind, Health, HealthKind};
use cb_broker::issuance::{IssuedToken, RunGrantUse, UsageContext};
use cb_broker::service::{
    DEFAULT_PAGE_SIZE, ImportCredential, ListCredentials, MAX_PAGE_SIZE, Revocation,
    UpdateCredential,
};
use cb_broker::tokens::TokenBundle;
use cb_broker::types::{
    CredentialId, Description, DisplayName, Email, ProviderAccount, ProviderId, Scopes, Violations,
    WorkspaceId,
};
use cb_broker::{BrokerError, FieldViolation};
use cb_proto::v1 as pb;
use secrecy::SecretString;

/// Domain timestamp → protobuf.
pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let ms = t.as_millis();
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn opt_timestamp(t: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// The seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range google.protobuf.Timestamp
/// defines (RFC 3339 years 1 to 9999).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// The largest google.protobuf.Duration, in seconds (about 10,000 years either way).
const DURATION_MAX_SECONDS: i64 = 315_576_000_000;

/// Protobuf timestamp → domain, rejecting values google.protobuf.Timestamp does not define.
pub fn parse_timestamp(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<Timestamp, FieldViolation> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(FieldViolation::new(
            field,
            "is not a valid timestamp: nanos must be 0 to 999999999",
        ));
    }
    if !TIMESTAMP_SECONDS.contains(&t.seconds) {
        return Err(FieldViolation::new(
            field,
            "is not a valid timestamp: it must lie between the years 1 and 9999",
        ));
    }
    // Within the range above the product cannot overflow.
    Ok(Timestamp::from_millis(
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
    ))
}

/// Protobuf duration → a non-negative std duration, rejecting values google.protobuf.Duration
/// does not define (nanos beyond ±999999999, nanos of the other sign than seconds, beyond
/// ±10,000 years).
pub fn parse_duration(
    field: &str,
    d: &prost_types::Duration,
) -> Result<std::time::Duration, FieldViolation> {
    if !(-999_999_999..=999_999_999).contains(&d.nanos) {
        return Err(FieldViolation::new(
            field,
            "is not a valid duration: nanos must be within -999999999 to 999999999",
        ));
    }
    if (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
        return Err(FieldViolation::new(
            field,
            "is not a valid duration: seconds and nanos must have the same sign",
        ));
    }
    if !(-DURATION_MAX_SECONDS..=DURATION_MAX_SECONDS).contains(&d.seconds) {
        return Err(FieldViolation::new(
            field,
            "is not a valid duration: it must be within 10,000 years",
        ));
    }
    match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
        (Ok(secs), Ok(nanos)) => Ok(std::time::Duration::new(secs, nanos)),
        _ => Err(FieldViolation::new(field, "must not be negative")),
    }
}

/// Domain role → protobuf enum.
pub fn role(r: Role) -> pb::MemberRole {
    match r {
        Role::Admin => pb::MemberRole::Admin,
        Role::Member => pb::MemberRole::Member,
    }
}

/// Protobuf role → domain, rejecting UNSPECIFIED and unknown values.
pub fn parse_role(field: &str, raw: i32) -> Result<Role, FieldViolation> {
    match pb::MemberRole::try_from(raw) {
        Ok(pb::MemberRole::Admin) => Ok(Role::Admin),
        Ok(pb::MemberRole::Member) => Ok(Role::Member),
        _ => Err(FieldViolation::new(
            field,
            "must be MEMBER_ROLE_ADMIN or MEMBER_ROLE_MEMBER",
        )),
    }
}

/// Credential metadata for a response. Never includes token material.
pub fn credential(v: &CredentialView) -> pb::Credential {
    let c = &v.credential;
    let (status, reason) = match &c.status {
        Status::Active => (pb::CredentialStatus::Active, String::new()),
        Status::NeedsReconnect { reason } => (pb::CredentialStatus::NeedsReconnect, reason.clone()),
        Status::Disconnected => (pb::CredentialStatus::Disconnected, String::new()),
    };
    pb::Credential {
        credential_id: c.id.to_string(),
        workspace_id: c.workspace_id.clone(),
        provider_id: c.provider_id.clone(),
        account: Some(pb::ProviderAccount {
            subject: c.account.subject.clone(),
            label: c.account.label.clone(),
        }),
        display_name: c.display_name.to_string(),
        description: c.description.to_string(),
        granted_scopes: c.scopes.as_slice().to_vec(),
        status: status as i32,
        status_reason: reason,
        created_by: c.created_by.clone(),
        create_time: Some(timestamp(c.created_at)),
        update_time: Some(timestamp(c.updated_at)),
        last_used_time: opt_timestamp(c.last_used_at),
        last_refresh_time: opt_timestamp(c.last_refreshed_at),
        access_token_expire_time: opt_timestamp(c.access_expires_at),
        has_refresh_token: c.has_refresh_token,
        caller_role: v.caller_role.map_or(pb::MemberRole::Unspecified, role) as i32,
        version: c.version,
        recent_workflows: Vec::new(),
        workflow_count: 0,
        health: Some(health(&c.health)),
        // GetCredential only.
        oauth_app_id: String::new(),
        oauth_app_secret_version: 0,
    }
}

/// The protobuf name of a health is its stored name with the enum prefix.
const HEALTH_PREFIX: &str = "CREDENTIAL_HEALTH_";

/// Health with its cause for a response (never a token).
fn health(h: &Health) -> pb::CredentialHealthInfo {
    let kind = pb::CredentialHealth::from_str_name(&format!("{HEALTH_PREFIX}{}", h.kind.as_str()))
        .unwrap_or(pb::CredentialHealth::Unspecified);
    pb::CredentialHealthInfo {
        health: kind as i32,
        cause: h.cause.clone().unwrap_or_default(),
        since_time: opt_timestamp(h.since),
        failure_count: h.failures,
        last_error_code: h.error_code.clone().unwrap_or_default(),
    }
}

/// A health filter: `None` for UNSPECIFIED.
fn health_filter(raw: i32, v: &mut Violations) -> Option<HealthKind> {
    let parsed = pb::CredentialHealth::try_from(raw)
        .ok()
        .filter(|h| *h != pb::CredentialHealth::Unspecified)
        .and_then(|h| {
            h.as_str_name()
                .strip_prefix(HEALTH_PREFIX)
                .and_then(HealthKind::from_stored)
        });
    if parsed.is_none() && raw != 0 {
        v.push(FieldViolation::new(
            "health",
            format!("{raw} is not a credential health"),
        ));
    }
    parsed
}

/// Revocation outcome → protobuf enum and detail.
pub fn revocation(r: &Revocation) -> (pb::RevocationOutcome, String) {
    match r {
        Revocation::Revoked => (pb::RevocationOutcome::Revoked, String::new()),
        Revocation::NotSupported(d) => (pb::RevocationOutcome::NotSupported, d.clone()),
        Revocation::Failed(d) => (pb::RevocationOutcome::Failed, d.clone()),
        Revocation::Skipped(d) => (pb::RevocationOutcome::Skipped, d.clone()),
    }
}

/// Parses a credential id field.
pub fn credential_id(field: &str, raw: &str) -> Result<CredentialId, BrokerError> {
    CredentialId::parse(field, raw).map_err(|v| BrokerError::InvalidArgument(vec![v]))
}

/// An optional timestamp field: `None` when absent or invalid (then recorded in `v`).
fn optional_timestamp(
    field: &str,
    raw: Option<&prost_types::Timestamp>,
    v: &mut Violations,
) -> Option<Timestamp> {
    raw.and_then(|t| v.check(parse_timestamp(field, t)))
}

fn page_size(field: &str, raw: i32, v: &mut Violations) -> u32 {
    page_size_within(field, raw, (DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), v)
}

/// A page size: 0 is `default`, larger than `max` is `max`, negative is a violation.
fn page_size_within(field: &str, raw: i32, (default, max): (u32, u32), v: &mut Violations) -> u32 {
    match raw {
        0 => default,
        n if n < 0 => {
            v.push(FieldViolation::new(field, "must not be negative"));
            default
        }
        n => u32::try_from(n).unwrap_or(max).min(max),
    }
}

fn secret(field: &str, raw: &str, required: bool, v: &mut Violations) -> Option<SecretString> {
    if raw.is_empty() {
        if required {
            v.push(FieldViolation::new(field, "must not be empty"));
        }
        return None;
    }
    if raw.len() > 16 * 1024 || raw.chars().any(char::is_control) {
        v.push(FieldViolation::new(
            field,
            "must be at most 16 KiB without control characters",
        ));
        return None;
    }
    Some(SecretString::from(raw))
}

fn token_bundle(t: Option<&pb::TokenSet>, v: &mut Violations) -> Option<TokenBundle> {
    let Some(t) = t else {
        v.push(FieldViolation::new("tokens", "is required"));
        return None;
    };
    let access = secret("tokens.access_token", &t.access_token, true, v);
    let refresh = secret("tokens.refresh_token", &t.refresh_token, false, v);
    let id_token = secret("tokens.id_token", &t.id_token, false, v);
    let token_type = if t.token_type.is_empty() {
        "Bearer".to_owned()
    } else {
        t.token_type.clone()
    };
    if token_type.len() > 32
        || !token_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        v.push(FieldViolation::new(
            "tokens.token_type",
            "must be a short token type such as Bearer",
        ));
    }
    let access_exp = optional_timestamp(
        "tokens.access_token_expire_time",
        t.access_token_expire_time.as_ref(),
        v,
    );
    let refresh_exp = optional_timestamp(
        "tokens.refresh_token_expire_time",
        t.refresh_token_expire_time.as_ref(),
        v,
    );
    if t.provider_extras.len() > 32
        || t.provider_extras
            .iter()
            .any(|(k, val)| k.is_empty() || k.len() > 64 || val.len() > 2048)
    {
        v.push(FieldViolation::new(
            "tokens.provider_extras",
            "must hold at most 32 entries with keys of 1-64 and values of at most 2048 characters",
        ));
    }
    Some(TokenBundle {
        access_token: access?,
        refresh_token: refresh,
        id_token,
        token_type,
        access_expires_at: access_exp,
        refresh_expires_at: refresh_exp,
        // An imported token's issue time is unknown, so its lifetime is too.
        obtained_at: None,
        extras: t.provider_extras.clone().into_iter().collect(),
    })
}

/// An optional `oauth_app_id` field: empty → `None`.
fn optional_app_id(raw: &str, v: &mut Violations) -> Option<String> {
    if raw.is_empty() {
        None
    } else {
        v.check(cb_broker::oauth_apps::parse_app_id("oauth_app_id", raw))
    }
}

impl TryFrom<pb::ImportCredentialRequest> for Importable {
    type Error = BrokerError;
    fn try_from(r: pb::ImportCredentialRequest) -> Result<Self, BrokerError> {
        let mut v = Violations::default();
        let workspace_id = v.check(WorkspaceId::parse("workspace_id", &r.workspace_id));
        let provider_id = v.check(ProviderId::parse("provider_id", &r.provider_id));
        let account = match &r.account {
            Some(a) => v.check_many(ProviderAccount::parse("account", &a.subject, &a.label)),
            None => {
                v.push(FieldViolation::new("account", "is required"));
                None
            }
        };
        let display_name = v.check(DisplayName::parse("display_name", &r.display_name));
        let description = v.check(Description::parse("description", &r.description));
        let scopes = v.check(Scopes::parse("granted_scopes", &r.granted_scopes));
        let tokens = token_bundle(r.tokens.as_ref(), &mut v);
        let admin_email = if r.admin_email.is_empty() {
            None
        } else {
            v.check(Email::parse("admin_email", &r.admin_email))
        };
        let oauth_app_id = optional_app_id(&r.oauth_app_id, &mut v);
        v.finish()?;
        Ok(Self(ImportCredential {
            workspace_id: parsed(workspace_id)?,
            provider_id: parsed(provider_id)?,
            account: parsed(account)?,
            display_name: parsed(display_name)?,
            description: parsed(description)?,
            scopes: parsed(scopes)?,
            tokens: parsed(tokens)?,
            admin_email,
            oauth_app_id,
        }))
    }
}

/// A parsed ImportCredential request.
pub struct Importable(pub ImportCredential);

/// A parsed ListCredentials request.
pub struct Listable(pub ListCredentials);

impl TryFrom<pb::ListCredentialsRequest> for Listable {
    type Error = BrokerError;
    fn try_from(r: pb::ListCredentialsRequest) -> Result<Self, BrokerError> {
        let mut v = Violations::default();
        let workspace_id = v.check(WorkspaceId::parse("workspace_id", &r.workspace_id));
        let provider_id = if r.provider_id.is_empty() {
            None
        } else {
            v.check(ProviderId::parse("provider_id", &r.provider_id))
        };
        let page_size = page_size("page_size", r.page_size, &mut v);
        let health = health_filter(r.health, &mut v);
        let mut statuses = Vec::new();
        for (i, raw) in r.statuses.iter().enumerate() {
            match pb::CredentialStatus::try_from(*raw) {
                Ok(pb::CredentialStatus::Active) => statuses.push(StatusKind::Active),
                Ok(pb::CredentialStatus::NeedsReconnect) => {
                    statuses.push(StatusKind::NeedsReconnect)
                }
                Ok(pb::CredentialStatus::Disconnected) => statuses.push(StatusKind::Disconnected),
                _ => v.push(FieldViolation::new(
                    format!("statuses[{i}]"),
                    format!("{raw} is not a credential status"),
                )),
            }
        }
        if r.page_token.len() > 1024 {
            v.push(FieldViolation::new(
                "page_token",
                "is not a token from a previous response to this query",
            ));
        }
        v.finish()?;
        Ok(Self(ListCredentials {
            workspace_id: parsed(workspace_id)?,
            provider_id,
            page_size,
            page_token: (!r.page_token.is_empty()).then_some(r.page_token),
            include_disconnected: r.include_disconnected,
            statuses,
            health,
        }))
    }
}

/// A field that was checked: once the violations are finished it is there, `None` is a parser bug.
pub fn parsed<T>(value: Option<T>) -> Result<T, BrokerError> {
    value.ok_or_else(|| BrokerError::Internal("request parse inconsistency".into()))
}

/// A parsed UpdateCredential request.
pub struct Updatable(pub UpdateCredential);

impl TryFrom<pb::UpdateCredentialRequest> for Updatable {
    type Error = BrokerError;
    fn try_from(r: pb::UpdateCredentialRequest) -> Result<Self, BrokerError> {
        let mut v = Violations::default();
        let Some(c) = r.credential else {
            return Err(BrokerError::invalid("credential", "is required"));
        };
        let id = v.check(CredentialId::parse(
            "credential.credential_id",
            &c.credential_id,
        ));
        // AIP-134: without an update_mask, every populated updatable field is updated.
        let paths = match r.update_mask {
            Some(m) => m.paths,
            None => [
                ("display_name", &c.display_name),
                ("description", &c.description),
            ]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(path, _)| path.to_owned())
            .collect(),
        };
        if paths.is_empty() {
            v.push(FieldViolation::new(
                "update_mask",
                "must name at least one field: display_name, description",
            ));
        }
        let mut display_name = None;
        let mut description = None;
        for (i, p) in paths.iter().enumerate() {
            match p.as_str() {
                "display_name" => {
                    display_name = v.check(DisplayName::parse(
                        "credential.display_name",
                        &c.display_name,
                    ))
                }
                "description" => {
                    description =
                        v.check(Description::parse("credential.description", &c.description))
                }
                other => v.push(FieldViolation::new(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{other:?} cannot be updated; updatable fields: display_name, description"
                    ),
                )),
            }
        }
        if c.version < 0 {
            v.push(FieldViolation::new(
                "credential.version",
                "must not be negative",
            ));
        }
        v.finish()?;
        Ok(Self(UpdateCredential {
            id: parsed(id)?,
            display_name,
            description,
            expected_version: (c.version > 0).then_some(c.version),
        }))
    }
}

/// Parses a ListAuditEvents request.
pub fn audit_filter(r: &pb::ListAuditEventsRequest) -> Result<AuditFilter, BrokerError> {
    let mut v = Violations::default();
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    if !r.credential_id.is_empty() {
        v.check(CredentialId::parse("credential_id", &r.credential_id));
    }
    for (field, value) in [
        ("actor", &r.actor),
        ("action", &r.action),
        ("outcome", &r.outcome),
    ] {
        if value.len() > 128 || value.chars().any(char::is_control) {
            v.push(FieldViolation::new(
                field,
                "must be at most 128 characters without control characters",
            ));
        }
    }
    let start = optional_timestamp("start_time", r.start_time.as_ref(), &mut v);
    let end = optional_timestamp("end_time", r.end_time.as_ref(), &mut v);
    let page_size = page_size_within(
        "page_size",
        r.page_size,
        (AUDIT_DEFAULT_PAGE_SIZE, AUDIT_MAX_PAGE_SIZE),
        &mut v,
    );
    v.finish()?;
    Ok(AuditFilter {
        credential_id: non_empty(&r.credential_id),
        actor: non_empty(&r.actor),
        action: non_empty(&r.action),
        outcome: non_empty(&r.outcome),
        start,
        end,
        page_size,
        page_token: non_empty(&r.page_token),
    })
}

/// The protobuf name of an event type is its stored name, uppercase, with the enum prefix.
const EVENT_TYPE_PREFIX: &str = "CREDENTIAL_EVENT_TYPE_";

/// Parses event type filters.
pub fn event_kinds(field: &str, raw: &[i32], v: &mut Violations) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let kind = pb::CredentialEventType::try_from(*t).ok().and_then(|t| {
            t.as_str_name()
                .strip_prefix(EVENT_TYPE_PREFIX)
                .and_then(|k| EventKind::parse(&k.to_ascii_lowercase()))
        });
        match kind {
            Some(k) => kinds.push(k),
            None => v.push(FieldViolation::new(
                format!("{field}[{i}]"),
                format!("{t} is not a credential event type"),
            )),
        }
    }
    kinds
}

/// A workspace id filter: `None` when empty.
fn workspace_filter(raw: &str, v: &mut Violations) -> Option<WorkspaceId> {
    (!raw.is_empty())
        .then(|| v.check(WorkspaceId::parse("workspace_id", raw)))
        .flatten()
}

/// An optional `workspace_id` field (ListProviders): `None` when empty.
pub fn optional_workspace(raw: &str) -> Result<Option<WorkspaceId>, BrokerError> {
    let mut v = Violations::default();
    let workspace = workspace_filter(raw, &mut v);
    v.finish()?;
    Ok(workspace)
}

/// Parses a ListCredentialEvents request.
pub fn event_list_filter(r: &pb::ListCredentialEventsRequest) -> Result<EventFilter, BrokerError> {
    let mut v = Violations::default();
    let workspace_id = workspace_filter(&r.workspace_id, &mut v);
    let credential_id = (!r.credential_id.is_empty())
        .then(|| v.check(CredentialId::parse("credential_id", &r.credential_id)))
        .flatten();
    let kinds = event_kinds("types", &r.types, &mut v);
    let (page_size, after) = id_page(r.page_size, &r.page_token, &mut v);
    v.finish()?;
    Ok(EventFilter {
        workspace_id,
        credential_id,
        kinds,
        after,
        page_size,
    })
}

/// The page size (default 100, at most 1000) and the id after which a page starts: the page
/// token, which is the last id of the previous page (empty: 0, from the start).
fn id_page(page_size: i32, page_token: &str, v: &mut Violations) -> (u32, i64) {
    let size = page_size_within(
        "page_size",
        page_size,
        (EVENTS_DEFAULT_PAGE_SIZE, EVENTS_MAX_PAGE_SIZE),
        v,
    );
    let after = match page_token {
        "" => 0,
        t => match t.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                v.push(FieldViolation::new(
                    "page_token",
                    "is not a token from a previous response",
                ));
                0
            }
        },
    };
    (size, after)
}

/// Parses a ListWebhookDeliveries request: endpoint id, after id, page size.
pub fn delivery_page(
    r: &pb::ListWebhookDeliveriesRequest,
) -> Result<(String, i64, u32), BrokerError> {
    let mut v = Violations::default();
    if r.endpoint_id.is_empty() || r.endpoint_id.len() > 200 {
        v.push(FieldViolation::new(
            "endpoint_id",
            "must be 1 to 200 characters",
        ));
    }
    let (page_size, after) = id_page(r.page_size, &r.page_token, &mut v);
    v.finish()?;
    Ok((r.endpoint_id.clone(), after, page_size))
}

/// One row of a delivery log (never a payload or a secret).
pub fn webhook_delivery(d: cb_store::DeliveryRow) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        delivery_id: d.id,
        event_cursor: d.event_row_id,
        credential_id: d.credential_id,
        delivered: d.state == "DELIVERED",
        attempts: d.attempts,
        last_http_status: d
            .last_status
            .and_then(|s| i32::try_from(s).ok())
            .unwrap_or_default(),
        last_error: d.last_error.unwrap_or_default(),
        deliver_time: d.delivered_at.map(|t| timestamp(Timestamp::from_millis(t))),
        next_attempt_time: (d.state != "DELIVERED")
            .then(|| timestamp(Timestamp::from_millis(d.next_attempt_at))),
    }
}

/// Parses a WatchCredentialEvents request; also whether to start at the end of the log.
pub fn event_watch_filter(
    r: &pb::WatchCredentialEventsRequest,
) -> Result<(EventFilter, bool), BrokerError> {
    let mut v = Violations::default();
    let workspace_id = workspace_filter(&r.workspace_id, &mut v);
    let kinds = event_kinds("types", &r.types, &mut v);
    if r.after_cursor < 0 {
        v.push(FieldViolation::new("after_cursor", "must not be negative"));
    }
    v.finish()?;
    let filter = EventFilter {
        workspace_id,
        credential_id: None,
        kinds,
        after: r.after_cursor,
        page_size: 0,
    };
    Ok((filter, r.start_at_end))
}

/// The protobuf value of a stored event type name.
pub fn event_type(kind: &str) -> i32 {
    pb::CredentialEventType::from_str_name(&format!(
        "{EVENT_TYPE_PREFIX}{}",
        kind.to_ascii_uppercase()
    ))
    .unwrap_or(pb::CredentialEventType::Unspecified) as i32
}

/// A lifecycle event for a response (never a secret: the log holds none).
pub fn credential_event(row: cb_store::CredentialEventRow) -> pb::CredentialEvent {
    let r = row.event;
    let kind = event_type(&r.kind);
    pb::CredentialEvent {
        event_id: r.event_id,
        cursor: row.id,
        event_time: Some(timestamp(Timestamp::from_millis(r.at))),
        workspace_id: r.workspace_id,
        credential_id: r.credential_id.unwrap_or_default(),
        r#type: kind,
        actor: r.actor.unwrap_or_default(),
        cause: r.cause.unwrap_or_default(),
        detail: r.detail.unwrap_or_default(),
    }
}

/// One message of a watch.
pub fn watch_item(item: WatchItem) -> pb::WatchCredentialEventsResponse {
    use pb::watch_credential_events_response::Message;
    let message = match item {
        WatchItem::Event(row) => Message::Event(credential_event(row)),
        WatchItem::Heartbeat { cursor, at } => Message::Heartbeat(pb::Heartbeat {
            cursor,
            heartbeat_time: Some(timestamp(at)),
        }),
    };
    pb::WatchCredentialEventsResponse {
        message: Some(message),
    }
}

/// An audit row for a response.
pub fn audit_event(r: cb_store::AuditRow) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: r.id,
        time: Some(timestamp(Timestamp::from_millis(r.at))),
        service: r.service,
        actor: r.actor.unwrap_or_default(),
        action: r.action,
        credential_id: r.credential_id.unwrap_or_default(),
        outcome: r.outcome,
        detail: r.detail.unwrap_or_default(),
    }
}

fn scope(s: &cb_broker::gateway::ScopeInfo) -> pb::Scope {
    pb::Scope {
        name: s.name.clone(),
        description: s.description.clone(),
        default_selected: s.default_selected,
    }
}

/// A catalog entry for a response.
pub fn provider(p: &cb_broker::gateway::ProviderInfo) -> pb::Provider {
    pb::Provider {
        provider_id: p.id.clone(),
        display_name: p.display_name.clone(),
        icon_url: p.icon_url.clone(),
        category: p.category.clone(),
        configured: p.configured,
        missing_settings: p.missing_settings.clone(),
        scopes: p.scopes.iter().map(scope).collect(),
        supports_revocation: p.supports_revocation,
        custom: p.custom,
        verified: Some(p.verified),
        workspace_id: p.workspace_id.clone().unwrap_or_default(),
    }
}

fn redirect_uri(field: &str, raw: &str, v: &mut Violations) -> String {
    if raw.is_empty()
        || raw.len() > 2048
        || raw.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        v.push(FieldViolation::new(
            field,
            "must be one of the configured redirect URIs",
        ));
    }
    raw.to_owned()
}

/// Parses StartConnect.
pub fn start_connect(r: pb::StartConnectRequest) -> Result<StartConnect, BrokerError> {
    let mut v = Violations::default();
    let workspace_id = v.check(WorkspaceId::parse("workspace_id", &r.workspace_id));
    let provider_id = v.check(ProviderId::parse("provider_id", &r.provider_id));
    let scopes = v.check(Scopes::parse("scopes", &r.scopes));
    let redirect_uri = redirect_uri("redirect_uri", &r.redirect_uri, &mut v);
    let display_name = if r.display_name.is_empty() {
        None
    } else {
        v.check(DisplayName::parse("display_name", &r.display_name))
    };
    let description = if r.description.is_empty() {
        None
    } else {
        v.check(Description::parse("description", &r.description))
    };
    let oauth_app_id = optional_app_id(&r.oauth_app_id, &mut v);
    v.finish()?;
    Ok(StartConnect {
        workspace_id: parsed(workspace_id)?,
        provider_id: parsed(provider_id)?,
        scopes: parsed(scopes)?,
        redirect_uri,
        display_name,
        description,
        oauth_app_id,
    })
}

/// Parses StartReconnect.
pub fn start_reconnect(r: pb::StartReconnectRequest) -> Result<StartReconnect, BrokerError> {
    let mut v = Violations::default();
    let id = v.check(CredentialId::parse("credential_id", &r.credential_id));
    let scopes = v.check(Scopes::parse("scopes", &r.scopes));
    let redirect_uri = redirect_uri("redirect_uri", &r.redirect_uri, &mut v);
    v.finish()?;
    Ok(StartReconnect {
        id: parsed(id)?,
        redirect_uri,
        scopes: parsed(scopes)?,
    })
}

/// Parses CompleteConnect.
pub fn complete_connect(r: pb::CompleteConnectRequest) -> Result<CompleteConnect, BrokerError> {
    let mut v = Violations::default();
    if r.state.is_empty() || r.state.len() > 256 {
        v.push(FieldViolation::new(
            "state",
            "must be the state returned by StartConnect",
        ));
    }
    if r.code.is_empty() && r.error.is_empty() {
        v.push(FieldViolation::new(
            "code",
            "is required when error is not set",
        ));
    }
    if r.callback_params.len() > 16
        || r.callback_params
            .iter()
            .any(|(k, v)| k.len() > 64 || v.len() > 512)
    {
        v.push(FieldViolation::new(
            "callback_params",
            "must hold at most 16 short parameters",
        ));
    }
    if r.code.len() > 4096 || r.error.len() > 256 || r.error_description.len() > 2048 {
        v.push(FieldViolation::new("code", "is too long"));
    }
    if r.iss.len() > 512 || r.iss.chars().any(char::is_control) {
        v.push(FieldViolation::new(
            "iss",
            "must be the redirect's iss parameter (at most 512 printable characters)",
        ));
    }
    // `iss` counts wherever it comes (its field or the other callback parameters): two
    // different values are refused rather than one of them silently chosen.
    let mut params: std::collections::BTreeMap<String, String> =
        r.callback_params.into_iter().collect();
    let iss = match (
        (!r.iss.is_empty()).then_some(r.iss),
        params.remove("iss").filter(|i| !i.is_empty()),
    ) {
        (Some(field), Some(param)) if field != param => {
            v.push(FieldViolation::new(
                "callback_params",
                "holds an iss different from the iss field",
            ));
            None
        }
        (field, param) => field.or(param),
    };
    v.finish()?;
    Ok(CompleteConnect {
        state: r.state,
        code: (!r.code.is_empty()).then(|| SecretString::from(r.code)),
        error: (!r.error.is_empty()).then_some(r.error),
        error_description: (!r.error_description.is_empty()).then_some(r.error_description),
        params,
        iss,
    })
}

/// A started connect flow for a response.
pub fn started(
    s: ConnectStarted,
) -> (
    String,
    String,
    Vec<pb::Scope>,
    Option<prost_types::Timestamp>,
) {
    (
        s.authorization_url,
        s.state,
        s.requested_scopes.iter().map(scope).collect(),
        Some(timestamp(s.expires_at)),
    )
}

/// The connect outcome enum.
pub fn connect_outcome(o: ConnectOutcome) -> pb::ConnectOutcome {
    match o {
        ConnectOutcome::Created => pb::ConnectOutcome::Created,
        ConnectOutcome::UpdatedExisting => pb::ConnectOutcome::UpdatedExisting,
        ConnectOutcome::Reconnected => pb::ConnectOutcome::Reconnected,
    }
}

/// Parses `min_valid_for` (absent: the broker's default).
pub fn min_valid_for(
    d: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, BrokerError> {
    d.map(|d| parse_duration("min_valid_for", d))
        .transpose()
        .map_err(|v| BrokerError::InvalidArgument(vec![v]))
}

/// A workflow, block or execution id: `None` when empty; at most 128 characters without spaces.
fn run_context_id(name: &str, raw: &str, v: &mut Violations) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    if raw.len() > 128 || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        v.push(FieldViolation::new(
            name,
            "must be at most 128 characters without spaces",
        ));
        return None;
    }
    Some(raw.to_owned())
}

/// Parses the optional workflow context of GetAccessToken, with the run grant presented (if
/// any) and whether the caller must present one.
pub fn usage_context(
    r: &pb::GetAccessTokenRequest,
    run_grant: RunGrantUse,
) -> Result<UsageContext, BrokerError> {
    let mut v = Violations::default();
    let ctx = UsageContext {
        workflow_id: run_context_id("workflow_id", &r.workflow_id, &mut v),
        block_id: run_context_id("block_id", &r.block_id, &mut v),
        execution_id: run_context_id("execution_id", &r.execution_id, &mut v),
        run_grant,
    };
    v.finish()?;
    Ok(ctx)
}

/// Parses CreateRunGrant.
pub fn new_run_grant(r: pb::CreateRunGrantRequest) -> Result<NewRunGrant, BrokerError> {
    let mut v = Violations::default();
    let mut ids: Vec<CredentialId> = Vec::new();
    for (i, raw) in r.credential_ids.iter().enumerate() {
        if let Some(id) = v.check(CredentialId::parse(&format!("credential_ids[{i}]"), raw))
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    if r.credential_ids.is_empty() || r.credential_ids.len() > MAX_CREDENTIALS_PER_GRANT {
        v.push(FieldViolation::new(
            "credential_ids",
            format!("must name 1 to {MAX_CREDENTIALS_PER_GRANT} credentials"),
        ));
    }
    let mut required = |name: &str, raw: &str| {
        let id = run_context_id(name, raw, &mut v);
        if raw.is_empty() {
            v.push(FieldViolation::new(name, "must not be empty"));
        }
        id.unwrap_or_default()
    };
    let workflow_id = required("workflow_id", &r.workflow_id);
    let execution_id = required("execution_id", &r.execution_id);
    let lifetime = r
        .lifetime
        .as_ref()
        .and_then(|d| v.check(parse_duration("lifetime", d)));
    v.finish()?;
    Ok(NewRunGrant {
        credential_ids: ids,
        workflow_id,
        execution_id,
        lifetime,
    })
}

/// A created run grant for the response: the only place a grant leaves the broker.
pub fn created_run_grant(g: CreatedRunGrant) -> pb::CreateRunGrantResponse {
    use secrecy::ExposeSecret;
    pb::CreateRunGrantResponse {
        run_grant: g.grant.expose_secret().to_owned(),
        run_grant_id: g.id,
        expire_time: Some(timestamp(g.expires_at)),
    }
}

/// An issued token for the GetAccessToken response: the only place a token leaves the broker.
pub fn issued(t: IssuedToken) -> pb::GetAccessTokenResponse {
    use secrecy::ExposeSecret;
    pb::GetAccessTokenResponse {
        access_token: t.access_token().expose_secret().to_owned(),
        token_type: t.token_type().to_owned(),
        expire_time: opt_timestamp(t.expires_at()),
        granted_scopes: t.scopes().map(str::to_owned).collect(),
        provider_extras: t
            .extras()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}
