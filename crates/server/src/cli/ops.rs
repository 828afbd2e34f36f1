//! Operator commands of the binary: `providers` (the catalog and what each provider still needs)
//! and `credentials show|list` (metadata straight from the configured database). They print no
//! secret: no token, no ciphertext, no wrapped key, no client secret.

use crate::runtime::config::{Config, EnvSource};
use crate::runtime::error::StartupError;
use crate::runtime::providers::OAuthGateway;
use cb_broker::gateway::ProviderGateway;
use cb_store::{CredentialRow, StatusQuery, Store};
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;

/// Output format of the operator commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns / `key: value` lines.
    Text,
    /// One JSON document.
    Json,
}

fn io(e: std::io::Error) -> StartupError {
    StartupError::Command(format!("cannot write the output: {e}"))
}

/// `credential-broker providers [--check]`: every provider of the catalog (built in and
/// `custom_providers`), whether its client is configured and which settings are missing. With
/// `check`, fails when a provider named in the config (`[providers.X]` or `custom_providers`)
/// is not fully configured.
pub fn providers_command(
    config: &Config,
    env: &dyn EnvSource,
    check: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), StartupError> {
    let gateway = OAuthGateway::from_config(config, env).map_err(StartupError::Providers)?;
    let providers = gateway.list();
    let named: BTreeSet<&str> = config
        .providers
        .keys()
        .map(String::as_str)
        .chain(config.custom_providers.iter().map(|p| p.id.as_str()))
        .collect();
    match format {
        Format::Json => {
            let list: Vec<_> = providers
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "id": p.id,
                        "display_name": p.display_name,
                        "configured": p.configured,
                        "custom": p.custom,
                        "named_in_config": named.contains(p.id.as_str()),
                        "missing_settings": p.missing_settings,
                        "supports_revocation": p.supports_revocation,
                        "verified": p.verified,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::Value::Array(list)).map_err(io)?;
        }
        Format::Text => {
            let width = providers
                .iter()
                .map(|p| p.id.len())
                .max()
                .unwrap_or(2)
                .max(2);
            writeln!(
                out,
                "{:width$}  {:10}  {:8}  {:8}  MISSING",
                "ID", "CONFIGURED", "SOURCE", "VERIFIED"
            )
            .map_err(io)?;
            for p in &providers {
                let source = if p.custom { "config" } else { "catalog" };
                writeln!(
                    out,
                    "{:width$}  {:10}  {:8}  {:8}  {}",
                    p.id,
                    if p.configured { "yes" } else { "no" },
                    source,
                    if p.verified { "yes" } else { "no" },
                    p.missing_settings.join(", ")
                )
                .map_err(io)?;
            }
            let configured = providers.iter().filter(|p| p.configured).count();
            let unverified = providers.iter().filter(|p| !p.verified).count();
            writeln!(
                out,
                "{} providers, {configured} configured, {unverified} unverified",
                providers.len()
            )
            .map_err(io)?;
        }
    }
    if check {
        let problems: Vec<String> = providers
            .iter()
            .filter(|p| named.contains(p.id.as_str()) && !p.configured)
            .map(|p| format!("{}: missing {}", p.id, p.missing_settings.join(" and ")))
            .collect();
        if !problems.is_empty() {
            return Err(StartupError::Command(format!(
                "{} provider(s) named in the configuration are not usable:\n  - {}",
                problems.len(),
                problems.join("\n  - ")
            )));
        }
    }
    Ok(())
}

/// Opens the configured database WITHOUT migrating it (inspection must not change a schema).
async fn open_read(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    cb_store::open(config.database.url.expose(), 2)
        .await
        .map_err(|source| StartupError::Database {
            url: config.database.url.redacted(),
            source,
        })
}

fn db_err(config: &Config) -> impl Fn(cb_store::StoreError) -> StartupError + '_ {
    |source| StartupError::Database {
        url: config.database.url.redacted(),
        source,
    }
}

/// Unix milliseconds as RFC 3339 UTC.
fn time(ms: i64) -> String {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
    .to_string()
}

fn opt_time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), time)
}

/// The metadata of one credential, as JSON (never the sealed columns' bytes).
fn credential_json(c: &CredentialRow) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "workspace_id": c.workspace_id,
        "provider_id": c.provider_id,
        "account_subject": c.account_subject,
        "account_label": c.account_label,
        "display_name": c.display_name,
        "description": c.description,
        "scopes": c.scopes.split_whitespace().collect::<Vec<_>>(),
        "status": c.status,
        "status_reason": c.status_reason,
        "created_by": c.created_by,
        "created_at": time(c.created_at),
        "updated_at": time(c.updated_at),
        "last_used_at": c.last_used_at.map(time),
        "last_refreshed_at": c.last_refreshed_at.map(time),
        "access_expires_at": c.access_expires_at.map(time),
        "next_refresh_at": c.next_refresh_at.map(time),
        "refresh_token_expires_at": c.refresh_token_expires_at.map(time),
        "has_refresh_token": c.has_refresh_token,
        "has_tokens": c.sealed.is_some(),
        "key_id": c.sealed.as_ref().map(|s| s.dek_key_id.clone()),
        "key_version": c.sealed.as_ref().map(|s| s.dek_key_version),
        "row_version": c.row_version,
        "lease_holder": c.lease.holder,
        "lease_expires_at": c.lease.expires_at.map(time),
        "health": c.health.health,
        "health_cause": c.health.cause,
        "health_since": c.health.since.map(time),
        "health_failures": c.health.failures,
        "health_error_code": c.health.error_code,
    })
}

/// Health, cause, since, failures and error code on one line.
fn health_line(c: &CredentialRow) -> String {
    let h = &c.health;
    match &h.cause {
        None => h.health.clone(),
        Some(cause) => format!(
            "{} since {} ({} failure(s), last error {}): {cause}",
            h.health,
            opt_time(h.since),
            h.failures,
            h.error_code.as_deref().unwrap_or("-")
        ),
    }
}

/// `credential-broker credentials show ID`: one credential's metadata and members.
pub async fn show_credential_command(
    config: &Config,
    id: &str,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), StartupError> {
    let store = open_read(config).await?;
    let Some(c) = store.get_credential(id).await.map_err(db_err(config))? else {
        return Err(StartupError::Command(format!(
            "no credential {id:?} in {}",
            config.database.url.redacted()
        )));
    };
    let members = store.list_members(id).await.map_err(db_err(config))?;
    if format == Format::Json {
        let mut doc = credential_json(&c);
        doc["members"] = members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "email": m.email,
                    "user_id": m.user_id,
                    "role": m.role,
                    "state": m.state,
                    "invited_by": m.invited_by,
                    "created_at": time(m.created_at),
                })
            })
            .collect();
        writeln!(out, "{doc}").map_err(io)?;
        return Ok(());
    }
    let status = match &c.status_reason {
        Some(r) if c.status != "ACTIVE" => format!("{} ({r})", c.status),
        _ => c.status.clone(),
    };
    let key = c.sealed.as_ref().map_or_else(
        || "none (tokens wiped)".to_owned(),
        |s| format!("{} version {}", s.dek_key_id, s.dek_key_version),
    );
    let lease = match (&c.lease.holder, c.lease.expires_at) {
        (Some(h), Some(t)) => format!("held by {h} until {} (fence {})", time(t), c.lease.fence),
        _ => format!("free (fence {})", c.lease.fence),
    };
    let lines = [
        ("id", c.id.clone()),
        ("workspace", c.workspace_id.clone()),
        ("provider", c.provider_id.clone()),
        (
            "account",
            format!("{} (subject {})", c.account_label, c.account_subject),
        ),
        ("display name", c.display_name.clone()),
        ("description", c.description.clone()),
        ("status", status),
        ("health", health_line(&c)),
        ("scopes", c.scopes.clone()),
        (
            "created",
            format!("{} by {}", time(c.created_at), c.created_by),
        ),
        ("updated", time(c.updated_at)),
        ("last used", opt_time(c.last_used_at)),
        ("last refreshed", opt_time(c.last_refreshed_at)),
        ("access token expires", opt_time(c.access_expires_at)),
        ("next refresh", opt_time(c.next_refresh_at)),
        (
            "refresh token expires",
            opt_time(c.refresh_token_expires_at),
        ),
        (
            "refresh token",
            if c.has_refresh_token { "yes" } else { "no" }.to_owned(),
        ),
        ("data key wrapped by", key),
        ("refresh lease", lease),
        ("row version", c.row_version.to_string()),
    ];
    for (k, v) in lines {
        writeln!(out, "{:22} {v}", format!("{k}:")).map_err(io)?;
    }
    writeln!(out, "members:").map_err(io)?;
    for m in &members {
        writeln!(
            out,
            "  {:32} {:6} {:7} {}",
            m.email,
            m.role,
            m.state,
            m.user_id.as_deref().unwrap_or("-")
        )
        .map_err(io)?;
    }
    Ok(())
}

/// `credential-broker credentials list --status S [--workspace W] [--health H]`: every
/// credential with that status (and health), all workspaces unless one is given, in id order,
/// at most `limit`.
pub async fn list_credentials_command(
    config: &Config,
    status: &str,
    (workspace, health): (Option<String>, Option<String>),
    limit: u32,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), StartupError> {
    let store = open_read(config).await?;
    let mut rows = Vec::new();
    let mut after = None;
    // Pages of 500 until the limit: the statement stays cheap however many match.
    while rows.len() < limit as usize {
        let page = store
            .list_credentials_by_status(&StatusQuery {
                status: status.to_owned(),
                workspace_id: workspace.clone(),
                health: health.clone(),
                after_id: after.clone(),
                limit: (limit - rows.len() as u32).min(500),
            })
            .await
            .map_err(db_err(config))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        rows.extend(page);
    }
    if format == Format::Json {
        let list: Vec<_> = rows.iter().map(credential_json).collect();
        writeln!(out, "{}", serde_json::Value::Array(list)).map_err(io)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:36}  {:20}  {:14}  {:28}  {:20}  {:20}  REASON",
        "ID", "WORKSPACE", "PROVIDER", "ACCOUNT", "UPDATED", "HEALTH"
    )
    .map_err(io)?;
    for c in &rows {
        writeln!(
            out,
            "{:36}  {:20}  {:14}  {:28}  {:20}  {:20}  {}",
            c.id,
            c.workspace_id,
            c.provider_id,
            c.account_label,
            time(c.updated_at),
            c.health.health,
            c.status_reason
                .as_deref()
                .or(c.health.cause.as_deref())
                .unwrap_or("")
        )
        .map_err(io)?;
    }
    writeln!(
        out,
        "{} credential(s) with status {status}{}",
        rows.len(),
        workspace
            .map(|w| format!(" in workspace {w}"))
            .unwrap_or_default()
    )
    .map_err(io)?;
    Ok(())
}

/// `credential-broker webhooks ENDPOINT`: whether the endpoint is enabled, and its delivery log
/// (no payload, no secret).
pub async fn webhook_deliveries_command(
    config: &Config,
    endpoint: &str,
    limit: u32,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), StartupError> {
    let store = open_read(config).await?;
    let Some(disabled) = store
        .webhook_endpoint(endpoint)
        .await
        .map_err(db_err(config))?
        .map(|e| e.disabled_at.is_some())
    else {
        return Err(StartupError::Command(format!(
            "no webhook endpoint {endpoint:?} in {}",
            config.database.url.redacted()
        )));
    };
    let rows = store
        .list_webhook_deliveries(endpoint, limit, 0)
        .await
        .map_err(db_err(config))?;
    if format == Format::Json {
        let deliveries: Vec<_> = rows
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id,
                    "event_cursor": d.event_row_id,
                    "credential_id": d.credential_id,
                    "state": d.state,
                    "attempts": d.attempts,
                    "next_attempt_at": time(d.next_attempt_at),
                    "last_status": d.last_status,
                    "last_error": d.last_error,
                    "delivered_at": d.delivered_at.map(time),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "endpoint": endpoint,
            "disabled": disabled,
            "deliveries": deliveries,
        });
        writeln!(out, "{doc}").map_err(io)?;
        return Ok(());
    }
    let state = if disabled { "DISABLED" } else { "enabled" };
    writeln!(out, "endpoint {endpoint}: {state}").map_err(io)?;
    writeln!(
        out,
        "{:>8}  {:>8}  {:36}  {:9}  {:>8}  {:>6}  {:24}  ERROR",
        "ID", "CURSOR", "CREDENTIAL", "STATE", "ATTEMPTS", "STATUS", "DELIVERED / NEXT"
    )
    .map_err(io)?;
    for d in &rows {
        writeln!(
            out,
            "{:>8}  {:>8}  {:36}  {:9}  {:>8}  {:>6}  {:24}  {}",
            d.id,
            d.event_row_id,
            d.credential_id,
            d.state,
            d.attempts,
            d.last_status
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            d.delivered_at.map_or_else(|| time(d.next_attempt_at), time),
            d.last_error.as_deref().unwrap_or("")
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(time(1_767_225_600_250), "2026-01-01T00:00:00.250Z");
    }
}
