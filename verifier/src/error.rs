//! The error vocabulary.
//!
//! This module owns every error the crate returns: [`VerifyError`] for a
//! rejected token, [`FetchError`] and [`JwksError`] for trouble getting the
//! issuer's keys, [`BuildError`] for construction and [`Forbidden`] for a
//! verified token that lacks a scope or role. It must not format anything
//! taken from a token into a message: a resource server logs these values, and
//! tokens are bearer credentials. Values that come from configuration or from
//! the issuer (URLs, status codes) are fine to show.

use std::fmt;
use std::sync::Arc;

use crate::alg::Algorithm;

/// Why a token was rejected.
///
/// Every variant except [`VerifyError::KeysUnavailable`] means the token is
/// not acceptable (HTTP 401 `invalid_token`); `KeysUnavailable` means the
/// verifier could not obtain the issuer's keys and should be treated as a
/// temporary server-side failure (HTTP 503). `Display` never includes the
/// token or any part of it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The token is longer than the configured maximum; it was not parsed.
    #[error("token is {size} bytes, over the {max}-byte limit")]
    TokenTooLarge {
        /// The token's length in bytes.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The token is not a well-formed compact JWS.
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    /// The header names an algorithm that is not on the allow-list (always the
    /// case for `none` and the HMAC algorithms).
    #[error("algorithm {alg} is not allowed")]
    AlgorithmNotAllowed {
        /// The algorithm's name if it is a known JWA name, else `"unrecognised"`.
        alg: &'static str,
    },
    /// The header has no `kid`.
    #[error("token header has no kid")]
    MissingKid,
    /// The header's `kid` is longer than the configured maximum.
    #[error("token kid is longer than {max} bytes")]
    KidTooLong {
        /// The configured maximum.
        max: usize,
    },
    /// No key with the token's `kid` is in the issuer's JWKS, even after a
    /// refetch (or within the refetch cool-down).
    #[error("no key with the token's kid is published by the issuer")]
    UnknownKid,
    /// The key named by `kid` cannot be used with the header's algorithm: the
    /// JWK's `alg` differs, or its key type or curve does not fit.
    #[error("the key named by the token's kid does not accept {alg}")]
    KeyAlgorithmMismatch {
        /// The algorithm from the header.
        alg: Algorithm,
    },
    /// The header lists critical extensions (`crit`), none of which this
    /// verifier implements (RFC 7515 section 4.1.11).
    #[error("token header has critical extensions this verifier does not understand")]
    UnsupportedCriticalHeader,
    /// The header has no `typ`, and the verifier expects access tokens.
    #[error("token header has no typ; expected at+jwt")]
    MissingType,
    /// The header's `typ` is not the expected one.
    #[error("token typ is not {expected}")]
    WrongType {
        /// What the verifier expects.
        expected: &'static str,
    },
    /// The signature does not verify with the key named by `kid`.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// A required claim is absent.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// `iss` is not exactly the configured issuer.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// `aud` contains none of the configured audiences.
    #[error("token audience does not match")]
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// The issuer's keys could not be obtained and the cached ones are older
    /// than the stale-if-error allowance (or there never were any).
    #[error("issuer keys are unavailable")]
    KeysUnavailable(#[source] Arc<FetchError>),
}

impl VerifyError {
    /// Whether the failure is on the verifier's side (the keys could not be
    /// fetched) rather than a problem with the token.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, VerifyError::KeysUnavailable(_))
    }
}

/// Which part of the compact serialisation is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// Not exactly three dot-separated parts.
    Segments,
    /// The header is not valid unpadded base64url, or is too long.
    HeaderEncoding,
    /// The header is not a JSON object with a string `alg`.
    HeaderJson,
    /// The payload is not valid unpadded base64url.
    PayloadEncoding,
    /// The payload is not a JSON object with well-typed registered claims.
    ClaimsJson,
    /// The signature is not valid unpadded base64url.
    SignatureEncoding,
    /// The signature has the wrong length for its algorithm (ECDSA and EdDSA
    /// signatures have a fixed size).
    SignatureLength,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::Segments => "expected three dot-separated parts",
            Malformed::HeaderEncoding => "header is not base64url",
            Malformed::HeaderJson => "header is not a valid JOSE header",
            Malformed::PayloadEncoding => "payload is not base64url",
            Malformed::ClaimsJson => "payload is not a valid claims set",
            Malformed::SignatureEncoding => "signature is not base64url",
            Malformed::SignatureLength => "signature has the wrong length",
        })
    }
}

/// Trouble fetching the discovery document or the JWKS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The request could not be sent or the response not read (connection,
    /// timeout, TLS).
    #[error("request to {url} failed")]
    Request {
        /// The URL requested.
        url: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The response status was not 200 (or 304 when revalidating).
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The response body is larger than the configured cap.
    #[error("response from {url} is larger than {max} bytes")]
    BodyTooLarge {
        /// The URL requested.
        url: String,
        /// The configured cap.
        max: usize,
    },
    /// The discovery document is not valid.
    #[error("discovery document from {url} is invalid: {reason}")]
    Discovery {
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The discovery document names a different issuer.
    #[error("discovery document names issuer {found:?}, expected exactly {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The `issuer` in the document.
        found: String,
    },
    /// The JWKS could not be used.
    #[error("JWKS from {url} is unusable")]
    Jwks {
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        #[source]
        source: JwksError,
    },
}

/// A JWKS document that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JSON Web Key Set")]
    Json(#[source] serde_json::Error),
    /// More keys than the configured cap.
    #[error("{count} keys, over the limit of {max}")]
    TooManyKeys {
        /// How many keys the document has.
        count: usize,
        /// The configured cap.
        max: usize,
    },
    /// No key in the set is a usable signature-verification key.
    #[error("no usable signature-verification key")]
    NoUsableKeys,
}

/// Why a [`Verifier`](crate::Verifier) could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is inconsistent (for example no audience, or an
    /// empty algorithm allow-list).
    #[error("invalid verifier configuration: {0}")]
    Config(String),
    /// The HTTP client could not be created.
    #[error("cannot create the HTTP client")]
    HttpClient(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The first fetch of the discovery document or the JWKS failed.
    #[error("cannot load the issuer's keys")]
    Fetch(#[from] FetchError),
    /// A static JWKS could not be used.
    #[error("cannot use the JWKS")]
    Jwks(#[from] JwksError),
}

/// A verified token lacks a scope or role the route requires (HTTP 403
/// `insufficient_scope`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    /// The `scope` claim does not contain this scope.
    #[error("the token lacks the scope {0}")]
    MissingScope(String),
    /// The `roles` claim does not contain this role.
    #[error("the token lacks the role {0}")]
    MissingRole(String),
}
