//! Starts the real server in-process on a free port with its own data directory, and hands the
//! test real tonic clients over TCP.

use cb_broker::clock::{ManualClock, Timestamp};
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::runtime::app::{Application, BuildOptions};
use credential_broker::runtime::config::{Config, DatabaseConfig};
use credential_broker::runtime::error::StartupError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// A start time for the manual clock: 2026-01-01T00:00:00Z.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// [`T0`] in Unix seconds, for token expiry times.
pub fn t0_secs() -> i64 {
    T0.as_millis() / 1000
}

/// A running broker under test.
pub struct TestBroker {
    app: Option<Application>,
    /// The configuration it was started with.
    pub config: Config,
    /// The clock the broker reads; tests move it.
    pub clock: ManualClock,
    /// Holds the data directory alive.
    pub dir: Arc<tempfile::TempDir>,
}

impl TestBroker {
    /// A broker on a fresh SQLite file and a fresh local key.
    pub async fn sqlite() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let url = format!("sqlite://{}", dir.path().join("broker.db").display());
        Self::start(Self::config(&dir, url), dir).await.unwrap()
    }

    /// A broker on the given database URL and a fresh local key.
    pub async fn with_database(url: &str) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start(Self::config(&dir, url.to_owned()), dir)
            .await
            .unwrap()
    }

    /// A fresh data directory and the test configuration on an SQLite file in it.
    pub fn sqlite_config() -> (Arc<tempfile::TempDir>, Config) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let url = format!("sqlite://{}", dir.path().join("broker.db").display());
        let config = Self::config(&dir, url);
        (dir, config)
    }

    /// The test configuration: port 0, files under `dir`.
    pub fn config(dir: &tempfile::TempDir, database_url: String) -> Config {
        let mut c = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: DatabaseConfig {
                url: toml_str(&database_url),
                max_connections: 5,
            },
            ..Config::default()
        };
        c.keys.local_key_file = dir.path().join("local-key.json");
        c
    }

    /// Starts a broker with `config`, keeping `dir` alive.
    pub async fn start(config: Config, dir: Arc<tempfile::TempDir>) -> Result<Self, StartupError> {
        let clock = ManualClock::new(T0);
        let app = Application::start(
            &config,
            BuildOptions {
                clock: Arc::new(clock.clone()),
                env: Arc::new(std::collections::HashMap::<String, String>::new()),
            },
        )
        .await?;
        Ok(Self {
            app: Some(app),
            config,
            clock,
            dir,
        })
    }

    /// The running application.
    pub fn app(&self) -> &Application {
        self.app.as_ref().unwrap()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.app.as_ref().unwrap().local_addr()
    }

    /// A channel to the broker.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A CredentialService client.
    pub async fn credentials(&self) -> CredentialServiceClient<Channel> {
        CredentialServiceClient::new(self.channel().await)
    }

    /// A MembershipService client.
    pub async fn members(
        &self,
    ) -> cb_proto::v1::membership_service_client::MembershipServiceClient<Channel> {
        cb_proto::v1::membership_service_client::MembershipServiceClient::new(self.channel().await)
    }

    /// A typed client acting as `actor`.
    pub async fn client(
        &self,
        actor: crate::support::client::Actor,
    ) -> crate::support::client::Client {
        crate::support::client::Client::new(self.channel().await, actor)
    }

    /// Writes the audit events buffered by hot paths now (instead of waiting for the writer).
    pub async fn flush_audit(&self) {
        self.app().flush_audit().await;
    }

    /// Where the metrics endpoint is bound (`telemetry.metrics_listen` set, port 0 is fine).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.app()
            .metrics_addr()
            .expect("metrics endpoint configured")
    }

    /// Issuance counters of the running server.
    pub fn issuance_stats(&self) -> cb_broker::issuance::StatsSnapshot {
        self.app.as_ref().unwrap().issuance_stats()
    }

    /// One refresh-ahead pass.
    pub async fn refresh_due(&self) -> usize {
        self.app.as_ref().unwrap().refresh_due().await
    }

    /// One pass of the expiring-grant scan.
    pub async fn warn_expiring(&self) -> usize {
        self.app.as_ref().unwrap().warn_expiring().await.unwrap()
    }

    /// Stops the server (graceful).
    pub async fn stop(&mut self) {
        self.stop_with_grace(Duration::from_secs(5)).await;
    }

    /// Stops the server, giving in-flight calls up to `grace`.
    pub async fn stop_with_grace(&mut self, grace: Duration) {
        if let Some(app) = self.app.take() {
            app.shutdown(grace).await;
        }
    }

    /// Another replica: the same configuration (the same database and key file) on its own
    /// port.
    pub async fn replica(&self) -> Self {
        let mut config = self.config.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start(config, self.dir.clone()).await.unwrap()
    }

    /// A broker on SQLite (or `database_url`) with `fake` configured as provider `fake`, no
    /// background refresh scan (tests drive refreshes), then `tune` applied.
    pub async fn with_fake(
        fake: &crate::support::fake_provider::FakeProvider,
        database_url: Option<&str>,
        tune: impl FnOnce(&mut Config),
    ) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let url = database_url.map_or_else(
            || format!("sqlite://{}", dir.path().join("broker.db").display()),
            str::to_owned,
        );
        let mut config = Self::config(&dir, url);
        with_fake_provider(&mut config, fake, "fake", &[]);
        config.tokens.refresh_scan_interval_seconds = 0;
        tune(&mut config);
        Self::start(config, dir).await.unwrap()
    }
}

/// `[providers.fake]` with `fake`'s client credentials, and the custom provider `fake` it serves.
pub fn provider_toml(fake: &crate::support::fake_provider::FakeProvider) -> String {
    let fc = fake.config();
    format!(
        "[providers.fake]\nclient_id = {:?}\nclient_secret = {:?}\n",
        fc.client_id, fc.client_secret
    ) + &custom_provider_toml(fake)
}

/// The `[[custom_providers]]` entry `fake`, served by `fake`.
pub fn custom_provider_toml(fake: &crate::support::fake_provider::FakeProvider) -> String {
    let base = fake.base_url();
    format!(
        r#"
[[custom_providers]]
id = "fake"
display_name = "Fake"
icon_url = "{base}/icon.png"
category = "test"
authorize_url = "{base}/authorize"
token_url = "{base}/token"
revocation_url = "{base}/revoke"
default_scopes = ["read"]
auth_style = "basic"
pkce = "supported"
docs_url = "{base}/docs"
scopes = [{{ name = "read", description = "Read things" }}, {{ name = "write", description = "Write things" }}]
[custom_providers.account]
kind = "userinfo"
url = "{base}/userinfo"
subject_pointer = "/sub"
label_pointer = "/email"
"#
    )
}

fn toml_str(url: &str) -> credential_broker::runtime::config::DatabaseUrl {
    // DatabaseUrl is deserialize-only by design (no public constructor that could log it).
    Config::parse(&format!("[database]\nurl = {url:?}\n"))
        .unwrap()
        .database
        .url
}

/// A request from the service holding the bearer `token`, acting for `actor` (plain metadata).
pub fn from_service<T>(msg: T, token: &str, actor: Option<(&str, &str)>) -> tonic::Request<T> {
    let mut r = match actor {
        Some((id, email)) => as_actor(msg, id, email),
        None => tonic::Request::new(msg),
    };
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Adds actor metadata to a request.
pub fn as_actor<T>(msg: T, user_id: &str, email: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-actor-id", user_id.parse().unwrap());
    r.metadata_mut()
        .insert("x-actor-email", email.parse().unwrap());
    r
}

/// Adds workspace-admin actor metadata to a request.
pub fn as_workspace_admin<T>(
    msg: T,
    user_id: &str,
    email: &str,
    workspace: &str,
) -> tonic::Request<T> {
    let mut r = as_actor(msg, user_id, email);
    r.metadata_mut()
        .insert("x-actor-workspace-id", workspace.parse().unwrap());
    r.metadata_mut()
        .insert("x-actor-workspace-role", "admin".parse().unwrap());
    r
}

/// `err` has `code` and the `ErrorInfo` reason `reason`.
pub fn assert_status(err: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!((err.code(), error_details(err).0.as_str()), (code, reason));
}

/// The ErrorInfo reason and BadRequest fields of a status.
pub fn error_details(s: &tonic::Status) -> (String, Vec<String>) {
    use tonic_types::StatusExt;
    let d = s.get_error_details();
    let reason = d.error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let fields = d
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    (reason, fields)
}

/// The redirect URI the fake provider and the test brokers agree on.
pub const REDIRECT_URI: &str = "https://broker.test/oauth/callback";

/// Declares `fake` as custom provider `id` in `config`, with its client credentials.
pub fn with_fake_provider(
    config: &mut Config,
    fake: &crate::support::fake_provider::FakeProvider,
    id: &str,
    quirks: &[cb_oauth::catalog::Quirk],
) {
    use cb_oauth::catalog::{AuthStyle, Pkce};
    let fc = fake.config();
    config.oauth.allow_insecure_loopback = true;
    if !config.oauth.redirect_uris.iter().any(|u| u == REDIRECT_URI) {
        config.oauth.redirect_uris.push(REDIRECT_URI.to_owned());
    }
    config.custom_providers.retain(|p| p.id != id);
    config
        .custom_providers
        .push(fake.spec(id, AuthStyle::Basic, Pkce::Supported, quirks));
    let settings: credential_broker::runtime::config::ProviderSettings = Config::parse(&format!(
        "[providers.{id}]\nclient_id = {:?}\nclient_secret = {:?}\n",
        fc.client_id, fc.client_secret
    ))
    .unwrap()
    .providers
    .remove(id)
    .unwrap();
    config.providers.insert(id.to_owned(), settings);
}

/// Serializes the parts of a test config that the broker binary needs into TOML.
pub fn config_toml(config: &Config, database_url: &str) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "listen = {:?}", config.listen.to_string());
    let _ = writeln!(t, "shutdown_grace_seconds = 2");
    let _ = writeln!(
        t,
        "[database]\nurl = {database_url:?}\nmax_connections = {}",
        config.database.max_connections
    );
    let _ = writeln!(
        t,
        "[keys]\nlocal_key_file = {:?}",
        config.keys.local_key_file.display().to_string()
    );
    let _ = writeln!(t, "[log]\nformat = \"json\"\nfilter = \"info\"");
    let _ = writeln!(
        t,
        "[oauth]\nallow_insecure_loopback = {}\nredirect_uris = {:?}\nhttp_timeout_seconds = {}",
        config.oauth.allow_insecure_loopback,
        config.oauth.redirect_uris,
        config.oauth.http_timeout_seconds
    );
    let _ = writeln!(
        t,
        "[tokens]\nlease_seconds = {}\nrefresh_scan_interval_seconds = {}\nprovider_attempts = {}",
        config.tokens.lease_seconds,
        config.tokens.refresh_scan_interval_seconds,
        config.tokens.provider_attempts
    );
    t
}

/// A broker running as its own OS process (the real binary).
pub struct BrokerProcess {
    child: std::process::Child,
    /// The address it bound (read back from its log: configs listen on port 0).
    pub addr: SocketAddr,
    /// Where its log goes.
    pub log: std::path::PathBuf,
}

/// How long a child broker may take to start or stop before the test fails.
const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

impl BrokerProcess {
    /// Starts the binary with `toml` (from [`config_toml`], listening on port 0, JSON logs at
    /// `info` or below), reads the address it bound from its log and waits until it answers
    /// health checks.
    pub async fn spawn(dir: &std::path::Path, name: &str, toml: &str) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cb-e2e-broker"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("CREDENTIAL_BROKER_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_SDK_DISABLED")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr =
            crate::support::wait::wait_for(PROCESS_DEADLINE, "broker bound its listener", || {
                let exited = child.try_wait().unwrap();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                std::future::ready(match (listening_addr(&text), exited) {
                    (Some(addr), _) => Ok(addr),
                    (None, Some(status)) => {
                        panic!("broker exited ({status}) before listening; log:\n{text}")
                    }
                    (None, None) => Err(text),
                })
            })
            .await;
        let p = Self { child, addr, log };
        p.wait_ready().await;
        p
    }

    async fn wait_ready(&self) {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let url = format!("http://{}", self.addr);
        crate::support::wait::wait_until(PROCESS_DEADLINE, "broker answers health checks", || {
            let url = url.clone();
            async move {
                let Ok(ch) = Channel::from_shared(url).unwrap().connect().await else {
                    return false;
                };
                HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    /// A channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A typed client acting as `actor`.
    pub async fn client(
        &self,
        actor: crate::support::client::Actor,
    ) -> crate::support::client::Client {
        crate::support::client::Client::new(self.channel().await, actor)
    }

    /// Where its Prometheus endpoint listens (`telemetry.metrics_listen`, port 0 allowed), read
    /// from its log.
    pub fn metrics_addr(&self) -> SocketAddr {
        logged_addr(&self.log(), "metrics endpoint listening")
            .unwrap_or_else(|| panic!("no metrics endpoint in the log:\n{}", self.log()))
    }

    /// Its OS process id (a test may kill it from a callback).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up (tests lease expiry).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (graceful shutdown flushes buffers and spans).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        let (child, log) = (&mut self.child, &self.log);
        crate::support::wait::wait_for(PROCESS_DEADLINE, "broker stops on SIGTERM", || {
            std::future::ready(
                child
                    .try_wait()
                    .unwrap()
                    .ok_or_else(|| std::fs::read_to_string(log).unwrap_or_default()),
            )
        })
        .await
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in the server's JSON "credential broker listening" line, once it is written.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    logged_addr(log, "credential broker listening")
}

/// The `addr` field of the first JSON log event whose message is `message`.
fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == message)
        .and_then(|event| event["addr"].as_str()?.parse().ok())
}

/// An ImportCredential request for a grant `fake` issues to `subject` (provider `fake`,
/// workspace `ws1`), whose access token expires at `expires_at_secs`; with the raw tokens.
pub fn fake_grant_import(
    fake: &crate::support::fake_provider::FakeProvider,
    subject: &str,
    expires_at_secs: i64,
) -> (cb_proto::v1::ImportCredentialRequest, String, String) {
    let (access, refresh) = fake.issue_grant(subject);
    let req = cb_proto::v1::ImportCredentialRequest {
        workspace_id: "ws1".into(),
        provider_id: "fake".into(),
        account: Some(cb_proto::v1::ProviderAccount {
            subject: subject.into(),
            label: format!("{subject}@example.com"),
        }),
        display_name: format!("Fake {subject}"),
        tokens: Some(cb_proto::v1::TokenSet {
            access_token: access.clone(),
            refresh_token: refresh.clone(),
            access_token_expire_time: Some(prost_types::Timestamp {
                seconds: expires_at_secs,
                nanos: 0,
            }),
            ..Default::default()
        }),
        granted_scopes: vec!["read".into()],
        ..Default::default()
    };
    (req, access, refresh)
}
