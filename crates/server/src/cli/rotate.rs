//! `credential-broker rotate-keys`, `keys report` and `keys retire-local-version`: the operator
//! commands around the rotation engine ([`cb_broker::rotation`]).

use crate::runtime::app;
use crate::runtime::config::{Config, EnvSource, KeyProviderKind};
use crate::runtime::error::StartupError;
use crate::runtime::keys::{self, KeyOptions};
/// Rotation tuning, re-exported for the binary (which links only this crate).
pub use cb_broker::rotation::RotateOptions;
use cb_broker::rotation::{KeyReport, Progress, rotate, usage};
use cb_crypto::{Envelope, KeyProvider, LocalKeyProvider};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `credential-broker rotate-keys`.
#[derive(Clone, Debug, Default)]
pub struct RotateKeysArgs {
    /// Rotation tuning.
    pub options: RotateOptions,
    /// Add a new version to the local key file first (provider `local`).
    pub new_local_version: bool,
    /// An old local key file to unwrap with (a move from `local` to `aws-kms`, or to another
    /// key file); default `keys.previous_local_key_file`.
    pub from_local_key_file: Option<PathBuf>,
}

fn say(out: &mut (dyn Write + Send), text: impl fmt::Display) {
    // Output is best effort: a closed stdout must not stop a rotation half way.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn keys_error(e: impl fmt::Display) -> StartupError {
    StartupError::Keys(e.to_string())
}

/// `credential-broker rotate-keys`: re-wraps every DEK under the current key and prints the
/// progress and the final report. Fails unless every credential and sealed secret ends on the
/// current key.
pub async fn rotate_keys_command(
    config: &Config,
    env: &dyn EnvSource,
    args: RotateKeysArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), StartupError> {
    if args.new_local_version && config.keys.provider != KeyProviderKind::Local {
        return Err(keys_error(
            "--new-local-version needs keys.provider = \"local\"; with aws-kms, configure the new \
             key in keys.aws_kms_key_id and run rotate-keys",
        ));
    }
    let store = app::open_store(config).await?;
    if args.new_local_version {
        let path = &config.keys.local_key_file;
        let key = LocalKeyProvider::add_version(path).map_err(keys_error)?;
        say(
            out,
            format_args!(
                "added version {} to key file {}: running brokers pick it up without a restart",
                key.version,
                path.display()
            ),
        );
    }
    let provider = keys::open_key_provider(
        &config.keys,
        env,
        KeyOptions {
            decrypt_only_local: args.from_local_key_file.as_deref(),
            ..KeyOptions::default()
        },
    )
    .await?;
    // Rewrap uses no cache; the self-check proves the current key wraps and unwraps.
    let envelope = Arc::new(Envelope::new(provider, keys::dek_cache(&config.keys)));
    keys::self_check(&envelope, &config.keys, false).await?;
    let mut progress = |p: &Progress| say(out, p);
    let outcome = rotate(store, envelope, &args.options, &mut progress)
        .await
        .map_err(keys_error)?;
    say(
        out,
        format_args!(
            "re-wrapped {} data key(s) in {} pass(es); token ciphertext untouched",
            outcome.rewrapped, outcome.passes
        ),
    );
    for f in &outcome.failures {
        say(
            out,
            format_args!("FAILED {} (key {}): {}", f.row, f.key, f.error),
        );
    }
    say(out, &outcome.after);
    let (credentials, secrets) = (
        outcome.after.on_other_keys(),
        outcome.after.secrets_on_other_keys(),
    );
    if credentials + secrets > 0 {
        return Err(keys_error(format_args!(
            "{credentials} credential(s) and {secrets} sealed secret(s) still have data keys \
             wrapped by a key other than the current one ({} could not be re-wrapped, the rest \
             changed during the run): run rotate-keys again; do not disable or retire old keys \
             before this report shows 0",
            outcome.failures.len()
        )));
    }
    Ok(())
}

/// `credential-broker keys report`: credentials and sealed secrets per key-encryption key. Works without the KMS
/// (the current key is then shown as unknown).
pub async fn keys_report_command(
    config: &Config,
    env: &dyn EnvSource,
    out: &mut (dyn Write + Send),
) -> Result<(), StartupError> {
    let store = app::open_store(config).await?;
    let keys_now = usage(store.as_ref())
        .await
        .map_err(|source| StartupError::Database {
            url: config.database.url.redacted(),
            source,
        })?;
    let opened = keys::open_key_provider(&config.keys, env, KeyOptions::default()).await;
    let report = match &opened {
        Ok(p) => KeyReport {
            provider: p.kind().to_owned(),
            current: Some(p.current_key()),
            keys: keys_now,
        },
        Err(e) => {
            say(out, format_args!("cannot open the key provider: {e}"));
            KeyReport {
                provider: config.keys.provider.to_string(),
                current: None,
                keys: keys_now,
            }
        }
    };
    say(out, &report);
    Ok(())
}

/// `credential-broker keys retire-local-version N`: removes version N from the local key file
/// once no credential's or sealed secret's DEK uses it, which completes the crypto-shredding of credentials
/// disconnected while it was in use (their copies in backups can no longer be opened).
pub async fn retire_local_version_command(
    config: &Config,
    version: u32,
    out: &mut (dyn Write + Send),
) -> Result<(), StartupError> {
    if config.keys.provider != KeyProviderKind::Local {
        return Err(keys_error(
            "retire-local-version applies to keys.provider = \"local\"; after a move to aws-kms, \
             destroy the whole previous key file instead (and schedule deletion of retired KMS \
             keys in KMS)",
        ));
    }
    let path = &config.keys.local_key_file;
    let provider = LocalKeyProvider::load(path).map_err(keys_error)?;
    let key_id = provider.current_key().key_id;
    let store = app::open_store(config).await?;
    let report = KeyReport {
        provider: "local".into(),
        current: Some(provider.current_key()),
        keys: usage(store.as_ref())
            .await
            .map_err(|source| StartupError::Database {
                url: config.database.url.redacted(),
                source,
            })?,
    };
    let (credentials, secrets) = (
        report.count(&key_id, i64::from(version)),
        report.secrets(&key_id, i64::from(version)),
    );
    if credentials + secrets > 0 {
        return Err(keys_error(format_args!(
            "{credentials} credential(s) and {secrets} sealed secret(s) (OAuth app client \
             or webhook signing secrets) still have data keys wrapped by {key_id} version {version}: run rotate-keys \
             first"
        )));
    }
    LocalKeyProvider::retire_version(path, version).map_err(keys_error)?;
    say(
        out,
        format_args!(
            "retired version {version} of key {key_id} from {}: data keys it wrapped, including \
             copies in database backups, can no longer be unwrapped with this file (older copies of \
             the key file still can: destroy them too). Connect sessions started in the last 10 \
             minutes under that version fail and must be restarted",
            path.display()
        ),
    );
    Ok(())
}
