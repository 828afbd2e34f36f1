//! The KMS-compatible server named by `TEST_KMS_ENDPOINT` (moto, from `scripts/kms-server.sh`).
//!
//! Without that variable KMS tests are skipped loudly on a workstation and fail in CI (`CI` or
//! `CB_REQUIRE_SERVICES` set), so a green CI run always exercised aws-sdk-kms.

use std::time::Duration;

use cb_crypto::aws_kms::{AwsKmsConfig, KmsClient, kms_client};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The region every KMS test uses.
pub const REGION: &str = "us-east-1";

/// The server's URL, or `None` (after saying so on stderr) when unset outside CI.
pub fn endpoint(test: &str) -> Option<String> {
    match std::env::var("TEST_KMS_ENDPOINT") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if env_is_set("CI") || env_is_set("CB_REQUIRE_SERVICES") {
                panic!("TEST_KMS_ENDPOINT is required in CI: KMS tests must not be skipped");
            }
            crate::support::skip_loudly(&format!(
                "SKIPPED (KMS): {test} — run scripts/kms-server.sh or set TEST_KMS_ENDPOINT"
            ));
            None
        }
    }
}

/// A provider config for `key_id` on `endpoint`, with static test credentials.
pub fn config(endpoint: &str, key_id: &str) -> AwsKmsConfig {
    AwsKmsConfig {
        region: Some(REGION.to_owned()),
        endpoint_url: Some(endpoint.to_owned()),
        static_credentials: Some(("testing".to_owned(), "testing".to_owned())),
        ..AwsKmsConfig::new(key_id)
    }
}

/// A new symmetric encryption key on the server; returns its ARN.
pub async fn create_key(endpoint: &str) -> String {
    let created = admin_client(endpoint)
        .await
        .create_key()
        .description("cb-e2e test key")
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateKey on {endpoint}: {e:?}"));
    created
        .key_metadata()
        .and_then(|m| m.arn())
        .expect("CreateKey returned no ARN")
        .to_owned()
}

/// Points a new alias (`alias/cb-e2e-...`) at `key_arn`; returns the alias name.
pub async fn create_alias(endpoint: &str, key_arn: &str) -> String {
    let alias = format!("alias/cb-e2e-{}", uuid::Uuid::now_v7().simple());
    admin_client(endpoint)
        .await
        .create_alias()
        .alias_name(&alias)
        .target_key_id(key_arn)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateAlias on {endpoint}: {e:?}"));
    alias
}

/// Disables a key (moto still decrypts with it, but reports its state).
pub async fn disable_key(endpoint: &str, key_arn: &str) {
    admin_client(endpoint)
        .await
        .disable_key()
        // moto's DisableKey only knows bare key ids.
        .key_id(key_arn.rsplit('/').next().unwrap_or(key_arn))
        .send()
        .await
        .unwrap_or_else(|e| panic!("DisableKey on {endpoint}: {e:?}"));
}

/// A KMS client for managing test keys.
async fn admin_client(endpoint: &str) -> KmsClient {
    kms_client(&config(endpoint, "admin"))
        .await
        .unwrap_or_else(|e| panic!("KMS client for {endpoint}: {e}"))
        .0
}

fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// A server that accepts connections and never answers (a hung KMS); lives until dropped.
pub struct HungServer {
    /// `http://127.0.0.1:PORT` of the server.
    pub url: String,
    task: JoinHandle<()>,
}

impl HungServer {
    /// Starts it on a fresh loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { url, task }
    }
}

impl Drop for HungServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config that gives up fast: one attempt of `timeout`.
pub fn impatient(mut cfg: AwsKmsConfig, timeout: Duration) -> AwsKmsConfig {
    cfg.timeout = timeout;
    cfg.max_attempts = 1;
    cfg
}
