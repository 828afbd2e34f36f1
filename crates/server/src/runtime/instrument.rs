//! Decorators that give every call to a dependency a span and metrics:
//! [`InstrumentedKeyProvider`] (KMS) and [`InstrumentedGateway`] (OAuth providers). They wrap
//! the real implementations at start-up; the domain does not know they exist. (Database calls
//! get their spans inside `cb-store`.) Span attributes are ids, names and outcomes, never a
//! token or key.

use crate::runtime::metrics::Metrics;
use cb_broker::gateway::{
    AccountInfo, AppClient, ClientProbe, CodeExchange, Discovery, GrantedTokens, MetadataError,
    ProviderError, ProviderGateway, ProviderInfo, RedirectProbe, RevokeResult,
};
use cb_broker::tokens::TokenBundle;
use cb_crypto::{CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, WrappedDek};
use cb_oauth::outbound::OutboundError;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

/// Runs `call` in `span` and records how it ended (`outcome` names it) on the span, a failure
/// also as an error; returns the result, its outcome and how long it took.
async fn timed<T, E>(
    span: tracing::Span,
    call: impl Future<Output = Result<T, E>>,
    outcome: impl FnOnce(&Result<T, E>) -> &'static str,
) -> (Result<T, E>, &'static str, std::time::Duration) {
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let outcome = outcome(&result);
    span.record("outcome", outcome);
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    (result, outcome, started.elapsed())
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
        let (result, outcome, took) = timed(span, call, |result| match result {
            Ok(_) => "ok",
            Err(CryptoError::Unavailable(_)) => "unavailable",
            Err(CryptoError::AccessDenied { .. }) => "denied",
            Err(_) => "error",
        })
        .await;
        self.metrics.observe_kms_call(operation, outcome, took);
        result
    }

    /// [`Self::observed`] for a call that wraps under the current key.
    async fn observed_current<T>(
        &self,
        operation: &'static str,
        ctx: &EncryptionContext,
        call: impl Future<Output = Result<T, CryptoError>>,
    ) -> Result<T, CryptoError> {
        let key = self.inner.current_key();
        self.observed(operation, &key, ctx, call).await
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
        self.observed_current("generate_data_key", ctx, self.inner.generate_data_key(ctx))
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
        self.observed_current("wrap_data_key", ctx, self.inner.wrap_data_key(dek, ctx))
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
        let (result, outcome, took) = timed(span, call, |result| match result {
            Ok(_) => "ok",
            Err(ProviderError::Permanent(_)) => "permanent",
            Err(ProviderError::ClientRejected(_)) => "client_rejected",
            Err(ProviderError::Transient { .. }) => "transient",
            Err(ProviderError::Denied(_)) => "denied",
            Err(ProviderError::Other(_)) => "error",
        })
        .await;
        self.metrics
            .observe_provider_call(provider, operation, outcome, took);
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
        app: Option<&AppClient>,
        authorize: cb_oauth::AuthorizeRequest<'_>,
    ) -> Result<String, ProviderError> {
        self.inner.authorize_url(provider, app, authorize)
    }

    fn uses_pkce(&self, provider: &str) -> bool {
        self.inner.uses_pkce(provider)
    }

    fn issuer(&self, provider: &str) -> Option<String> {
        self.inner.issuer(provider)
    }

    async fn exchange_code(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        exchange: CodeExchange<'_>,
    ) -> Result<(GrantedTokens, AccountInfo), ProviderError> {
        let call = self.inner.exchange_code(provider, app, exchange);
        self.observed("exchange_code", provider, call).await
    }

    async fn refresh(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError> {
        self.observed(
            "refresh",
            provider,
            self.inner.refresh(provider, app, refresh_token, extras),
        )
        .await
    }

    async fn probe_client(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        redirect_uri: &str,
    ) -> ClientProbe {
        self.inner.probe_client(provider, app, redirect_uri).await
    }

    async fn discover(
        &self,
        provider: &str,
        runtime: Option<&cb_oauth::catalog::ProviderSpec>,
    ) -> Discovery {
        self.inner.discover(provider, runtime).await
    }

    fn check_outbound_url(&self, url: &url::Url) -> Result<(), OutboundError> {
        self.inner.check_outbound_url(url)
    }

    async fn probe_redirect(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        redirect_uri: &str,
    ) -> RedirectProbe {
        self.inner.probe_redirect(provider, app, redirect_uri).await
    }

    fn outbound_allows_loopback(&self) -> bool {
        self.inner.outbound_allows_loopback()
    }

    async fn issuer_metadata(&self, issuer: &str) -> Result<serde_json::Value, MetadataError> {
        self.inner.issuer_metadata(issuer).await
    }

    async fn revoke(
        &self,
        provider: &str,
        app: Option<&AppClient>,
        tokens: &TokenBundle,
    ) -> Result<RevokeResult, ProviderError> {
        self.observed("revoke", provider, self.inner.revoke(provider, app, tokens))
            .await
    }
}
