//! `cb-bench`: prints figures, asserts nothing (DESIGN §9: tests never assert on wall-clock time).
//!
//! 1. Hot path: GetAccessToken of a cached, valid token against the same server's
//!    `grpc.health.v1.Health/Check` as the baseline, at several concurrency levels.
//! 2. Database and KMS calls per hot-path request, from `Application::issuance_stats()` and the
//!    DEK cache counters in `Application::metrics_text()`.
//! 3. Refresh storm: N expired credentials × M callers × R replicas → provider refresh calls.
//!
//! Server(s) and client run in this one process on the same tokio runtime (one worker thread per
//! core), like executors sharing a small machine with the broker.
//!
//! `--remote` instead starts the release `credential-broker serve` as a child process configured
//! as in production (or uses `--addr`) and drives it over real connections (see `remote.rs`).

use cb_broker::clock::{Clock, SystemClock, Timestamp};
use cb_fake_provider::{FakeConfig, FakeProvider};
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use clap::Parser;
use credential_broker::runtime::app::{Application, BuildOptions};
use credential_broker::runtime::config::Config;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tonic::client::GrpcService;
use tonic::codegen::{Body as HttpBody, Bytes, StdError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

mod remote;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const ACTOR_ID: &str = "u-bench";
const ACTOR_EMAIL: &str = "bench@example.com";
const STORM_PROVIDER: &str = "benchprov";

/// Benchmarks of the credential broker; prints figures (targets are informational).
#[derive(Parser, Debug)]
#[command(name = "cb-bench")]
struct Args {
    /// Seconds measured per cell of the hot-path table (each cell also gets a 0.5 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent streams of the hot-path table, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    streams: Vec<usize>,
    /// Hot path: all streams share one tonic Channel (one HTTP/2 connection) instead of one each.
    #[arg(long)]
    shared_channel: bool,
    /// Refresh storm: credentials with expired access tokens (N).
    #[arg(long, default_value_t = 20)]
    credentials: usize,
    /// Refresh storm: concurrent callers per replica (M), each on its own connection, caller k
    /// asking for credential k mod N: M × R calls released together.
    #[arg(long, default_value_t = 100)]
    callers: usize,
    /// Refresh storm: broker replicas sharing one database (R); SQLite allows only 1.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// PostgreSQL server for the storm, e.g. postgres://root@127.0.0.1:5432/postgres; a fresh
    /// database is created on it and dropped afterwards. Without it: SQLite and one replica.
    #[arg(long)]
    database_url: Option<String>,
    /// Artificial latency of the fake provider's token endpoint, in milliseconds.
    #[arg(long, default_value_t = 50)]
    provider_latency_ms: u64,
    /// Skip the hot-path measurements (1 and 2).
    #[arg(long)]
    skip_hot_path: bool,
    /// Skip the refresh storm (3).
    #[arg(long)]
    skip_storm: bool,
    /// Refresh storm: run the replicas as separate `credential-broker serve` processes in
    /// production mode (bearer-token callers) instead of in this process.
    #[arg(long)]
    storm_processes: bool,
    /// Instead of 1-3: drive a broker in ANOTHER process over real connections, configured as in
    /// production (bearer-token callers, actor metadata, SQLite + local key), at --shapes.
    #[arg(long)]
    remote: bool,
    /// --remote: the `credential-broker` binary to start (default: the one next to cb-bench).
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// --remote: use the broker already listening here (plaintext) instead of starting one; it
    /// needs an executor and an operator caller (--executor-token, --operator-token).
    #[arg(long, requires_all = ["executor_token", "operator_token"])]
    addr: Option<SocketAddr>,
    /// --remote with --addr: bearer token of a caller with role `executor`.
    #[arg(long, env = "CB_BENCH_EXECUTOR_TOKEN", hide_env_values = true)]
    executor_token: Option<String>,
    /// --remote with --addr: bearer token of a caller with role `operator` (imports the credential).
    #[arg(long, env = "CB_BENCH_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// --remote: load shapes, CONNECTIONSxSTREAMS (streams per connection), comma-separated.
    #[arg(long, value_delimiter = ',', default_values = ["1x1", "64x1", "4x16", "4x32"])]
    shapes: Vec<remote::Shape>,
    /// --remote: measure each shape this many times, health and token alternating (figures are
    /// summed over the rounds), so that a change of machine load hits both alike.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// --remote: a distinct execution_id on every GetAccessToken (as executors send them) instead
    /// of one per stream.
    #[arg(long)]
    distinct_executions: bool,
    /// --remote: also load the broker with h2load (Debian package nghttp2-client) at every shape,
    /// if it is on PATH, and print the commands that reproduce it.
    #[arg(long)]
    h2load: bool,
    /// --remote: afterwards, import this many credentials (Google-sized tokens, three scopes),
    /// load each into the token cache with one GetAccessToken, and print the broker's resident
    /// memory before and after (target: at most 256 MiB with 100,000).
    #[arg(long, default_value_t = 0)]
    hot_credentials: usize,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.seconds == 0 || args.streams.is_empty() || args.streams.contains(&0) {
        return Err("--seconds and every --streams value must be at least 1".into());
    }
    if args.credentials == 0 || args.callers == 0 || args.replicas == 0 {
        return Err("--credentials, --callers and --replicas must be at least 1".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.remote {
        if args.rounds == 0 || args.shapes.is_empty() {
            return Err("--rounds and --shapes must not be empty".into());
        }
        return remote::run(&args, cores).await;
    }
    println!(
        "cb-bench: {cores} cores; broker(s) and client share this process and its tokio runtime"
    );
    if !args.skip_hot_path {
        hot_path(&args).await?;
    }
    if !args.skip_storm {
        storm(&args).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

async fn start_broker(config: &Config) -> Res<Application> {
    let options = BuildOptions {
        clock: Arc::new(SystemClock),
        env: Arc::new(HashMap::<String, String>::new()),
    };
    Ok(Application::start(config, options).await?)
}

/// Port 0, files under `dir`, no callers (development mode), plus `extra` TOML.
fn broker_config(dir: &Path, database_url: &str, extra: &str) -> Res<Config> {
    let key = dir.join("local-key.json").display().to_string();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[database]\nurl = {database_url:?}\n[keys]\nlocal_key_file = {key:?}\n{extra}"
    );
    Config::parse(&text).map_err(|e| format!("bench configuration: {e}").into())
}

async fn connect(addr: SocketAddr) -> Res<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// A bearer token to send (brokers in production mode), or none (development mode).
type Bearer = Option<MetadataValue<Ascii>>;

fn as_actor<T>(msg: T, bearer: &Bearer) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(b) = bearer {
        r.metadata_mut().insert("authorization", b.clone());
    }
    r.metadata_mut()
        .insert("x-actor-id", MetadataValue::from_static(ACTOR_ID));
    r.metadata_mut()
        .insert("x-actor-email", MetadataValue::from_static(ACTOR_EMAIL));
    r
}

fn token_request(id: &str, bearer: &Bearer) -> tonic::Request<pb::GetAccessTokenRequest> {
    as_actor(
        pb::GetAccessTokenRequest {
            credential_id: id.to_owned(),
            workflow_id: "wf-bench".into(),
            ..Default::default()
        },
        bearer,
    )
}

/// Imports one credential as the bench actor (its Admin) and returns its id.
async fn import(
    client: &mut CredentialServiceClient<Channel>,
    bearer: &Bearer,
    provider_id: &str,
    scope: &str,
    subject: &str,
    tokens: (&str, &str),
    access_expires: Timestamp,
) -> Res<String> {
    let request = import_request(provider_id, scope, subject, tokens, access_expires);
    let response = client
        .import_credential(as_actor(request, bearer))
        .await?
        .into_inner();
    response
        .credential
        .map(|c| c.credential_id)
        .ok_or_else(|| "ImportCredential answered without a credential".into())
}

/// The ImportCredential request of [`import`]: workspace `ws-bench`, tokens as given.
fn import_request(
    provider_id: &str,
    scope: &str,
    subject: &str,
    tokens: (&str, &str),
    access_expires: Timestamp,
) -> pb::ImportCredentialRequest {
    pb::ImportCredentialRequest {
        workspace_id: "ws-bench".into(),
        provider_id: provider_id.into(),
        account: Some(pb::ProviderAccount {
            subject: subject.into(),
            label: format!("{subject}@example.com"),
        }),
        display_name: format!("bench {subject}"),
        tokens: Some(pb::TokenSet {
            access_token: tokens.0.into(),
            refresh_token: tokens.1.into(),
            access_token_expire_time: Some(prost_types::Timestamp {
                seconds: access_expires.as_millis() / 1000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        granted_scopes: vec![scope.into()],
        ..Default::default()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted.get(i).map_or(f64::NAN, |&n| n as f64 / 1e6)
}

/// Sum of every sample of counter `name` (any labels) in OpenMetrics text.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        let metric = metric.strip_suffix("_total").unwrap_or(metric);
        if metric
            .strip_suffix(name)
            .is_some_and(|p| p.is_empty() || p.ends_with('_'))
            && let Ok(v) = value.parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

// ---------------------------------------------------------------------------------------------
// 1 + 2: hot path

#[derive(Clone, Copy)]
enum Target {
    Health,
    Token,
}

/// Something that makes one unary call of either kind: the load loops are written once for the
/// in-process and the remote runs.
trait Calls: Clone + Send + 'static {
    fn call(
        &mut self,
        target: Target,
    ) -> impl std::future::Future<Output = Result<(), tonic::Status>> + Send;
}

/// Builds each GetAccessToken request of a stream.
type TokenRequest = Arc<dyn Fn() -> tonic::Request<pb::GetAccessTokenRequest> + Send + Sync>;

/// One stream: a loop of unary calls on its own clients, over `S` (a channel, or a channel that
/// adds the caller's headers).
#[derive(Clone)]
struct Stream<S> {
    health: HealthClient<S>,
    tokens: CredentialServiceClient<S>,
    token_request: TokenRequest,
}

impl<S> Calls for Stream<S>
where
    S: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <S::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
{
    async fn call(&mut self, target: Target) -> Result<(), tonic::Status> {
        match target {
            Target::Health => self
                .health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop),
            Target::Token => {
                let request = (self.token_request)();
                self.tokens.get_access_token(request).await.map(drop)
            }
        }
    }
}

/// What one load cell measured.
#[derive(Default)]
struct Load {
    /// Latency of every call, sorted, in nanoseconds.
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Load {
    fn calls(&self) -> u64 {
        self.latencies.len() as u64
    }
    fn per_second(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
    /// Calls of 35 ms or more: the signature of a Nagle / delayed-ACK stall (40 ms on Linux).
    fn slow(&self) -> usize {
        let from = self.latencies.partition_point(|&n| n < 35_000_000);
        self.latencies.len() - from
    }
    fn mean_ms(&self) -> f64 {
        let sum: u64 = self.latencies.iter().sum();
        sum as f64 / self.latencies.len().max(1) as f64 / 1e6
    }
}

fn print_row(streams: usize, call: &str, load: &Load, tail: String) {
    println!(
        "   {streams:>7}  {call:<14} {:>9.0} {:>7.3} {:>7.3} {:>7.3} {:>7.1} {:>7} {:>6}{tail}",
        load.per_second(),
        load.mean_ms(),
        percentile_ms(&load.latencies, 0.50),
        percentile_ms(&load.latencies, 0.99),
        percentile_ms(&load.latencies, 1.0),
        load.slow(),
        load.errors,
    );
}

/// Every stream calls `target` in a loop for `duration`; all start together.
async fn run_load<S: Calls>(streams: &[S], target: Target, duration: Duration) -> Res<Load> {
    let barrier = Arc::new(Barrier::new(streams.len() + 1));
    let tasks: Vec<_> = streams
        .iter()
        .cloned()
        .map(|mut s| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let end = Instant::now() + duration;
                let mut latencies = Vec::with_capacity(1 << 15);
                let (mut errors, mut first_error) = (0u64, None);
                while Instant::now() < end {
                    let t = Instant::now();
                    if let Err(e) = s.call(target).await {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                    latencies.push(nanos(t.elapsed()));
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    barrier.wait().await;
    let start = Instant::now();
    let mut load = Load::default();
    for task in tasks {
        let (latencies, errors, first_error) = task.await?;
        load.latencies.extend(latencies);
        load.errors += errors;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.elapsed = start.elapsed();
    load.latencies.sort_unstable();
    Ok(load)
}

/// Token issuances recorded in the audit log of the SQLite file (a row may count several:
/// `count=N` in its detail), or `None` when they cannot be counted.
async fn audit_rows(db: &Path) -> Option<i64> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.ok()?;
    let n = sqlx::query_scalar::<_, i64>(
        "SELECT COALESCE(SUM(CASE WHEN instr(detail, 'count=') > 0 \
         THEN CAST(substr(detail, instr(detail, 'count=') + 6) AS INTEGER) ELSE 1 END), 0) \
         FROM audit_events WHERE action = 'token.issue'",
    )
    .fetch_one(&mut conn)
    .await
    .ok();
    let _ = conn.close().await;
    n
}

/// Waits until the audit writer stops adding rows (at most a minute).
async fn audit_rows_settled(db: &Path) -> Option<i64> {
    let mut last = audit_rows(db).await?;
    let mut stable = 0;
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = audit_rows(db).await?;
        stable = if n == last { stable + 1 } else { 0 };
        last = n;
        if stable >= 4 {
            break;
        }
    }
    Some(last)
}

async fn hot_path(args: &Args) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("broker.db");
    let config = broker_config(dir.path(), &format!("sqlite://{}", db.display()), "")?;
    let app = start_broker(&config).await?;
    let addr = app.local_addr();
    let channel = connect(addr).await?;
    let mut admin = CredentialServiceClient::new(channel.clone());
    let expires = SystemClock.now().plus(Duration::from_secs(6 * 3600));
    let id: Arc<str> = import(
        &mut admin,
        &None,
        "gmail",
        "https://www.googleapis.com/auth/gmail.readonly",
        "acct-hot",
        ("bench-access-token", "bench-refresh-token"),
        expires,
    )
    .await?
    .into();
    admin.get_access_token(token_request(&id, &None)).await?; // warms the in-memory entry

    let request: TokenRequest = Arc::new(move || token_request(&id, &None));
    let most = args.streams.iter().copied().max().unwrap_or(1);
    let mut streams = Vec::with_capacity(most);
    for _ in 0..most {
        let ch = if args.shared_channel {
            channel.clone()
        } else {
            connect(addr).await?
        };
        streams.push(Stream {
            health: HealthClient::new(ch.clone()),
            tokens: CredentialServiceClient::new(ch),
            token_request: request.clone(),
        });
    }

    let seconds = Duration::from_secs(args.seconds);
    let warm_up = Duration::from_millis(500);
    println!();
    println!(
        "1. hot path: GetAccessToken (cached token, valid 6 h) vs grpc.health.v1.Health/Check, same server"
    );
    println!(
        "   SQLite in a temp dir, development mode (no callers), {} s per cell after a 0.5 s warm-up,",
        args.seconds
    );
    println!(
        "   each stream a loop of unary calls on {}",
        if args.shared_channel {
            "ONE shared tonic Channel (one HTTP/2 connection for all streams)"
        } else {
            "its own tonic Channel (one HTTP/2 connection per stream)"
        }
    );
    println!();
    println!(
        "   {:>7}  {:<14} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}   token/health",
        "streams", "call", "calls/s", "mean ms", "p50 ms", "p99 ms", "max ms", ">=35ms", "errors"
    );
    let stats_before = app.issuance_stats();
    let metrics_before = app.metrics_text();
    let audit_before = audit_rows_settled(&db).await; // the warm-up call's row lands first
    let mut token_requests = 0u64;
    let mut worst_ratio: Option<(f64, usize)> = None;
    let mut p99_at_64 = None;
    for &n in &args.streams {
        let cell = &streams[..n];
        run_load(cell, Target::Health, warm_up).await?;
        let health = run_load(cell, Target::Health, seconds).await?;
        let warm = run_load(cell, Target::Token, warm_up).await?;
        let token = run_load(cell, Target::Token, seconds).await?;
        token_requests += warm.calls() + token.calls();
        let ratio = token.per_second() / health.per_second().max(f64::EPSILON);
        if worst_ratio.is_none_or(|(r, _)| ratio < r) {
            worst_ratio = Some((ratio, n));
        }
        let token_p99 = percentile_ms(&token.latencies, 0.99);
        if n == 64 {
            p99_at_64 = Some(token_p99);
        }
        print_row(n, "health", &health, String::new());
        print_row(
            n,
            "GetAccessToken",
            &token,
            format!("   {ratio:.2}  {}", verdict(ratio >= 0.7)),
        );
        for e in [&health.first_error, &token.first_error, &warm.first_error]
            .into_iter()
            .flatten()
        {
            println!("            first error: {e}");
        }
    }
    let stats_after = app.issuance_stats();
    let metrics_after = app.metrics_text();
    println!();
    println!("   targets (informational; 2-core machine, client and server share it):");
    if let Some((ratio, n)) = worst_ratio {
        println!(
            "     token/health throughput ratio >= 0.70 at every level   worst {ratio:.2} at {n} streams   {}",
            verdict(ratio >= 0.7)
        );
    }
    match p99_at_64 {
        Some(p99) => println!(
            "     GetAccessToken p99 <= 2 ms at 64 streams              {p99:.3} ms                  {}",
            verdict(p99 <= 2.0)
        ),
        None => println!(
            "     GetAccessToken p99 <= 2 ms at 64 streams              not measured (no 64 in --streams)"
        ),
    }

    // 2. Database and KMS calls: a token-cache hit returns before any store or envelope call, so
    // the token-cache misses bound the database calls; the DEK cache misses bound the KMS calls.
    let hits = stats_after.cache_hits - stats_before.cache_hits;
    let misses = stats_after.cache_misses - stats_before.cache_misses;
    let refreshes = stats_after.provider_refreshes - stats_before.provider_refreshes;
    let delta =
        |name: &str| Some(metric_sum(&metrics_after, name)? - metric_sum(&metrics_before, name)?);
    let dek_hits = delta("dek_cache_hits");
    let dek_misses = delta("dek_cache_misses");
    let kms_calls = delta("kms_calls");
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"));
    println!();
    println!(
        "2. database and KMS calls on the hot path (counters over every token cell, warm-ups included)"
    );
    let row = |label: &str, value: String| println!("   {label:<46} {value:>10}");
    row("GetAccessToken requests sent", token_requests.to_string());
    row("token cache hits (issuance_stats)", hits.to_string());
    row(
        "token cache misses (store + envelope path)",
        misses.to_string(),
    );
    row("provider refreshes", refreshes.to_string());
    row("DEK cache hits (metrics_text)", show(dek_hits));
    row("DEK cache misses (metrics_text)", show(dek_misses));
    row(
        "KMS calls, any operation (metrics_text)",
        format!(
            "{}   (includes the health monitor's periodic key round trip)",
            show(kms_calls)
        ),
    );
    let calls = misses as f64 + dek_misses.unwrap_or(0.0);
    let per_request = if calls == 0.0 {
        "0".to_owned()
    } else {
        format!("{:.6}", calls / token_requests.max(1) as f64)
    };
    println!("   db+kms calls per hot-path request: {per_request}");
    let audit_after = audit_rows_settled(&db).await;
    if let (Some(before), Some(after)) = (audit_before, audit_after) {
        let written = u64::try_from(after - before).unwrap_or(0);
        println!(
            "   off the request path: `token.issue` issuances audited {written} of {token_requests} requests ({} dropped: audit buffer full)",
            token_requests.saturating_sub(written)
        );
    }
    app.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3: refresh storm

/// Provider settings, the custom provider pointing at `provider`, no background refresher (the
/// callers must meet the expired tokens themselves).
fn storm_toml(provider: &FakeProvider) -> String {
    let base = provider.base_url();
    let FakeConfig {
        client_id: id,
        client_secret: secret,
        ..
    } = provider.config();
    format!(
        r#"[oauth]
allow_insecure_loopback = true
[tokens]
refresh_scan_interval_seconds = 0
[providers.{STORM_PROVIDER}]
client_id = "{id}"
client_secret = "{secret}"

[[custom_providers]]
id = "{STORM_PROVIDER}"
display_name = "Bench provider"
icon_url = "{base}/icon.png"
category = "developer"
authorize_url = "{base}/authorize"
token_url = "{base}/token"
default_scopes = ["read"]
scopes = [{{ name = "read", description = "Read things" }}]
auth_style = "basic"
pkce = "supported"
docs_url = "{base}/docs"
[custom_providers.account]
kind = "userinfo"
url = "{base}/userinfo"
subject_pointer = "/sub"
label_pointer = "/email"
[custom_providers.refresh]
access_token_lifetime_seconds = 3600
rotates_refresh_tokens = true
"#
    )
}

/// A database created for one run on the server of `admin_url`.
struct PgDatabase {
    url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    async fn create(admin_url: &str) -> Res<Self> {
        let name = format!(
            "cb_bench_{}_{}",
            std::process::id(),
            SystemClock.now().as_millis()
        );
        let mut admin = PgConnection::connect(admin_url).await?;
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await?;
        let _ = admin.close().await;
        Ok(Self {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_owned(),
            name,
        })
    }

    async fn drop_database(self) -> Res<()> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&self.name),
            )
            .await?;
        admin
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\"",
                self.name
            )))
            .await?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// Replaces the database name (URL path) of a PostgreSQL URL, keeping its query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base
        .get(authority_start..)
        .and_then(|rest| rest.find('/'))
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", base.get(..authority_end).unwrap_or(base));
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn storm(args: &Args) -> Res<()> {
    // Rotating refresh tokens, every token request delayed by the configured latency.
    let provider = FakeProvider::start(FakeConfig {
        client_id: "bench-client".into(),
        client_secret: "bench-secret".into(),
        rotate_refresh_tokens: true,
        token_delay: Duration::from_millis(args.provider_latency_ms),
        ..FakeConfig::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    println!();
    let (url, pg, replicas) = match &args.database_url {
        Some(admin_url) => {
            let db = PgDatabase::create(admin_url).await?;
            println!(
                "3. refresh storm on PostgreSQL (fresh database {}, dropped afterwards)",
                db.name
            );
            (db.url.clone(), Some(db), args.replicas)
        }
        None => {
            println!("3. refresh storm on SQLite");
            if args.replicas > 1 {
                println!(
                    "   replicas = 1, not {}: SQLite is for one process (DESIGN §8); pass --database-url postgres://... for replicas",
                    args.replicas
                );
            }
            let db = dir.path().join("broker.db");
            (format!("sqlite://{}", db.display()), None, 1)
        }
    };
    let result = storm_on(args, &provider, dir.path(), &url, replicas).await;
    if let Some(db) = pg {
        db.drop_database().await?;
    }
    result
}

async fn storm_on(
    args: &Args,
    provider: &FakeProvider,
    dir: &Path,
    url: &str,
    replicas: usize,
) -> Res<()> {
    let (n, m) = (args.credentials, args.callers);
    let extra = storm_toml(provider);
    // In-process replicas (development mode), or separate processes in production mode.
    let mut apps = Vec::new();
    let mut processes = Vec::new();
    let (addrs, executor, operator): (Vec<SocketAddr>, Bearer, Bearer) = if args.storm_processes {
        let binary = remote::server_binary(args)?;
        let (executor, operator) = (remote::run_token("executor"), remote::run_token("operator"));
        let mut addrs = Vec::with_capacity(replicas);
        for i in 0..replicas {
            // One after the other: the first migrates the database and creates the key file.
            let (mut server, addr) = remote::start_server(
                &binary,
                dir,
                &format!("replica-{i}"),
                url,
                &extra,
                &executor,
                &operator,
            )?;
            remote::wait_ready(addr, Some(&mut server)).await?;
            processes.push(server);
            addrs.push(addr);
        }
        let bearer = |t: &str| format!("Bearer {t}").parse().map(Some);
        (addrs, bearer(&executor)?, bearer(&operator)?)
    } else {
        let config = broker_config(dir, url, &extra)?;
        for _ in 0..replicas {
            // One after the other: the first migrates the database and creates the shared key file.
            apps.push(start_broker(&config).await?);
        }
        (
            apps.iter().map(Application::local_addr).collect(),
            None,
            None,
        )
    };
    let mut admin = CredentialServiceClient::new(connect(addrs[0]).await?);
    let expired = SystemClock.now().minus(Duration::from_secs(3600));
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let access = format!("expired-access-{i}");
        let subject = format!("acct-{i}");
        let (_, refresh) = provider.issue_grant(&subject);
        let tokens = (access.as_str(), refresh.as_str());
        ids.push(
            import(
                &mut admin,
                &operator,
                STORM_PROVIDER,
                "read",
                &subject,
                tokens,
                expired,
            )
            .await?,
        );
    }
    let mut callers = Vec::with_capacity(replicas * m);
    for &addr in &addrs {
        for _ in 0..m {
            callers.push(CredentialServiceClient::new(connect(addr).await?));
        }
    }
    let total = callers.len();
    println!(
        "   N = {n} credentials (access tokens expired 1 h ago) × M = {m} callers per replica × R = {replicas} replica(s)"
    );
    println!(
        "   = {total} GetAccessToken calls released together (caller k asks for credential k mod N, each caller on its own connection);"
    );
    println!(
        "   provider latency {} ms, rotating refresh tokens; background refresher off",
        args.provider_latency_ms
    );
    println!(
        "   replicas: {}",
        if args.storm_processes {
            "separate `credential-broker serve` processes in production mode (bearer-token callers)"
        } else {
            "in this process (development mode)"
        }
    );

    let barrier = Arc::new(Barrier::new(total + 1));
    let mut tasks = Vec::with_capacity(total);
    for (k, mut client) in callers.into_iter().enumerate() {
        let (id, barrier) = (ids[k % n].clone(), barrier.clone());
        let request = token_request(&id, &executor);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let answer = client.get_access_token(request).await;
            let token = answer.map(|r| r.into_inner().access_token);
            (Instant::now(), started.elapsed(), id, token)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut last = start;
    let mut latencies = Vec::with_capacity(total);
    let (mut failures, mut first_error) = (0usize, None);
    let mut served = HashSet::new();
    for task in tasks {
        let (done, latency, id, token) = task.await?;
        last = last.max(done);
        latencies.push(nanos(latency));
        match token {
            Ok(t) => {
                served.insert((id, t));
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let wall = last.duration_since(start);
    latencies.sort_unstable();
    let calls = provider.refresh_calls();
    println!();
    println!(
        "   provider refresh calls          {calls:>8}   (must equal N = {n}: {})",
        verdict(calls == n as u64)
    );
    println!(
        "   refresh-token reuse detected    {:>8}",
        provider.reuse_detections()
    );
    println!(
        "   provider error answers          {:>8}",
        provider.token_errors()
    );
    println!("   failed calls                    {failures:>8}   of {total}");
    if let Some(e) = first_error {
        println!("     first error: {e}");
    }
    println!(
        "   distinct (credential, token)    {:>8}   (one per credential when every caller got the refreshed token)",
        served.len()
    );
    println!(
        "   wall time until all answered    {:>8.1} ms",
        wall.as_secs_f64() * 1e3
    );
    let requests = provider.token_requests();
    if let (Some(first), Some(latest)) = (requests.first(), requests.last()) {
        let (first, latest) = (first.received_at, latest.received_at);
        let after = |t: Instant| t.saturating_duration_since(start).as_secs_f64() * 1e3;
        println!(
            "   provider calls arrived          {:>8.1} ms .. {:.1} ms after the release",
            after(first),
            after(latest)
        );
    }
    println!(
        "   per-call latency                p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.99),
        percentile_ms(&latencies, 1.0)
    );
    let p99_over = percentile_ms(&latencies, 0.99) - args.provider_latency_ms as f64;
    println!(
        "   p99 <= provider latency + 30 ms  {:>8.1} ms over   {}",
        p99_over,
        verdict(p99_over <= 30.0)
    );
    if !apps.is_empty() {
        println!(
            "   per replica                     provider refreshes led / flight joins / lease waits / cache misses"
        );
    }
    for (i, app) in apps.iter().enumerate() {
        let s = app.issuance_stats();
        println!(
            "     replica {i}                     {} / {} / {} / {}",
            s.provider_refreshes, s.flight_joins, s.lease_waits, s.cache_misses
        );
    }
    for app in apps {
        app.shutdown(Duration::from_secs(5)).await;
    }
    for mut p in processes {
        p.stop().await;
    }
    Ok(())
}
