//! Proto <-> domain conversion at the boundary. Requests are parsed into domain types that cannot
//! hold invalid values; every bad field is reported at once.

use cb_broker::access::Role;
use cb_broker::clock::Timestamp;
use cb_broker::credential::{CredentialView, Status, StatusKind};
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

/// Protobuf timestamp → domain, rejecting out-of-range values.
pub fn parse_timestamp(
    field: &str,
    t: &prost_types::Timestamp,
) -> Result<Timestamp, FieldViolation> {
    let ms = t
        .seconds
        .checked_mul(1000)
        .and_then(|s| s.checked_add(i64::from(t.nanos) / 1_000_000))
        .filter(|_| (0..1_000_000_000).contains(&t.nanos));
    ms.map(Timestamp::from_millis)
        .ok_or_else(|| FieldViolation::new(field, "is not a valid timestamp"))
}

/// Domain role → protobuf enum.
pub fn role(r: Role) -> pb::MemberRole {
    match r {
        Role::Admin => pb::MemberRole::Admin,
        Role::Member => pb::MemberRole::Member,
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
    }
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

fn page_size(field: &str, raw: i32, v: &mut Violations) -> u32 {
    match raw {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => {
            v.push(FieldViolation::new(field, "must not be negative"));
            DEFAULT_PAGE_SIZE
        }
        n => u32::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
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
    let access_exp = t
        .access_token_expire_time
        .as_ref()
        .and_then(|ts| v.check(parse_timestamp("tokens.access_token_expire_time", ts)));
    let refresh_exp = t
        .refresh_token_expire_time
        .as_ref()
        .and_then(|ts| v.check(parse_timestamp("tokens.refresh_token_expire_time", ts)));
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
        extras: t.provider_extras.clone().into_iter().collect(),
    })
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
        v.finish()?;
        match (
            workspace_id,
            provider_id,
            account,
            display_name,
            description,
            scopes,
            tokens,
        ) {
            (
                Some(workspace_id),
                Some(provider_id),
                Some(account),
                Some(display_name),
                Some(description),
                Some(scopes),
                Some(tokens),
            ) => Ok(Self(ImportCredential {
                workspace_id,
                provider_id,
                account,
                display_name,
                description,
                scopes,
                tokens,
                admin_email,
            })),
            _ => Err(BrokerError::Internal("request parse inconsistency".into())),
        }
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
        let Some(workspace_id) = workspace_id else {
            return Err(BrokerError::Internal("request parse inconsistency".into()));
        };
        Ok(Self(ListCredentials {
            workspace_id,
            provider_id,
            page_size,
            page_token: (!r.page_token.is_empty()).then_some(r.page_token),
            include_disconnected: r.include_disconnected,
            statuses,
        }))
    }
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
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
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
        let Some(id) = id else {
            return Err(BrokerError::Internal("request parse inconsistency".into()));
        };
        Ok(Self(UpdateCredential {
            id,
            display_name,
            description,
            expected_version: (c.version > 0).then_some(c.version),
        }))
    }
}
