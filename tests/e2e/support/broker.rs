//! Starts the real server in-process on a free port with its own data directory, and hands the
//! test real tonic clients over TCP.

use cb_broker::clock::{ManualClock, Timestamp};
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use cb_proto::v1::membership_service_client::MembershipServiceClient;
use credential_broker::app::{Application, BuildOptions, StartupError};
use credential_broker::config::{Config, DatabaseConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// A start time for the manual clock: 2026-01-01T00:00:00Z.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

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
    pub async fn members(&self) -> MembershipServiceClient<Channel> {
        MembershipServiceClient::new(self.channel().await)
    }

    /// Stops the server (graceful).
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown(Duration::from_secs(5)).await;
        }
    }
}

fn toml_str(url: &str) -> credential_broker::config::DatabaseUrl {
    // DatabaseUrl is deserialize-only by design (no public constructor that could log it).
    Config::parse(&format!("[database]\nurl = {url:?}\n"))
        .unwrap()
        .database
        .url
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
