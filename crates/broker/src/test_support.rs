//! Helpers shared by the crate's tests.

use cb_crypto::{DekCacheConfig, Envelope, LocalKeyProvider};
use cb_store::Store;
use std::sync::Arc;

/// A migrated store on a fresh SQLite file and an envelope over a fresh local key file (default
/// DEK cache), both inside the returned directory.
pub(crate) async fn sqlite_with_keys() -> (tempfile::TempDir, Arc<dyn Store>, Arc<Envelope>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let store = cb_store::open(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    let (keys, _) = LocalKeyProvider::load_or_create(&dir.path().join("key.json")).unwrap();
    let envelope = Arc::new(Envelope::new(Arc::new(keys), DekCacheConfig::default()));
    (dir, store, envelope)
}
