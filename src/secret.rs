//! Secrets at rest and in comparison: password hashing, client-secret and
//! refresh-token digests, random identifiers.
//!
//! Human passwords get argon2id (OWASP parameters, m=19 MiB, t=2, p=1) keyed
//! with the pepper, which lives outside the database. Machine-generated secrets
//! (client secrets, refresh tokens) carry 256 bits of entropy, so a fast digest
//! is enough and a slow hash would only cost latency: client secrets are
//! HMAC-SHA-256 under a key derived from the pepper, refresh tokens are SHA-256.
//! Every comparison of secret-derived bytes is constant time. Nothing here logs.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::{MessageDigest, hash};
use openssl::pkey::PKey;
use openssl::sign::Signer;

use crate::config::Secret;

/// OWASP's argon2id baseline: 19 MiB, two passes, one lane.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("random number generator failed: {0}")]
    Rng(#[from] openssl::error::ErrorStack),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Two argon2 computations per CPU keep every core busy under a login flood
/// while memory stays bounded (2 × cores × 19 MiB).
fn max_concurrent_hashes() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// `n` bytes from OpenSSL's CSPRNG.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, SecretError> {
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

/// A 256-bit random value, base64url without padding (43 characters).
pub fn random_token() -> Result<String, SecretError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(32)?))
}

/// A 128-bit random identifier (user ids, family ids, `jti`).
pub fn random_id() -> Result<String, SecretError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(16)?))
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    // SHA-256 cannot fail for in-memory input; an OpenSSL error here would mean
    // a broken library, and an empty digest then matches nothing stored.
    hash(MessageDigest::sha256(), data)
        .map(|d| d.to_vec())
        .unwrap_or_default()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let pkey = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey)?;
    signer.update(data)?;
    signer.sign_to_vec()
}

/// Hashing and checking of every secret latchkey stores, keyed by the pepper.
#[derive(Clone)]
pub struct Secrets {
    pepper: Arc<Secret>,
    /// HMAC key for client secrets, derived from the pepper so that one secret
    /// input serves both purposes without reusing the same key.
    client_key: Arc<Vec<u8>>,
    /// HMAC key that derives a refresh token's successor from the token itself
    /// (retry-safe refresh; see [`Secrets::successor_token`]).
    successor_key: Arc<Vec<u8>>,
    /// A valid hash of a random password, verified against when a username is
    /// unknown so that both failures cost the same.
    dummy_hash: Arc<String>,
    /// Bounds the argon2 computations in flight: each holds 19 MiB, so a
    /// flood of logins queues here instead of exhausting memory.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets([redacted])")
    }
}

impl Secrets {
    pub fn new(pepper: Secret) -> Result<Self, SecretError> {
        let client_key = hmac_sha256(pepper.expose(), b"latchkey client-secret v1")?;
        let successor_key = hmac_sha256(pepper.expose(), b"latchkey refresh-successor v1")?;
        let pepper = Arc::new(pepper);
        let dummy_password = random_token()?;
        let dummy_hash = hash_password_blocking(&pepper, &dummy_password)?;
        Ok(Self {
            pepper,
            client_key: Arc::new(client_key),
            successor_key: Arc::new(successor_key),
            dummy_hash: Arc::new(dummy_hash),
            hashing: Arc::new(tokio::sync::Semaphore::new(max_concurrent_hashes())),
        })
    }

    /// argon2id(pepper) of a password, as a PHC string; runs off the async runtime.
    pub async fn hash_password(&self, password: String) -> Result<String, SecretError> {
        let pepper = self.pepper.clone();
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| SecretError::Hash(e.to_string()))?;
        tokio::task::spawn_blocking(move || hash_password_blocking(&pepper, &password)).await?
    }

    /// Check a password against a stored PHC string, off the async runtime. With
    /// `stored = None` (unknown user) the dummy hash is checked instead and the
    /// answer is always `false`, so both paths do the same work.
    pub async fn verify_password(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, SecretError> {
        let pepper = self.pepper.clone();
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.as_str().to_string());
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| SecretError::Hash(e.to_string()))?;
        let ok = tokio::task::spawn_blocking(move || {
            verify_password_blocking(&pepper, &password, &stored)
        })
        .await??;
        Ok(known && ok)
    }

    /// A new client secret and the digest to store for it.
    pub fn new_client_secret(&self) -> Result<(String, Vec<u8>), SecretError> {
        let secret = random_token()?;
        let digest = self.client_secret_digest(&secret)?;
        Ok((secret, digest))
    }

    /// The successor of a refresh token: HMAC-SHA-256 of the presented token
    /// under a key derived from the pepper, base64url (43 characters, 256
    /// bits). Deterministic, so every presentation of one token — a retry
    /// after a lost response, or concurrent tabs — is answered with the same
    /// successor without the server ever storing a token in the clear; and
    /// unpredictable to anyone without the pepper, like a random token.
    pub fn successor_token(&self, presented: &str) -> Result<String, SecretError> {
        Ok(URL_SAFE_NO_PAD.encode(hmac_sha256(&self.successor_key, presented.as_bytes())?))
    }

    pub fn client_secret_digest(&self, secret: &str) -> Result<Vec<u8>, SecretError> {
        Ok(hmac_sha256(&self.client_key, secret.as_bytes())?)
    }

    /// Constant-time check of a presented client secret against its stored digest.
    pub fn verify_client_secret(
        &self,
        presented: &str,
        stored: &[u8],
    ) -> Result<bool, SecretError> {
        let digest = self.client_secret_digest(presented)?;
        Ok(ct_eq(&digest, stored))
    }
}

/// The digest under which a refresh token is stored and looked up.
pub fn refresh_token_digest(token: &str) -> Vec<u8> {
    sha256(token.as_bytes())
}

fn argon2(pepper: &Secret) -> Result<Argon2<'_>, SecretError> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .map_err(|e| SecretError::Hash(e.to_string()))?;
    Argon2::new_with_secret(pepper.expose(), Algorithm::Argon2id, Version::V0x13, params)
        .map_err(|e| SecretError::Hash(e.to_string()))
}

fn hash_password_blocking(pepper: &Secret, password: &str) -> Result<String, SecretError> {
    let salt =
        SaltString::encode_b64(&random_bytes(16)?).map_err(|e| SecretError::Hash(e.to_string()))?;
    let hash = argon2(pepper)?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| SecretError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

fn verify_password_blocking(
    pepper: &Secret,
    password: &str,
    stored: &str,
) -> Result<bool, SecretError> {
    let parsed = PasswordHash::new(stored).map_err(|e| SecretError::Hash(e.to_string()))?;
    // The stored PHC string carries its own parameters; the pepper is ours.
    Ok(argon2(pepper)?
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn secrets(pepper: &[u8]) -> Secrets {
        Secrets::new(Secret::new(pepper.to_vec())).unwrap()
    }

    #[tokio::test]
    async fn password_round_trip_and_pepper_binding() {
        let s = secrets(&[7u8; 32]);
        let h = s.hash_password("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            s.verify_password("correct horse".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        assert!(
            !s.verify_password("wrong".into(), Some(h.clone()))
                .await
                .unwrap()
        );
        // The same hash under another pepper does not verify: the database alone is not enough.
        let other = secrets(&[8u8; 32]);
        assert!(
            !other
                .verify_password("correct horse".into(), Some(h))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let s = secrets(&[7u8; 32]);
        assert!(!s.verify_password("anything".into(), None).await.unwrap());
    }

    #[test]
    fn client_secret_digest_is_keyed_and_checked() {
        let s = secrets(&[1u8; 32]);
        let (secret, digest) = s.new_client_secret().unwrap();
        assert_eq!(secret.len(), 43);
        assert!(s.verify_client_secret(&secret, &digest).unwrap());
        assert!(!s.verify_client_secret("nope", &digest).unwrap());
        assert_ne!(digest, sha256(secret.as_bytes()));
        assert!(
            !secrets(&[2u8; 32])
                .verify_client_secret(&secret, &digest)
                .unwrap()
        );
    }

    #[tokio::test]
    async fn concurrent_hashing_is_bounded() {
        let s = secrets(&[3u8; 32]);
        let limit = max_concurrent_hashes();
        assert_eq!(s.hashing.available_permits(), limit);
        // Hold every permit: a verification must wait rather than start.
        let held = s
            .hashing
            .acquire_many(u32::try_from(limit).unwrap())
            .await
            .unwrap();
        let pending = tokio::spawn({
            let s = s.clone();
            async move { s.verify_password("x".into(), None).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!pending.is_finished(), "hashing started without a permit");
        drop(held);
        assert!(!pending.await.unwrap().unwrap());
    }

    #[test]
    fn successors_are_deterministic_keyed_and_distinct() {
        let s = secrets(&[4u8; 32]);
        let t = random_token().unwrap();
        let next = s.successor_token(&t).unwrap();
        assert_eq!(next.len(), 43);
        assert_eq!(next, s.successor_token(&t).unwrap());
        assert_ne!(next, t);
        assert_ne!(next, s.successor_token(&next).unwrap());
        assert_ne!(next, secrets(&[5u8; 32]).successor_token(&t).unwrap());
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token().unwrap(), random_token().unwrap());
        assert_eq!(random_id().unwrap().len(), 22);
    }
}
