//! Key rotation: `credential-broker rotate-keys` re-wraps every data key (DEK) under the
//! provider's CURRENT key, online: each credential's, then each sealed secret's (every
//! [`SecretKind`], e.g. OAuth app client secrets). `credential-broker keys report` shows how
//! many credentials and sealed secrets each key-encryption key still wraps.
//!
//! Only DEKs move: token and secret ciphertext is never read, decrypted or re-encrypted. With `aws-kms`
//! a DEK wrapped by another KMS key is moved by KMS `ReEncrypt` (the DEK never leaves KMS); a
//! DEK of a local key is unwrapped locally and wrapped by the current key.
//!
//! Each row is written by a compare-and-swap on its old wrapped bytes ([`Store::rewrap_dek`],
//! [`Store::rewrap_secret_dek`]), so the broker can serve and refresh meanwhile: a row that
//! changed under us is left alone and picked up by the next pass. The work list is "rows not on
//! the current key" ([`Store::dek_rows_not_on_key`], [`Store::secret_deks_not_on_key`]), so an
//! interrupted run simply resumes when started again.

use cb_crypto::{
    CryptoError, EncryptionContext, Envelope, KeyProvider, KeyRef, WrappedDek, key_label,
};
use cb_store::{SecretDekRow, SecretKind, Store, StoreError, WrappedDekRow};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use tokio::task::JoinSet;

/// How a rotation runs.
#[derive(Clone, Debug)]
pub struct RotateOptions {
    /// Rows read and re-wrapped per batch (progress is reported per batch).
    pub batch_size: u32,
    /// Re-wraps in flight at once within a batch.
    pub concurrency: usize,
    /// Passes over the table at most: a pass after the first catches rows that changed while
    /// being re-wrapped, and credentials a replica still on the old key created meanwhile.
    pub max_passes: u32,
}

impl Default for RotateOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            concurrency: 4,
            max_passes: 5,
        }
    }
}

/// Progress after each batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Pass number, from 1.
    pub pass: u32,
    /// Re-wrapped so far in this pass.
    pub rewrapped: u64,
    /// Data keys (credentials and sealed secrets) not on the current key when the pass started.
    pub total: u64,
    /// Rows that changed while being re-wrapped (left for the next pass).
    pub changed: u64,
    /// Rows whose DEK could not be re-wrapped (see [`RotationOutcome::failures`]).
    pub failed: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pass {}: rewrapped {}/{}",
            self.pass, self.rewrapped, self.total
        )?;
        if self.changed > 0 {
            write!(
                f,
                ", {} changed meanwhile (retried next pass)",
                self.changed
            )?;
        }
        if self.failed > 0 {
            write!(f, ", {} failed", self.failed)?;
        }
        Ok(())
    }
}

/// How many data keys one key-encryption key (id and version) wraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCount {
    /// Key id (local key id, or KMS key ARN).
    pub key_id: String,
    /// Key version (0 for KMS keys).
    pub key_version: i64,
    /// Credentials with sealed tokens whose DEK it wraps.
    pub credentials: i64,
    /// Sealed secrets (every [`SecretKind`]) whose DEK it wraps.
    pub secrets: i64,
}

/// Credentials and sealed secrets per key-encryption key, and which key is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    /// `local` or `aws-kms`.
    pub provider: String,
    /// The key new DEKs are wrapped with; `None` when the provider could not be reached.
    pub current: Option<KeyRef>,
    /// Every key that wraps at least one data key, plus (after a rotation) the keys that did
    /// before, at 0.
    pub keys: Vec<KeyCount>,
}

impl KeyReport {
    fn is_current(&self, k: &KeyCount) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.key_id == k.key_id && i64::from(c.version) == k.key_version)
    }

    /// Credentials whose DEK is wrapped by a key other than the current one.
    pub fn on_other_keys(&self) -> i64 {
        self.keys
            .iter()
            .filter(|k| !self.is_current(k))
            .map(|k| k.credentials)
            .sum()
    }

    /// Sealed secrets whose DEK is wrapped by a key other than the current one.
    pub fn secrets_on_other_keys(&self) -> i64 {
        self.keys
            .iter()
            .filter(|k| !self.is_current(k))
            .map(|k| k.secrets)
            .sum()
    }

    fn find(&self, key_id: &str, key_version: i64) -> Option<&KeyCount> {
        self.keys
            .iter()
            .find(|k| k.key_id == key_id && k.key_version == key_version)
    }

    /// Credentials wrapped by (`key_id`, `key_version`); 0 when none.
    pub fn count(&self, key_id: &str, key_version: i64) -> i64 {
        self.find(key_id, key_version).map_or(0, |k| k.credentials)
    }

    /// Sealed secrets wrapped by (`key_id`, `key_version`); 0 when none.
    pub fn secrets(&self, key_id: &str, key_version: i64) -> i64 {
        self.find(key_id, key_version).map_or(0, |k| k.secrets)
    }

    /// Adds the keys of `earlier` that no longer wrap anything, at 0, so a report after a
    /// rotation shows the old key reaching zero.
    fn with_retired_from(mut self, earlier: &KeyReport) -> Self {
        for k in &earlier.keys {
            if self.find(&k.key_id, k.key_version).is_none() {
                self.keys.push(KeyCount {
                    credentials: 0,
                    secrets: 0,
                    ..k.clone()
                });
            }
        }
        self.keys
            .sort_by(|a, b| (&a.key_id, a.key_version).cmp(&(&b.key_id, b.key_version)));
        self
    }
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.current {
            Some(c) => writeln!(
                f,
                "provider {}, current key {}",
                self.provider,
                key_label(&c.key_id, i64::from(c.version))
            )?,
            None => writeln!(f, "provider {}, current key unknown", self.provider)?,
        }
        writeln!(
            f,
            "data keys per key-encryption key: credentials, sealed secrets ({}):",
            SecretKind::ALL.map(SecretKind::label).join(", ")
        )?;
        if self.keys.is_empty() {
            writeln!(f, "  (nothing sealed yet)")?;
        }
        for k in &self.keys {
            let mark = if self.is_current(k) {
                "  (current)"
            } else {
                ""
            };
            writeln!(
                f,
                "  {:<72} {:>9} {:>9}{mark}",
                key_label(&k.key_id, k.key_version),
                k.credentials,
                k.secrets
            )?;
        }
        if self.current.is_some() {
            write!(
                f,
                "credentials not on the current key: {}\nsealed secrets not on the current key: {}",
                self.on_other_keys(),
                self.secrets_on_other_keys()
            )?;
        }
        Ok(())
    }
}

/// One data key that could not be re-wrapped (its old wrapping stays in place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewrapFailure {
    /// What holds it: `credential <id>`, or a sealed secret (`OAuth app client secret <app id>
    /// version <n>`).
    pub row: String,
    /// The key that wraps its DEK.
    pub key: String,
    /// Why (never key material).
    pub error: String,
}

/// What a rotation did.
#[derive(Clone, Debug)]
pub struct RotationOutcome {
    /// Usage before.
    pub before: KeyReport,
    /// Usage after (old keys listed at 0 once they wrap nothing).
    pub after: KeyReport,
    /// DEKs re-wrapped, every pass together.
    pub rewrapped: u64,
    /// Passes run.
    pub passes: u32,
    /// Data keys left on an old key because they could not be re-wrapped.
    pub failures: Vec<RewrapFailure>,
}

/// Why a rotation stopped. Rows already re-wrapped stay re-wrapped: run it again to resume.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The key provider cannot do the work (unreachable, access denied, unknown old key, …).
    #[error(
        "stopped after re-wrapping {rewrapped} data key(s) (nothing is lost: run rotate-keys again to resume): {row}, key {key}: {source}{hint}"
    )]
    Key {
        /// Re-wrapped before the stop.
        rewrapped: u64,
        /// What holds the data key that failed (`credential <id>`, or a sealed secret).
        row: String,
        /// The key that wraps it.
        key: String,
        /// The provider's error.
        source: CryptoError,
        /// What to do about it.
        hint: &'static str,
    },
    /// Invalid options.
    #[error("{0}")]
    Options(String),
    /// A re-wrap task failed unexpectedly.
    #[error("re-wrap task failed: {0}")]
    Task(String),
}

/// Usage per key now; `provider` names the current key.
pub async fn key_report(
    store: &dyn Store,
    provider: &dyn KeyProvider,
) -> Result<KeyReport, StoreError> {
    Ok(KeyReport {
        provider: provider.kind().to_owned(),
        current: Some(provider.current_key()),
        keys: usage(store).await?,
    })
}

/// How many credentials and sealed secrets each key-encryption key wraps now, by key id and
/// version.
pub async fn usage(store: &dyn Store) -> Result<Vec<KeyCount>, StoreError> {
    fn at(
        keys: &mut BTreeMap<(String, i64), KeyCount>,
        key_id: String,
        key_version: i64,
    ) -> &mut KeyCount {
        keys.entry((key_id.clone(), key_version))
            .or_insert(KeyCount {
                key_id,
                key_version,
                credentials: 0,
                secrets: 0,
            })
    }
    let mut keys = BTreeMap::new();
    for u in store.key_usage().await? {
        at(&mut keys, u.key_id, u.key_version).credentials += u.credentials;
    }
    for kind in SecretKind::ALL {
        for u in store.secret_key_usage(kind).await? {
            at(&mut keys, u.key_id, u.key_version).secrets += u.secrets;
        }
    }
    Ok(keys.into_values().collect())
}

enum RowOutcome {
    Rewrapped,
    Changed,
}

/// Where data keys live: credentials' tokens, then each kind of sealed secret.
#[derive(Clone, Copy, Debug)]
enum Target {
    Credentials,
    Secrets(SecretKind),
}

impl Target {
    /// Every place, in the order a pass walks them.
    fn all() -> impl Iterator<Item = Target> {
        std::iter::once(Target::Credentials).chain(SecretKind::ALL.into_iter().map(Target::Secrets))
    }

    /// The next page of data keys not on `current`, after `after` (the last of the page before).
    async fn page(
        self,
        store: &dyn Store,
        current: &KeyRef,
        after: Option<&Holder>,
        limit: u32,
    ) -> Result<Vec<Holder>, StoreError> {
        let (key_id, version) = (current.key_id.as_str(), i64::from(current.version));
        Ok(match self {
            Target::Credentials => {
                let after = match after {
                    Some(Holder::Credential(r)) => Some(r.credential_id.as_str()),
                    _ => None,
                };
                store
                    .dek_rows_not_on_key(key_id, version, after, limit)
                    .await?
                    .into_iter()
                    .map(Holder::Credential)
                    .collect()
            }
            Target::Secrets(kind) => {
                let after = match after {
                    Some(Holder::Secret(_, r)) => Some((r.owner_id.as_str(), r.version)),
                    _ => None,
                };
                store
                    .secret_deks_not_on_key(kind, key_id, version, after, limit)
                    .await?
                    .into_iter()
                    .map(|r| Holder::Secret(kind, r))
                    .collect()
            }
        })
    }
}

/// One data key and what holds it.
#[derive(Clone, Debug)]
enum Holder {
    Credential(WrappedDekRow),
    Secret(SecretKind, SecretDekRow),
}

impl Holder {
    /// Names it in failures and errors.
    fn name(&self) -> String {
        match self {
            Holder::Credential(r) => format!("credential {}", r.credential_id),
            Holder::Secret(kind, r) => {
                format!("{} {} version {}", kind.label(), r.owner_id, r.version)
            }
        }
    }

    /// (wrapped bytes, key id, key version) as stored.
    fn stored(&self) -> (&[u8], &str, i64) {
        match self {
            Holder::Credential(r) => (&r.dek_wrapped, &r.dek_key_id, r.dek_key_version),
            Holder::Secret(_, r) => (&r.dek_wrapped, &r.dek_key_id, r.dek_key_version),
        }
    }

    fn key(&self) -> String {
        let (_, key_id, version) = self.stored();
        key_label(key_id, version)
    }

    fn wrapped(&self) -> Result<WrappedDek, CryptoError> {
        let (ciphertext, key_id, version) = self.stored();
        let version = u32::try_from(version).map_err(|_| CryptoError::UnknownKey {
            key_id: key_id.to_owned(),
            version: 0,
        })?;
        Ok(WrappedDek {
            key: KeyRef {
                key_id: key_id.to_owned(),
                version,
            },
            ciphertext: ciphertext.to_vec(),
        })
    }

    /// The encryption context its data key was wrapped with.
    fn context(&self) -> EncryptionContext {
        match self {
            Holder::Credential(r) => {
                crate::sealing::token_context(&r.workspace_id, &r.credential_id)
            }
            Holder::Secret(kind, r) => {
                crate::sealing::secret_context(*kind, &r.workspace_id, &r.owner_id)
            }
        }
    }

    /// Writes `new` only if the row still holds the old wrapping.
    async fn swap(&self, store: &dyn Store, new: &WrappedDek) -> Result<bool, StoreError> {
        let (wrapped, key_id, version) = (
            new.ciphertext.as_slice(),
            new.key.key_id.as_str(),
            i64::from(new.key.version),
        );
        match self {
            Holder::Credential(r) => store.rewrap_dek(r, wrapped, key_id, version).await,
            Holder::Secret(kind, r) => {
                store
                    .rewrap_secret_dek(*kind, r, wrapped, key_id, version)
                    .await
            }
        }
    }
}

enum RowError {
    Store(StoreError),
    Key(CryptoError),
}

/// Re-wraps one data key and writes it back only if its row still holds the old wrapping.
async fn rewrap_one(
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    holder: Holder,
) -> (Holder, Result<RowOutcome, RowError>) {
    let result = async {
        let old = holder.wrapped().map_err(RowError::Key)?;
        let new = envelope
            .rewrap(&old, &holder.context())
            .await
            .map_err(RowError::Key)?;
        let swapped = holder
            .swap(store.as_ref(), &new)
            .await
            .map_err(RowError::Store)?;
        Ok(if swapped {
            RowOutcome::Rewrapped
        } else {
            RowOutcome::Changed
        })
    }
    .await;
    (holder, result)
}

/// What to do about a provider error that stops the rotation.
fn stop_hint(err: &CryptoError) -> &'static str {
    match err {
        CryptoError::UnknownKey { .. } => {
            "; the configured provider does not hold that key: when moving from a local key file \
             pass --from-local-key-file (or set keys.previous_local_key_file); for local key \
             versions use the key file that holds them"
        }
        CryptoError::Unavailable(_) => "; the key service is unreachable: retry when it is back",
        _ => "",
    }
}

/// What every pass of one rotation shares.
struct Rotation<'a> {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    opts: &'a RotateOptions,
    failures: BTreeMap<String, RewrapFailure>,
}

impl Rotation<'_> {
    /// One pass over the data keys not on `current`, credentials first, then each kind of
    /// sealed secret; returns how many it re-wrapped.
    async fn pass(
        &mut self,
        current: &KeyRef,
        progress: &mut Progress,
        report: &mut (dyn FnMut(&Progress) + Send),
        rewrapped_before: u64,
    ) -> Result<u64, RotateError> {
        for target in Target::all() {
            self.walk(target, current, progress, report, rewrapped_before)
                .await?;
        }
        Ok(progress.rewrapped)
    }

    /// Pages through one target's data keys not on `current`, re-wrapping each page.
    async fn walk(
        &mut self,
        target: Target,
        current: &KeyRef,
        progress: &mut Progress,
        report: &mut (dyn FnMut(&Progress) + Send),
        rewrapped_before: u64,
    ) -> Result<(), RotateError> {
        let (store, envelope, opts) = (&self.store, &self.envelope, self.opts);
        let failures = &mut self.failures;
        let mut after: Option<Holder> = None;
        loop {
            let rows = target
                .page(store.as_ref(), current, after.as_ref(), opts.batch_size)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let mut rows = rows.into_iter();
            let mut tasks = JoinSet::new();
            loop {
                while tasks.len() < opts.concurrency.max(1) {
                    let Some(row) = rows.next() else { break };
                    tasks.spawn(rewrap_one(store.clone(), envelope.clone(), row));
                }
                let Some(joined) = tasks.join_next().await else {
                    break;
                };
                let (row, result) = joined.map_err(|e| RotateError::Task(e.to_string()))?;
                match result {
                    Ok(RowOutcome::Rewrapped) => progress.rewrapped += 1,
                    Ok(RowOutcome::Changed) => progress.changed += 1,
                    // One row's DEK does not open (its row was tampered with, or its context does
                    // not match): record it and go on; the others are fine.
                    Err(RowError::Key(CryptoError::Decrypt)) => {
                        progress.failed += 1;
                        failures.insert(
                            row.name(),
                            RewrapFailure {
                                key: row.key(),
                                error: CryptoError::Decrypt.to_string(),
                                row: row.name(),
                            },
                        );
                    }
                    // Anything else is about the key or the service and would fail every row.
                    Err(RowError::Key(source)) => {
                        tasks.abort_all();
                        return Err(RotateError::Key {
                            rewrapped: rewrapped_before + progress.rewrapped,
                            row: row.name(),
                            key: row.key(),
                            hint: stop_hint(&source),
                            source,
                        });
                    }
                    Err(RowError::Store(e)) => {
                        tasks.abort_all();
                        return Err(e.into());
                    }
                }
            }
            report(progress);
        }
    }
}

/// Re-wraps every data key (credentials', then sealed secrets') under the envelope provider's
/// current key, in batches and passes (see [`RotateOptions`]), calling `report` after each
/// batch.
pub async fn rotate(
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    opts: &RotateOptions,
    report: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RotationOutcome, RotateError> {
    if opts.batch_size == 0 {
        return Err(RotateError::Options(
            "--batch-size must be at least 1".into(),
        ));
    }
    let before = key_report(store.as_ref(), envelope.provider().as_ref()).await?;
    let mut rotation = Rotation {
        store: store.clone(),
        envelope: envelope.clone(),
        opts,
        failures: BTreeMap::new(),
    };
    let mut rewrapped = 0;
    let mut passes = 0;
    while passes < opts.max_passes.max(1) {
        let now = key_report(store.as_ref(), envelope.provider().as_ref()).await?;
        let Some(current) = now.current.clone() else {
            break;
        };
        let todo = u64::try_from(now.on_other_keys() + now.secrets_on_other_keys()).unwrap_or(0);
        if todo == 0 {
            break;
        }
        passes += 1;
        let mut progress = Progress {
            pass: passes,
            rewrapped: 0,
            total: todo,
            changed: 0,
            failed: 0,
        };
        let done = rotation
            .pass(&current, &mut progress, report, rewrapped)
            .await?;
        rewrapped += done;
        if done == 0 {
            break;
        }
    }
    let after = key_report(store.as_ref(), envelope.provider().as_ref())
        .await?
        .with_retired_from(&before);
    Ok(RotationOutcome {
        before,
        after,
        rewrapped,
        passes,
        failures: rotation.failures.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(key_id: &str, key_version: i64, credentials: i64) -> KeyCount {
        KeyCount {
            key_id: key_id.into(),
            key_version,
            credentials,
            secrets: 0,
        }
    }

    #[test]
    fn report_counts_other_keys_and_shows_retired_ones_at_zero() {
        let a = "arn:aws:kms:us-east-1:111122223333:key/aaaa";
        let b = "arn:aws:kms:us-east-1:111122223333:key/bbbb";
        let before = KeyReport {
            provider: "aws-kms".into(),
            current: Some(KeyRef {
                key_id: b.into(),
                version: 0,
            }),
            keys: vec![
                count("local-1", 1, 4),
                KeyCount {
                    secrets: 2,
                    ..count(a, 0, 7)
                },
                count(b, 0, 1),
            ],
        };
        assert_eq!(before.on_other_keys(), 11);
        assert_eq!(before.secrets_on_other_keys(), 2);
        assert_eq!(before.secrets(a, 0), 2);
        let after = KeyReport {
            keys: vec![count(b, 0, 12)],
            ..before.clone()
        }
        .with_retired_from(&before);
        assert_eq!(after.on_other_keys(), 0);
        assert_eq!(after.secrets_on_other_keys(), 0);
        assert_eq!(after.count(a, 0), 0);
        assert_eq!(after.keys.len(), 3);
        let text = after.to_string();
        assert!(text.contains(&format!("current key {b}")), "{text}");
        assert!(text.contains("local-1 version 1"), "{text}");
        assert!(text.contains("(current)"), "{text}");
        assert!(text.contains("OAuth app client secret"), "{text}");
        assert!(
            text.ends_with(
                "credentials not on the current key: 0\nsealed secrets not on the current key: 0"
            ),
            "{text}"
        );

        let unknown = KeyReport {
            current: None,
            ..before
        };
        assert!(unknown.to_string().contains("current key unknown"));
    }

    #[test]
    fn progress_reads_like_a_counter() {
        let p = Progress {
            pass: 1,
            rewrapped: 300,
            total: 1200,
            changed: 0,
            failed: 0,
        };
        assert_eq!(p.to_string(), "pass 1: rewrapped 300/1200");
        let p = Progress {
            changed: 2,
            failed: 1,
            ..p
        };
        assert_eq!(
            p.to_string(),
            "pass 1: rewrapped 300/1200, 2 changed meanwhile (retried next pass), 1 failed"
        );
    }
}
