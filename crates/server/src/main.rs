//! The `credential-broker` binary: `serve`, `migrate`, `check-config`, `hash-token`, `rotate-keys`,
//! `keys`, `providers`, `credentials`.

use clap::{Parser, Subcommand};
use credential_broker::cli::ops;
use credential_broker::cli::rotate;
use credential_broker::runtime::app::{self, Application, BuildOptions};
use credential_broker::runtime::config::{Config, ProcessEnv};
use credential_broker::runtime::devprovider;
use credential_broker::runtime::error::StartupError;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// mimalloc rather than glibc's malloc: glibc's per-thread arenas kept memory that the token
/// cache's loads had freed (docs/benchmarks.md, "Memory with 100,000 hot credentials").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve {
        /// Also run a local OAuth provider (`dev`) that auto-approves everything, for trying the
        /// connect flow without registering an app anywhere. Development only.
        #[arg(long)]
        dev_provider: bool,
        /// Where the development provider listens.
        #[arg(long, default_value = "127.0.0.1:8765")]
        dev_provider_listen: std::net::SocketAddr,
    },
    /// Applies database migrations and exits.
    Migrate,
    /// Validates the configuration and prints every problem.
    CheckConfig,
    /// Reads a service token from stdin and prints the `token_sha256` for `[[callers]]`.
    HashToken,
    /// Lists the provider catalog: which providers are configured and what each one misses.
    Providers {
        /// Exit non-zero when a provider named in the config is not fully configured.
        #[arg(long)]
        check: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspects stored credentials (metadata only, never tokens), straight from the database.
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Shows a webhook endpoint's state and delivery log (attempts, last status and error),
    /// straight from the database.
    Webhooks {
        /// The endpoint's id (`[[webhooks]] id`).
        endpoint: String,
        /// At most this many deliveries, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-wraps every credential's data key under the current key-encryption key, online and
    /// resumable (tokens are never decrypted): after adding a local key version, configuring a
    /// new KMS key, or moving from `local` to `aws-kms`. See docs/key-management.md.
    RotateKeys {
        /// Credentials per batch (progress is printed per batch).
        #[arg(long, default_value_t = 100)]
        batch_size: u32,
        /// Re-wraps in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// First add a new version to the local key file (provider `local`) and make it current.
        #[arg(long)]
        new_local_version: bool,
        /// The old local key file, to unwrap data keys it wrapped (moving to `aws-kms` or to
        /// another key file); default `keys.previous_local_key_file`.
        #[arg(long, value_name = "PATH")]
        from_local_key_file: Option<PathBuf>,
    },
    /// Key-encryption key reports and maintenance.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Prints how many credentials each key-encryption key (id and version) still wraps.
    Report,
    /// Removes a version from the local key file once no credential uses it (completes the
    /// crypto-shredding of credentials disconnected while it was current).
    RetireLocalVersion {
        /// The version to remove.
        version: u32,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Shows one credential: status, provider account, expiries, key, lease and members.
    Show {
        /// The credential id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lists credentials with one status, across workspaces unless `--workspace` is given.
    List {
        /// `needs-reconnect`, `active` or `disconnected`.
        #[arg(long, value_parser = ["needs-reconnect", "active", "disconnected"])]
        status: String,
        /// Only this workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// Only credentials with this health.
        #[arg(long, value_parser = ["healthy", "provider-outage", "grant-revoked",
            "client-misconfigured", "scopes-revoked", "refresh-interrupted", "expiring"])]
        health: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn format(json: bool) -> ops::Format {
    if json {
        ops::Format::Json
    } else {
        ops::Format::Text
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashToken) = cli.command {
        let mut token = String::new();
        if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
            eprintln!("credential-broker: pass the token on stdin");
            return ExitCode::from(2);
        }
        println!(
            "{}",
            credential_broker::layers::auth::token_sha256_hex(&token)
        );
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
    let command = cli.command.unwrap_or(Command::Serve {
        dev_provider: false,
        dev_provider_listen: DEV_LISTEN,
    });
    // Traces are the server's only; the exporter's gRPC channel lives on the runtime.
    let traces = matches!(command, Command::Serve { .. }).then_some(&config.telemetry);
    let telemetry = match runtime
        .block_on(async { credential_broker::runtime::telemetry::init(&config.log, traces) })
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("credential-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Migrate => app::open_store(&config)
                .await
                .map(|_| tracing::info!("migrations applied")),
            Command::Serve {
                dev_provider,
                dev_provider_listen,
            } => serve(config, dev_provider.then_some(dev_provider_listen)).await,
            Command::RotateKeys {
                batch_size,
                concurrency,
                new_local_version,
                from_local_key_file,
            } => {
                let args = rotate::RotateKeysArgs {
                    options: rotate::RotateOptions {
                        batch_size,
                        concurrency,
                        ..rotate::RotateOptions::default()
                    },
                    new_local_version,
                    from_local_key_file,
                };
                rotate::rotate_keys_command(&config, &ProcessEnv, args, &mut std::io::stdout())
                    .await
            }
            Command::Keys {
                command: KeysCommand::Report,
            } => rotate::keys_report_command(&config, &ProcessEnv, &mut std::io::stdout()).await,
            Command::Keys {
                command: KeysCommand::RetireLocalVersion { version },
            } => {
                rotate::retire_local_version_command(&config, version, &mut std::io::stdout()).await
            }
            Command::Providers { check, json } => ops::providers_command(
                &config,
                &ProcessEnv,
                check,
                format(json),
                &mut std::io::stdout(),
            ),
            Command::Credentials {
                command: CredentialsCommand::Show { id, json },
            } => {
                ops::show_credential_command(&config, &id, format(json), &mut std::io::stdout())
                    .await
            }
            Command::Credentials {
                command:
                    CredentialsCommand::List {
                        status,
                        workspace,
                        health,
                        limit,
                        json,
                    },
            } => {
                let upper = |s: String| s.to_uppercase().replace('-', "_");
                ops::list_credentials_command(
                    &config,
                    &upper(status),
                    (workspace, health.map(upper)),
                    limit,
                    format(json),
                    &mut std::io::stdout(),
                )
                .await
            }
            Command::Webhooks {
                endpoint,
                limit,
                json,
            } => {
                ops::webhook_deliveries_command(
                    &config,
                    &endpoint,
                    limit,
                    format(json),
                    &mut std::io::stdout(),
                )
                .await
            }
            Command::CheckConfig | Command::HashToken => Ok(()),
        }
    });
    // Flushes the spans still buffered (the runtime is still alive for the exporter).
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "credential-broker failed");
            eprintln!("credential-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

const DEV_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8765);

async fn serve(
    mut config: Config,
    dev_provider: Option<std::net::SocketAddr>,
) -> Result<(), StartupError> {
    let _dev = match dev_provider {
        Some(addr) => Some(devprovider::start(&mut config, addr).await?),
        None => None,
    };
    let config = &config;
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
