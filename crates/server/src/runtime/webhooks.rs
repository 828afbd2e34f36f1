//! The webhook sender over the outbound HTTP guard (`cb_oauth::outbound`: https only, no
//! redirects, no private addresses unless allowed, bounded time and size), and the dispatcher
//! of the `[[webhooks]]` endpoints and of those workspaces manage through the API.

use crate::grpc::convert::timestamp;
use crate::runtime::config::Config;
use crate::runtime::error::StartupError;
use cb_broker::clock::{Clock, Timestamp};
use cb_broker::random::SystemRandom;
use cb_broker::webhooks::{
    SendOutcome, WebhookDispatcher, WebhookEndpoint, WebhookSecret, WebhookSender,
};
use cb_crypto::Envelope;
use cb_oauth::outbound::OutboundClient;
use cb_store::{CredentialEventRow, Store};
use std::sync::Arc;

/// Sends webhooks through the outbound guard.
pub struct OutboundWebhookSender {
    client: OutboundClient,
}

#[async_trait::async_trait]
impl WebhookSender for OutboundWebhookSender {
    fn payload(&self, row: &CredentialEventRow) -> Vec<u8> {
        let e = &row.event;
        serde_json::json!({
            // A workspace event (no credential) is typed `workspace.…`.
            "type": match e.credential_id {
                Some(_) => format!("credential.{}", e.kind),
                None => format!("workspace.{}", e.kind),
            },
            "timestamp": timestamp(Timestamp::from_millis(e.at)).to_string(),
            "data": {
                "event_id": e.event_id,
                "cursor": row.id,
                "workspace_id": e.workspace_id,
                "credential_id": e.credential_id,
                "type": e.kind,
                "actor": e.actor,
                "cause": e.cause,
                "detail": e.detail,
            },
        })
        .to_string()
        .into_bytes()
    }

    async fn post(
        &self,
        url: &url::Url,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> SendOutcome {
        let mut request = self.client.inner().post(url.clone()).body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match self.client.send(request).await {
            Ok(response) => SendOutcome::Answered(response.status.as_u16()),
            // Outbound errors name the host at most, never the path or query.
            Err(e) => SendOutcome::Failed(e.to_string()),
        }
    }
}

/// The dispatcher of the configured endpoints and of those managed through the API (their
/// secrets opened with `envelope`). It runs on every replica, even without `[[webhooks]]`: a
/// workspace admin may create an endpoint at any time.
pub fn dispatcher(
    config: &Config,
    store: &Arc<dyn Store>,
    envelope: Arc<Envelope>,
    clock: &Arc<dyn Clock>,
    holder: String,
) -> Result<Arc<WebhookDispatcher>, StartupError> {
    let bad = |e: String| StartupError::Config(crate::runtime::config::ConfigError(vec![e]));
    let client =
        OutboundClient::new(config.outbound.policy()).map_err(|e| bad(format!("outbound: {e}")))?;
    let mut endpoints = Vec::new();
    for w in &config.webhooks {
        let url = url::Url::parse(&w.url)
            .map_err(|_| bad(format!("webhooks[{}].url: not a URL", w.id)))?;
        let secrets = w
            .secrets
            .iter()
            .map(|s| WebhookSecret::parse(s.expose()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("webhooks[{}].secrets: {e}", w.id)))?;
        let event_types = w
            .kinds()
            .map_err(|e| bad(format!("webhooks[{}].event_types: {e}", w.id)))?;
        endpoints.push(WebhookEndpoint {
            id: w.id.clone(),
            workspace_id: w.workspace_id.clone(),
            url,
            secrets,
            event_types,
        });
    }
    Ok(Arc::new(WebhookDispatcher::new(
        store.clone(),
        envelope,
        clock.clone(),
        Arc::new(SystemRandom),
        Arc::new(OutboundWebhookSender { client }),
        endpoints,
        config.events.webhooks(),
        holder,
    )))
}
