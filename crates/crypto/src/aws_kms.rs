//! The `aws-kms` key provider: DEKs generated and wrapped by an AWS KMS symmetric key.
//!
//! Every call carries the credential's [`EncryptionContext`] as the KMS encryption context, so a
//! wrapped DEK only unwraps for the credential it was made for (and CloudTrail names it).
//!
//! [`KeyRef`]s hold the key ARN that KMS returns and version 0: KMS keeps the old backing keys
//! of a rotated key itself and its ciphertexts name them, so the broker tracks no versions.
//! Rotating to *another* key means configuring its id and re-wrapping rows
//! ([`KeyProvider::rewrap_data_key`] is a server-side `ReEncrypt`).
//!
//! IAM permissions needed on the key: `kms:DescribeKey` (at connect), `kms:GenerateDataKey`,
//! `kms:Decrypt`, `kms:Encrypt`, and for rotation `kms:ReEncryptFrom` on the old key and
//! `kms:ReEncryptTo` on the new one.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::{ErrorKind, RetryConfig};
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyState, KeyUsageType};
use zeroize::Zeroizing;

use crate::{CryptoError, DataKey, EncryptionContext, KeyProvider, KeyRef, WrappedDek};

/// The SDK's KMS client, for tools and tests that manage keys (same SDK version as the provider).
pub use aws_sdk_kms::Client as KmsClient;

/// Default per-attempt timeout of a KMS call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of attempts of a KMS call (first try plus retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Configuration of [`AwsKmsKeyProvider`].
#[derive(Clone)]
pub struct AwsKmsConfig {
    /// The key new DEKs are wrapped with: key ARN, key id, alias name (`alias/...`) or alias ARN.
    pub key_id: String,
    /// AWS region; when unset, the key ARN's region, else the standard chain (`AWS_REGION`,
    /// profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint override, for KMS-compatible servers (tests) or VPC endpoints.
    pub endpoint_url: Option<String>,
    /// Timeout of one attempt, connecting included.
    pub timeout: Duration,
    /// Attempts per call, first try included (1 disables retries).
    pub max_attempts: u32,
    /// Static (access key id, secret access key), for tests and development only; when unset
    /// the standard AWS credential chain is used (env, profile, web identity, ECS, IMDS).
    pub static_credentials: Option<(String, String)>,
}

impl AwsKmsConfig {
    /// A config for `key_id` with the defaults: region and credentials from the standard
    /// chain, 5 s per attempt, 3 attempts.
    pub fn new(key_id: impl Into<String>) -> Self {
        Self {
            key_id: key_id.into(),
            region: None,
            endpoint_url: None,
            timeout: DEFAULT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            static_credentials: None,
        }
    }

    fn invalid(&self, reason: &str) -> CryptoError {
        CryptoError::Provider(format!("aws-kms config: {reason}"))
    }

    fn validate(&self) -> Result<(), CryptoError> {
        if self.key_id.trim().is_empty() {
            return Err(self.invalid("key_id is empty: set a key ARN, key id or alias/NAME"));
        }
        if self.timeout.is_zero() {
            return Err(self.invalid("timeout must be greater than zero"));
        }
        if self.max_attempts == 0 {
            return Err(self.invalid("max_attempts must be at least 1"));
        }
        Ok(())
    }
}

impl fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("key_id", &self.key_id)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field(
                "static_credentials",
                &self
                    .static_credentials
                    .as_ref()
                    .map(|(id, _)| (id, "[redacted]")),
            )
            .finish()
    }
}

/// A KMS client configured from `cfg` (credentials, region, endpoint, timeouts, retries),
/// with the region it resolved to. [`AwsKmsKeyProvider::connect`] uses it; exposed for tools
/// and tests that manage keys.
pub async fn kms_client(cfg: &AwsKmsConfig) -> Result<(KmsClient, String), CryptoError> {
    cfg.validate()?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.timeout)
                .operation_attempt_timeout(cfg.timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.max_attempts));
    if let Some(region) = cfg.region.clone().or_else(|| arn_region(&cfg.key_id)) {
        loader = loader.region(Region::new(region));
    }
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((id, secret)) = &cfg.static_credentials {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            None,
            None,
            "cb-static-credentials",
        ));
    }
    let sdk = loader.load().await;
    let region = sdk.region().map(ToString::to_string).ok_or_else(|| {
        cfg.invalid(
            "no AWS region: set region in the aws-kms config, use a key ARN, or set AWS_REGION",
        )
    })?;
    Ok((KmsClient::new(&sdk), region))
}

/// The region of a KMS key or alias ARN (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID`).
fn arn_region(key_id: &str) -> Option<String> {
    let mut parts = key_id.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("kms"), Some(region)) if !region.is_empty() => {
            Some(region.to_owned())
        }
        _ => None,
    }
}

/// Whether `key_id` is a KMS key ARN, the only form this provider records in a [`KeyRef`].
fn is_key_arn(key_id: &str) -> bool {
    arn_region(key_id).is_some() && key_id.contains(":key/")
}

/// The AWS KMS key provider: one symmetric key wraps new DEKs; any key the caller may use
/// unwraps, as long as it is the key recorded with the wrapped DEK.
pub struct AwsKmsKeyProvider {
    client: KmsClient,
    key_arn: String,
    region: String,
}

impl fmt::Debug for AwsKmsKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKeyProvider")
            .field("key_arn", &self.key_arn)
            .field("region", &self.region)
            .finish()
    }
}

impl AwsKmsKeyProvider {
    /// Builds the client and resolves the configured key to its ARN with `DescribeKey`, failing
    /// unless it is an enabled symmetric encryption key.
    pub async fn connect(cfg: AwsKmsConfig) -> Result<Self, CryptoError> {
        let (client, region) = kms_client(&cfg).await?;
        let calls = Calls {
            region: &region,
            key_id: &cfg.key_id,
        };
        let described = client
            .describe_key()
            .key_id(&cfg.key_id)
            .send()
            .await
            .map_err(|e| calls.error("DescribeKey", e))?;
        let meta = described
            .key_metadata()
            .ok_or_else(|| calls.missing("DescribeKey", "KeyMetadata"))?;
        let key_arn = meta
            .arn()
            .filter(|arn| is_key_arn(arn))
            .ok_or_else(|| calls.missing("DescribeKey", "key Arn"))?
            .to_owned();
        check_key(&key_arn, &region, meta)?;
        tracing::info!(key_arn = %key_arn, region = %region, "aws-kms key provider ready");
        Ok(Self {
            client,
            key_arn,
            region,
        })
    }

    /// The KMS client (for tools and tests; the provider never exposes DEKs through it).
    pub fn client(&self) -> &KmsClient {
        &self.client
    }

    /// The region the client calls.
    pub fn region(&self) -> &str {
        &self.region
    }

    fn calls<'a>(&'a self, key_id: &'a str) -> Calls<'a> {
        Calls {
            region: &self.region,
            key_id,
        }
    }

    fn key_ref(
        &self,
        key_id: Option<String>,
        call: &Calls<'_>,
        op: &str,
    ) -> Result<KeyRef, CryptoError> {
        let key_id = key_id.ok_or_else(|| call.missing(op, "KeyId"))?;
        if key_id != self.key_arn {
            // KMS answers with the ARN of the key it was asked to use; anything else is a
            // misbehaving endpoint, and recording it would make the row unreadable later.
            return Err(CryptoError::Provider(format!(
                "kms:{op} answered for key {key_id} instead of {}",
                self.key_arn
            )));
        }
        Ok(KeyRef { key_id, version: 0 })
    }

    /// The wrapped DEK a GenerateDataKey, Encrypt or ReEncrypt answer carries.
    fn wrapped(
        &self,
        ciphertext: Option<Blob>,
        key_id: Option<String>,
        call: &Calls<'_>,
        op: &str,
    ) -> Result<WrappedDek, CryptoError> {
        let ciphertext = ciphertext
            .ok_or_else(|| call.missing(op, "CiphertextBlob"))?
            .into_inner();
        let key = self.key_ref(key_id, call, op)?;
        Ok(WrappedDek { key, ciphertext })
    }
}

/// Refuses keys that cannot wrap DEKs, with the reason.
fn check_key(
    key_arn: &str,
    region: &str,
    meta: &aws_sdk_kms::types::KeyMetadata,
) -> Result<(), CryptoError> {
    match meta.key_state() {
        Some(KeyState::Enabled) | None => {}
        Some(KeyState::Disabled | KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) => {
            return Err(CryptoError::KeyDisabled {
                key_id: key_arn.to_owned(),
            });
        }
        Some(KeyState::Unavailable) => {
            return Err(CryptoError::Unavailable(format!(
                "key {key_arn} in region {region} is unavailable (its custom key store is disconnected)"
            )));
        }
        Some(state) => {
            return Err(CryptoError::Provider(format!(
                "key {key_arn} is in state {}: it cannot be used until it is Enabled",
                state.as_str()
            )));
        }
    }
    let usage_ok = meta
        .key_usage()
        .is_none_or(|u| *u == KeyUsageType::EncryptDecrypt);
    let spec_ok = meta
        .key_spec()
        .is_none_or(|s| *s == KeySpec::SymmetricDefault);
    if !usage_ok || !spec_ok {
        return Err(CryptoError::Provider(format!(
            "key {key_arn} is not a symmetric encryption key (KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT)"
        )));
    }
    Ok(())
}

/// The encryption context as KMS wants it; `None` when empty.
fn kms_context(ctx: &EncryptionContext) -> Option<HashMap<String, String>> {
    let map: HashMap<String, String> = ctx
        .entries()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// The KMS key `wrapped` was made under; a DEK wrapped by anything else (e.g. a local key file)
/// is refused before asking KMS.
fn kms_key_of(wrapped: &WrappedDek) -> Result<&str, CryptoError> {
    let key_id = &wrapped.key.key_id;
    if wrapped.key.version != 0 || !is_key_arn(key_id) {
        return Err(CryptoError::UnknownKey {
            key_id: key_id.clone(),
            version: wrapped.key.version,
        });
    }
    Ok(key_id)
}

/// A plaintext DEK returned by KMS; the copy KMS handed over is zeroized.
fn data_key(plaintext: Option<Blob>, call: &Calls<'_>, op: &str) -> Result<DataKey, CryptoError> {
    let bytes = Zeroizing::new(
        plaintext
            .ok_or_else(|| call.missing(op, "Plaintext"))?
            .into_inner(),
    );
    DataKey::from_slice(&bytes)
}

#[async_trait::async_trait]
impl KeyProvider for AwsKmsKeyProvider {
    fn kind(&self) -> &'static str {
        "aws-kms"
    }

    fn current_key(&self) -> KeyRef {
        KeyRef {
            key_id: self.key_arn.clone(),
            version: 0,
        }
    }

    async fn generate_data_key(
        &self,
        ctx: &EncryptionContext,
    ) -> Result<(DataKey, WrappedDek), CryptoError> {
        const OP: &str = "GenerateDataKey";
        let call = self.calls(&self.key_arn);
        let mut out = self
            .client
            .generate_data_key()
            .key_id(&self.key_arn)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(kms_context(ctx))
            .send()
            .await
            .map_err(|e| call.error(OP, e))?;
        let dek = data_key(out.plaintext.take(), &call, OP)?;
        let wrapped = self.wrapped(out.ciphertext_blob.take(), out.key_id.take(), &call, OP)?;
        Ok((dek, wrapped))
    }

    async fn unwrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<DataKey, CryptoError> {
        const OP: &str = "Decrypt";
        let key_id = kms_key_of(wrapped)?;
        let call = self.calls(key_id);
        // KeyId pins the key: KMS refuses a blob made under any other key.
        let mut out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .set_encryption_context(kms_context(ctx))
            .send()
            .await
            .map_err(|e| call.error(OP, e))?;
        let dek = data_key(out.plaintext.take(), &call, OP)?;
        if out.key_id.as_deref() != Some(key_id) {
            return Err(CryptoError::Decrypt);
        }
        Ok(dek)
    }

    async fn wrap_data_key(
        &self,
        dek: &DataKey,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        const OP: &str = "Encrypt";
        let call = self.calls(&self.key_arn);
        // The request keeps a copy of the DEK that the SDK drops without zeroizing.
        let mut out = self
            .client
            .encrypt()
            .key_id(&self.key_arn)
            .plaintext(Blob::new(dek.expose().to_vec()))
            .set_encryption_context(kms_context(ctx))
            .send()
            .await
            .map_err(|e| call.error(OP, e))?;
        self.wrapped(out.ciphertext_blob.take(), out.key_id.take(), &call, OP)
    }

    /// `ReEncrypt` inside KMS: the plaintext DEK never leaves it.
    async fn rewrap_data_key(
        &self,
        wrapped: &WrappedDek,
        ctx: &EncryptionContext,
    ) -> Result<WrappedDek, CryptoError> {
        const OP: &str = "ReEncrypt";
        let source = kms_key_of(wrapped)?;
        let keys = if source == self.key_arn {
            source.to_owned()
        } else {
            format!("{source} or {}", self.key_arn)
        };
        let call = self.calls(&keys);
        let context = kms_context(ctx);
        let mut out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .source_key_id(source)
            .set_source_encryption_context(context.clone())
            .destination_key_id(&self.key_arn)
            .set_destination_encryption_context(context)
            .send()
            .await
            .map_err(|e| call.error(OP, e))?;
        if out.source_key_id.as_deref().is_some_and(|id| id != source) {
            return Err(CryptoError::Decrypt);
        }
        self.wrapped(out.ciphertext_blob.take(), out.key_id.take(), &call, OP)
    }
}

/// The Display of an error and of its sources, joined with ": ". Not the Debug form, which
/// can dump raw HTTP bodies.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        // Some layers repeat their source in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// What a failed call was about, for error messages.
struct Calls<'a> {
    region: &'a str,
    /// The key (or "A or B" for a re-encrypt between keys).
    key_id: &'a str,
}

impl Calls<'_> {
    fn missing(&self, op: &str, field: &str) -> CryptoError {
        CryptoError::Provider(format!(
            "kms:{op} on key {} returned no {field}",
            self.key_id
        ))
    }

    /// Maps an SDK error; never includes request or response bodies.
    fn error<E>(&self, op: &str, err: SdkError<E, HttpResponse>) -> CryptoError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => self.service_error(
                op,
                service.err().code(),
                service.err().message(),
                service.raw().status().as_u16(),
            ),
            SdkError::TimeoutError(_) => CryptoError::Unavailable(format!(
                "kms:{op} on key {} in region {} timed out",
                self.key_id, self.region
            )),
            SdkError::DispatchFailure(failure) => {
                let transient = failure.is_io()
                    || failure.is_timeout()
                    || matches!(
                        failure.as_other(),
                        Some(
                            ErrorKind::TransientError
                                | ErrorKind::ThrottlingError
                                | ErrorKind::ServerError
                        )
                    );
                let detail = causes(&err);
                if transient {
                    CryptoError::Unavailable(format!(
                        "kms:{op} on key {} in region {}: {detail}",
                        self.key_id, self.region
                    ))
                } else {
                    // e.g. no credentials found by the AWS credential chain.
                    CryptoError::Provider(format!(
                        "kms:{op} on key {} could not be sent: {detail}",
                        self.key_id
                    ))
                }
            }
            // The body could hold key material: report only the status.
            SdkError::ResponseError(response) => CryptoError::Unavailable(format!(
                "kms:{op} on key {} in region {}: unreadable response (http {})",
                self.key_id,
                self.region,
                response.raw().status().as_u16()
            )),
            _ => {
                CryptoError::Provider(format!("kms:{op} on key {}: {}", self.key_id, causes(&err)))
            }
        }
    }

    /// Maps a KMS error response by its code (codes are shared by every operation).
    fn service_error(
        &self,
        op: &str,
        code: Option<&str>,
        message: Option<&str>,
        status: u16,
    ) -> CryptoError {
        let key_id = self.key_id.to_owned();
        match code.unwrap_or_default() {
            "AccessDeniedException" => CryptoError::AccessDenied {
                key_id,
                operation: format!("kms:{op}"),
            },
            "DisabledException" | "KMSInvalidStateException" => CryptoError::KeyDisabled { key_id },
            "NotFoundException" => CryptoError::KeyNotFound {
                key_id,
                region: self.region.to_owned(),
            },
            "InvalidCiphertextException" | "IncorrectKeyException" => CryptoError::Decrypt,
            "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "ExpiredTokenException"
            | "ExpiredToken" => CryptoError::Provider(format!(
                "kms:{op} rejected the AWS credentials ({}): check the credential chain \
                 (environment, profile, role) and the system clock",
                code.unwrap_or_default()
            )),
            "InvalidKeyUsageException" => CryptoError::Provider(format!(
                "key {key_id} cannot be used for kms:{op}: use a symmetric ENCRYPT_DECRYPT key"
            )),
            "KeyUnavailableException"
            | "DependencyTimeoutException"
            | "KMSInternalException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "ServiceUnavailableException"
            | "InternalFailure" => CryptoError::Unavailable(format!(
                "kms:{op} on key {key_id} in region {}: {}",
                self.region,
                code.unwrap_or_default()
            )),
            _ if status >= 500 => CryptoError::Unavailable(format!(
                "kms:{op} on key {key_id} in region {}: http {status} {}",
                self.region,
                code.unwrap_or("unknown error")
            )),
            other => CryptoError::Provider(format!(
                "kms:{op} on key {key_id} failed: {} {}",
                if other.is_empty() {
                    "unknown error"
                } else {
                    other
                },
                message.unwrap_or_default()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn calls() -> Calls<'static> {
        Calls {
            region: "eu-west-1",
            key_id: ARN,
        }
    }

    fn map(code: &str, status: u16) -> CryptoError {
        calls().service_error("Decrypt", Some(code), Some("message"), status)
    }

    #[test]
    fn service_errors_map_to_clear_variants() {
        let err = map("AccessDeniedException", 400);
        let msg = err.to_string();
        assert!(matches!(err, CryptoError::AccessDenied { .. }));
        assert!(msg.contains(ARN) && msg.contains("kms:Decrypt"), "{msg}");
        assert!(
            msg.contains("key policy") && msg.contains("kms:ReEncrypt*"),
            "{msg}"
        );

        for code in ["DisabledException", "KMSInvalidStateException"] {
            let msg = map(code, 400).to_string();
            assert_eq!(
                msg,
                format!(
                    "key {ARN} is disabled or pending deletion: enable it or rotate to another key"
                )
            );
        }
        let msg = map("NotFoundException", 400).to_string();
        assert_eq!(msg, format!("key {ARN} not found in region eu-west-1"));

        assert!(matches!(
            map("InvalidCiphertextException", 400),
            CryptoError::Decrypt
        ));
        assert!(matches!(
            map("IncorrectKeyException", 400),
            CryptoError::Decrypt
        ));
        for code in [
            "KMSInternalException",
            "ThrottlingException",
            "KeyUnavailableException",
        ] {
            assert!(
                matches!(map(code, 400), CryptoError::Unavailable(_)),
                "{code}"
            );
        }
        assert!(matches!(
            map("SomethingNew", 503),
            CryptoError::Unavailable(_)
        ));
        let msg = map("SomethingNew", 400).to_string();
        assert!(msg.contains("SomethingNew") && msg.contains(ARN), "{msg}");
        let msg = map("UnrecognizedClientException", 400).to_string();
        assert!(msg.contains("credential chain"), "{msg}");
    }

    #[test]
    fn arns_and_config() {
        assert_eq!(arn_region(ARN).as_deref(), Some("eu-west-1"));
        assert!(is_key_arn(ARN));
        assert_eq!(
            arn_region("arn:aws:kms:us-east-1:123456789012:alias/cb").as_deref(),
            Some("us-east-1")
        );
        assert!(!is_key_arn("arn:aws:kms:us-east-1:123456789012:alias/cb"));
        assert!(!is_key_arn("alias/cb") && !is_key_arn("local-0a1b2c3d"));
        assert_eq!(arn_region("1234abcd-12ab-34cd-56ef-1234567890ab"), None);

        let mut cfg = AwsKmsConfig::new("alias/cb");
        cfg.static_credentials = Some(("AKIDEXAMPLE".into(), "very-secret".into()));
        let printed = format!("{cfg:?}");
        assert!(
            printed.contains("AKIDEXAMPLE") && !printed.contains("very-secret"),
            "{printed}"
        );
        assert!(cfg.validate().is_ok());
        cfg.max_attempts = 0;
        assert!(cfg.validate().is_err());
        assert!(AwsKmsConfig::new(" ").validate().is_err());
    }

    #[tokio::test]
    async fn dek_of_another_provider_is_unknown_key_without_a_call() {
        let (client, region) = kms_client(&AwsKmsConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:1".into()),
            static_credentials: Some(("a".into(), "b".into())),
            ..AwsKmsConfig::new(ARN)
        })
        .await
        .unwrap();
        assert_eq!(region, "us-east-1");
        let provider = AwsKmsKeyProvider {
            client,
            key_arn: ARN.into(),
            region,
        };
        assert_eq!(provider.kind(), "aws-kms");
        assert_eq!(
            provider.current_key(),
            KeyRef {
                key_id: ARN.into(),
                version: 0
            }
        );
        let wrapped = WrappedDek {
            key: KeyRef {
                key_id: "local-0a1b2c3d".into(),
                version: 1,
            },
            ciphertext: vec![1, 2, 3],
        };
        let ctx = EncryptionContext::for_credential("w", "c", "token");
        let err = provider.unwrap_data_key(&wrapped, &ctx).await.unwrap_err();
        assert!(
            matches!(err, CryptoError::UnknownKey { version: 1, .. }),
            "{err:?}"
        );
        let err = provider.rewrap_data_key(&wrapped, &ctx).await.unwrap_err();
        assert!(matches!(err, CryptoError::UnknownKey { .. }), "{err:?}");
    }
}
