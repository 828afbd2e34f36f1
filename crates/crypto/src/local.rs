//! The local key provider: KEK versions kept in a JSON key file on disk.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::RandomizedNonceKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::primitives::{self, Canonical, KEY_LEN};
use crate::{CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, WrappedDek};

const FORMAT: &str = "credential-broker-local-key/v1";

/// On-disk layout of the key file.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    key_id: String,
    current: u32,
    versions: Vec<KeyFileVersion>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct KeyFileVersion {
    version: u32,
    /// Base64 of the 32 key bytes.
    key: String,
}

struct Kek {
    key: RandomizedNonceKey,
    fingerprint: String,
}

/// The local provider: a key file holding several KEK versions.
pub struct LocalKeyProvider {
    key_id: String,
    current: u32,
    keks: BTreeMap<u32, Kek>,
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("key_id", &self.key_id)
            .field("current", &self.current)
            .field("versions", &self.keks.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn key_file_error(path: &Path, reason: impl Into<String>) -> CryptoError {
    CryptoError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl LocalKeyProvider {
    /// Loads the key file, or creates it (parent dirs too) with one random key version and
    /// mode 0600 when missing. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_file_error(path, format!("cannot read: {e}"))),
        }
        create_private_dirs(path)?;
        let mut key_id = [0u8; 4];
        primitives::random_bytes(&mut key_id)?;
        let file = KeyFile {
            format: FORMAT.to_owned(),
            key_id: format!("local-{}", hex::encode(key_id)),
            current: 1,
            versions: vec![new_version(1)?],
        };
        let tmp = write_temp(path, &file)?;
        // A hard link never replaces an existing file, so two processes starting at once
        // cannot each end up with their own key: the loser loads the winner's file.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok((Self::load(path)?, false));
            }
            Err(e) => return Err(key_file_error(path, format!("cannot create: {e}"))),
        }
        sync_parent(path);
        let provider = Self::from_file(path, &file)?;
        tracing::warn!(
            path = %path.display(),
            key_id = %provider.key_id,
            fingerprint = %provider.fingerprint(),
            "created a new local development key file; back it up and keep it secret, losing it makes every stored credential unreadable"
        );
        Ok((provider, true))
    }

    /// Loads an existing key file; warns (does not fail) when its permissions are wider than 0600.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let file = read_file(path)?;
        Self::from_file(path, &file)
    }

    /// Adds a new version, makes it current, rewrites the file atomically (temp + rename, 0600).
    /// Running processes keep their loaded versions until they reload the file.
    pub fn add_version(path: &Path) -> Result<KeyRef, CryptoError> {
        let mut file = read_file(path)?;
        Self::from_file(path, &file)?;
        let version = file
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| key_file_error(path, "no room for another version"))?;
        file.versions.push(new_version(version)?);
        file.current = version;
        let tmp = write_temp(path, &file)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(key_file_error(path, format!("cannot replace: {e}")));
        }
        sync_parent(path);
        Ok(KeyRef {
            key_id: file.key_id.clone(),
            version,
        })
    }

    /// Removes a version that no longer wraps anything (after `rotate-keys` moved every row to
    /// a newer one), rewriting the file atomically. DEKs wrapped by it, including copies in
    /// backups, can then no longer be unwrapped with this file: this is what completes the
    /// crypto-shredding of disconnected credentials. The current version cannot be retired.
    pub fn retire_version(path: &Path, version: u32) -> Result<(), CryptoError> {
        let mut file = read_file(path)?;
        Self::from_file(path, &file)?;
        if version == file.current {
            return Err(key_file_error(
                path,
                format!("version {version} is the current version: add a newer one first"),
            ));
        }
        let before = file.versions.len();
        file.versions.retain(|v| v.version != version);
        if file.versions.len() == before {
            return Err(key_file_error(
                path,
                format!("version {version} is not in the file"),
            ));
        }
        let tmp = write_temp(path, &file)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(key_file_error(path, format!("cannot replace: {e}")));
        }
        sync_parent(path);
        Ok(())
    }

    /// The versions this file holds, oldest first.
    pub fn versions(&self) -> Vec<u32> {
        self.keks.keys().copied().collect()
    }

    /// Fingerprint of the current key (first 8 bytes of its SHA-256, hex): safe to log, and
    /// tells apart "a different key file" at a glance.
    pub fn fingerprint(&self) -> String {
        self.keks
            .get(&self.current)
            .map(|k| k.fingerprint.clone())
            .unwrap_or_default()
    }

    fn from_file(path: &Path, file: &KeyFile) -> Result<Self, CryptoError> {
        if file.format != FORMAT {
            return Err(key_file_error(
                path,
                format!("unsupported format {:?}, expected {FORMAT:?}", file.format),
            ));
        }
        if file.key_id.is_empty() {
            return Err(key_file_error(path, "key_id is empty"));
        }
        let mut keks = BTreeMap::new();
        for v in &file.versions {
            let bytes = Zeroizing::new(BASE64.decode(&v.key).map_err(|_| {
                key_file_error(path, format!("version {}: key is not base64", v.version))
            })?);
            if bytes.len() != KEY_LEN {
                return Err(key_file_error(
                    path,
                    format!("version {}: key must be {KEY_LEN} bytes", v.version),
                ));
            }
            let kek = Kek {
                key: primitives::aead_key(&bytes)?,
                fingerprint: hex::encode(&primitives::sha256(&bytes)[..8]),
            };
            if keks.insert(v.version, kek).is_some() {
                return Err(key_file_error(
                    path,
                    format!("version {} appears twice", v.version),
                ));
            }
        }
        if !keks.contains_key(&file.current) {
            return Err(key_file_error(
                path,
                format!("current version {} is not in versions", file.current),
            ));
        }
        Ok(Self {
            key_id: file.key_id.clone(),
            current: file.current,
            keks,
        })
    }

    fn kek(&self, key: &KeyRef) -> Result<&Kek, CryptoError> {
        self.keks
            .get(&key.version)
            .filter(|_| key.key_id == self.key_id)
            .ok_or_else(|| CryptoError::UnknownKey {
                key_id: key.key_id.clone(),
                version: key.version,
            })
    }
}

/// AAD binding a wrapped DEK to its KEK and its encryption context.
fn wrap_aad(key: &KeyRef, ctx: &EncryptionContext) -> Vec<u8> {
    Canonical::new("credential-broker/v1|dek|")
        .str(&key.key_id)
        .u32(key.version)
        .context(ctx)
        .finish()
}

#[async_trait::async_trait]
impl KeyProvider for LocalKeyProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn current_key(&self) -> KeyRef {
        KeyRef {
            key_id: self.key_id.clone(),
            version: self.current,
        }
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        let dek = DataKey::generate()?;
        let wrapped = self.wrap_data_key(&dek, ctx).await?;
        Ok((dek, wrapped))
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        let kek = self.kek(&wrapped.key)?;
        let plain = primitives::open(&kek.key, &wrap_aad(&wrapped.key, ctx), &wrapped.ciphertext)?;
        DataKey::from_slice(&plain).map_err(|_| CryptoError::Decrypt)
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        let key = self.current_key();
        let kek = self.kek(&key)?;
        let ciphertext = primitives::seal(&kek.key, &wrap_aad(&key, ctx), dek.expose())?;
        Ok(WrappedDek { key, ciphertext })
    }
}

fn new_version(version: u32) -> Result<KeyFileVersion, CryptoError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    primitives::random_bytes(&mut key[..])?;
    Ok(KeyFileVersion {
        version,
        key: BASE64.encode(&key[..]),
    })
}

fn read_file(path: &Path) -> Result<KeyFile, CryptoError> {
    let text = Zeroizing::new(
        fs::read_to_string(path).map_err(|e| key_file_error(path, format!("cannot read: {e}")))?,
    );
    warn_if_readable_by_others(path);
    // serde_json messages can quote input, so report only the position.
    serde_json::from_str(&text).map_err(|e| {
        key_file_error(
            path,
            format!("malformed json at line {} column {}", e.line(), e.column()),
        )
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:o}"),
                "key file is accessible to other users; restrict it with chmod 600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn create_private_dirs(path: &Path) -> Result<(), CryptoError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(parent_dir(path))
        .map_err(|e| key_file_error(path, format!("cannot create directory: {e}")))
}

/// Writes the file next to `path` under a random name with mode 0600 and syncs it.
fn write_temp(path: &Path, file: &KeyFile) -> Result<PathBuf, CryptoError> {
    // Pre-sized so serialisation does not reallocate and strand copies of the keys.
    let mut json = Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer_pretty(&mut *json, file)
        .map_err(|e| key_file_error(path, format!("cannot encode: {e}")))?;
    json.push(b'\n');
    let mut suffix = [0u8; 8];
    primitives::random_bytes(&mut suffix)?;
    let name = path
        .file_name()
        .ok_or_else(|| key_file_error(path, "path has no file name"))?;
    let tmp = parent_dir(path).join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(key_file_error(path, format!("cannot write: {e}")));
    }
    Ok(tmp)
}

/// Makes the new directory entry durable; best effort (not possible on every platform).
fn sync_parent(path: &Path) {
    if let Ok(dir) = fs::File::open(parent_dir(path)) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_with_mode_0600_and_reloads_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/keys/local.json");
        let (created, was_created) = LocalKeyProvider::load_or_create(&path).unwrap();
        assert!(was_created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(FORMAT));
        assert!(created.key_id.starts_with("local-") && created.key_id.len() == 14);

        let (again, was_created) = LocalKeyProvider::load_or_create(&path).unwrap();
        assert!(!was_created);
        assert_eq!(again.fingerprint(), created.fingerprint());
        assert_eq!(again.fingerprint().len(), 16);
        assert_eq!(again.current_key(), created.current_key());
        // No temp files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn load_reports_path_for_missing_and_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.json");
        let err = LocalKeyProvider::load(&path).unwrap_err().to_string();
        assert!(err.contains("missing.json"), "{err}");

        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA==";
        fs::write(&path, format!("{{\"format\": 1, \"key\": \"{secret}\"")).unwrap();
        let err = LocalKeyProvider::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("malformed json") && !err.contains(secret),
            "{err}"
        );

        fs::write(
            &path,
            r#"{"format":"credential-broker-local-key/v1","key_id":"local-1","current":2,"versions":[{"version":1,"key":"AAAA"}]}"#,
        )
        .unwrap();
        let err = LocalKeyProvider::load(&path).unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
    }

    #[tokio::test]
    async fn retired_version_no_longer_unwraps_and_current_cannot_be_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let (v1, _) = LocalKeyProvider::load_or_create(&path).unwrap();
        let ctx = EncryptionContext::for_credential("w", "c", "token");
        let (_, old) = v1.generate_data_key(&ctx).await.unwrap();
        let err = LocalKeyProvider::retire_version(&path, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("current version"), "{err}");
        LocalKeyProvider::add_version(&path).unwrap();
        LocalKeyProvider::retire_version(&path, 1).unwrap();
        let err = LocalKeyProvider::retire_version(&path, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the file"), "{err}");
        let p = LocalKeyProvider::load(&path).unwrap();
        assert_eq!(p.versions(), [2]);
        assert!(matches!(
            p.unwrap_data_key(&old, &ctx).await,
            Err(CryptoError::UnknownKey { version: 1, .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn different_key_file_is_unknown_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = LocalKeyProvider::load_or_create(&dir.path().join("a.json")).unwrap();
        let (b, _) = LocalKeyProvider::load_or_create(&dir.path().join("b.json")).unwrap();
        let ctx = EncryptionContext::for_credential("w", "c", "token");
        let (_, wrapped) = a.generate_data_key(&ctx).await.unwrap();
        let err = b.unwrap_data_key(&wrapped, &ctx).await.unwrap_err();
        assert!(
            matches!(&err, CryptoError::UnknownKey { key_id, version: 1 } if *key_id == a.key_id),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn wrapped_dek_is_bound_to_context() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = LocalKeyProvider::load_or_create(&dir.path().join("k.json")).unwrap();
        let ctx = EncryptionContext::for_credential("w", "c1", "token");
        let (dek, wrapped) = p.generate_data_key(&ctx).await.unwrap();
        assert_eq!(
            p.unwrap_data_key(&wrapped, &ctx).await.unwrap().expose(),
            dek.expose()
        );
        let other = EncryptionContext::for_credential("w", "c2", "token");
        assert!(matches!(
            p.unwrap_data_key(&wrapped, &other).await,
            Err(CryptoError::Decrypt)
        ));
    }
}
