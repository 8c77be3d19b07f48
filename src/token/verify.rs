//! Verification of latchkey's own access tokens (userinfo, introspection,
//! revocation), against the in-memory ring.
//!
//! RFC 8725 rules: the algorithm is the key's, never chosen by the token; the
//! header must name a published kid, carry exactly that key's `alg` and
//! `typ: at+jwt`; `iss`, `exp` and `nbf` are checked. A key that was retired
//! (including an emergency retirement) is no longer in the ring, so tokens it
//! signed fail here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::claims::{ACCESS_TOKEN_TYP, VerifiedAccess};
use crate::clock::UnixTime;
use crate::keyring::Ring;

/// Longest token accepted for verification, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `exp` / `nbf`, in seconds.
const LEEWAY_SECS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token was not signed by a current latchkey key")]
    UnknownKey,
    #[error("the token's algorithm does not match its key")]
    AlgMismatch,
    #[error("the token is not an access token")]
    WrongType,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

/// The checks every latchkey JWT shares (RFC 8725): bounded size, three
/// parts, a published `kid`, exactly that key's `alg`, a `typ` that
/// `typ_ok` accepts, and a valid signature. Returns the payload part.
fn verified_payload<'t>(
    ring: &Ring,
    token: &'t str,
    typ_ok: impl Fn(Option<&str>) -> bool,
) -> Result<&'t str, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let header: Header = decode_json(h)?;
    let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
    let key = ring.key(&kid).ok_or(VerifyError::UnknownKey)?;
    if header.alg != key.alg.as_str() {
        return Err(VerifyError::AlgMismatch);
    }
    if !typ_ok(header.typ.as_deref()) {
        return Err(VerifyError::WrongType);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| VerifyError::Malformed)?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    key.public
        .verifier
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)?;
    Ok(p)
}

/// Verify a compact JWS access token issued by `issuer`.
pub fn verify_access(
    ring: &Ring,
    issuer: &str,
    token: &str,
    now: UnixTime,
) -> Result<VerifiedAccess, VerifyError> {
    let p = verified_payload(ring, token, |typ| {
        typ.is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        })
    })?;
    let claims: VerifiedAccess = decode_json(p)?;
    if claims.iss != issuer {
        return Err(VerifyError::WrongIssuer);
    }
    if claims.exp + LEEWAY_SECS <= now {
        return Err(VerifyError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_SECS > now) {
        return Err(VerifyError::NotYetValid);
    }
    Ok(claims)
}

/// What latchkey reads from an `id_token_hint` (OIDC RP-Initiated Logout §2).
#[derive(Debug, Clone, Deserialize)]
pub struct IdTokenHint {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    #[serde(default)]
    pub sid: Option<String>,
}

/// Verify an ID token latchkey issued, as a logout hint: the signature, the
/// key's algorithm and the issuer must be right; expiry is not checked, since
/// a relying party may well log out with an ID token that expired long ago.
pub fn verify_id_token_hint(
    ring: &Ring,
    issuer: &str,
    token: &str,
) -> Result<IdTokenHint, VerifyError> {
    // An access token (typ at+jwt) is not an ID token.
    let p = verified_payload(ring, token, |typ| typ == Some("JWT"))?;
    let claims: IdTokenHint = decode_json(p)?;
    if claims.iss != issuer {
        return Err(VerifyError::WrongIssuer);
    }
    Ok(claims)
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)
}
