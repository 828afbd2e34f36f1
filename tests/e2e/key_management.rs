//! Key management end to end: the broker on `aws-kms` (moto), key rotation (new local version,
//! `local` → `aws-kms`, KMS key A → key B) while serving, KMS outages and degraded start, the
//! start-up self-check, and what crypto-shredding on disconnect does and does not guarantee.
//!
//! KMS tests need `TEST_KMS_ENDPOINT` (scripts/kms-server.sh); without it they are skipped
//! loudly, and in CI they fail (see `support::kms_server::endpoint`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cb_broker::clock::ManualClock;
use cb_broker::rotation::{self, RotateOptions};
use cb_crypto::{
    AwsKmsKeyProvider, CryptoError, EncryptionContext, Envelope, KeyProvider, KeyRef,
    LocalKeyProvider, SealedBlob, WrappedDek,
};
use cb_proto::v1 as pb;
use cb_store::{SealedColumns, Store};
use credential_broker::cli::rotate::{self, RotateKeysArgs};
use credential_broker::runtime::app::{Application, BuildOptions};
use credential_broker::runtime::config::{Config, KeyProviderKind};
use credential_broker::runtime::error::StartupError;
use credential_broker::runtime::keys::{self, KeyOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::broker::{T0, TestBroker, error_details, t0_secs, with_fake_provider};
use crate::support::client::{ALICE, Client, Imported, verdict_of};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use crate::support::kms_server::{self, REGION};
use crate::support::tcp_proxy::TcpProxy;
use crate::support::wait::{wait_for, wait_until_sync};
use crate::support::webhook_receiver::{WebhookReceiver, verified_independently};
use crate::support::{contains, sqlite_bytes};

// ---- harness ------------------------------------------------------------------------------

/// The environment the brokers under test see: static AWS credentials for moto (the first
/// link of the AWS chain, read through the injected environment).
fn aws_env() -> HashMap<String, String> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// An in-process broker started with [`aws_env`].
struct Broker {
    app: Option<Application>,
    clock: ManualClock,
}

impl Broker {
    async fn start(config: &Config) -> Result<Self, StartupError> {
        let clock = ManualClock::new(T0);
        let app = Application::start(
            config,
            BuildOptions {
                clock: Arc::new(clock.clone()),
                env: Arc::new(aws_env()),
            },
        )
        .await?;
        Ok(Self {
            app: Some(app),
            clock,
        })
    }

    async fn client(&self) -> Client {
        let addr = self.app.as_ref().unwrap().local_addr();
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client::new(channel, ALICE)
    }

    async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// A data directory, a fake OAuth provider, and a `local` config on SQLite using both.
struct Setup {
    dir: Arc<tempfile::TempDir>,
    fake: FakeProvider,
    config: Config,
}

impl Setup {
    async fn new() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let fake = FakeProvider::start(FakeConfig {
            rotate_refresh_tokens: true,
            ..FakeConfig::default()
        })
        .await;
        let url = format!("sqlite://{}", dir.path().join("broker.db").display());
        let mut config = TestBroker::config(&dir, url);
        with_fake_provider(&mut config, &fake, "fake", &[]);
        config.tokens.refresh_scan_interval_seconds = 0;
        Self { dir, fake, config }
    }

    /// The config on `aws-kms` with `key` (no decrypt-only local key).
    fn kms(&self, endpoint: &str, key: &str) -> Config {
        let mut c = self.config.clone();
        c.keys.provider = KeyProviderKind::AwsKms;
        c.keys.aws_kms_key_id = Some(key.to_owned());
        c.keys.aws_region = Some(REGION.to_owned());
        c.keys.aws_endpoint_url = Some(endpoint.to_owned());
        c.keys.aws_timeout_seconds = 2;
        c.keys.aws_max_attempts = 1;
        c
    }

    async fn store(&self) -> Arc<dyn Store> {
        cb_store::open(self.config.database.url.expose(), 2)
            .await
            .unwrap()
    }
}

/// Reads every token through a broker started now (empty caches: every data key is unwrapped
/// by the key provider).
async fn read_all_with_fresh_broker(config: &Config, creds: &[Imported]) {
    let b = Broker::start(config).await.unwrap();
    let mut client = b.client().await;
    for c in creds {
        assert_eq!(client.token(&c.id).await.unwrap().access_token, c.access);
    }
    b.stop().await;
}

async fn run_rotate_keys(
    config: &Config,
    args: RotateKeysArgs,
) -> (Result<(), StartupError>, String) {
    let mut out = Vec::new();
    let result = rotate::rotate_keys_command(config, &aws_env(), args, &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

fn batches_of(batch_size: u32) -> RotateKeysArgs {
    RotateKeysArgs {
        options: RotateOptions {
            batch_size,
            ..RotateOptions::default()
        },
        ..RotateKeysArgs::default()
    }
}

/// The sealed columns of a credential, as stored.
async fn sealed(store: &dyn Store, id: &str) -> Option<SealedColumns> {
    store.get_credential(id).await.unwrap().unwrap().sealed
}

/// The context and AAD the broker seals a credential's tokens with (cb_broker::sealing).
fn token_binding(id: &str) -> (EncryptionContext, Vec<u8>) {
    (
        EncryptionContext::for_credential("ws1", id, "tokens"),
        format!("credential-broker/v1|credential|{id}|tokens").into_bytes(),
    )
}

fn blob(s: &SealedColumns) -> SealedBlob {
    SealedBlob {
        ciphertext: s.ciphertext.clone(),
        wrapped_dek: WrappedDek {
            key: KeyRef {
                key_id: s.dek_key_id.clone(),
                version: u32::try_from(s.dek_key_version).unwrap(),
            },
            ciphertext: s.dek_wrapped.clone(),
        },
    }
}

/// A KMS in front of moto that answers a chosen KMS error (e.g. `DisabledException`) to every
/// request naming a chosen key, as AWS does for key states and IAM refusals that moto does not
/// enforce; every other request is forwarded. The fault can be switched while brokers run.
struct KmsFaultProxy {
    url: String,
    fault: Arc<std::sync::Mutex<Option<(String, &'static str)>>>,
    denied: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl KmsFaultProxy {
    async fn start(endpoint: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fault: Arc<std::sync::Mutex<Option<(String, &'static str)>>> = Arc::default();
        let denied = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let upstream = endpoint.trim_end_matches('/').to_owned();
        let (fault2, denied2, forwarded2) = (fault.clone(), denied.clone(), forwarded.clone());
        let http = reqwest::Client::new();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (upstream, http) = (upstream.clone(), http.clone());
                let (fault, denied, forwarded) =
                    (fault2.clone(), denied2.clone(), forwarded2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (upstream, http) = (upstream.clone(), http.clone());
                            let (fault, denied, forwarded) =
                                (fault.clone(), denied.clone(), forwarded.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body: Bytes = body.collect().await.unwrap().to_bytes();
                                let refusal =
                                    fault.lock().unwrap().as_ref().and_then(|(needle, error)| {
                                        contains(&body, needle).then_some(*error)
                                    });
                                if let Some(error) = refusal {
                                    denied.fetch_add(1, Ordering::SeqCst);
                                    let body = format!(
                                        r#"{{"__type":"{error}","message":"refused by the test"}}"#
                                    );
                                    let refusal = hyper::Response::builder()
                                        .status(400)
                                        .header("content-type", "application/x-amz-json-1.1")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap();
                                    return Ok::<_, Infallible>(refusal);
                                }
                                forwarded.fetch_add(1, Ordering::SeqCst);
                                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                                let mut headers = parts.headers.clone();
                                headers.remove(hyper::header::HOST);
                                headers.remove(hyper::header::CONTENT_LENGTH);
                                let answer = http
                                    .request(parts.method, format!("{upstream}{path}"))
                                    .headers(headers)
                                    .body(body)
                                    .send()
                                    .await
                                    .unwrap();
                                let mut response =
                                    hyper::Response::builder().status(answer.status());
                                if let Some(ct) = answer.headers().get("content-type") {
                                    response = response.header("content-type", ct);
                                }
                                let bytes = answer.bytes().await.unwrap();
                                Ok(response.body(Full::new(bytes)).unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            fault,
            denied,
            forwarded,
            task,
        }
    }

    /// From now on, requests naming `key` (its bare id appears in ARNs and bare-id requests
    /// alike) get the KMS error `error`; `None` forwards everything again.
    fn refuse(&self, fault: Option<(&str, &'static str)>) {
        *self.fault.lock().unwrap() =
            fault.map(|(key, error)| (key.rsplit('/').next().unwrap().to_owned(), error));
    }
}

impl Drop for KmsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- aws-kms: connect, issue, refresh ----------------------------------------------------------

#[tokio::test]
async fn aws_kms_broker_connects_issues_and_refreshes_without_plaintext_in_the_database() {
    let Some(endpoint) = kms_server::endpoint(
        "aws_kms_broker_connects_issues_and_refreshes_without_plaintext_in_the_database",
    ) else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let s = Setup::new().await;
    let config = s.kms(&endpoint, &kms_server::create_alias(&endpoint, &key).await);
    let b = Broker::start(&config).await.unwrap();
    let mut client = b.client().await;

    // The full connect flow: the PKCE verifier and the tokens are sealed under KMS data keys.
    let connected = client.connect(&s.fake).await.unwrap().credential_id;
    let connected_token = client.token(&connected).await.unwrap().access_token;
    // An import whose access token expires within min_valid_for: issuing it refreshes.
    let imported = client
        .import_fake(&s.fake, "acct-2", t0_secs() + 60)
        .await
        .unwrap();
    let refreshed = client.token(&imported.id).await.unwrap().access_token;
    assert_ne!(refreshed, imported.access);
    assert_eq!(s.fake.refresh_calls(), 1);
    b.stop().await;

    // Each row records the key ARN (configured by alias) that wrapped its data key.
    let store = s.store().await;
    for id in [&connected, &imported.id] {
        let sealed = sealed(store.as_ref(), id).await.unwrap();
        assert_eq!(sealed.dek_key_id, key);
        assert_eq!(sealed.dek_key_version, 0);
    }
    // A broker started now has no cached keys: every open is a KMS Decrypt.
    let again = Broker::start(&config).await.unwrap();
    let mut client = again.client().await;
    assert_eq!(
        client.token(&connected).await.unwrap().access_token,
        connected_token
    );
    assert_eq!(
        client.token(&imported.id).await.unwrap().access_token,
        refreshed
    );
    again.stop().await;

    // No token in plaintext anywhere in the database files.
    let bytes = sqlite_bytes(s.dir.path());
    assert!(contains(&bytes, "acct-2"), "the scan must see the rows");
    for secret in [
        &connected_token,
        &imported.access,
        &imported.refresh,
        &refreshed,
    ] {
        assert!(!contains(&bytes, secret), "token plaintext in the database");
    }

    // The data key is bound to its credential by the KMS encryption context: one credential's
    // wrapped key does not unwrap under another's context.
    let provider = AwsKmsKeyProvider::connect(kms_server::config(&endpoint, &key))
        .await
        .unwrap();
    let wrapped = blob(&sealed(store.as_ref(), &connected).await.unwrap()).wrapped_dek;
    let (own, _) = token_binding(&connected);
    let (other, _) = token_binding(&imported.id);
    assert!(provider.unwrap_data_key(&wrapped, &own).await.is_ok());
    assert!(matches!(
        provider.unwrap_data_key(&wrapped, &other).await,
        Err(CryptoError::Decrypt)
    ));
}

/// A workspace OAuth app on `aws-kms`: its client secret is sealed under a KMS data key bound
/// to the app by the encryption context, and a connect and refreshes go out under the app's
/// client, also from a broker started later with empty caches (the secret opened by a KMS
/// Decrypt).
#[tokio::test]
async fn aws_kms_broker_seals_app_secrets_and_connects_and_refreshes_through_the_app() {
    let Some(endpoint) = kms_server::endpoint(
        "aws_kms_broker_seals_app_secrets_and_connects_and_refreshes_through_the_app",
    ) else {
        return;
    };
    const CLIENT: &str = "kms-app-client";
    const SECRET: &str = "kms-app-secret-7d2e";
    let key = kms_server::create_key(&endpoint).await;
    let s = Setup::new().await;
    s.fake
        .configure(|c| c.extra_clients = vec![(CLIENT.into(), SECRET.into())]);
    let config = s.kms(&endpoint, &key);
    let b = Broker::start(&config).await.unwrap();
    let mut admin = b.client().await.admin_of("ws1");
    let app = admin
        .create_app("ws1", "fake", CLIENT, SECRET)
        .await
        .unwrap();
    let cred = admin.connect(&s.fake).await.unwrap().credential_id;
    assert_eq!(s.fake.token_clients("authorization_code"), [CLIENT]);
    b.clock.advance(Duration::from_secs(3600));
    admin.token(&cred).await.unwrap();
    assert_eq!(s.fake.token_clients("refresh_token"), [CLIENT]);
    b.stop().await;

    // The secret's data key is wrapped by the KMS key, bound to the app: it unwraps under the
    // app's context only.
    let store = s.store().await;
    let held = store
        .list_oauth_app_secrets(&app.oauth_app_id)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].dek_key_id.as_str(), held[0].dek_key_version),
        (key.as_str(), 0)
    );
    let provider = AwsKmsKeyProvider::connect(kms_server::config(&endpoint, &key))
        .await
        .unwrap();
    let wrapped = WrappedDek {
        key: KeyRef {
            key_id: key.clone(),
            version: 0,
        },
        ciphertext: held[0].dek_wrapped.clone(),
    };
    let app_context = |app_id: &str| {
        EncryptionContext::new()
            .with("workspace_id", "ws1")
            .with("oauth_app", app_id)
            .with("purpose", "client_secret")
    };
    assert!(
        provider
            .unwrap_data_key(&wrapped, &app_context(&app.oauth_app_id))
            .await
            .is_ok()
    );
    assert!(matches!(
        provider
            .unwrap_data_key(&wrapped, &app_context("another-app"))
            .await,
        Err(CryptoError::Decrypt)
    ));
    assert!(
        !contains(&sqlite_bytes(s.dir.path()), SECRET),
        "client secret in plaintext in the database"
    );

    // A broker started now opens the secret through KMS and refreshes under the app's client.
    let again = Broker::start(&config).await.unwrap();
    again.clock.advance(Duration::from_secs(3 * 3600));
    let mut client = again.client().await;
    client.token(&cred).await.unwrap();
    assert_eq!(s.fake.token_clients("refresh_token"), [CLIENT, CLIENT]);
    again.stop().await;
}

// ---- rotation -------------------------------------------------------------------------------

#[tokio::test]
async fn new_local_version_rotates_online_and_the_old_version_can_be_retired() {
    let mut s = Setup::new().await;
    s.config.outbound.allow_loopback = true;
    s.config.events.webhook_poll_ms = 20;
    let receiver = WebhookReceiver::start(true).await;
    let b = Broker::start(&s.config).await.unwrap();
    let mut client = b.client().await;
    let mut creds = Vec::new();
    for i in 0..5 {
        creds.push(
            client
                .import_fake(&s.fake, &format!("acct-{i}"), t0_secs() + 3600)
                .await
                .unwrap(),
        );
    }
    // A workspace OAuth app, registered at the fake: its client secret is sealed under
    // version 1 too.
    s.fake
        .configure(|c| c.extra_clients = vec![("rotation-app".into(), "rotation-secret".into())]);
    let app = b
        .client()
        .await
        .admin_of("ws1")
        .create_app("ws1", "fake", "rotation-app", "rotation-secret")
        .await
        .unwrap();
    // A webhook endpoint managed through the API: its signing secret is sealed the same way.
    let mut admin = client.admin_of("ws1");
    let r = admin.request(pb::CreateWebhookEndpointRequest {
        workspace_id: "ws1".into(),
        url: receiver.url(),
        ..Default::default()
    });
    let webhook_secret = admin
        .webhooks
        .create_webhook_endpoint(r)
        .await
        .unwrap()
        .into_inner()
        .secret;
    let store = s.store().await;
    let key_id = sealed(store.as_ref(), &creds[0].id)
        .await
        .unwrap()
        .dek_key_id;

    // Retiring a version still in use is refused.
    let mut out = Vec::new();
    let err = rotate::retire_local_version_command(&s.config, 1, &mut out)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5 credential(s) and 2 sealed secret(s)") && err.contains("rotate-keys"),
        "{err}"
    );

    // While the broker serves: add version 2 and re-wrap every data key under it, the app's
    // client secret and the webhook signing secret included (after the credentials).
    let (result, out) = run_rotate_keys(
        &s.config,
        RotateKeysArgs {
            new_local_version: true,
            ..batches_of(2)
        },
    )
    .await;
    result.unwrap();
    assert!(out.contains("added version 2"), "{out}");
    assert!(
        out.contains("pass 1: rewrapped 2/7")
            && out.contains("pass 1: rewrapped 5/7")
            && out.contains("pass 1: rewrapped 7/7"),
        "{out}"
    );
    assert!(
        out.contains(&format!("current key {key_id} version 2")),
        "{out}"
    );
    assert!(
        out.contains("credentials not on the current key: 0")
            && out.contains("sealed secrets not on the current key: 0"),
        "{out}"
    );
    for c in &creds {
        assert_eq!(
            sealed(store.as_ref(), &c.id).await.unwrap().dek_key_version,
            2
        );
    }
    let secrets = store
        .list_oauth_app_secrets(&app.oauth_app_id)
        .await
        .unwrap();
    assert_eq!(
        secrets
            .iter()
            .map(|s| (s.version, s.dek_key_version))
            .collect::<Vec<_>>(),
        [(1, 2)],
        "the app's only secret is now wrapped by version 2"
    );

    // The running broker loaded only version 1: it follows the key file, so a forced refresh
    // (which opens the re-wrapped row) works, and new credentials get version 2.
    b.clock.advance(Duration::from_secs(3500));
    for c in &creds {
        let fresh = client.token(&c.id).await.unwrap().access_token;
        assert_ne!(fresh, c.access);
    }
    let newer = client
        .import_fake(&s.fake, "acct-new", t0_secs() + 3600)
        .await
        .unwrap();
    assert_eq!(
        sealed(store.as_ref(), &newer.id)
            .await
            .unwrap()
            .dek_key_version,
        2
    );
    b.stop().await;

    let mut out = Vec::new();
    rotate::keys_report_command(&s.config, &aws_env(), &mut out)
        .await
        .unwrap();
    let report = String::from_utf8(out).unwrap();
    assert!(
        report.contains(&format!("{key_id} version 2")) && !report.contains("version 1 "),
        "{report}"
    );

    // Nothing uses version 1 any more: retire it; everything still opens with version 2.
    let mut out = Vec::new();
    rotate::retire_local_version_command(&s.config, 1, &mut out)
        .await
        .unwrap();
    assert_eq!(
        LocalKeyProvider::load(&s.config.keys.local_key_file)
            .unwrap()
            .versions(),
        [2]
    );
    let b = Broker::start(&s.config).await.unwrap();
    let mut client = b.client().await;
    for c in creds.iter().chain([&newer]) {
        client.token(&c.id).await.unwrap();
    }
    // The app's secret opens with version 2 alone, and the fake accepts it.
    let (checks, ok) = client.admin_of("ws1").diagnose(&app.oauth_app_id).await;
    assert_eq!(
        verdict_of(&checks, "client_authentication"),
        pb::CheckVerdict::Pass,
        "{checks:?}"
    );
    assert!(ok, "{checks:?}");
    // The webhook secret opens with version 2 alone: an event is delivered signed with it.
    let last = client
        .import_fake(&s.fake, "acct-last", t0_secs() + 3600)
        .await
        .unwrap();
    let signed_with_v2_only = || {
        receiver
            .received()
            .into_iter()
            .filter(|r| r.status == 204 && String::from_utf8_lossy(&r.body).contains(&last.id))
            .collect::<Vec<_>>()
    };
    wait_until_sync(Duration::from_secs(10), "the connect delivered", || {
        !signed_with_v2_only().is_empty()
    })
    .await;
    assert!(verified_independently(
        &signed_with_v2_only(),
        &[&webhook_secret]
    ));
    b.stop().await;
}

#[tokio::test]
async fn rotation_local_to_kms_then_key_a_to_key_b_keeps_every_token_readable() {
    let Some(endpoint) = kms_server::endpoint(
        "rotation_local_to_kms_then_key_a_to_key_b_keeps_every_token_readable",
    ) else {
        return;
    };
    let s = Setup::new().await;
    let store = s.store().await;

    // 1. Seven credentials sealed with the local key.
    let b = Broker::start(&s.config).await.unwrap();
    let mut client = b.client().await;
    let mut creds = Vec::new();
    for i in 0..7 {
        creds.push(
            client
                .import_fake(&s.fake, &format!("acct-{i}"), t0_secs() + 3600)
                .await
                .unwrap(),
        );
    }
    b.stop().await;
    let local_key = sealed(store.as_ref(), &creds[0].id)
        .await
        .unwrap()
        .dek_key_id;

    // 2. Configure KMS key A. Without the old key file the broker refuses to start: the
    //    stored credentials could not be opened.
    let key_a = kms_server::create_key(&endpoint).await;
    let kms_a = s.kms(&endpoint, &key_a);
    let err = Broker::start(&kms_a).await.err().unwrap().to_string();
    assert!(
        err.contains(&format!(
            "7 stored credential(s) have data keys wrapped by key {local_key} version 1"
        )) && err.contains("keys.previous_local_key_file"),
        "{err}"
    );
    // With it, the broker serves old rows (local) and wraps new ones with KMS.
    let mut serving_config = kms_a.clone();
    serving_config.keys.previous_local_key_file = Some(s.config.keys.local_key_file.clone());
    let serving = Broker::start(&serving_config).await.unwrap();
    let mut client = serving.client().await;
    creds.push(
        client
            .import_fake(&s.fake, "acct-kms", t0_secs() + 3600)
            .await
            .unwrap(),
    );
    assert_eq!(
        sealed(store.as_ref(), &creds[7].id)
            .await
            .unwrap()
            .dek_key_id,
        key_a
    );

    // 3. Rotate local → KMS (old key file passed on the command line) while the broker reads
    //    every row (its token cache is cold for the imported seven).
    let readers: Vec<_> = creds
        .iter()
        .map(|c| {
            let (mut client, id, access) = (client.clone(), c.id.clone(), c.access.clone());
            tokio::spawn(async move {
                assert_eq!(client.token(&id).await.unwrap().access_token, access);
            })
        })
        .collect();
    let (result, out) = run_rotate_keys(
        &kms_a,
        RotateKeysArgs {
            from_local_key_file: Some(s.config.keys.local_key_file.clone()),
            ..batches_of(3)
        },
    )
    .await;
    for r in readers {
        r.await.unwrap();
    }
    result.unwrap();
    assert!(
        out.contains("pass 1: rewrapped 3/7") && out.contains("pass 1: rewrapped 7/7"),
        "{out}"
    );
    let local_line = out
        .lines()
        .find(|l| l.contains(&local_key))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(local_line.trim_end().ends_with(" 0"), "{out}");
    assert!(
        out.contains("credentials not on the current key: 0"),
        "{out}"
    );
    for c in &creds {
        assert_eq!(
            sealed(store.as_ref(), &c.id).await.unwrap().dek_key_id,
            key_a
        );
    }
    // The serving broker keeps working after the rotation (refresh writes keep key A).
    serving.clock.advance(Duration::from_secs(3500));
    let fresh = client.token(&creds[0].id).await.unwrap().access_token;
    assert_ne!(fresh, creds[0].access);
    assert_eq!(
        sealed(store.as_ref(), &creds[0].id)
            .await
            .unwrap()
            .dek_key_id,
        key_a
    );
    serving.stop().await;
    let creds: Vec<Imported> = {
        // creds[0] was refreshed: read its current access token from now on.
        let b = Broker::start(&kms_a).await.unwrap();
        let mut client = b.client().await;
        let mut out = Vec::new();
        for c in creds {
            let access = client.token(&c.id).await.unwrap().access_token;
            out.push(Imported { access, ..c });
        }
        b.stop().await;
        out
    };
    // KMS only, no local key file at all: everything opens.
    read_all_with_fresh_broker(&kms_a, &creds).await;

    // 4. KMS key A → key B (KMS ReEncrypt: the data keys never leave KMS). A run interrupted
    //    by a KMS outage stops cleanly and the next run resumes.
    let key_b = kms_server::create_key(&endpoint).await;
    let flaky = TcpProxy::to_http(&endpoint).await;
    let kms_b_flaky = s.kms(&flaky.url(), &key_b);
    let provider = keys::open_key_provider(&kms_b_flaky.keys, &aws_env(), KeyOptions::default())
        .await
        .unwrap();
    let envelope = Arc::new(Envelope::new(provider, keys::dek_cache(&kms_b_flaky.keys)));
    let opts = RotateOptions {
        batch_size: 2,
        concurrency: 1,
        ..RotateOptions::default()
    };
    let mut take_kms_down = |_: &rotation::Progress| flaky.cut();
    let err = rotation::rotate(store.clone(), envelope.clone(), &opts, &mut take_kms_down)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            rotation::RotateError::Key {
                rewrapped: 2,
                source: CryptoError::Unavailable(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("run rotate-keys again"), "{err}");
    let report = rotation::key_report(store.as_ref(), envelope.provider().as_ref())
        .await
        .unwrap();
    assert_eq!((report.count(&key_a, 0), report.count(&key_b, 0)), (6, 2));
    flaky.restore();

    let (result, out) = run_rotate_keys(&s.kms(&endpoint, &key_b), batches_of(100)).await;
    result.unwrap();
    assert!(out.contains("pass 1: rewrapped 6/6"), "{out}");

    // A writer whose row still carries the old wrapping (the same data key under key A) cannot
    // put it back: the store keeps a credential's wrapped DEK, so the rotation stays complete.
    let raced = store.get_credential(&creds[0].id).await.unwrap().unwrap();
    let on_b = raced.sealed.clone().unwrap();
    assert_eq!(on_b.dek_key_id, key_b);
    let (ctx, _) = token_binding(&raced.id);
    let provider_a = AwsKmsKeyProvider::connect(kms_server::config(&endpoint, &key_a))
        .await
        .unwrap();
    let provider_b = AwsKmsKeyProvider::connect(kms_server::config(&endpoint, &key_b))
        .await
        .unwrap();
    let dek = provider_b
        .unwrap_data_key(&blob(&on_b).wrapped_dek, &ctx)
        .await
        .unwrap();
    let wrapped_a = provider_a.wrap_data_key(&dek, &ctx).await.unwrap();
    let mut stale = raced.clone();
    stale.sealed = Some(SealedColumns {
        dek_wrapped: wrapped_a.ciphertext,
        dek_key_id: wrapped_a.key.key_id,
        dek_key_version: 0,
        ..on_b
    });
    let stored = store
        .update_credential(&stale, raced.row_version)
        .await
        .unwrap();
    assert_eq!(stored.sealed.as_ref().unwrap().dek_key_id, key_b);
    let mut out = Vec::new();
    rotate::keys_report_command(&s.kms(&endpoint, &key_b), &aws_env(), &mut out)
        .await
        .unwrap();
    let report = String::from_utf8(out).unwrap();
    assert!(
        report.contains("credentials not on the current key: 0"),
        "{report}"
    );

    // 5. Key A can go. moto does not enforce key state (a disabled key still decrypts there),
    //    so prove it twice: no row names A, and a broker whose KMS refuses every request that
    //    names A (as IAM would without a grant) starts and reads every token.
    kms_server::disable_key(&endpoint, &key_a).await;
    let usage = store.key_usage().await.unwrap();
    assert!(usage.iter().all(|u| u.key_id == key_b), "{usage:?}");
    let no_a = KmsFaultProxy::start(&endpoint).await;
    no_a.refuse(Some((&key_a, "AccessDeniedException")));
    // The proxy does refuse key A (an A-wrapped data key kept from before).
    let probe = AwsKmsKeyProvider::connect(kms_server::config(&no_a.url, &key_b))
        .await
        .unwrap();
    let before = no_a.denied.load(Ordering::SeqCst);
    assert!(matches!(
        probe
            .unwrap_data_key(&blob(stale.sealed.as_ref().unwrap()).wrapped_dek, &ctx)
            .await,
        Err(CryptoError::AccessDenied { .. })
    ));
    assert_eq!(no_a.denied.load(Ordering::SeqCst), before + 1);
    let denied_before = no_a.denied.load(Ordering::SeqCst);
    read_all_with_fresh_broker(&s.kms(&no_a.url, &key_b), &creds).await;
    assert_eq!(
        no_a.denied.load(Ordering::SeqCst),
        denied_before,
        "no call after the rotation used key A"
    );
    assert!(no_a.forwarded.load(Ordering::SeqCst) > creds.len());
}

// ---- outages, degraded start, self-check ---------------------------------------------------------

#[tokio::test]
async fn kms_outage_serves_cached_tokens_and_fails_new_connects_cleanly() {
    let Some(endpoint) =
        kms_server::endpoint("kms_outage_serves_cached_tokens_and_fails_new_connects_cleanly")
    else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let kms = TcpProxy::to_http(&endpoint).await;
    let s = Setup::new().await;
    let config = s.kms(&kms.url(), &key);
    let b = Broker::start(&config).await.unwrap();
    let mut client = b.client().await;
    let steady = client
        .import_fake(&s.fake, "acct-steady", t0_secs() + 3600)
        .await
        .unwrap();
    let expiring = client
        .import_fake(&s.fake, "acct-expiring", t0_secs() + 3600)
        .await
        .unwrap();
    assert_eq!(
        client.token(&steady.id).await.unwrap().access_token,
        steady.access
    );
    let store = s.store().await;

    kms.cut();
    // Cached tokens are served; so is a refresh, whose data key is cached (reseal, no KMS).
    assert_eq!(
        client.token(&steady.id).await.unwrap().access_token,
        steady.access
    );
    b.clock.advance(Duration::from_secs(3590));
    let refreshed = client.token(&expiring.id).await.unwrap().access_token;
    assert_ne!(refreshed, expiring.access);
    // New data keys need KMS: import and connect fail with UNAVAILABLE, writing nothing.
    let err = client
        .import_fake(&s.fake, "acct-new", t0_secs() + 3600)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = client.connect(&s.fake).await.err().unwrap();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let all = store
        .list_credentials(&cb_store::CredentialQuery {
            workspace_id: "ws1".into(),
            limit: 100,
            include_disconnected: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "nothing half-written");
    // A broker started now refuses: its self-check cannot reach the key.
    let err = Broker::start(&config).await.err().unwrap().to_string();
    assert!(
        err.contains(&key) && err.contains("reachable") && err.contains("start_degraded"),
        "{err}"
    );

    kms.restore();
    // (The broker's clock stands at T0 + 3590 s now.)
    let newer = client
        .import_fake(&s.fake, "acct-new", t0_secs() + 7200)
        .await
        .unwrap();
    client.connect(&s.fake).await.unwrap();
    assert_eq!(
        client.token(&newer.id).await.unwrap().access_token,
        newer.access
    );
    b.stop().await;
    // Every row written during and after the outage opens with a fresh broker.
    let b = Broker::start(&config).await.unwrap();
    let mut client = b.client().await;
    assert_eq!(
        client.token(&expiring.id).await.unwrap().access_token,
        refreshed
    );
    b.stop().await;
}

#[tokio::test]
async fn start_degraded_starts_without_kms_and_recovers_when_it_returns() {
    let Some(endpoint) =
        kms_server::endpoint("start_degraded_starts_without_kms_and_recovers_when_it_returns")
    else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let kms = TcpProxy::to_http(&endpoint).await;
    let s = Setup::new().await;
    let mut config = s.kms(&kms.url(), &key);
    let b = Broker::start(&config).await.unwrap();
    let stored = b
        .client()
        .await
        .import_fake(&s.fake, "acct-1", t0_secs() + 3600)
        .await
        .unwrap();
    b.stop().await;

    kms.cut();
    let err = Broker::start(&config).await.err().unwrap().to_string();
    assert!(err.contains("start_degraded"), "{err}");
    config.keys.start_degraded = true;
    let b = Broker::start(&config).await.unwrap();
    let mut client = b.client().await;
    // Degraded and freshly started: nothing is cached, so nothing can be served yet.
    let err = client.token(&stored.id).await.err().unwrap();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = client
        .import_fake(&s.fake, "acct-2", t0_secs() + 3600)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    kms.restore();
    // The provider reconnects on demand (at most every few seconds).
    let served = wait_for(Duration::from_secs(30), "served once KMS is back", || {
        let (mut client, id) = (client.clone(), stored.id.clone());
        async move {
            match client.token(&id).await {
                Ok(t) => Ok(t.access_token),
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                    Err(e)
                }
            }
        }
    })
    .await;
    assert_eq!(served, stored.access);
    let newer = client
        .import_fake(&s.fake, "acct-2", t0_secs() + 3600)
        .await
        .unwrap();
    let store = s.store().await;
    assert_eq!(
        sealed(store.as_ref(), &newer.id).await.unwrap().dek_key_id,
        key
    );
    b.stop().await;
}

/// What KMS answers for a key's state or policy reaches the caller as its own reason, naming the
/// key: never INTERNAL. moto does not enforce key states, so the fault proxy answers as AWS does.
#[tokio::test]
async fn kms_key_states_reach_callers_as_specific_reasons_naming_the_key() {
    let Some(endpoint) =
        kms_server::endpoint("kms_key_states_reach_callers_as_specific_reasons_naming_the_key")
    else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let kms = KmsFaultProxy::start(&endpoint).await;
    let s = Setup::new().await;
    let config = s.kms(&kms.url, &key);
    let b = Broker::start(&config).await.unwrap();
    let mut stored = Vec::new();
    for n in 0..3 {
        let imported = b
            .client()
            .await
            .import_fake(&s.fake, &format!("acct-kms-state-{n}"), t0_secs() + 3600)
            .await
            .unwrap();
        stored.push(imported.id);
    }
    b.stop().await;
    for (n, (error, reason, code)) in [
        (
            "DisabledException",
            "KMS_KEY_DISABLED",
            Code::FailedPrecondition,
        ),
        (
            "KMSInvalidStateException",
            "KMS_KEY_DISABLED",
            Code::FailedPrecondition,
        ),
        (
            "NotFoundException",
            "KMS_KEY_NOT_FOUND",
            Code::FailedPrecondition,
        ),
        (
            "AccessDeniedException",
            "KMS_ACCESS_DENIED",
            Code::FailedPrecondition,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // A fresh broker (empty caches, its start-up self-check passes), then the key turns.
        kms.refuse(None);
        let b = Broker::start(&config).await.unwrap();
        kms.refuse(Some((&key, error)));
        let mut client = b.client().await;
        // The start-up check opened one stored credential per key (its data key is cached):
        // the others need KMS.
        let mut refused = Vec::new();
        for id in &stored {
            if let Err(e) = client.token(id).await {
                refused.push(("GetAccessToken", e));
            }
        }
        assert!(refused.len() >= 2, "{error}: {refused:?}");
        let new = client
            .import_fake(&s.fake, &format!("acct-new-{n}"), t0_secs() + 3600)
            .await
            .unwrap_err();
        refused.push(("ImportCredential", new));
        for (what, err) in &refused {
            assert_eq!(
                (err.code(), error_details(err).0.as_str()),
                (code, reason),
                "{error} at {what}: {err:?}"
            );
            assert!(
                err.message().contains(&key),
                "{what} names the key: {}",
                err.message()
            );
        }
        b.stop().await;
    }
    assert!(kms.denied.load(Ordering::SeqCst) >= 8);
    kms.refuse(None);
    // Once the key is usable again, so is the credential.
    let b = Broker::start(&config).await.unwrap();
    for id in &stored {
        b.client().await.token(id).await.unwrap();
    }
    b.stop().await;
}

#[tokio::test]
async fn self_check_refuses_a_missing_disabled_or_unreachable_key_clearly() {
    let Some(endpoint) =
        kms_server::endpoint("self_check_refuses_a_missing_disabled_or_unreachable_key_clearly")
    else {
        return;
    };
    let s = Setup::new().await;
    let start_err = |config: Config| async move {
        match Broker::start(&config).await {
            Ok(b) => {
                b.stop().await;
                panic!("the broker must refuse to start");
            }
            Err(e) => e.to_string(),
        }
    };

    let missing = "alias/cb-e2e-no-such-key";
    let err = start_err(s.kms(&endpoint, missing)).await;
    assert!(
        err.starts_with("keys: ")
            && err.contains(missing)
            && err.contains("not found")
            && err.contains("keys.aws_kms_key_id"),
        "{err}"
    );

    let disabled = kms_server::create_key(&endpoint).await;
    kms_server::disable_key(&endpoint, &disabled).await;
    let err = start_err(s.kms(&endpoint, &disabled)).await;
    assert!(err.contains(&disabled) && err.contains("disabled"), "{err}");

    let err = start_err(s.kms("http://127.0.0.1:1", "alias/cb-e2e")).await;
    assert!(
        err.contains("alias/cb-e2e") && err.contains("reachable") && err.contains("start_degraded"),
        "{err}"
    );
}

// ---- crypto-shredding -----------------------------------------------------------------------

#[tokio::test]
async fn disconnect_shreds_the_row_and_retiring_the_key_version_shreds_old_copies() {
    let s = Setup::new().await;
    let b = Broker::start(&s.config).await.unwrap();
    let mut client = b.client().await;
    let gone = client
        .import_fake(&s.fake, "acct-gone", t0_secs() + 3600)
        .await
        .unwrap();
    let kept = client
        .import_fake(&s.fake, "acct-kept", t0_secs() + 3600)
        .await
        .unwrap();
    client.token(&gone.id).await.unwrap();
    let store = s.store().await;
    // What a database backup taken now holds for the credential.
    let copy = sealed(store.as_ref(), &gone.id).await.unwrap();

    client.disconnect(&gone.id).await.unwrap();
    // The row holds nothing to open: ciphertext, wrapped data key and key reference are gone.
    let row = store.get_credential(&gone.id).await.unwrap().unwrap();
    assert_eq!(row.status, "DISCONNECTED");
    assert_eq!(row.sealed, None);
    assert!(!row.has_refresh_token);
    // And the broker serves nothing for it (its data key left the cache with it).
    let err = client.token(&gone.id).await.err().unwrap();
    assert_ne!(err.code(), Code::Ok);
    b.stop().await;

    // What disconnect alone does NOT do: a copy of the old row bytes (a backup) still opens
    // with the key file, because the key version that wrapped its data key still exists.
    let (ctx, aad) = token_binding(&gone.id);
    let key_file = &s.config.keys.local_key_file;
    let with_key_file = |path: &std::path::Path| {
        Envelope::new(
            Arc::new(LocalKeyProvider::load(path).unwrap()),
            cb_crypto::DekCacheConfig::default(),
        )
    };
    let opened = with_key_file(key_file)
        .open(&blob(&copy), &ctx, &aad)
        .await
        .unwrap();
    assert!(contains(opened.expose(), &gone.refresh));

    // Rotating to a new version and retiring the old one completes the shred: the copy's data
    // key was wrapped by a version that no longer exists anywhere (destroy old key-file copies).
    let (result, _) = run_rotate_keys(
        &s.config,
        RotateKeysArgs {
            new_local_version: true,
            ..batches_of(100)
        },
    )
    .await;
    result.unwrap();
    rotate::retire_local_version_command(&s.config, 1, &mut Vec::new())
        .await
        .unwrap();
    assert!(matches!(
        with_key_file(key_file).open(&blob(&copy), &ctx, &aad).await,
        Err(CryptoError::UnknownKey { version: 1, .. })
    ));
    // The credential that stayed connected was moved to version 2 and still works.
    read_all_with_fresh_broker(&s.config, &[kept]).await;
}
