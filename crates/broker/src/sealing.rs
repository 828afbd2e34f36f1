//! Binds sealed token bundles to their credential row: the AAD and the KMS encryption context
//! name the credential, so a blob copied onto another row cannot be opened.

use crate::credential::Credential;
use crate::error::BrokerError;
use crate::tokens::TokenBundle;
use cb_crypto::{EncryptionContext, Envelope, KeyRef, SealedBlob, WrappedDek};
use cb_store::SealedColumns;

const PURPOSE: &str = "tokens";

fn aad(credential_id: &str) -> Vec<u8> {
    format!("credential-broker/v1|credential|{credential_id}|{PURPOSE}").into_bytes()
}

fn context(c: &Credential) -> EncryptionContext {
    token_context(&c.workspace_id, c.id.as_str())
}

/// The KMS encryption context of a credential's token bundle (also used by key rotation).
pub fn token_context(workspace_id: &str, credential_id: &str) -> EncryptionContext {
    EncryptionContext::for_credential(workspace_id, credential_id, PURPOSE)
}

fn wrapped_dek(s: &SealedColumns) -> Result<WrappedDek, BrokerError> {
    let version = u32::try_from(s.dek_key_version)
        .map_err(|_| BrokerError::Internal("stored key version is out of range".into()))?;
    Ok(WrappedDek {
        key: KeyRef {
            key_id: s.dek_key_id.clone(),
            version,
        },
        ciphertext: s.dek_wrapped.clone(),
    })
}

fn columns(blob: SealedBlob) -> SealedColumns {
    SealedColumns {
        ciphertext: blob.ciphertext,
        dek_wrapped: blob.wrapped_dek.ciphertext,
        dek_key_id: blob.wrapped_dek.key.key_id,
        dek_key_version: i64::from(blob.wrapped_dek.key.version),
    }
}

/// Seals `tokens` into `c`: under the credential's existing data key, or a new one for a
/// credential that has none yet. Also records token metadata visible without decrypting.
pub async fn seal_into(
    envelope: &Envelope,
    c: &mut Credential,
    tokens: &TokenBundle,
) -> Result<(), BrokerError> {
    let plaintext = tokens.to_plaintext()?;
    let ctx = context(c);
    let aad = aad(c.id.as_str());
    let blob = match &c.sealed {
        Some(s) => {
            envelope
                .reseal(&wrapped_dek(s)?, &ctx, &aad, &plaintext)
                .await?
        }
        None => envelope.seal_new(&ctx, &aad, &plaintext).await?,
    };
    c.sealed = Some(columns(blob));
    c.access_expires_at = tokens.access_expires_at;
    c.refresh_expires_at = tokens.refresh_expires_at;
    c.has_refresh_token = tokens.refresh_token.is_some();
    Ok(())
}

/// Opens the credential's sealed bundle.
pub async fn open(envelope: &Envelope, c: &Credential) -> Result<Option<TokenBundle>, BrokerError> {
    let Some(s) = &c.sealed else { return Ok(None) };
    let blob = SealedBlob {
        ciphertext: s.ciphertext.clone(),
        wrapped_dek: wrapped_dek(s)?,
    };
    let plaintext = envelope
        .open(&blob, &context(c), &aad(c.id.as_str()))
        .await?;
    TokenBundle::from_plaintext(plaintext.expose()).map(Some)
}

/// Destroys the sealed bundle and the wrapped data key (crypto-shredding), also from the cache.
pub fn shred(envelope: &Envelope, c: &mut Credential) -> Result<(), BrokerError> {
    if let Some(s) = c.sealed.take() {
        envelope.forget(&wrapped_dek(&s)?);
    }
    c.has_refresh_token = false;
    c.access_expires_at = None;
    c.refresh_expires_at = None;
    c.next_refresh_at = None;
    Ok(())
}

const APP_SECRET_PURPOSE: &str = "client_secret";

/// The AAD of an OAuth app's client secret: bound to the app and the secret's version, so a
/// sealed secret copied to another app (or version) cannot be opened.
fn app_secret_aad(app_id: &str, version: i64) -> Vec<u8> {
    format!("credential-broker/v1|oauth_app|{app_id}|{APP_SECRET_PURPOSE}|{version}").into_bytes()
}

fn app_secret_context(workspace_id: &str, app_id: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("workspace_id", workspace_id)
        .with("oauth_app", app_id)
        .with("purpose", APP_SECRET_PURPOSE)
}

/// The KMS encryption context of a sealed secret's data key, by kind (also used by key
/// rotation; one arm per [`cb_store::SecretKind`]).
pub fn secret_context(
    kind: cb_store::SecretKind,
    workspace_id: &str,
    owner_id: &str,
) -> EncryptionContext {
    match kind {
        cb_store::SecretKind::OAuthAppSecret => app_secret_context(workspace_id, owner_id),
        cb_store::SecretKind::WebhookSecret => webhook_secret_context(workspace_id, owner_id),
    }
}

/// Seals a text secret under a new data key.
async fn seal_text(
    envelope: &Envelope,
    ctx: &EncryptionContext,
    aad: &[u8],
    secret: &secrecy::SecretString,
) -> Result<SealedColumns, BrokerError> {
    use secrecy::ExposeSecret as _;
    let blob = envelope
        .seal_new(ctx, aad, secret.expose_secret().as_bytes())
        .await?;
    Ok(columns(blob))
}

/// Opens a text secret sealed by [`seal_text`].
async fn open_text(
    envelope: &Envelope,
    sealed: &SealedColumns,
    ctx: &EncryptionContext,
    aad: &[u8],
) -> Result<secrecy::SecretString, BrokerError> {
    let blob = SealedBlob {
        ciphertext: sealed.ciphertext.clone(),
        wrapped_dek: wrapped_dek(sealed)?,
    };
    let plaintext = envelope.open(&blob, ctx, aad).await?;
    let text = String::from_utf8(plaintext.expose().to_vec())
        .map_err(|_| BrokerError::Internal("a stored secret is not text".into()))?;
    Ok(secrecy::SecretString::from(text))
}

/// Seals an OAuth app's client secret under a new data key.
pub async fn seal_app_secret(
    envelope: &Envelope,
    workspace_id: &str,
    app_id: &str,
    version: i64,
    secret: &secrecy::SecretString,
    now_ms: i64,
) -> Result<cb_store::OAuthAppSecretRow, BrokerError> {
    let c = seal_text(
        envelope,
        &app_secret_context(workspace_id, app_id),
        &app_secret_aad(app_id, version),
        secret,
    )
    .await?;
    Ok(cb_store::OAuthAppSecretRow {
        app_id: app_id.to_owned(),
        version,
        sealed_secret: c.ciphertext,
        dek_wrapped: c.dek_wrapped,
        dek_key_id: c.dek_key_id,
        dek_key_version: c.dek_key_version,
        created_at: now_ms,
    })
}

/// Opens an OAuth app's client secret.
pub async fn open_app_secret(
    envelope: &Envelope,
    workspace_id: &str,
    row: &cb_store::OAuthAppSecretRow,
) -> Result<secrecy::SecretString, BrokerError> {
    let sealed = SealedColumns {
        ciphertext: row.sealed_secret.clone(),
        dek_wrapped: row.dek_wrapped.clone(),
        dek_key_id: row.dek_key_id.clone(),
        dek_key_version: row.dek_key_version,
    };
    open_text(
        envelope,
        &sealed,
        &app_secret_context(workspace_id, &row.app_id),
        &app_secret_aad(&row.app_id, row.version),
    )
    .await
}

const WEBHOOK_SECRET_PURPOSE: &str = "webhook_secret";

/// The AAD of a webhook endpoint's signing secret: bound to the endpoint and the version.
fn webhook_secret_aad(endpoint_id: &str, version: i64) -> Vec<u8> {
    format!(
        "credential-broker/v1|webhook_endpoint|{endpoint_id}|{WEBHOOK_SECRET_PURPOSE}|{version}"
    )
    .into_bytes()
}

fn webhook_secret_context(workspace_id: &str, endpoint_id: &str) -> EncryptionContext {
    EncryptionContext::new()
        .with("workspace_id", workspace_id)
        .with("webhook_endpoint", endpoint_id)
        .with("purpose", WEBHOOK_SECRET_PURPOSE)
}

/// Seals an API-managed webhook endpoint's signing secret (`whsec_…`) under a new data key.
pub async fn seal_webhook_secret(
    envelope: &Envelope,
    workspace_id: &str,
    endpoint_id: &str,
    version: i64,
    secret: &secrecy::SecretString,
    now_ms: i64,
) -> Result<cb_store::WebhookSecretRow, BrokerError> {
    let sealed = seal_text(
        envelope,
        &webhook_secret_context(workspace_id, endpoint_id),
        &webhook_secret_aad(endpoint_id, version),
        secret,
    )
    .await?;
    Ok(cb_store::WebhookSecretRow {
        endpoint_id: endpoint_id.to_owned(),
        version,
        sealed,
        created_at: now_ms,
    })
}

/// Opens a webhook endpoint's signing secret.
pub async fn open_webhook_secret(
    envelope: &Envelope,
    workspace_id: &str,
    row: &cb_store::WebhookSecretRow,
) -> Result<secrecy::SecretString, BrokerError> {
    open_text(
        envelope,
        &row.sealed,
        &webhook_secret_context(workspace_id, &row.endpoint_id),
        &webhook_secret_aad(&row.endpoint_id, row.version),
    )
    .await
}
