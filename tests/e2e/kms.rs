//! The `aws-kms` key provider through aws-sdk-kms against a KMS-compatible server (moto).

use std::sync::Arc;
use std::time::Duration;

use cb_crypto::{
    AwsKmsKeyProvider, CryptoError, DekCacheConfig, EncryptionContext, Envelope, KeyProvider,
    KeyRef, SealedBlob,
};

use crate::support::kms_server::{self, HungServer, REGION};
use crate::support::tcp_proxy::TcpProxy;

fn ctx(credential_id: &str) -> EncryptionContext {
    EncryptionContext::for_credential("w1", credential_id, "oauth-token")
}

async fn provider(endpoint: &str, key_id: &str) -> Arc<AwsKmsKeyProvider> {
    Arc::new(
        AwsKmsKeyProvider::connect(kms_server::config(endpoint, key_id))
            .await
            .unwrap(),
    )
}

/// An envelope with an empty cache, so every open reaches KMS.
fn envelope(provider: Arc<AwsKmsKeyProvider>) -> Envelope {
    Envelope::new(provider, DekCacheConfig::default())
}

#[tokio::test]
async fn seal_open_round_trip_and_self_check() {
    let Some(endpoint) = kms_server::endpoint("seal_open_round_trip_and_self_check") else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let provider = provider(&endpoint, &key).await;
    assert_eq!(provider.kind(), "aws-kms");
    assert_eq!(
        provider.current_key(),
        KeyRef {
            key_id: key.clone(),
            version: 0
        }
    );

    let env = envelope(provider.clone());
    env.self_check().await.unwrap();
    let c = ctx("c1");
    let blob = env
        .seal_new(&c, b"row-1", b"refresh-token-1")
        .await
        .unwrap();
    assert_eq!(blob.wrapped_dek.key, provider.current_key());

    // A fresh envelope has no cached DEK: this is a real Decrypt.
    let fresh = envelope(provider.clone());
    assert_eq!(
        fresh.open(&blob, &c, b"row-1").await.unwrap().expose(),
        b"refresh-token-1"
    );
    let next = fresh
        .reseal(&blob.wrapped_dek, &c, b"row-1", b"refresh-token-2")
        .await
        .unwrap();
    assert_eq!(
        envelope(provider.clone())
            .open(&next, &c, b"row-1")
            .await
            .unwrap()
            .expose(),
        b"refresh-token-2"
    );

    // wrap_data_key (Encrypt) of an existing DEK unwraps to the same DEK.
    let (dek, _) = provider.generate_data_key(&c).await.unwrap();
    let wrapped = provider.wrap_data_key(&dek, &c).await.unwrap();
    assert_eq!(wrapped.key, provider.current_key());
    let unwrapped = provider.unwrap_data_key(&wrapped, &c).await.unwrap();
    assert_eq!(unwrapped.expose(), dek.expose());
}

#[tokio::test]
async fn key_configured_by_alias_or_key_id_records_the_arn() {
    let Some(endpoint) = kms_server::endpoint("key_configured_by_alias_or_key_id_records_the_arn")
    else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let alias = kms_server::create_alias(&endpoint, &key).await;
    let bare_id = key.rsplit('/').next().unwrap().to_owned();
    for configured in [alias, bare_id] {
        let provider = provider(&endpoint, &configured).await;
        assert_eq!(
            provider.current_key().key_id,
            key,
            "configured as {configured}"
        );
        let (_, wrapped) = provider.generate_data_key(&ctx("c1")).await.unwrap();
        assert_eq!(wrapped.key.key_id, key);
    }
}

#[tokio::test]
async fn wrong_encryption_context_fails_to_decrypt() {
    let Some(endpoint) = kms_server::endpoint("wrong_encryption_context_fails_to_decrypt") else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let provider = provider(&endpoint, &key).await;
    let (_, wrapped) = provider.generate_data_key(&ctx("c1")).await.unwrap();

    for wrong in [
        ctx("c2"),
        EncryptionContext::for_credential("w2", "c1", "oauth-token"),
        EncryptionContext::for_credential("w1", "c1", "other-purpose"),
        EncryptionContext::new(),
    ] {
        let err = provider
            .unwrap_data_key(&wrapped, &wrong)
            .await
            .unwrap_err();
        assert!(matches!(err, CryptoError::Decrypt), "{wrong:?}: {err:?}");
    }

    let mut tampered = wrapped.clone();
    let last = tampered.ciphertext.len() - 1;
    tampered.ciphertext[last] ^= 1;
    let err = provider
        .unwrap_data_key(&tampered, &ctx("c1"))
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Decrypt), "{err:?}");
    provider
        .unwrap_data_key(&wrapped, &ctx("c1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn another_credentials_blob_fails_to_open() {
    let Some(endpoint) = kms_server::endpoint("another_credentials_blob_fails_to_open") else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let provider = provider(&endpoint, &key).await;
    let env = envelope(provider.clone());
    let mine = env.seal_new(&ctx("c1"), b"row-1", b"mine").await.unwrap();
    let theirs = env.seal_new(&ctx("c2"), b"row-2", b"theirs").await.unwrap();

    // Their whole blob moved into my row, and their wrapped DEK under my ciphertext.
    let fresh = envelope(provider.clone());
    let moved = fresh.open(&theirs, &ctx("c1"), b"row-1").await;
    assert!(matches!(moved, Err(CryptoError::Decrypt)), "{moved:?}");
    let swapped = SealedBlob {
        ciphertext: mine.ciphertext.clone(),
        wrapped_dek: theirs.wrapped_dek.clone(),
    };
    let opened = fresh.open(&swapped, &ctx("c1"), b"row-1").await;
    assert!(matches!(opened, Err(CryptoError::Decrypt)), "{opened:?}");
    assert_eq!(
        fresh
            .open(&mine, &ctx("c1"), b"row-1")
            .await
            .unwrap()
            .expose(),
        b"mine"
    );
}

#[tokio::test]
async fn rewrap_moves_a_dek_to_the_new_key_inside_kms() {
    let Some(endpoint) = kms_server::endpoint("rewrap_moves_a_dek_to_the_new_key_inside_kms")
    else {
        return;
    };
    let key_a = kms_server::create_key(&endpoint).await;
    let key_b = kms_server::create_key(&endpoint).await;
    let on_a = provider(&endpoint, &key_a).await;
    let on_b = provider(&endpoint, &key_b).await;
    let c = ctx("c1");
    let blob = envelope(on_a.clone())
        .seal_new(&c, b"row", b"secret")
        .await
        .unwrap();
    assert_eq!(blob.wrapped_dek.key.key_id, key_a);

    // The provider whose current key is B still opens rows of key A (rotation in progress).
    assert_eq!(
        envelope(on_b.clone())
            .open(&blob, &c, b"row")
            .await
            .unwrap()
            .expose(),
        b"secret"
    );

    let rewrapped = envelope(on_b.clone())
        .rewrap(&blob.wrapped_dek, &c)
        .await
        .unwrap();
    assert_eq!(
        rewrapped.key,
        KeyRef {
            key_id: key_b.clone(),
            version: 0
        }
    );
    assert_ne!(rewrapped.ciphertext, blob.wrapped_dek.ciphertext);
    let moved = SealedBlob {
        ciphertext: blob.ciphertext.clone(),
        wrapped_dek: rewrapped.clone(),
    };
    for p in [&on_b, &on_a] {
        assert_eq!(
            envelope(p.clone())
                .open(&moved, &c, b"row")
                .await
                .unwrap()
                .expose(),
            b"secret"
        );
    }

    // Still bound to its context, and to the key recorded with it.
    let err = on_b
        .rewrap_data_key(&rewrapped, &ctx("c2"))
        .await
        .unwrap_err();
    assert!(matches!(err, CryptoError::Decrypt), "{err:?}");
    let mislabelled = cb_crypto::WrappedDek {
        key: KeyRef {
            key_id: key_a.clone(),
            version: 0,
        },
        ciphertext: rewrapped.ciphertext.clone(),
    };
    let err = on_b.unwrap_data_key(&mislabelled, &c).await.unwrap_err();
    // AWS answers IncorrectKeyException (→ Decrypt); moto answers AccessDeniedException.
    assert!(
        matches!(err, CryptoError::Decrypt | CryptoError::AccessDenied { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_key_is_not_found_naming_key_and_region() {
    let Some(endpoint) = kms_server::endpoint("unknown_key_is_not_found_naming_key_and_region")
    else {
        return;
    };
    let missing = uuid::Uuid::now_v7().to_string();
    for key_id in [
        missing.clone(),
        format!("arn:aws:kms:{REGION}:123456789012:key/{missing}"),
        format!("alias/cb-e2e-missing-{missing}"),
    ] {
        let err = AwsKmsKeyProvider::connect(kms_server::config(&endpoint, &key_id))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CryptoError::KeyNotFound { key_id: k, region } if *k == key_id && region == REGION),
            "{key_id}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("key {key_id} not found in region {REGION}")
        );
    }
}

#[tokio::test]
async fn disabled_key_is_refused_at_connect() {
    let Some(endpoint) = kms_server::endpoint("disabled_key_is_refused_at_connect") else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    kms_server::disable_key(&endpoint, &key).await;
    let err = AwsKmsKeyProvider::connect(kms_server::config(&endpoint, &key))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CryptoError::KeyDisabled { key_id } if *key_id == key),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("key {key} is disabled or pending deletion: enable it or rotate to another key")
    );
}

#[tokio::test]
async fn unreachable_or_hung_kms_is_unavailable() {
    // No KMS server needed: nothing listens on port 1, and the hung server is local.
    let cfg = kms_server::impatient(
        kms_server::config("http://127.0.0.1:1", "alias/cb-e2e"),
        Duration::from_secs(2),
    );
    let err = AwsKmsKeyProvider::connect(cfg).await.unwrap_err();
    assert!(matches!(err, CryptoError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("alias/cb-e2e"), "{err}");

    let hung = HungServer::start().await;
    let cfg = kms_server::impatient(
        kms_server::config(&hung.url, "alias/cb-e2e"),
        Duration::from_millis(300),
    );
    let err = AwsKmsKeyProvider::connect(cfg).await.unwrap_err();
    assert!(matches!(err, CryptoError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn kms_outage_is_unavailable_but_cached_deks_still_open() {
    let Some(endpoint) =
        kms_server::endpoint("kms_outage_is_unavailable_but_cached_deks_still_open")
    else {
        return;
    };
    let key = kms_server::create_key(&endpoint).await;
    let proxy = TcpProxy::to_http(&endpoint).await;
    let cfg = kms_server::impatient(
        kms_server::config(&proxy.url(), &key),
        Duration::from_secs(2),
    );
    let provider = Arc::new(AwsKmsKeyProvider::connect(cfg).await.unwrap());
    let env = envelope(provider.clone());
    let c = ctx("c1");
    let blob = env.seal_new(&c, b"row", b"secret").await.unwrap();

    proxy.stop().await;
    assert_eq!(
        env.open(&blob, &c, b"row").await.unwrap().expose(),
        b"secret"
    );
    let uncached = envelope(provider.clone()).open(&blob, &c, b"row").await;
    assert!(
        matches!(uncached, Err(CryptoError::Unavailable(_))),
        "{uncached:?}"
    );
    let err = provider.generate_data_key(&c).await.unwrap_err();
    assert!(matches!(err, CryptoError::Unavailable(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&key) && msg.contains("GenerateDataKey"),
        "{msg}"
    );
}
