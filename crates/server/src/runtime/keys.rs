//! The configured key provider: building it (`local` or `aws-kms`, plus a decrypt-only old
//! local key while moving to KMS), the start-up self-check, and the check that the stored
//! credentials can be opened. Every failure names the key and says what to check.

use crate::runtime::config::{Config, EnvSource, KeyProviderKind, KeysConfig};
use crate::runtime::error::StartupError;
use cb_broker::credential::Credential;
use cb_broker::service::CredentialService;
use cb_crypto::{
    AwsKmsConfig, AwsKmsKeyProvider, ConnectFn, CryptoError, DeferredKeyProvider, DekCacheConfig,
    Envelope, KeyProvider, KeyRef, LocalKeyProvider, MultiKeyProvider, WatchedLocalKeyProvider,
    key_label,
};
use cb_store::{KeyUsage, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often a broker started degraded retries connecting to its KMS (on demand, not in the
/// background: each call that needs the key tries at most this often).
const DEGRADED_RETRY: Duration = Duration::from_secs(2);

/// How to open the key provider.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyOptions<'a> {
    /// An old local key file that only unwraps (moving from `local` to `aws-kms`, or to
    /// another key file); `None` uses `keys.previous_local_key_file`.
    pub decrypt_only_local: Option<&'a Path>,
    /// Create the local key file when missing (the server on first start; never the tools).
    pub create_local: bool,
    /// Return a provider even when the KMS cannot be reached (`keys.start_degraded`).
    pub allow_degraded: bool,
}

/// Whether the key provider passed its self-check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHealth {
    /// The round trip through the configured key worked.
    Ok,
    /// It failed and the broker starts anyway (`keys.start_degraded`).
    Degraded,
}

/// The DEK cache limits from the config.
pub fn dek_cache(keys: &KeysConfig) -> DekCacheConfig {
    DekCacheConfig {
        max_entries: keys.dek_cache_max_entries,
        max_age: Duration::from_secs(keys.dek_cache_max_age_seconds),
    }
}

/// AWS credentials from the environment, read through `env` (tests inject them). This is the
/// first link of the standard AWS chain; `None` lets the SDK walk the rest (profile, web
/// identity / IRSA, ECS, instance metadata), and a session token is left to the SDK too.
fn aws_env_credentials(env: &dyn EnvSource) -> Option<(String, String)> {
    let set = |name: &str| env.get(name).filter(|v| !v.is_empty());
    if set("AWS_SESSION_TOKEN").is_some() {
        return None;
    }
    Some((set("AWS_ACCESS_KEY_ID")?, set("AWS_SECRET_ACCESS_KEY")?))
}

/// What to check, for an error of the configured key.
fn hint(keys: &KeysConfig, err: &CryptoError) -> String {
    match (keys.provider, err) {
        (KeyProviderKind::Local, _) => format!(
            "check that {} is the key file this broker was set up with (restore it from backup if it is damaged)",
            keys.local_key_file.display()
        ),
        (KeyProviderKind::AwsKms, CryptoError::Unavailable(_)) => {
            let endpoint = keys
                .aws_endpoint_url
                .as_deref()
                .map_or_else(String::new, |u| format!(" at {u}"));
            format!(
                "check that KMS{endpoint} is reachable from here (network, VPC endpoint, proxy); \
                 to start anyway, set [keys] start_degraded = true (only tokens already cached can \
                 be served, which right after a start is none, until KMS answers)"
            )
        }
        (KeyProviderKind::AwsKms, CryptoError::KeyNotFound { .. }) => {
            "check keys.aws_kms_key_id and keys.aws_region, and that the AWS credentials belong to \
             the key's account"
                .to_owned()
        }
        (KeyProviderKind::AwsKms, _) => {
            "check that the key is an enabled symmetric ENCRYPT_DECRYPT key and that the broker's \
             AWS credentials (environment, profile, or IRSA/instance role) may call \
             kms:DescribeKey, kms:GenerateDataKey, kms:Decrypt and kms:Encrypt on it (IAM policy \
             and key policy)"
                .to_owned()
        }
    }
}

fn key_error(keys: &KeysConfig, what: &str, err: &CryptoError) -> StartupError {
    StartupError::Keys(format!(
        "{what} {}: {err}; {}",
        keys.describe(),
        hint(keys, err)
    ))
}

/// Builds the configured key provider. Not yet checked: see [`self_check`].
pub async fn open_key_provider(
    keys: &KeysConfig,
    env: &dyn EnvSource,
    opts: KeyOptions<'_>,
) -> Result<Arc<dyn KeyProvider>, StartupError> {
    let current: Arc<dyn KeyProvider> = match keys.provider {
        KeyProviderKind::Local => {
            let path = &keys.local_key_file;
            let opened = if opts.create_local {
                WatchedLocalKeyProvider::load_or_create(path).map(|(p, created)| {
                    if created {
                        tracing::warn!(
                            path = %path.display(),
                            "DEVELOPMENT KEY generated: tokens are only as safe as this file; back it up, and use aws-kms in production"
                        );
                    }
                    p
                })
            } else {
                WatchedLocalKeyProvider::load(path)
            };
            let provider = opened.map_err(|e| StartupError::Keys(e.to_string()))?;
            tracing::info!(
                path = %path.display(),
                fingerprint = %provider.fingerprint(),
                versions = ?provider.versions(),
                "local key loaded"
            );
            Arc::new(provider)
        }
        KeyProviderKind::AwsKms => open_aws_kms(keys, env, opts.allow_degraded).await?,
    };
    let Some(old) = opts
        .decrypt_only_local
        .or(keys.previous_local_key_file.as_deref())
    else {
        return Ok(current);
    };
    let old_provider = LocalKeyProvider::load(old).map_err(|e| {
        StartupError::Keys(format!(
            "previous local key file (decrypt only): {e}; it must be the key file the stored \
             credentials were sealed with before the move"
        ))
    })?;
    tracing::info!(
        path = %old.display(),
        key_id = %old_provider.current_key().key_id,
        "previous local key loaded to open data keys it wrapped (never to wrap new ones)"
    );
    Ok(Arc::new(MultiKeyProvider::new(
        current,
        vec![Arc::new(old_provider)],
    )))
}

async fn open_aws_kms(
    keys: &KeysConfig,
    env: &dyn EnvSource,
    allow_degraded: bool,
) -> Result<Arc<dyn KeyProvider>, StartupError> {
    let Some(mut cfg) = keys.aws_kms() else {
        // validate() already refuses this; kept for callers that skipped it.
        return Err(StartupError::Keys(
            "keys.aws_kms_key_id is required with keys.provider = \"aws-kms\"".into(),
        ));
    };
    cfg.static_credentials = aws_env_credentials(env);
    match AwsKmsKeyProvider::connect(cfg.clone()).await {
        Ok(p) => Ok(Arc::new(p)),
        Err(e) if allow_degraded => {
            tracing::error!(
                key = %keys.describe(),
                error = %e,
                "KMS KEY NOT USABLE AT START: starting DEGRADED because keys.start_degraded is set; \
                 connects, imports and reads of tokens not yet cached fail with UNAVAILABLE until KMS answers"
            );
            let placeholder = KeyRef {
                key_id: cfg.key_id.clone(),
                version: 0,
            };
            Ok(Arc::new(DeferredKeyProvider::new(
                "aws-kms",
                placeholder,
                kms_connector(cfg),
                DEGRADED_RETRY,
                Some(e.to_string()),
            )))
        }
        Err(e) => Err(key_error(keys, "cannot use", &e)),
    }
}

fn kms_connector(cfg: AwsKmsConfig) -> ConnectFn {
    Box::new(move || {
        let cfg = cfg.clone();
        Box::pin(async move {
            let provider: Arc<dyn KeyProvider> = Arc::new(AwsKmsKeyProvider::connect(cfg).await?);
            Ok(provider)
        })
    })
}

/// The start-up self-check: a round trip through the configured key (generate, unwrap,
/// seal, open). A failure refuses the start with a message naming the key and what to check,
/// unless `allow_degraded`, where it is logged loudly and the broker starts degraded.
pub async fn self_check(
    envelope: &Envelope,
    keys: &KeysConfig,
    allow_degraded: bool,
) -> Result<KeyHealth, StartupError> {
    match envelope.self_check().await {
        Ok(()) => {
            tracing::info!(
                provider = envelope.provider().kind(),
                key_id = %envelope.provider().current_key().key_id,
                "key self-check passed"
            );
            Ok(KeyHealth::Ok)
        }
        Err(e) if allow_degraded => {
            tracing::error!(
                key = %keys.describe(),
                error = %e,
                hint = %hint(keys, &e),
                "KEY SELF-CHECK FAILED: starting DEGRADED because keys.start_degraded is set"
            );
            Ok(KeyHealth::Degraded)
        }
        Err(e) => Err(key_error(keys, "self-check failed for", &e)),
    }
}

/// Why stored credentials of key `k` cannot be opened, and what to do.
fn unopenable(k: &KeyUsage, keys: &KeysConfig, err: &str) -> String {
    let rows = format!(
        "{} stored credential(s) have data keys wrapped by key {}",
        k.credentials,
        key_label(&k.key_id, k.key_version)
    );
    let kms_key = k.key_id.starts_with("arn:");
    match keys.provider {
        KeyProviderKind::Local => format!(
            "{rows}, which the configured key file {} cannot open ({err}); start with the key file \
             that sealed them",
            keys.local_key_file.display()
        ),
        KeyProviderKind::AwsKms if !kms_key => format!(
            "{rows}, a local key file's key, which the aws-kms provider cannot open ({err}); set \
             keys.previous_local_key_file to that key file until `credential-broker rotate-keys` \
             has moved them to KMS"
        ),
        KeyProviderKind::AwsKms => format!(
            "{rows}, which the broker cannot open ({err}); that KMS key must stay enabled, and \
             the broker's AWS credentials allowed kms:Decrypt on it, until `credential-broker \
             rotate-keys` has moved every credential to the current key"
        ),
    }
}

/// Refuses to start when stored tokens were sealed by a key the configured provider cannot
/// use (one credential per key id and version is opened): better a clear failure now than
/// errors at first use. With several keys in use (during or after a rotation) each is checked.
pub async fn check_stored_tokens_open(
    store: &dyn Store,
    service: &CredentialService,
    config: &Config,
) -> Result<(), StartupError> {
    let usage = store
        .key_usage()
        .await
        .map_err(|source| StartupError::Database {
            url: config.database.url.redacted(),
            source,
        })?;
    for k in usage {
        let row = store
            .get_credential(&k.sample_credential_id)
            .await
            .ok()
            .flatten();
        let opened = match row.map(Credential::from_row) {
            Some(Ok(c)) => service
                .open_tokens(&c)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => Ok(()), // the row changed since the scan; nothing to check
        };
        if let Err(e) = opened {
            return Err(StartupError::Keys(unopenable(&k, &config.keys, &e)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::tests::env;

    #[test]
    fn aws_credentials_come_from_the_environment_or_the_sdk_chain() {
        assert_eq!(
            aws_env_credentials(&env(&[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "secret")
            ])),
            Some(("AKID".into(), "secret".into()))
        );
        assert_eq!(
            aws_env_credentials(&env(&[("AWS_ACCESS_KEY_ID", "AKID")])),
            None
        );
        // Temporary credentials: the SDK's own environment provider handles the token.
        assert_eq!(
            aws_env_credentials(&env(&[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_SESSION_TOKEN", "token")
            ])),
            None
        );
    }

    #[test]
    fn unopenable_messages_name_the_key_and_the_fix() {
        let usage = |key_id: &str, version| KeyUsage {
            key_id: key_id.into(),
            key_version: version,
            credentials: 3,
            sample_credential_id: "c1".into(),
        };
        let local = KeysConfig::default();
        let msg = unopenable(&usage("local-1a2b3c4d", 2), &local, "unknown key");
        assert!(
            msg.contains("3 stored credential(s)")
                && msg.contains("local-1a2b3c4d version 2")
                && msg.contains("cannot open")
                && msg.contains("local-key.json"),
            "{msg}"
        );
        let kms = KeysConfig {
            provider: KeyProviderKind::AwsKms,
            aws_kms_key_id: Some("alias/cb".into()),
            ..KeysConfig::default()
        };
        let msg = unopenable(&usage("local-1a2b3c4d", 1), &kms, "unknown key");
        assert!(msg.contains("keys.previous_local_key_file"), "{msg}");
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/k-old";
        let msg = unopenable(&usage(arn, 0), &kms, "access denied");
        assert!(
            msg.contains(&format!("wrapped by key {arn},"))
                && msg.contains("kms:Decrypt")
                && msg.contains("rotate-keys"),
            "{msg}"
        );
    }

    #[test]
    fn hints_say_what_to_check() {
        let kms = KeysConfig {
            provider: KeyProviderKind::AwsKms,
            aws_kms_key_id: Some("alias/cb".into()),
            aws_endpoint_url: Some("http://kms.internal:4566".into()),
            ..KeysConfig::default()
        };
        let e = key_error(
            &kms,
            "cannot use",
            &CryptoError::Unavailable("kms:DescribeKey timed out".into()),
        )
        .to_string();
        assert!(
            e.contains("alias/cb")
                && e.contains("http://kms.internal:4566")
                && e.contains("start_degraded"),
            "{e}"
        );
        let e = key_error(
            &kms,
            "cannot use",
            &CryptoError::KeyNotFound {
                key_id: "alias/cb".into(),
                region: "eu-west-1".into(),
            },
        )
        .to_string();
        assert!(e.contains("keys.aws_region"), "{e}");
    }
}
