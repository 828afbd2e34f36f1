//! The `credential-broker` binary: `serve`, `migrate`, `check-config`.

use clap::{Parser, Subcommand};
use credential_broker::app::{self, Application, BuildOptions};
use credential_broker::config::{Config, ProcessEnv};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// OAuth credential broker: connects third-party accounts, stores their tokens encrypted, and
/// issues fresh access tokens to internal services.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file (default: built-in defaults; SQLite under ./data and a local key).
    #[arg(long, short, global = true, env = "CREDENTIAL_BROKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gRPC server (the default).
    Serve,
    /// Applies database migrations and exits.
    Migrate,
    /// Validates the configuration and prints every problem.
    CheckConfig,
    /// Reads a service token from stdin and prints the `token_sha256` for `[[callers]]`.
    HashToken,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashToken) = cli.command {
        let mut token = String::new();
        if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
            eprintln!("credential-broker: pass the token on stdin");
            return ExitCode::from(2);
        }
        println!("{}", credential_broker::auth::token_sha256_hex(&token));
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), &ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("credential-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!(
            "configuration is valid: listen={} database={}",
            config.listen,
            config.database.url.redacted()
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = credential_broker::telemetry::init(&config.log) {
        eprintln!("credential-broker: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("credential-broker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => app::open_store(&config)
                .await
                .map(|_| tracing::info!("migrations applied")),
            Command::Serve | Command::CheckConfig | Command::HashToken => serve(&config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "credential-broker failed");
            eprintln!("credential-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: &Config) -> Result<(), app::StartupError> {
    let app = Application::start(config, BuildOptions::default()).await?;
    shutdown_signal().await;
    tracing::info!(
        grace_seconds = config.shutdown_grace_seconds,
        "shutting down"
    );
    app.shutdown(Duration::from_secs(config.shutdown_grace_seconds))
        .await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
