//! AWS KMS provider, in two modes.
//!
//! **Envelope** (the default): latchkey generates each signing key locally and
//! asks KMS for a fresh AES-256 data key (`GenerateDataKey`) under the
//! configured symmetric KMS key, seals the private key with it here
//! (AES-256-GCM, [`super::seal`]) and stores only the encrypted data key next to
//! the sealed blob. Unwrapping is one `Decrypt` call when a key is loaded;
//! signing then happens in-process at full speed. An encryption context
//! (`latchkey:kid`, `latchkey:alg`) binds each data key to its key row, so a
//! blob moved onto another row fails to decrypt in KMS itself, and the same
//! binding is repeated as AES-GCM associated data.
//!
//! **Native**: the private key is created inside KMS (`CreateKey`, asymmetric,
//! `SIGN_VERIFY`) and never leaves it; latchkey keeps the key's ARN and its
//! public half (`GetPublicKey`), and every signature is a KMS `Sign` call.
//! KMS returns ECDSA signatures in DER; JWS wants raw `r || s`, converted here.
//!
//! This module owns the SDK client and the blob format. It never logs key
//! material or data keys; KMS error messages are passed on, which name keys
//! by id only.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::{Credentials, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::get_public_key::GetPublicKeyOutput;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeySpec, KeySpec, KeyState, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag,
};
use openssl::ecdsa::EcdsaSig;
use zeroize::Zeroizing;

use super::KmsError;
use crate::config::{AwsKmsConfig, AwsMode};
use crate::oauth::Alg;

/// Magic prefix of an envelope blob: `AWS1 || u16 BE len || encrypted data key || sealed key`.
const ENVELOPE_MAGIC: &[u8; 4] = b"AWS1";
/// Smallest possible [`super::seal`] output: `LK1 || nonce(12) || tag(16)`.
const MIN_SEALED_LEN: usize = 3 + 12 + 16;
/// AES-256 data keys are 32 bytes.
const DATA_KEY_LEN: usize = 32;
/// KMS `Sign` accepts at most 4096 bytes of message with `MessageType::Raw`.
const MAX_RAW_SIGN_INPUT: usize = 4096;
/// ScheduleKeyDeletion's minimum (and latchkey's) waiting period.
const DELETION_WINDOW_DAYS: i32 = 7;

/// Network budget for one KMS call: a KMS outage must surface as an error in
/// seconds (the key ring then keeps its current keys), never as a hung request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// One retry (the SDK's standard mode: throttling and transient errors only).
const MAX_ATTEMPTS: u32 = 2;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

pub struct AwsKms {
    client: Client,
    mode: AwsMode,
    key_id: Option<String>,
}

impl AwsKms {
    /// Build the KMS client. No request is made here: credentials from the
    /// default chain are resolved lazily on the first call.
    pub async fn connect(cfg: &AwsKmsConfig) -> Result<Self, KmsError> {
        Ok(Self {
            client: build_client(cfg).await?,
            mode: cfg.mode,
            key_id: cfg.key_id.clone(),
        })
    }

    pub fn mode(&self) -> AwsMode {
        self.mode
    }

    /// The configured wrapping key (envelope mode): id, ARN or alias.
    pub fn wrapping_key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    fn require_wrapping_key(&self) -> Result<&str, KmsError> {
        self.key_id.as_deref().ok_or_else(|| {
            KmsError::Config(
                "keys.aws.key_id (the wrapping key) is required in envelope mode".into(),
            )
        })
    }

    /// Envelope-encrypt a PKCS#8 private key under a fresh KMS data key.
    pub async fn wrap(&self, plaintext: &[u8], kid: &str, alg: Alg) -> Result<Vec<u8>, KmsError> {
        let key_id = self.require_wrapping_key()?;
        let mut out = self
            .client
            .generate_data_key()
            .key_id(key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(kid, alg)))
            .send()
            .await
            .map_err(|e| sdk_error("GenerateDataKey", key_id, e))?;
        // Take ownership so the plaintext data key is wiped when this scope ends.
        let data_key = Zeroizing::new(
            out.plaintext
                .take()
                .map(Blob::into_inner)
                .unwrap_or_default(),
        );
        let encrypted_key = out
            .ciphertext_blob
            .take()
            .map(Blob::into_inner)
            .unwrap_or_default();
        if data_key.len() != DATA_KEY_LEN {
            return Err(KmsError::Request(format!(
                "GenerateDataKey on {key_id} returned a {}-byte data key, expected {DATA_KEY_LEN}",
                data_key.len()
            )));
        }
        let encrypted_len = u16::try_from(encrypted_key.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                KmsError::Request(format!(
                    "GenerateDataKey on {key_id} returned an encrypted data key of {} bytes",
                    encrypted_key.len()
                ))
            })?;
        let sealed = super::seal(&data_key, &super::wrap_context(kid, alg), plaintext)?;

        let mut blob =
            Vec::with_capacity(ENVELOPE_MAGIC.len() + 2 + encrypted_key.len() + sealed.len());
        blob.extend_from_slice(ENVELOPE_MAGIC);
        blob.extend_from_slice(&encrypted_len.to_be_bytes());
        blob.extend_from_slice(&encrypted_key);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Decrypt the data key in KMS (same encryption context) and open the sealed key.
    pub async fn unwrap(
        &self,
        blob: &[u8],
        kid: &str,
        alg: Alg,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let (encrypted_key, sealed) = parse_envelope(blob)?;
        // No KeyId on Decrypt: the ciphertext names its KMS key, and leaving it
        // out keeps old blobs readable after an operator re-points the alias in
        // `key_id` at a new wrapping key. The encryption context still ties the
        // data key to this kid and algorithm.
        let out = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(encrypted_key))
            .set_encryption_context(Some(encryption_context(kid, alg)))
            .send()
            .await
            .map_err(|e| decrypt_error(kid, e))?;
        let data_key = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        if data_key.len() != DATA_KEY_LEN {
            return Err(KmsError::Unwrap);
        }
        super::open(&data_key, &super::wrap_context(kid, alg), sealed)
    }

    /// Create an asymmetric signing key in KMS; returns its ARN and SPKI DER public key.
    pub async fn create_native_key(&self, alg: Alg) -> Result<(String, Vec<u8>), KmsError> {
        let tag = |k: &str, v: &str| {
            Tag::builder()
                .tag_key(k)
                .tag_value(v)
                .build()
                .map_err(|e| KmsError::Request(format!("CreateKey tag: {e}")))
        };
        let created = self
            .client
            .create_key()
            .key_spec(key_spec(alg))
            .key_usage(KeyUsageType::SignVerify)
            .description(format!("latchkey {} token signing key", alg.as_str()))
            .tags(tag("latchkey:alg", alg.as_str())?)
            .tags(tag("latchkey:purpose", "jws-signing")?)
            .send()
            .await
            .map_err(|e| sdk_error("CreateKey", alg.as_str(), e))?;
        let meta = created
            .key_metadata()
            .ok_or_else(|| KmsError::Request("CreateKey returned no key metadata".into()))?;
        // The ARN names the key unambiguously across accounts and regions.
        let key_ref = meta.arn().unwrap_or(meta.key_id()).to_string();

        match self.public_key_der(&key_ref, alg).await {
            Ok(der) => Ok((key_ref, der)),
            Err(e) => {
                // Nothing refers to the new key yet: do not leave it behind.
                if let Err(cleanup) = self.schedule_deletion(&key_ref).await {
                    tracing::warn!(key = %key_ref, error = %cleanup, "could not schedule deletion of an unused KMS key");
                }
                Err(e)
            }
        }
    }

    async fn public_key_der(&self, key_ref: &str, alg: Alg) -> Result<Vec<u8>, KmsError> {
        let out = self
            .client
            .get_public_key()
            .key_id(key_ref)
            .send()
            .await
            .map_err(|e| sdk_error("GetPublicKey", key_ref, e))?;
        let spec = reported_key_spec(&out);
        if let Some(spec) = spec
            && spec != key_spec(alg).as_str()
        {
            return Err(KmsError::KeyUnusable(
                key_ref.to_string(),
                format!(
                    "key spec is {spec}, {} needs {}",
                    alg.as_str(),
                    key_spec(alg).as_str()
                ),
            ));
        }
        out.public_key
            .map(Blob::into_inner)
            .filter(|der| !der.is_empty())
            .ok_or_else(|| {
                KmsError::Request(format!("GetPublicKey on {key_ref} returned no public key"))
            })
    }

    /// Sign a JWS signing input with a native key; returns the JWS signature
    /// (PKCS#1 v1.5 bytes for RS256, raw 64-byte `r || s` for ES256).
    pub async fn sign(&self, key_ref: &str, alg: Alg, message: &[u8]) -> Result<Vec<u8>, KmsError> {
        // RAW messages are hashed by KMS. (DIGEST would let longer inputs through,
        // but emulators disagree on it, and a JWS signing input is far smaller.)
        if message.len() > MAX_RAW_SIGN_INPUT {
            return Err(KmsError::Request(format!(
                "JWS signing input is {} bytes; KMS signs at most {MAX_RAW_SIGN_INPUT} bytes",
                message.len()
            )));
        }
        let out = self
            .client
            .sign()
            .key_id(key_ref)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(signing_algorithm(alg))
            .send()
            .await
            .map_err(|e| sdk_error("Sign", key_ref, e))?;
        let signature = out.signature.map(Blob::into_inner).ok_or_else(|| {
            KmsError::Request(format!("Sign with {key_ref} returned no signature"))
        })?;
        match alg {
            Alg::Rs256 => Ok(signature),
            Alg::Es256 => der_to_jws_es256(&signature),
        }
    }

    /// Refuse keys that KMS should refuse: emulators do not enforce key state,
    /// and a clear error at load time beats failing on the first token.
    pub async fn ensure_usable(&self, key_ref: &str) -> Result<(), KmsError> {
        let out = self
            .client
            .describe_key()
            .key_id(key_ref)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeKey", key_ref, e))?;
        let meta = out.key_metadata().ok_or_else(|| {
            KmsError::Request(format!("DescribeKey on {key_ref} returned no metadata"))
        })?;
        let unusable = |why: String| Err(KmsError::KeyUnusable(key_ref.to_string(), why));
        match meta.key_state() {
            Some(KeyState::Enabled) => {}
            Some(state) => return unusable(format!("key state is {}", state.as_str())),
            None => return unusable("key state is unknown".into()),
        }
        if !meta.enabled() {
            return unusable("key is disabled".into());
        }
        if meta.deletion_date().is_some() {
            return unusable("key is scheduled for deletion".into());
        }
        if meta.key_usage() != Some(&KeyUsageType::SignVerify) {
            return unusable(format!(
                "key usage is {}, not SIGN_VERIFY",
                meta.key_usage().map_or("unknown", KeyUsageType::as_str)
            ));
        }
        Ok(())
    }

    /// Schedule deletion of a native key after KMS's minimum waiting period, so
    /// a mistaken retirement can still be undone with `CancelKeyDeletion`.
    /// Idempotent: a key already pending deletion is left as it is.
    pub async fn schedule_deletion(&self, key_ref: &str) -> Result<(), KmsError> {
        // ScheduleKeyDeletion takes no alias (and some emulators take no ARN):
        // resolve the reference to the bare key id first.
        let described = self
            .client
            .describe_key()
            .key_id(key_ref)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeKey", key_ref, e))?;
        let meta = described.key_metadata().ok_or_else(|| {
            KmsError::Request(format!("DescribeKey on {key_ref} returned no metadata"))
        })?;
        if meta.key_state() == Some(&KeyState::PendingDeletion) {
            return Ok(());
        }
        self.client
            .schedule_key_deletion()
            .key_id(meta.key_id())
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error("ScheduleKeyDeletion", key_ref, e))
    }
}

async fn build_client(cfg: &AwsKmsConfig) -> Result<Client, KmsError> {
    // rustls with ring: no aws-lc C build and no second TLS stack. The same
    // connector speaks plain HTTP to a local emulator.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(cfg.region.clone()))
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF),
        );
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((access_key_id, secret)) = &cfg.credentials {
        let secret = std::str::from_utf8(secret.expose()).map_err(|_| {
            KmsError::Config("keys.aws.secret_access_key is not valid UTF-8".into())
        })?;
        loader = loader.credentials_provider(Credentials::new(
            access_key_id,
            secret,
            None,
            None,
            "latchkey-config",
        ));
    }
    Ok(Client::new(&loader.load().await))
}

fn encryption_context(kid: &str, alg: Alg) -> HashMap<String, String> {
    HashMap::from([
        ("latchkey:kid".to_string(), kid.to_string()),
        ("latchkey:alg".to_string(), alg.as_str().to_string()),
    ])
}

/// Split an envelope blob into (encrypted data key, sealed key); anything
/// malformed is [`KmsError::Unwrap`] before any KMS call is made.
fn parse_envelope(blob: &[u8]) -> Result<(&[u8], &[u8]), KmsError> {
    let rest = blob
        .strip_prefix(ENVELOPE_MAGIC.as_slice())
        .ok_or(KmsError::Unwrap)?;
    let (len, rest) = rest.split_first_chunk::<2>().ok_or(KmsError::Unwrap)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || rest.len() < len + MIN_SEALED_LEN {
        return Err(KmsError::Unwrap);
    }
    Ok(rest.split_at(len))
}

/// KMS reports the key spec under two names; moto sends only the deprecated
/// `CustomerMasterKeySpec`.
#[allow(
    deprecated,
    reason = "fallback for emulators that send only the old field"
)]
fn reported_key_spec(out: &GetPublicKeyOutput) -> Option<&str> {
    out.key_spec()
        .map(KeySpec::as_str)
        .or_else(|| out.customer_master_key_spec().map(|s| s.as_str()))
}

fn key_spec(alg: Alg) -> KeySpec {
    match alg {
        Alg::Rs256 => KeySpec::Rsa2048,
        Alg::Es256 => KeySpec::EccNistP256,
    }
}

fn signing_algorithm(alg: Alg) -> SigningAlgorithmSpec {
    match alg {
        Alg::Rs256 => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        Alg::Es256 => SigningAlgorithmSpec::EcdsaSha256,
    }
}

/// RFC 7518 §3.4: an ES256 JWS signature is `r || s`, each 32 bytes big-endian.
fn der_to_jws_es256(der: &[u8]) -> Result<Vec<u8>, KmsError> {
    let sig = EcdsaSig::from_der(der)
        .map_err(|e| KmsError::Request(format!("KMS returned a malformed ECDSA signature: {e}")))?;
    let mut out = sig.r().to_vec_padded(32)?;
    out.extend_from_slice(&sig.s().to_vec_padded(32)?);
    Ok(out)
}

/// Error codes meaning "this key cannot be used", as opposed to "KMS is unreachable".
const KEY_STATE_CODES: &[&str] = &[
    "NotFoundException",
    "DisabledException",
    "KMSInvalidStateException",
    "KeyUnavailableException",
    "InvalidKeyUsageException",
];

fn sdk_error<E, R>(op: &str, key_ref: &str, err: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = describe(&err);
    match err.code() {
        Some(code) if KEY_STATE_CODES.contains(&code) => {
            KmsError::KeyUnusable(key_ref.to_string(), format!("{op}: {detail}"))
        }
        _ => KmsError::Request(format!("{op} ({key_ref}): {detail}")),
    }
}

/// A one-line description: the service's error code and message, or the chain
/// of causes for a network failure. (The SDK's own `Debug` output includes the
/// raw response; it is too noisy for logs.)
fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(_) = err {
        return match (err.code(), err.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_string(),
            _ => "unrecognised service error".to_string(),
        };
    }
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Decrypt failures where KMS rejects this ciphertext or context are a bad
/// blob ([`KmsError::Unwrap`]); everything else (network, throttling,
/// permissions) stays a request error so callers can retry.
fn decrypt_error<E, R>(kid: &str, err: SdkError<E, R>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.code() {
        Some(code @ ("InvalidCiphertextException" | "IncorrectKeyException")) => {
            tracing::warn!(kid, code, "KMS rejected a wrapped key's data key");
            KmsError::Unwrap
        }
        _ => sdk_error("Decrypt", kid, err),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests; they read their switches from the environment"
)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::config::Secret;
    use crate::keyring::key::{self, PublicKey};

    const SKIP: &str =
        "skipping: LATCHKEY_TEST_KMS_ENDPOINT is not set (run scripts/kms-emulator.sh start)";

    /// The emulator's URL, or `None` (after saying so) when the tests should skip.
    fn endpoint() -> Option<String> {
        match std::env::var("LATCHKEY_TEST_KMS_ENDPOINT") {
            Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
            _ => {
                // CI sets this so that a missing emulator fails instead of skipping.
                if std::env::var_os("LATCHKEY_TEST_REQUIRE_KMS").is_some() {
                    panic!(
                        "LATCHKEY_TEST_REQUIRE_KMS is set but LATCHKEY_TEST_KMS_ENDPOINT is not"
                    );
                }
                eprintln!("{SKIP}");
                None
            }
        }
    }

    fn config(endpoint: &str, mode: AwsMode, key_id: Option<String>) -> AwsKmsConfig {
        AwsKmsConfig {
            mode,
            region: "us-east-1".into(),
            endpoint_url: Some(endpoint.to_string()),
            key_id,
            credentials: Some(("testing".into(), Secret::new(b"testing".to_vec()))),
        }
    }

    /// A raw SDK client for test set-up (keys, aliases, state changes).
    async fn admin(endpoint: &str) -> Client {
        build_client(&config(endpoint, AwsMode::Native, None))
            .await
            .unwrap()
    }

    async fn symmetric_key(admin: &Client) -> String {
        let out = admin
            .create_key()
            .description("latchkey test wrapping key")
            .send()
            .await
            .unwrap();
        out.key_metadata().unwrap().key_id().to_string()
    }

    fn random_suffix() -> String {
        crate::secret::random_bytes(6)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Wrap and unwrap through `kms`, checking binding and tamper resistance.
    async fn check_envelope(kms: &AwsKms) {
        let alg = Alg::Es256;
        let generated = key::generate(alg, 2048).unwrap();
        let public = PublicKey::from_spki_der(alg, &generated.public_der).unwrap();
        let kid = public.kid.as_str();

        let blob = kms.wrap(&generated.private_der, kid, alg).await.unwrap();
        assert!(blob.starts_with(ENVELOPE_MAGIC));
        assert!(
            !blob
                .windows(generated.private_der.len())
                .any(|w| w == &generated.private_der[..]),
            "the blob must not contain the plaintext key"
        );
        let unwrapped = kms.unwrap(&blob, kid, alg).await.unwrap();
        assert_eq!(&unwrapped[..], &generated.private_der[..]);

        // The unwrapped key signs what the published half verifies.
        let signer = key::local_signer(alg, &unwrapped).unwrap();
        let sig = signer.sign(b"header.payload").unwrap();
        public.verifier.verify(b"header.payload", &sig).unwrap();

        // A fresh data key per wrap: wrapping twice gives unrelated blobs.
        let again = kms.wrap(&generated.private_der, kid, alg).await.unwrap();
        assert_ne!(blob, again);

        // Bound to kid and alg by the KMS encryption context.
        let other_kid = kms.unwrap(&blob, "some-other-kid", alg).await;
        assert!(matches!(other_kid, Err(KmsError::Unwrap)), "{other_kid:?}");
        let other_alg = kms.unwrap(&blob, kid, Alg::Rs256).await;
        assert!(matches!(other_alg, Err(KmsError::Unwrap)), "{other_alg:?}");

        // Tampering with the sealed key (last byte: the GCM tag) or the encrypted data key.
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            kms.unwrap(&tampered, kid, alg).await,
            Err(KmsError::Unwrap)
        ));
        let (edk, _) = parse_envelope(&blob).unwrap();
        let mut tampered = blob.clone();
        tampered[ENVELOPE_MAGIC.len() + 2 + edk.len() - 1] ^= 1;
        let r = kms.unwrap(&tampered, kid, alg).await;
        assert!(matches!(r, Err(KmsError::Unwrap)), "{r:?}");

        // Swapping data keys between two blobs fails too.
        let (edk_a, _) = parse_envelope(&blob).unwrap();
        let (_, sealed_b) = parse_envelope(&again).unwrap();
        let other = kms.wrap(b"another private key", kid, alg).await.unwrap();
        let (edk_c, _) = parse_envelope(&other).unwrap();
        assert_ne!(edk_a, edk_c);
        let mut spliced = ENVELOPE_MAGIC.to_vec();
        spliced.extend_from_slice(&u16::try_from(edk_c.len()).unwrap().to_be_bytes());
        spliced.extend_from_slice(edk_c);
        spliced.extend_from_slice(sealed_b);
        assert!(matches!(
            kms.unwrap(&spliced, kid, alg).await,
            Err(KmsError::Unwrap)
        ));

        // Garbage never reaches KMS.
        for bad in [
            &b""[..],
            b"AWS1",
            b"AWS1\x00\x00",
            b"LK1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            &blob[..40],
        ] {
            assert!(matches!(
                kms.unwrap(bad, kid, alg).await,
                Err(KmsError::Unwrap)
            ));
        }
    }

    #[tokio::test]
    async fn envelope_round_trip_is_bound_to_kid_and_alg() {
        let Some(endpoint) = endpoint() else { return };
        let key_id = symmetric_key(&admin(&endpoint).await).await;
        let kms = AwsKms::connect(&config(&endpoint, AwsMode::Envelope, Some(key_id.clone())))
            .await
            .unwrap();
        assert_eq!(kms.mode(), AwsMode::Envelope);
        assert_eq!(kms.wrapping_key_id(), Some(key_id.as_str()));
        check_envelope(&kms).await;
    }

    #[tokio::test]
    async fn envelope_works_through_an_alias() {
        let Some(endpoint) = endpoint() else { return };
        let admin = admin(&endpoint).await;
        let key_id = symmetric_key(&admin).await;
        let alias = format!("alias/latchkey-test-{}", random_suffix());
        admin
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&key_id)
            .send()
            .await
            .unwrap();
        let kms = AwsKms::connect(&config(&endpoint, AwsMode::Envelope, Some(alias.clone())))
            .await
            .unwrap();
        assert_eq!(kms.wrapping_key_id(), Some(alias.as_str()));
        check_envelope(&kms).await;

        // Blobs stay readable after the alias is moved to a new wrapping key.
        let blob = kms.wrap(b"pkcs8 bytes", "kid-1", Alg::Rs256).await.unwrap();
        let new_key = symmetric_key(&admin).await;
        admin
            .update_alias()
            .alias_name(&alias)
            .target_key_id(&new_key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            &kms.unwrap(&blob, "kid-1", Alg::Rs256).await.unwrap()[..],
            b"pkcs8 bytes"
        );
    }

    #[tokio::test]
    async fn envelope_without_key_id_is_a_config_error() {
        // No request is made, so this needs no emulator.
        let cfg = AwsKmsConfig {
            mode: AwsMode::Envelope,
            region: "us-east-1".into(),
            endpoint_url: Some("http://127.0.0.1:9".into()),
            key_id: None,
            credentials: Some(("testing".into(), Secret::new(b"testing".to_vec()))),
        };
        let kms = AwsKms::connect(&cfg).await.unwrap();
        assert!(matches!(
            kms.wrap(b"k", "kid", Alg::Es256).await,
            Err(KmsError::Config(_))
        ));
    }

    #[test]
    fn envelope_parser_is_strict() {
        let sealed = [0u8; MIN_SEALED_LEN];
        let mut ok = ENVELOPE_MAGIC.to_vec();
        ok.extend_from_slice(&3u16.to_be_bytes());
        ok.extend_from_slice(b"edk");
        ok.extend_from_slice(&sealed);
        let (edk, rest) = parse_envelope(&ok).unwrap();
        assert_eq!(edk, b"edk");
        assert_eq!(rest, &sealed[..]);

        assert!(parse_envelope(&ok[..ok.len() - 1]).is_err(), "truncated");
        assert!(parse_envelope(b"AWS2\x00\x03edk").is_err(), "wrong magic");
        let mut zero = ENVELOPE_MAGIC.to_vec();
        zero.extend_from_slice(&[0, 0]);
        zero.extend_from_slice(&sealed);
        assert!(parse_envelope(&zero).is_err(), "empty data key");
        let mut long = ENVELOPE_MAGIC.to_vec();
        long.extend_from_slice(&u16::MAX.to_be_bytes());
        long.extend_from_slice(&sealed);
        assert!(parse_envelope(&long).is_err(), "length past the end");
    }

    #[test]
    fn ecdsa_der_becomes_64_byte_jws_signature() {
        // r and s with leading zero bytes must still come out as 32 bytes each.
        let r = openssl::bn::BigNum::from_u32(1).unwrap();
        let s = openssl::bn::BigNum::from_hex_str("00ff").unwrap();
        let der = EcdsaSig::from_private_components(r, s)
            .unwrap()
            .to_der()
            .unwrap();
        let jws = der_to_jws_es256(&der).unwrap();
        assert_eq!(jws.len(), 64);
        assert_eq!(jws[31], 1);
        assert_eq!(jws[63], 0xff);
        assert!(jws[..31].iter().chain(&jws[32..63]).all(|b| *b == 0));
        assert!(der_to_jws_es256(b"not der").is_err());
    }

    /// Sign a complete access-token-shaped JWS with a native key and verify it
    /// with latchkey's own verifier and with the independent `jsonwebtoken`.
    async fn check_native(alg: Alg) {
        let Some(endpoint) = endpoint() else { return };
        let kms = AwsKms::connect(&config(&endpoint, AwsMode::Native, None))
            .await
            .unwrap();
        assert_eq!(kms.mode(), AwsMode::Native);
        let (key_ref, spki) = kms.create_native_key(alg).await.unwrap();
        assert!(key_ref.starts_with("arn:aws:kms:"), "{key_ref}");
        kms.ensure_usable(&key_ref).await.unwrap();
        let public = PublicKey::from_spki_der(alg, &spki).unwrap();
        assert_eq!(public.jwk["kid"], public.kid.as_str());

        let header = serde_json::json!({"alg": alg.as_str(), "kid": public.kid, "typ": "at+jwt"});
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": "https://issuer.test",
            "aud": "api",
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
        });
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        let sig = kms.sign(&key_ref, alg, input.as_bytes()).await.unwrap();
        match alg {
            Alg::Es256 => assert_eq!(sig.len(), 64),
            Alg::Rs256 => assert_eq!(sig.len(), 256),
        }
        public.verifier.verify(input.as_bytes(), &sig).unwrap();
        assert!(public.verifier.verify(b"something.else", &sig).is_err());

        // Signing through an alias reaches the same key.
        let alias = format!("alias/latchkey-test-{}", random_suffix());
        let admin = admin(&endpoint).await;
        admin
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&key_ref)
            .send()
            .await
            .unwrap();
        let via_alias = kms.sign(&alias, alg, input.as_bytes()).await.unwrap();
        public
            .verifier
            .verify(input.as_bytes(), &via_alias)
            .unwrap();

        // The independent oracle.
        let token = format!("{input}.{}", b64(&sig));
        let jwk = |k: &str| public.jwk[k].as_str().unwrap().to_string();
        let (decoding_key, jwt_alg) = match alg {
            Alg::Rs256 => (
                jsonwebtoken::DecodingKey::from_rsa_components(&jwk("n"), &jwk("e")).unwrap(),
                jsonwebtoken::Algorithm::RS256,
            ),
            Alg::Es256 => (
                jsonwebtoken::DecodingKey::from_ec_components(&jwk("x"), &jwk("y")).unwrap(),
                jsonwebtoken::Algorithm::ES256,
            ),
        };
        let mut validation = jsonwebtoken::Validation::new(jwt_alg);
        validation.set_issuer(&["https://issuer.test"]);
        validation.set_audience(&["api"]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let decoded =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding_key, &validation).unwrap();
        assert_eq!(decoded.header.kid.as_deref(), Some(public.kid.as_str()));
        assert_eq!(decoded.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(decoded.claims["sub"], "user-1");
        let forged = format!("{input}.{}", b64(&[1u8; 64]));
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&forged, &decoding_key, &validation).is_err()
        );

        // KMS signs at most 4 KiB of raw message.
        let too_long = vec![b'a'; MAX_RAW_SIGN_INPUT + 1];
        match kms.sign(&key_ref, alg, &too_long).await {
            Err(KmsError::Request(msg)) => assert!(msg.contains("4096"), "{msg}"),
            other => panic!("expected a size error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn native_es256_signature_verifies_independently() {
        check_native(Alg::Es256).await;
    }

    #[tokio::test]
    async fn native_rs256_signature_verifies_independently() {
        check_native(Alg::Rs256).await;
    }

    #[tokio::test]
    async fn ensure_usable_follows_key_state() {
        let Some(endpoint) = endpoint() else { return };
        let kms = AwsKms::connect(&config(&endpoint, AwsMode::Native, None))
            .await
            .unwrap();
        let admin = admin(&endpoint).await;

        let (enabled, _) = kms.create_native_key(Alg::Es256).await.unwrap();
        kms.ensure_usable(&enabled).await.unwrap();

        let (disabled, _) = kms.create_native_key(Alg::Es256).await.unwrap();
        // moto's DisableKey/EnableKey want the bare key id, not the ARN.
        let described = admin.describe_key().key_id(&disabled).send().await.unwrap();
        let disabled_id = described.key_metadata().unwrap().key_id().to_string();
        admin
            .disable_key()
            .key_id(&disabled_id)
            .send()
            .await
            .unwrap();
        let r = kms.ensure_usable(&disabled).await;
        assert!(matches!(r, Err(KmsError::KeyUnusable(..))), "{r:?}");
        admin
            .enable_key()
            .key_id(&disabled_id)
            .send()
            .await
            .unwrap();
        kms.ensure_usable(&disabled).await.unwrap();

        let (scheduled, _) = kms.create_native_key(Alg::Rs256).await.unwrap();
        kms.ensure_usable(&scheduled).await.unwrap();
        kms.schedule_deletion(&scheduled).await.unwrap();
        kms.schedule_deletion(&scheduled).await.unwrap(); // idempotent
        let r = kms.ensure_usable(&scheduled).await;
        assert!(matches!(r, Err(KmsError::KeyUnusable(..))), "{r:?}");
        let described = admin
            .describe_key()
            .key_id(&scheduled)
            .send()
            .await
            .unwrap();
        assert_eq!(
            described.key_metadata().unwrap().key_state(),
            Some(&KeyState::PendingDeletion)
        );

        // A symmetric (wrapping) key is not a signing key.
        let symmetric = symmetric_key(&admin).await;
        let r = kms.ensure_usable(&symmetric).await;
        assert!(matches!(r, Err(KmsError::KeyUnusable(..))), "{r:?}");

        // An unknown key is unusable, not an outage.
        let r = kms.ensure_usable("alias/latchkey-test-missing").await;
        assert!(matches!(r, Err(KmsError::KeyUnusable(..))), "{r:?}");
    }

    #[tokio::test]
    async fn outage_fails_fast_with_request_error() {
        // Always runs: it needs a closed port, not the emulator.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let envelope = AwsKms::connect(&config(
            &endpoint,
            AwsMode::Envelope,
            Some("alias/any".into()),
        ))
        .await
        .unwrap();
        let native = AwsKms::connect(&config(&endpoint, AwsMode::Native, None))
            .await
            .unwrap();

        let started = Instant::now();
        let wrapped = tokio::time::timeout(
            Duration::from_secs(10),
            envelope.wrap(b"private", "kid", Alg::Es256),
        )
        .await
        .expect("wrap must not hang");
        assert!(matches!(wrapped, Err(KmsError::Request(_))), "{wrapped:?}");
        let signed = tokio::time::timeout(
            Duration::from_secs(10),
            native.sign("alias/any", Alg::Es256, b"input"),
        )
        .await
        .expect("sign must not hang");
        assert!(matches!(signed, Err(KmsError::Request(_))), "{signed:?}");
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
        eprintln!("two failed calls took {elapsed:?}; error: {signed:?}");
    }

    #[tokio::test]
    async fn unresponsive_kms_times_out() {
        // Always runs. The kernel accepts the connection, nobody answers: only
        // the SDK's timeouts end the call.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let native = AwsKms::connect(&config(&endpoint, AwsMode::Native, None))
            .await
            .unwrap();
        let started = Instant::now();
        let signed = tokio::time::timeout(
            Duration::from_secs(15),
            native.sign("alias/any", Alg::Es256, b"input"),
        )
        .await
        .expect("sign must not hang");
        let elapsed = started.elapsed();
        assert!(matches!(signed, Err(KmsError::Request(_))), "{signed:?}");
        assert!(
            elapsed >= ATTEMPT_TIMEOUT && elapsed < OPERATION_TIMEOUT + Duration::from_secs(2),
            "took {elapsed:?}"
        );
        eprintln!("unanswered call gave up after {elapsed:?}: {signed:?}");
        drop(listener);
    }

    /// Not an assertion: prints the cost of a native KMS signature next to a
    /// local one. Run with `--ignored --nocapture`.
    #[tokio::test]
    #[ignore = "measurement; run with --ignored --nocapture"]
    async fn measure_native_sign_against_local() {
        let Some(endpoint) = endpoint() else { return };
        const N: u32 = 50;
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","typ":"at+jwt"}"#),
            b64(&[b'x'; 300])
        );
        for alg in [Alg::Es256, Alg::Rs256] {
            let kms = AwsKms::connect(&config(&endpoint, AwsMode::Native, None))
                .await
                .unwrap();
            let (key_ref, _) = kms.create_native_key(alg).await.unwrap();
            kms.sign(&key_ref, alg, input.as_bytes()).await.unwrap(); // warm the connection
            let started = Instant::now();
            for _ in 0..N {
                kms.sign(&key_ref, alg, input.as_bytes()).await.unwrap();
            }
            let native = started.elapsed() / N;

            let generated = key::generate(alg, 2048).unwrap();
            let signer = key::local_signer(alg, &generated.private_der).unwrap();
            let started = Instant::now();
            for _ in 0..N {
                signer.sign(input.as_bytes()).unwrap();
            }
            let local = started.elapsed() / N;
            eprintln!(
                "{}: KMS Sign {:.2} ms/call, local {:.3} ms/call ({N} calls each)",
                alg.as_str(),
                native.as_secs_f64() * 1e3,
                local.as_secs_f64() * 1e3
            );
        }
    }
}
