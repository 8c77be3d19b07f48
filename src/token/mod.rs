//! Token minting and checking: claims of access tokens (RFC 9068) and ID
//! tokens (OIDC Core §2), signed by the key ring; and verification of latchkey's
//! own access tokens for userinfo and introspection.
//!
//! This module decides claim contents and lifetimes; it never touches SQL or
//! HTTP, and it signs only through [`crate::keyring::KeyRing`].

pub mod claims;
pub mod verify;

use std::sync::Arc;

use crate::clock::SharedClock;
use crate::config::TokenConfig;
use crate::keyring::{KeyRing, RingError};
use crate::oauth::Alg;
use crate::secret;
pub use claims::{AccessClaims, IdClaims};

/// Who the token is about and what it may do.
pub struct Grant<'a> {
    /// The user id, or the client id for client_credentials.
    pub subject: &'a str,
    pub client_id: &'a str,
    pub scope: String,
    pub roles: Vec<String>,
    /// The refresh-token family (login session), for user grants.
    pub session_id: Option<&'a str>,
}

/// What an ID token states about the user.
#[derive(Default)]
pub struct IdentityInfo<'a> {
    pub username: &'a str,
    pub email: Option<&'a str>,
    pub auth_time: i64,
    pub include_profile: bool,
    pub include_email: bool,
    /// The authorization request's `nonce`, echoed.
    pub nonce: Option<&'a str>,
    /// The access token issued alongside, for `at_hash`.
    pub access_token: Option<&'a str>,
    /// How the user authenticated (RFC 8176), e.g. `["pwd"]`.
    pub amr: Option<&'a [&'static str]>,
    pub session_id: Option<&'a str>,
}

/// OIDC Core §3.1.3.6 `at_hash` for RS256 and ES256 (both SHA-256): the left
/// half of the hash of the ASCII token, base64url without padding.
pub fn at_hash(access_token: &str) -> String {
    use base64::Engine as _;
    let digest = secret::sha256(access_token.as_bytes());
    let half = digest.get(..digest.len() / 2).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(half)
}

#[derive(Clone)]
pub struct Minter {
    issuer: Arc<str>,
    cfg: TokenConfig,
    ring: Arc<KeyRing>,
    clock: SharedClock,
}

impl Minter {
    pub fn new(issuer: &str, cfg: TokenConfig, ring: Arc<KeyRing>, clock: SharedClock) -> Self {
        Self {
            issuer: issuer.into(),
            cfg,
            ring,
            clock,
        }
    }

    pub fn access_ttl(&self) -> u64 {
        self.cfg.access_ttl_secs
    }

    /// An RFC 9068 access token; returns the JWT and its lifetime in seconds.
    pub async fn access_token(&self, grant: &Grant<'_>, alg: Alg) -> Result<String, RingError> {
        let now = self.clock.now();
        let jti = secret::random_id().map_err(|e| RingError::Random(e.to_string()))?;
        let claims = AccessClaims {
            iss: &self.issuer,
            sub: grant.subject,
            aud: &self.cfg.audience,
            exp: now + self.cfg.access_ttl().get(),
            iat: now,
            // Backdated by the allowed clock skew: a replica up to that far ahead
            // of the others still mints tokens that are valid at once everywhere.
            nbf: now - self.ring.max_clock_skew(),
            jti: &jti,
            client_id: grant.client_id,
            scope: &grant.scope,
            roles: &grant.roles,
            sid: grant.session_id,
        };
        self.ring
            .sign_jwt(alg, claims::ACCESS_TOKEN_TYP, &claims)
            .await
    }

    /// An OIDC ID token for `client_id` (its audience).
    pub async fn id_token(
        &self,
        subject: &str,
        client_id: &str,
        info: &IdentityInfo<'_>,
        alg: Alg,
    ) -> Result<String, RingError> {
        let now = self.clock.now();
        let claims = IdClaims {
            iss: &self.issuer,
            sub: subject,
            aud: client_id,
            exp: now + self.cfg.id_ttl().get(),
            iat: now,
            auth_time: info.auth_time,
            azp: client_id,
            preferred_username: info.include_profile.then_some(info.username),
            email: if info.include_email { info.email } else { None },
            nonce: info.nonce,
            at_hash: info.access_token.map(at_hash),
            amr: info.amr,
            sid: info.session_id,
        };
        self.ring.sign_jwt(alg, "JWT", &claims).await
    }
}
