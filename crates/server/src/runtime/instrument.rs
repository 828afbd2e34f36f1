//! Decorators that give every call to a dependency a span (and, for providers and the KMS,
//! metrics): [`TracedStore`] (database), [`InstrumentedKeyProvider`] (KMS) and
//! [`InstrumentedGateway`] (OAuth providers). They wrap the real implementations at start-up;
//! the domain does not know they exist. Span attributes are ids, names and outcomes, never a
//! token, key or bound SQL value.

use crate::runtime::metrics::Metrics;
use cb_broker::gateway::{
    AccountInfo, GrantedTokens, ProviderError, ProviderGateway, ProviderInfo, RevokeResult,
};
use cb_broker::tokens::TokenBundle;
use cb_crypto::{CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, WrappedDek};
use cb_store::{
    AuditQuery, AuditRow, ChangeEvent, ConnectSessionRow, CredentialQuery, CredentialRow, KeyUsage,
    MemberChange, MemberRow, NewAuditEvent, StatusQuery, Store, StoreError, UsageRecord,
    WrappedDekRow,
};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

// ---- database ----------------------------------------------------------------------------------

/// A [`Store`] whose every call runs in a `db <operation>` client span.
pub struct TracedStore {
    inner: Arc<dyn Store>,
    system: &'static str,
}

impl TracedStore {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        let system = match inner.backend() {
            "postgres" => "postgresql",
            other => other,
        };
        Arc::new(Self { inner, system })
    }

    async fn traced<T>(
        &self,
        operation: &'static str,
        credential_id: Option<&str>,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Background upkeep (health pings, usage flushes, scans) would be a root trace every
        // few seconds: database spans only exist inside a traced operation.
        if tracing::Span::current().is_none() {
            return call.await;
        }
        let span = tracing::info_span!(
            "db",
            otel.name = %format_args!("db.{operation}"),
            otel.kind = "client",
            db.system = self.system,
            db.operation = operation,
            credential_id = credential_id,
            otel.status_code = Empty,
            error = Empty,
        );
        let result = call.instrument(span.clone()).await;
        if let Err(e) = &result {
            // StoreError messages never contain bound values (cb-store guarantees it).
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(e));
        }
        result
    }
}

#[async_trait::async_trait]
impl Store for TracedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.traced("migrate", None, self.inner.migrate()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.traced("ping", None, self.inner.ping()).await
    }

    async fn insert_credential(
        &self,
        row: &CredentialRow,
        members: &[MemberRow],
    ) -> Result<(), StoreError> {
        self.traced(
            "insert_credential",
            Some(&row.id),
            self.inner.insert_credential(row, members),
        )
        .await
    }

    async fn get_credential(&self, id: &str) -> Result<Option<CredentialRow>, StoreError> {
        self.traced("get_credential", Some(id), self.inner.get_credential(id))
            .await
    }

    async fn find_credential_by_account(
        &self,
        workspace_id: &str,
        provider_id: &str,
        account_subject: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        self.traced(
            "find_credential_by_account",
            None,
            self.inner
                .find_credential_by_account(workspace_id, provider_id, account_subject),
        )
        .await
    }

    async fn list_credentials(
        &self,
        q: &CredentialQuery,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.traced("list_credentials", None, self.inner.list_credentials(q))
            .await
    }

    async fn list_credentials_by_status(
        &self,
        q: &StatusQuery,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.traced(
            "list_credentials_by_status",
            None,
            self.inner.list_credentials_by_status(q),
        )
        .await
    }

    async fn count_credentials_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.traced(
            "count_credentials_by_status",
            None,
            self.inner.count_credentials_by_status(),
        )
        .await
    }

    async fn update_credential(
        &self,
        row: &CredentialRow,
        expected_version: i64,
    ) -> Result<CredentialRow, StoreError> {
        self.traced(
            "update_credential",
            Some(&row.id),
            self.inner.update_credential(row, expected_version),
        )
        .await
    }

    async fn list_members(&self, credential_id: &str) -> Result<Vec<MemberRow>, StoreError> {
        self.traced(
            "list_members",
            Some(credential_id),
            self.inner.list_members(credential_id),
        )
        .await
    }

    async fn get_member(
        &self,
        credential_id: &str,
        email: &str,
    ) -> Result<Option<MemberRow>, StoreError> {
        self.traced(
            "get_member",
            Some(credential_id),
            self.inner.get_member(credential_id, email),
        )
        .await
    }

    async fn change_member(&self, change: &MemberChange) -> Result<(), StoreError> {
        self.traced(
            "change_member",
            Some(change.credential_id()),
            self.inner.change_member(change),
        )
        .await
    }

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        self.traced(
            "append_audit",
            e.credential_id.as_deref(),
            self.inner.append_audit(e),
        )
        .await
    }

    async fn append_audit_batch(&self, events: &[NewAuditEvent]) -> Result<(), StoreError> {
        self.traced(
            "append_audit_batch",
            None,
            self.inner.append_audit_batch(events),
        )
        .await
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        self.traced("list_audit", None, self.inner.list_audit(q))
            .await
    }

    async fn prune_audit(&self, older_than: i64) -> Result<u64, StoreError> {
        self.traced("prune_audit", None, self.inner.prune_audit(older_than))
            .await
    }

    async fn key_usage(&self) -> Result<Vec<KeyUsage>, StoreError> {
        self.traced("key_usage", None, self.inner.key_usage()).await
    }

    async fn dek_rows_not_on_key(
        &self,
        key_id: &str,
        key_version: i64,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WrappedDekRow>, StoreError> {
        self.traced(
            "dek_rows_not_on_key",
            None,
            self.inner
                .dek_rows_not_on_key(key_id, key_version, after_id, limit),
        )
        .await
    }

    async fn rewrap_dek(
        &self,
        old: &WrappedDekRow,
        new_wrapped: &[u8],
        new_key_id: &str,
        new_key_version: i64,
    ) -> Result<bool, StoreError> {
        self.traced(
            "rewrap_dek",
            Some(&old.credential_id),
            self.inner
                .rewrap_dek(old, new_wrapped, new_key_id, new_key_version),
        )
        .await
    }

    async fn acquire_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<CredentialRow>, StoreError> {
        self.traced(
            "acquire_refresh_lease",
            Some(id),
            self.inner
                .acquire_refresh_lease(id, holder, now, lease_until),
        )
        .await
    }

    async fn complete_refresh(
        &self,
        row: &CredentialRow,
        fence: i64,
    ) -> Result<CredentialRow, StoreError> {
        self.traced(
            "complete_refresh",
            Some(&row.id),
            self.inner.complete_refresh(row, fence),
        )
        .await
    }

    async fn release_refresh_lease(&self, id: &str, fence: i64) -> Result<bool, StoreError> {
        self.traced(
            "release_refresh_lease",
            Some(id),
            self.inner.release_refresh_lease(id, fence),
        )
        .await
    }

    async fn due_for_refresh(&self, now: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        self.traced(
            "due_for_refresh",
            None,
            self.inner.due_for_refresh(now, limit),
        )
        .await
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        self.traced("record_usage", None, self.inner.record_usage(batch))
            .await
    }

    async fn recent_workflows(
        &self,
        credential_id: &str,
        limit: u32,
    ) -> Result<(Vec<(String, i64)>, u64), StoreError> {
        self.traced(
            "recent_workflows",
            Some(credential_id),
            self.inner.recent_workflows(credential_id, limit),
        )
        .await
    }

    async fn insert_connect_session(&self, s: &ConnectSessionRow) -> Result<(), StoreError> {
        self.traced(
            "insert_connect_session",
            None,
            self.inner.insert_connect_session(s),
        )
        .await
    }

    async fn get_connect_session(
        &self,
        state_hash: &str,
    ) -> Result<Option<ConnectSessionRow>, StoreError> {
        self.traced(
            "get_connect_session",
            None,
            self.inner.get_connect_session(state_hash),
        )
        .await
    }

    async fn consume_connect_session(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.traced(
            "consume_connect_session",
            None,
            self.inner.consume_connect_session(state_hash, now),
        )
        .await
    }

    async fn prune_connect_sessions(&self, older_than: i64) -> Result<u64, StoreError> {
        self.traced(
            "prune_connect_sessions",
            None,
            self.inner.prune_connect_sessions(older_than),
        )
        .await
    }

    fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<ChangeEvent> {
        self.inner.subscribe_changes()
    }
}

// ---- KMS ---------------------------------------------------------------------------------------

/// A [`KeyProvider`] whose calls are spans (`kms <operation>`) and metrics.
pub struct InstrumentedKeyProvider {
    inner: Arc<dyn KeyProvider>,
    metrics: Arc<Metrics>,
}

impl InstrumentedKeyProvider {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn KeyProvider>, metrics: Arc<Metrics>) -> Arc<dyn KeyProvider> {
        Arc::new(Self { inner, metrics })
    }

    async fn observed<T>(
        &self,
        operation: &'static str,
        key: &KeyRef,
        ctx: &EncryptionContext,
        call: impl Future<Output = Result<T, CryptoError>>,
    ) -> Result<T, CryptoError> {
        let credential_id = ctx
            .entries()
            .find(|(k, _)| *k == "credential_id")
            .map(|(_, v)| v.to_owned());
        // The periodic health round trip gets metrics but no trace of its own.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "kms",
                otel.name = %format_args!("kms.{operation}"),
                otel.kind = "client",
                kms.provider = self.inner.kind(),
                kms.operation = operation,
                key_id = %key.key_id,
                key_version = key.version,
                credential_id = credential_id,
                outcome = Empty,
                otel.status_code = Empty,
            )
        };
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CryptoError::Unavailable(_)) => "unavailable",
            Err(CryptoError::AccessDenied { .. }) => "denied",
            Err(_) => "error",
        };
        span.record("outcome", outcome);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .observe_kms_call(operation, outcome, started.elapsed());
        result
    }
}

#[async_trait::async_trait]
impl KeyProvider for InstrumentedKeyProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn current_key(&self) -> KeyRef {
        self.inner.current_key()
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        let key = self.inner.current_key();
        self.observed(
            "generate_data_key",
            &key,
            ctx,
            self.inner.generate_data_key(ctx),
        )
        .await
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        self.observed(
            "unwrap_data_key",
            &wrapped.key,
            ctx,
            self.inner.unwrap_data_key(wrapped, ctx),
        )
        .await
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        let key = self.inner.current_key();
        self.observed(
            "wrap_data_key",
            &key,
            ctx,
            self.inner.wrap_data_key(dek, ctx),
        )
        .await
    }

    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.observed(
            "rewrap_data_key",
            &wrapped.key,
            ctx,
            self.inner.rewrap_data_key(wrapped, ctx),
        )
        .await
    }
}

// ---- OAuth providers ---------------------------------------------------------------------------

/// A [`ProviderGateway`] whose HTTP calls are spans (`oauth <operation>`) and metrics.
pub struct InstrumentedGateway {
    inner: Arc<dyn ProviderGateway>,
    metrics: Arc<Metrics>,
}

impl InstrumentedGateway {
    /// Wraps `inner`.
    pub fn wrap(
        inner: Arc<dyn ProviderGateway>,
        metrics: Arc<Metrics>,
    ) -> Arc<dyn ProviderGateway> {
        Arc::new(Self { inner, metrics })
    }

    async fn observed<T>(
        &self,
        operation: &'static str,
        provider: &str,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let span = tracing::info_span!(
            "oauth",
            otel.name = %format_args!("oauth.{operation}"),
            otel.kind = "client",
            provider = provider,
            oauth.operation = operation,
            outcome = Empty,
            otel.status_code = Empty,
        );
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ProviderError::Permanent(_)) => "permanent",
            Err(ProviderError::Transient { .. }) => "transient",
            Err(ProviderError::Denied(_)) => "denied",
            Err(ProviderError::Other(_)) => "error",
        };
        span.record("outcome", outcome);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .observe_provider_call(provider, operation, outcome, started.elapsed());
        result
    }
}

#[async_trait::async_trait]
impl ProviderGateway for InstrumentedGateway {
    fn list(&self) -> Vec<ProviderInfo> {
        self.inner.list()
    }

    fn get(&self, id: &str) -> Option<ProviderInfo> {
        self.inner.get(id)
    }

    fn redirect_allowed(&self, uri: &str) -> bool {
        self.inner.redirect_allowed(uri)
    }

    fn authorize_url(
        &self,
        provider: &str,
        redirect_uri: &str,
        scopes: &[String],
        state: &str,
        pkce_challenge: Option<&str>,
    ) -> Result<String, ProviderError> {
        self.inner
            .authorize_url(provider, redirect_uri, scopes, state, pkce_challenge)
    }

    fn uses_pkce(&self, provider: &str) -> bool {
        self.inner.uses_pkce(provider)
    }

    async fn exchange_code(
        &self,
        provider: &str,
        code: &SecretString,
        redirect_uri: &str,
        pkce_verifier: Option<&SecretString>,
        callback_params: &BTreeMap<String, String>,
    ) -> Result<(GrantedTokens, AccountInfo), ProviderError> {
        self.observed(
            "exchange_code",
            provider,
            self.inner
                .exchange_code(provider, code, redirect_uri, pkce_verifier, callback_params),
        )
        .await
    }

    async fn refresh(
        &self,
        provider: &str,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError> {
        self.observed(
            "refresh",
            provider,
            self.inner.refresh(provider, refresh_token, extras),
        )
        .await
    }

    async fn revoke(
        &self,
        provider: &str,
        tokens: &TokenBundle,
    ) -> Result<RevokeResult, ProviderError> {
        self.observed("revoke", provider, self.inner.revoke(provider, tokens))
            .await
    }
}
