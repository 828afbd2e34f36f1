//! `--remote`: GetAccessToken on cache hits against `grpc.health.v1.Health/Check` of a broker in
//! ANOTHER process, over real TCP connections, configured as in production: bearer-token callers
//! (authentication on), actor metadata on every call, SQLite and a local key. Both calls carry the
//! same headers, so the ratio token/health measured in the same run is what the broker's own work
//! on a cache hit costs against the cheapest RPC the same server answers.
//!
//! The load generator is this process (tonic clients, several connections × streams). It shares
//! the machine's cores with the broker, so the server's CPU time per call (from
//! `/proc/<pid>/stat`) is printed beside the throughput: it does not depend on the client.

use crate::{
    ACTOR_EMAIL, ACTOR_ID, Args, Calls, Load, Res, Stream, Target, TokenRequest, import_request,
    percentile_ms, verdict,
};
use cb_broker::clock::{Clock, SystemClock};
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use credential_broker::layers::auth::token_sha256_hex;
use credential_broker::runtime::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A load shape: `connections` HTTP/2 connections, each carrying `streams` concurrent
/// closed-loop streams of unary calls.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    connections: usize,
    streams: usize,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |n: &str| n.trim().parse::<usize>().ok().filter(|&n| n > 0);
        s.split_once(['x', 'X'])
            .and_then(|(c, n)| {
                Some(Shape {
                    connections: parse(c)?,
                    streams: parse(n)?,
                })
            })
            .ok_or_else(|| format!("{s:?}: expected CONNECTIONSxSTREAMS, e.g. 4x16"))
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (c, s) = (self.connections, self.streams);
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(f, "{c} conn{} × {s} stream{}", plural(c), plural(s))
    }
}

/// The headers of every call, health checks included: the caller's bearer token and the actor.
#[derive(Clone)]
struct Headers {
    authorization: MetadataValue<Ascii>,
}

impl Headers {
    fn new(token: &str) -> Res<Self> {
        Ok(Self {
            authorization: format!("Bearer {token}").parse()?,
        })
    }
}

impl Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let m = req.metadata_mut();
        m.insert("authorization", self.authorization.clone());
        m.insert("x-actor-id", MetadataValue::from_static(ACTOR_ID));
        m.insert("x-actor-email", MetadataValue::from_static(ACTOR_EMAIL));
        Ok(req)
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat` (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux userspace ABI.
    Some(ticks as f64 / 100.0)
}

/// A broker this run started: killed when dropped.
pub(crate) struct Server {
    child: Child,
    pid: u32,
    log: PathBuf,
}

/// A free loopback port (bound, read, released: the broker binds it right after).
fn free_port() -> Res<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Server {
    /// Stops the broker (SIGKILL: nothing is left to flush in a benchmark).
    pub(crate) async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The `credential-broker` binary: `--server-binary`, else the one next to cb-bench.
pub(crate) fn server_binary(args: &Args) -> Res<PathBuf> {
    Ok(match &args.server_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("credential-broker"),
    })
}

/// Writes a production-like configuration (`name`.toml in `dir`: bearer-token callers, the key
/// file in `dir`, then `extra` TOML) and starts `credential-broker serve` with it.
pub(crate) fn start_server(
    binary: &Path,
    dir: &Path,
    name: &str,
    database_url: &str,
    extra: &str,
    executor_token: &str,
    operator_token: &str,
) -> Res<(Server, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let key = dir.join("local-key.json").display().to_string();
    let (executor, operator) = (
        token_sha256_hex(executor_token),
        token_sha256_hex(operator_token),
    );
    let text = format!(
        r#"listen = "{addr}"
[database]
url = {database_url:?}
[keys]
local_key_file = {key:?}

[[callers]]
name = "bench-executor"
role = "executor"
token_sha256 = "{executor}"
# Actor metadata as the executors send it today (signed assertions are for the web backend;
# executors move to run grants, issue 16).
unsigned_actor = true

[[callers]]
name = "bench-operator"
role = "operator"
token_sha256 = "{operator}"
unsigned_actor = true

{extra}"#
    );
    // Fail here with the reason rather than with a child that exits at once.
    Config::parse(&text).map_err(|e| format!("bench configuration: {e}"))?;
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text)?;
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let pid = child.id().ok_or("the broker exited at once")?;
    Ok((Server { child, pid, log }, addr))
}

/// Waits (at most 60 s) until the broker answers its health check as SERVING.
pub(crate) async fn wait_ready(addr: SocketAddr, server: Option<&mut Server>) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut server = server;
    loop {
        if let Ok(channel) = crate::connect(addr).await {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if answer.is_ok_and(|r| r.into_inner().status == 1) {
                return Ok(());
            }
        }
        if let Some(s) = server.as_deref_mut()
            && let Some(status) = s.child.try_wait()?
        {
            return Err(format!(
                "the broker exited ({status}) before serving; its log: {}",
                s.log.display()
            )
            .into());
        }
        if Instant::now() > deadline {
            return Err(format!("the broker at {addr} did not serve within 60 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A random-enough token for a broker that lives as long as this run.
pub(crate) fn run_token(role: &str) -> String {
    format!(
        "cb-bench-{role}-{}-{}",
        std::process::id(),
        SystemClock.now().as_millis()
    )
}

/// Figures of one call kind at one shape, summed over the rounds.
#[derive(Default)]
struct Measured {
    load: Load,
    server_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

impl Measured {
    fn add(&mut self, load: Load, server_cpu: Option<f64>, client_cpu: Option<f64>) {
        self.load.latencies.extend(load.latencies);
        self.load.errors += load.errors;
        if self.load.first_error.is_none() {
            self.load.first_error = load.first_error;
        }
        self.load.elapsed += load.elapsed;
        let sum = |a: Option<f64>, b: Option<f64>| Some(a.unwrap_or(0.0) + b?);
        self.server_cpu = sum(self.server_cpu, server_cpu);
        self.client_cpu = sum(self.client_cpu, client_cpu);
    }

    /// CPU microseconds per call.
    fn per_call(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.map(|s| s * 1e6 / self.load.calls().max(1) as f64)
    }
}

/// Runs `target` on every stream for `duration`, with the CPU both processes used meanwhile.
async fn measure(
    streams: &[Stream<InterceptedService<Channel, Headers>>],
    target: Target,
    duration: Duration,
    server_pid: Option<u32>,
) -> Res<(Load, Option<f64>, Option<f64>)> {
    let me = std::process::id();
    let server_before = server_pid.and_then(cpu_seconds);
    let client_before = cpu_seconds(me);
    let load = crate::run_load(streams, target, duration).await?;
    let server = server_pid
        .and_then(cpu_seconds)
        .zip(server_before)
        .map(|(a, b)| a - b);
    let client = cpu_seconds(me).zip(client_before).map(|(a, b)| a - b);
    Ok((load, server, client))
}

fn show_us(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}"))
}

fn print_row(shape: &str, call: &str, m: &Measured, tail: &str) {
    let l = &m.load;
    println!(
        "   {shape:<20} {call:<14} {:>9.0} {:>7.3} {:>7.3} {:>7.1} {:>6} {:>9} {:>9}{tail}",
        l.per_second(),
        percentile_ms(&l.latencies, 0.50),
        percentile_ms(&l.latencies, 0.99),
        percentile_ms(&l.latencies, 1.0),
        l.errors,
        show_us(m.per_call(m.server_cpu)),
        show_us(m.per_call(m.client_cpu)),
    );
}

/// The `--remote` run.
pub async fn run(args: &Args, cores: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, addr, executor_token, operator_token) = match args.addr {
        Some(addr) => {
            let (Some(e), Some(o)) = (&args.executor_token, &args.operator_token) else {
                return Err("--addr needs --executor-token and --operator-token".into());
            };
            (None, addr, e.clone(), o.clone())
        }
        None => {
            let binary = server_binary(args)?;
            let (executor, operator) = (run_token("executor"), run_token("operator"));
            // The default bound, or room for every --hot-credentials credential.
            let cache_entries = args.hot_credentials.saturating_add(1).max(10_000);
            let db = format!("sqlite://{}", dir.path().join("broker.db").display());
            let extra = format!("[tokens]\ncache_max_entries = {cache_entries}\n");
            let (server, addr) = start_server(
                &binary,
                dir.path(),
                "broker",
                &db,
                &extra,
                &executor,
                &operator,
            )?;
            println!(
                "cb-bench --remote: {cores} cores; started {} (pid {}) on {addr}",
                binary.display(),
                server.pid
            );
            (Some(server), addr, executor, operator)
        }
    };
    if server.is_none() {
        println!("cb-bench --remote: {cores} cores; broker at {addr} (started elsewhere)");
    }
    wait_ready(addr, server.as_mut()).await?;
    let server_pid = server.as_ref().map(|s| s.pid);

    // The operator imports a credential with a token valid for 6 h (the actor becomes its Admin);
    // the executor warms it into the token cache.
    let operator = Headers::new(&operator_token)?;
    let mut admin =
        CredentialServiceClient::with_interceptor(crate::connect(addr).await?, operator);
    let expires = SystemClock.now().plus(Duration::from_secs(6 * 3600));
    let request = import_request(
        "gmail",
        "https://www.googleapis.com/auth/gmail.readonly",
        &format!("acct-remote-{}", SystemClock.now().as_millis()),
        ("bench-access-token", "bench-refresh-token"),
        expires,
    );
    let credential_id: Arc<str> = admin
        .import_credential(request)
        .await?
        .into_inner()
        .credential
        .map(|c| c.credential_id)
        .ok_or("ImportCredential answered without a credential")?
        .into();
    let executor = Headers::new(&executor_token)?;
    let executions = args
        .distinct_executions
        .then(|| Arc::new(AtomicU64::new(0)));
    let id = credential_id.clone();
    let token_request: TokenRequest = Arc::new(move || {
        // `Some`: a distinct execution id per call, from this counter.
        let execution_id = match &executions {
            Some(n) => format!("exec-{}", n.fetch_add(1, Ordering::Relaxed)),
            None => "exec-bench".to_owned(),
        };
        tonic::Request::new(pb::GetAccessTokenRequest {
            credential_id: id.to_string(),
            workflow_id: "wf-bench".into(),
            block_id: "block-bench".into(),
            execution_id,
            ..Default::default()
        })
    });
    let stream_on = |channel: Channel| {
        let authed = InterceptedService::new(channel, executor.clone());
        Stream {
            health: HealthClient::new(authed.clone()),
            tokens: CredentialServiceClient::new(authed),
            token_request: token_request.clone(),
        }
    };
    let mut warm = stream_on(crate::connect(addr).await?);
    warm.call(Target::Token).await?; // the first call loads the token into the cache

    let seconds = Duration::from_secs(args.seconds);
    let warm_up = Duration::from_millis(500);
    println!();
    println!(
        "remote hot path: GetAccessToken (cached token, valid 6 h) vs grpc.health.v1.Health/Check of the same broker"
    );
    println!(
        "   production mode: bearer-token callers (executor), x-actor-id/x-actor-email on every call (health too);"
    );
    println!(
        "   {} round(s) per shape, each {} s health then {} s GetAccessToken after 0.5 s warm-ups; execution_id {}",
        args.rounds,
        args.seconds,
        args.seconds,
        if args.distinct_executions {
            "distinct per call"
        } else {
            "fixed"
        }
    );
    println!(
        "   server/client µs = CPU time of the broker process / of this load generator per call"
    );
    println!();
    println!(
        "   {:<20} {:<14} {:>9} {:>7} {:>7} {:>7} {:>6} {:>9} {:>9}   token/health: calls/s, p99, server CPU",
        "load", "call", "calls/s", "p50 ms", "p99 ms", "max ms", "errors", "server µs", "client µs"
    );
    let mut worst: Option<(f64, Shape)> = None;
    let mut worst_p99: Option<(f64, Shape)> = None;
    for &shape in &args.shapes {
        let mut streams = Vec::with_capacity(shape.connections * shape.streams);
        for _ in 0..shape.connections {
            let stream = stream_on(crate::connect(addr).await?);
            streams.extend(std::iter::repeat_n(stream, shape.streams));
        }
        let (mut health, mut token) = (Measured::default(), Measured::default());
        for _ in 0..args.rounds {
            measure(&streams, Target::Health, warm_up, None).await?;
            let (l, s, c) = measure(&streams, Target::Health, seconds, server_pid).await?;
            health.add(l, s, c);
            measure(&streams, Target::Token, warm_up, None).await?;
            let (l, s, c) = measure(&streams, Target::Token, seconds, server_pid).await?;
            token.add(l, s, c);
        }
        health.load.latencies.sort_unstable();
        token.load.latencies.sort_unstable();
        let ratio = token.load.per_second() / health.load.per_second().max(f64::EPSILON);
        let p99 = percentile_ms(&token.load.latencies, 0.99)
            / percentile_ms(&health.load.latencies, 0.99).max(f64::EPSILON);
        let cpu = token
            .per_call(token.server_cpu)
            .zip(health.per_call(health.server_cpu))
            .map_or_else(|| "n/a".to_owned(), |(t, h)| format!("{:.2}", t / h));
        if worst.is_none_or(|(r, _)| ratio < r) {
            worst = Some((ratio, shape));
        }
        if worst_p99.is_none_or(|(r, _)| p99 > r) {
            worst_p99 = Some((p99, shape));
        }
        let label = shape.to_string();
        print_row(&label, "health", &health, "");
        print_row(
            "",
            "GetAccessToken",
            &token,
            &format!("   {ratio:.2}  {p99:.2}×  {cpu}×"),
        );
        for e in [&health.load.first_error, &token.load.first_error]
            .into_iter()
            .flatten()
        {
            println!("      first error: {e}");
        }
    }
    println!();
    println!("   targets (informational; the load generator shares the machine with the broker):");
    if let Some((ratio, shape)) = worst {
        println!(
            "     GetAccessToken calls/s >= 0.9 × health at every shape   worst {ratio:.2} at {shape}   {}",
            verdict(ratio >= 0.9)
        );
    }
    if let Some((p99, shape)) = worst_p99 {
        println!(
            "     GetAccessToken p99 <= 1.3 × health p99                  worst {p99:.2}× at {shape}   {}",
            verdict(p99 <= 1.3)
        );
    }
    if args.h2load {
        let token = pb::GetAccessTokenRequest {
            credential_id: credential_id.to_string(),
            workflow_id: "wf-bench".into(),
            block_id: "block-bench".into(),
            execution_id: "exec-bench".into(),
            ..Default::default()
        };
        h2load(args, dir.path(), addr, &executor_token, &token)?;
    }
    if args.hot_credentials > 0 {
        let Some(pid) = server_pid else {
            return Err("--hot-credentials needs the broker this run starts (not --addr)".into());
        };
        hot_memory(
            addr,
            pid,
            args.hot_credentials,
            Headers::new(&operator_token)?,
            Headers::new(&executor_token)?,
        )
        .await?;
    }
    if let Some(mut s) = server {
        s.stop().await;
    }
    Ok(())
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status` (Linux).
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `--hot-credentials N`: imports N credentials as big as Google's (a ~260-byte access token,
/// three scopes, the importing actor as Admin), asks for each one's token once so that all N are
/// in the token cache, and prints the broker's resident memory before and after.
async fn hot_memory(
    addr: SocketAddr,
    pid: u32,
    n: usize,
    operator: Headers,
    executor: Headers,
) -> Res<()> {
    const WORKERS: usize = 16;
    let scopes = ["gmail.readonly", "gmail.send", "gmail.modify"]
        .map(|s| format!("https://www.googleapis.com/auth/{s}"));
    let before = resident_bytes(pid).ok_or("cannot read the broker's resident memory")?;
    println!();
    println!(
        "hot credentials: resident memory of the broker with {n} credentials in its token cache"
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let run = SystemClock.now().as_millis();
    let expires = SystemClock.now().plus(Duration::from_secs(6 * 3600));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let channel = crate::connect(addr).await?;
        let mut admin =
            CredentialServiceClient::with_interceptor(channel.clone(), operator.clone());
        let mut tokens = CredentialServiceClient::with_interceptor(channel, executor.clone());
        let (next, scopes) = (next.clone(), scopes.clone());
        workers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n as u64 {
                    return Ok::<(), tonic::Status>(());
                }
                let subject = format!("acct-hot-{run}-{k}");
                let access = format!("ya29.a0{k:0>254}");
                let mut request = import_request(
                    "gmail",
                    &scopes[0],
                    &subject,
                    (&access, &format!("1//0g{k:0>98}")),
                    expires,
                );
                request.granted_scopes = scopes.to_vec();
                let id = admin
                    .import_credential(request)
                    .await?
                    .into_inner()
                    .credential
                    .map(|c| c.credential_id)
                    .unwrap_or_default();
                tokens
                    .get_access_token(pb::GetAccessTokenRequest {
                        credential_id: id,
                        workflow_id: "wf-bench".into(),
                        ..Default::default()
                    })
                    .await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let after = resident_bytes(pid).ok_or("cannot read the broker's resident memory")?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let per_entry = after.saturating_sub(before) / n as u64;
    println!(
        "   imported and loaded {n} in {:.1} s; RSS {:.1} MiB before, {:.1} MiB after: {per_entry} bytes per credential",
        started.elapsed().as_secs_f64(),
        mib(before),
        mib(after)
    );
    println!(
        "   broker RSS with {n} hot credentials <= 256 MiB (target stated for 100,000)   {:.1} MiB   {}",
        mib(after),
        verdict(after <= 256 * 1024 * 1024)
    );
    Ok(())
}

/// A unary gRPC request body: the uncompressed length-prefixed message.
fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// `finished in …, N req/s` and the mean of `time for request:` from h2load's report.
fn h2load_figures(report: &str) -> Option<(f64, String)> {
    let line = report.lines().find(|l| l.starts_with("finished in"))?;
    let rate = line
        .split(", ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mean = report
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or("?")
        .to_owned();
    Some((rate, mean))
}

/// The same comparison with h2load as the load generator; gRPC errors travel in trailers, which
/// h2load does not read, so the Rust run above is the check that the calls succeed.
fn h2load(
    args: &Args,
    dir: &Path,
    addr: SocketAddr,
    executor_token: &str,
    token: &pb::GetAccessTokenRequest,
) -> Res<()> {
    let health_body = dir.join("health.bin");
    let token_body = dir.join("get-access-token.bin");
    std::fs::write(&health_body, grpc_frame(&HealthCheckRequest::default()))?;
    std::fs::write(&token_body, grpc_frame(token))?;
    println!();
    println!(
        "h2load (same broker, same headers; body files in {})",
        dir.display()
    );
    let command = |shape: Shape, body: &Path, path: &str| {
        let mut c = std::process::Command::new("h2load");
        c.arg("-D")
            .arg(args.seconds.to_string())
            .arg("--warm-up-time=1")
            .arg("-c")
            .arg(shape.connections.to_string())
            .arg("-m")
            .arg(shape.streams.to_string())
            .arg(format!("--data={}", body.display()))
            .arg("-H")
            .arg("content-type: application/grpc")
            .arg("-H")
            .arg("te: trailers")
            .arg("-H")
            .arg(format!("authorization: Bearer {executor_token}"))
            .arg("-H")
            .arg(format!("x-actor-id: {ACTOR_ID}"))
            .arg("-H")
            .arg(format!("x-actor-email: {ACTOR_EMAIL}"))
            .arg(format!("http://{addr}{path}"));
        c
    };
    println!(
        "   {:<20} {:>12} {:>10} {:>12} {:>10}   token/health",
        "load", "health req/s", "mean", "token req/s", "mean"
    );
    for &shape in &args.shapes {
        let mut figures = Vec::new();
        for (body, path) in [
            (&health_body, "/grpc.health.v1.Health/Check"),
            (
                &token_body,
                "/credentialbroker.v1.CredentialService/GetAccessToken",
            ),
        ] {
            let mut c = command(shape, body, path);
            let out = match c.output() {
                Ok(out) => out,
                Err(e) => {
                    println!("   h2load not run: {e} (apt-get install nghttp2-client)");
                    return Ok(());
                }
            };
            let report = String::from_utf8_lossy(&out.stdout);
            match h2load_figures(&report) {
                Some(f) => figures.push(f),
                None => {
                    println!(
                        "   h2load gave no figures for {path}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    return Ok(());
                }
            }
        }
        if let [(health, health_mean), (token, token_mean)] = figures.as_slice() {
            println!(
                "   {:<20} {health:>12.0} {health_mean:>10} {token:>12.0} {token_mean:>10}   {:.2}",
                shape.to_string(),
                token / health.max(f64::EPSILON)
            );
        }
    }
    let example = command(
        args.shapes.first().copied().unwrap_or(Shape {
            connections: 4,
            streams: 16,
        }),
        &token_body,
        "/credentialbroker.v1.CredentialService/GetAccessToken",
    );
    let words: Vec<String> = std::iter::once(example.get_program())
        .chain(example.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect();
    // The token stays out of the output: the command names the environment variable instead.
    let line = words.join(" ").replace(
        &format!("'authorization: Bearer {executor_token}'"),
        "\"authorization: Bearer $CB_BENCH_EXECUTOR_TOKEN\"",
    );
    println!("   e.g. {line}");
    Ok(())
}
