//! The KMS seam: where private keys are made, wrapped, unwrapped and (in
//! KMS-native mode) used.
//!
//! Providers: [`local::LocalKms`] (AES-256-GCM under a master key file in
//! `keys.dir`) and [`aws::AwsKms`] (AWS KMS: envelope mode wraps locally made
//! keys with a KMS key; native mode keeps the private key inside KMS and signs
//! with the `Sign` API). Private key bytes exist only inside this module, in
//! `keyring::key` while being generated, and inside the in-process signer
//! objects; they are never logged and never stored unwrapped.

pub mod aws;
pub mod local;

use std::sync::Arc;

use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use zeroize::Zeroizing;

use super::key::{self, KeyError, PublicKey};
use crate::config::{AwsMode, KeysConfig, KmsConfig};
use crate::oauth::Alg;

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("KMS request failed: {0}")]
    Request(String),
    #[error("KMS key {0} is not usable: {1}")]
    KeyUnusable(String, String),
    #[error("wrapped key material is corrupt or bound to another key")]
    Unwrap,
    #[error("key {kid} belongs to KMS provider {found}, but {configured} is configured")]
    ProviderMismatch {
        kid: String,
        found: String,
        configured: String,
    },
    #[error("key material: {0}")]
    Key(#[from] KeyError),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("master key file: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// A new key made by the KMS: the public half and what to store.
pub struct NewMaterial {
    pub public: PublicKey,
    pub public_der: Vec<u8>,
    pub wrapped_private: Option<Vec<u8>>,
    pub kms_key_ref: Option<String>,
}

/// What the KMS needs to know about a stored key: its identity and where its
/// private half lives. The seam takes these fields, not a database row, so the
/// KMS knows nothing of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoredKey<'a> {
    pub kid: &'a str,
    pub alg: Alg,
    /// The provider that made the key (`local`, `aws-envelope`, `aws-native`).
    pub provider: &'a str,
    /// The KMS key (native: the signing key; envelope: the wrapping key).
    pub key_ref: Option<&'a str>,
    /// The wrapped private key (local and envelope modes); `None` once destroyed.
    pub wrapped_private: Option<&'a [u8]>,
    /// The published public half (SPKI DER) the private half must match.
    pub public_der: &'a [u8],
}

/// Produces JWS signatures for one key.
pub enum KeySigner {
    /// In this process; the unwrapped key lives only in this object.
    Local(key::LocalSigner),
    /// Each signature is a KMS `Sign` call.
    Native {
        kms: Arc<aws::AwsKms>,
        key_ref: String,
        alg: Alg,
    },
}

impl KeySigner {
    /// The JWS signature (RFC 7518 format: raw r‖s for ES256) over `input`.
    pub async fn sign(&self, input: &[u8]) -> Result<Vec<u8>, KmsError> {
        match self {
            Self::Local(s) => s.sign(input).map_err(KmsError::Key),
            Self::Native { kms, key_ref, alg } => kms.sign(key_ref, *alg, input).await,
        }
    }
}

/// The configured KMS provider.
#[derive(Clone)]
pub enum Kms {
    Local(Arc<local::LocalKms>),
    Aws(Arc<aws::AwsKms>),
}

impl Kms {
    /// Open the provider named in config (creating the local master key on first run).
    pub async fn open(cfg: &KeysConfig) -> Result<Self, KmsError> {
        Ok(match &cfg.kms {
            KmsConfig::Local => Self::Local(Arc::new(local::LocalKms::open(&cfg.dir)?)),
            KmsConfig::Aws(aws) => Self::Aws(Arc::new(aws::AwsKms::connect(aws).await?)),
        })
    }

    /// The name recorded with every key this provider makes.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Aws(a) => match a.mode() {
                AwsMode::Envelope => "aws-envelope",
                AwsMode::Native => "aws-native",
            },
        }
    }

    /// Make a new signing key. Nothing is stored here: the caller inserts the
    /// row only after this succeeded, so no half-made key is ever published.
    pub async fn create_key(&self, alg: Alg, rsa_bits: u32) -> Result<NewMaterial, KmsError> {
        if let Self::Aws(a) = self
            && a.mode() == AwsMode::Native
        {
            let (key_ref, public_der) = a.create_native_key(alg).await?;
            let public = PublicKey::from_spki_der(alg, &public_der)?;
            return Ok(NewMaterial {
                public,
                public_der,
                wrapped_private: None,
                kms_key_ref: Some(key_ref),
            });
        }
        // RSA generation takes a noticeable fraction of a second: off the runtime.
        let generated = tokio::task::spawn_blocking(move || key::generate(alg, rsa_bits))
            .await
            .map_err(|e| KmsError::Request(format!("key generation task: {e}")))??;
        let public = PublicKey::from_spki_der(alg, &generated.public_der)?;
        let wrapped = match self {
            Self::Local(l) => l.wrap(&generated.private_der, &public.kid, alg)?,
            Self::Aws(a) => a.wrap(&generated.private_der, &public.kid, alg).await?,
        };
        Ok(NewMaterial {
            public,
            public_der: generated.public_der,
            wrapped_private: Some(wrapped),
            kms_key_ref: match self {
                Self::Local(_) => None,
                Self::Aws(a) => a.wrapping_key_id().map(str::to_string),
            },
        })
    }

    /// A signer for a stored key: unwrap (local, envelope) or a handle (native).
    pub async fn signer_for(&self, key: StoredKey<'_>) -> Result<KeySigner, KmsError> {
        if key.provider != self.provider() {
            return Err(KmsError::ProviderMismatch {
                kid: key.kid.to_string(),
                found: key.provider.to_string(),
                configured: self.provider().to_string(),
            });
        }
        let alg = key.alg;
        match self {
            Self::Aws(a) if a.mode() == AwsMode::Native => {
                let key_ref = key.key_ref.map(str::to_string).ok_or_else(|| {
                    KmsError::KeyUnusable(key.kid.to_string(), "no KMS key reference".into())
                })?;
                a.ensure_usable(&key_ref).await?;
                Ok(KeySigner::Native {
                    kms: a.clone(),
                    key_ref,
                    alg,
                })
            }
            _ => {
                let wrapped = key.wrapped_private.ok_or_else(|| {
                    KmsError::KeyUnusable(key.kid.to_string(), "private key destroyed".into())
                })?;
                let private_der = match self {
                    Self::Local(l) => l.unwrap(wrapped, key.kid, alg)?,
                    Self::Aws(a) => a.unwrap(wrapped, key.kid, alg).await?,
                };
                // The unwrapped key must be the one whose public half is published.
                if key::public_der_of(&private_der)? != key.public_der {
                    return Err(KmsError::Unwrap);
                }
                Ok(KeySigner::Local(key::local_signer(alg, &private_der)?))
            }
        }
    }

    /// Destroy what the KMS holds for a key that is retired or was never stored
    /// (native keys: schedule deletion). Wrapped blobs are erased from the
    /// database by the caller.
    pub async fn destroy(&self, provider: &str, key_ref: Option<&str>) -> Result<(), KmsError> {
        match self {
            Self::Aws(a) if provider == "aws-native" => match key_ref {
                Some(key_ref) => a.schedule_deletion(key_ref).await,
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// Additional authenticated data binding a wrapped key to its kid and algorithm,
/// so a blob cannot be swapped onto another key row.
pub(crate) fn wrap_context(kid: &str, alg: Alg) -> Vec<u8> {
    format!("latchkey signing key|{}|{kid}", alg.as_str()).into_bytes()
}

const BLOB_MAGIC: &[u8; 3] = b"LK1";

/// AES-256-GCM seal: `LK1 || nonce(12) || ciphertext || tag(16)`.
pub(crate) fn seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
    let nonce = crate::secret::random_bytes(12).map_err(|e| KmsError::Request(e.to_string()))?;
    let mut tag = [0u8; 16];
    let ct = encrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(&nonce),
        aad,
        plaintext,
        &mut tag,
    )?;
    let mut out = Vec::with_capacity(3 + 12 + ct.len() + 16);
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Open a blob made by [`seal`]; any tampering or wrong AAD is [`KmsError::Unwrap`].
pub(crate) fn open(key: &[u8], aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    if blob.len() < 3 + 12 + 16 || &blob[..3] != BLOB_MAGIC {
        return Err(KmsError::Unwrap);
    }
    let (nonce, rest) = blob[3..].split_at(12);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    decrypt_aead(Cipher::aes_256_gcm(), key, Some(nonce), aad, ct, tag)
        .map(Zeroizing::new)
        .map_err(|_| KmsError::Unwrap)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = [9u8; 32];
        let blob = seal(&key, b"ctx-a", b"secret key").unwrap();
        assert_eq!(&open(&key, b"ctx-a", &blob).unwrap()[..], b"secret key");
        assert!(matches!(open(&key, b"ctx-b", &blob), Err(KmsError::Unwrap)));
        assert!(matches!(
            open(&[8u8; 32], b"ctx-a", &blob),
            Err(KmsError::Unwrap)
        ));
        let mut tampered = blob.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert!(matches!(
            open(&key, b"ctx-a", &tampered),
            Err(KmsError::Unwrap)
        ));
        assert!(matches!(
            open(&key, b"ctx-a", b"LK1"),
            Err(KmsError::Unwrap)
        ));
    }
}
