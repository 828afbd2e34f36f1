//! The local key provider as the server runs it: it follows its key file, so a version added by
//! `credential-broker rotate-keys --new-local-version` (another process) is picked up without a
//! restart. That keeps local key rotation online: rows re-wrapped under the new version still
//! open here, and new DEKs are wrapped with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use crate::{
    CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, LocalKeyProvider, WrappedDek,
};

/// What identifies one version of the file on disk (a rewrite replaces the file by rename).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

struct Loaded {
    provider: Arc<LocalKeyProvider>,
    stamp: Option<Stamp>,
}

/// A [`LocalKeyProvider`] that reloads its key file when the file changed on disk: checked
/// (one `stat`) before wrapping a new DEK, and when a DEK names a version of this key that is
/// not loaded. A file that no longer loads, or now holds another key id, is ignored with a
/// warning and the loaded versions stay in use.
pub struct WatchedLocalKeyProvider {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl fmt::Debug for WatchedLocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedLocalKeyProvider")
            .field("path", &self.path)
            .field("provider", &self.current())
            .finish()
    }
}

impl WatchedLocalKeyProvider {
    /// Loads the key file, or creates it (see [`LocalKeyProvider::load_or_create`]); returns
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        let (provider, created) = LocalKeyProvider::load_or_create(path)?;
        Ok((Self::watch(path, provider), created))
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        Ok(Self::watch(path, LocalKeyProvider::load(path)?))
    }

    fn watch(path: &Path, provider: LocalKeyProvider) -> Self {
        Self {
            path: path.to_path_buf(),
            loaded: RwLock::new(Loaded {
                provider: Arc::new(provider),
                stamp: stamp(path),
            }),
        }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fingerprint of the current key version (safe to log).
    pub fn fingerprint(&self) -> String {
        self.current().fingerprint()
    }

    /// The versions loaded, oldest first.
    pub fn versions(&self) -> Vec<u32> {
        self.current().versions()
    }

    fn current(&self) -> Arc<LocalKeyProvider> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .provider
            .clone()
    }

    /// The provider for the file as it is now: reloaded if the file changed since it was read.
    fn refreshed(&self) -> Arc<LocalKeyProvider> {
        let now = stamp(&self.path);
        let old = {
            let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
            if loaded.stamp == now {
                return loaded.provider.clone();
            }
            loaded.provider.clone()
        };
        let next = match LocalKeyProvider::load(&self.path) {
            Ok(p) if p.current_key().key_id == old.current_key().key_id => Arc::new(p),
            Ok(p) => {
                tracing::warn!(
                    path = %self.path.display(),
                    loaded_key_id = %old.current_key().key_id,
                    file_key_id = %p.current_key().key_id,
                    "key file now holds another key; keeping the loaded one (restart to switch key files)"
                );
                old.clone()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the key file; keeping the loaded versions");
                old.clone()
            }
        };
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&next, &old) {
            tracing::info!(
                path = %self.path.display(),
                current_version = next.current_key().version,
                versions = ?next.versions(),
                fingerprint = %next.fingerprint(),
                "key file changed on disk: reloaded"
            );
        }
        loaded.provider = next.clone();
        // Recorded even when the reload was refused, so a broken file warns once, not per call.
        loaded.stamp = now;
        next
    }
}

#[async_trait::async_trait]
impl KeyProvider for WatchedLocalKeyProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn current_key(&self) -> KeyRef {
        self.current().current_key()
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        self.refreshed().generate_data_key(ctx).await
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        let provider = self.current();
        match provider.unwrap_data_key(wrapped, ctx).await {
            // A version of our key we have not loaded: maybe added since we read the file.
            Err(CryptoError::UnknownKey { key_id, .. })
                if key_id == provider.current_key().key_id =>
            {
                self.refreshed().unwrap_data_key(wrapped, ctx).await
            }
            other => other,
        }
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        self.refreshed().wrap_data_key(dek, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::ctx;

    #[tokio::test]
    async fn follows_versions_added_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let (watched, created) = WatchedLocalKeyProvider::load_or_create(&path).unwrap();
        assert!(created);
        let c = ctx("c1");
        let (dek, v1) = watched.generate_data_key(&c).await.unwrap();
        assert_eq!(v1.key.version, 1);

        // Another process adds version 2 and re-wraps the DEK under it.
        let v2_key = LocalKeyProvider::add_version(&path).unwrap();
        let other = LocalKeyProvider::load(&path).unwrap();
        let v2 = other.rewrap_data_key(&v1, &c).await.unwrap();
        assert_eq!(v2.key, v2_key);

        // Opens the re-wrapped DEK without a restart, and wraps new DEKs with version 2.
        assert_eq!(
            watched.unwrap_data_key(&v2, &c).await.unwrap().expose(),
            dek.expose()
        );
        assert_eq!(watched.current_key(), v2_key);
        assert_eq!(watched.versions(), [1, 2]);
        let (_, fresh) = watched.generate_data_key(&c).await.unwrap();
        assert_eq!(fresh.key, v2_key);
        assert!(watched.unwrap_data_key(&v1, &c).await.is_ok());
    }

    #[tokio::test]
    async fn a_broken_or_foreign_file_keeps_the_loaded_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let (watched, _) = WatchedLocalKeyProvider::load_or_create(&path).unwrap();
        let key = watched.current_key();
        let c = ctx("c1");
        let (_, wrapped) = watched.generate_data_key(&c).await.unwrap();

        std::fs::write(&path, "{ not json").unwrap();
        let (_, again) = watched.generate_data_key(&c).await.unwrap();
        assert_eq!(again.key, key);

        std::fs::remove_file(&path).unwrap();
        LocalKeyProvider::load_or_create(&path).unwrap();
        let (_, again) = watched.generate_data_key(&c).await.unwrap();
        assert_eq!(again.key, key, "another key id is not adopted");
        assert!(watched.unwrap_data_key(&wrapped, &c).await.is_ok());
    }
}
