//! Offline verification of JWT access tokens for resource servers.
//!
//! `latchkey-verifier` checks tokens issued by latchkey, or by any issuer that
//! follows OIDC Discovery, RFC 7517/7518 (JWK/JWA), RFC 8725 (JWT best current
//! practice) and RFC 9068 (JWT access tokens). It fetches the issuer's
//! discovery document and JWKS once, keeps the keys current on its own
//! (`Cache-Control`, `ETag`, single-flight refetch on an unknown `kid`,
//! stale-if-error), and verifies each token with nothing but the cached keys.
//!
//! ```no_run
//! # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use latchkey_verifier::Verifier;
//!
//! let verifier = Verifier::builder("https://login.example.com")
//!     .audience("https://api.example.com")
//!     .build()
//!     .await?; // fetches discovery and the JWKS once
//! let claims = verifier.verify(token).await?;
//! claims.require_scope("api:read")?;
//! println!("{} via {:?}", claims.sub, claims.client_id);
//! # Ok(()) }
//! ```
//!
//! With the `axum` feature (on by default), [`Claims`] is an extractor: put a
//! [`Verifier`] in your state (via `FromRef`) and take `claims: Claims` in a
//! handler; see the [`axum`] module.
//!
//! Map of the crate, in the order a token meets it:
//! - [`verifier`](Verifier): configuration and the order of checks;
//! - `alg`: algorithm names and the allow-list;
//! - `cache` and `fetch`: the JWKS cache policy and the HTTP requests;
//! - `jwk`: keys built once per JWKS load, and the signature check;
//! - `claims`: the typed claims;
//! - `clock`: the time seam;
//! - `error`: every error value;
//! - `axum`: the extractor and RFC 6750 error responses.
//!
//! Features: `axum` (default) adds the axum integration; `native-tls`
//! (default) lets the verifier reach `https` issuers through the system
//! OpenSSL; `rustls` does the same with rustls instead.

mod alg;
mod cache;
mod claims;
mod clock;
mod error;
mod fetch;
mod jwk;
mod verifier;

#[cfg(feature = "axum")]
pub mod axum;

pub use alg::Algorithm;
pub use cache::CacheStats;
pub use claims::Claims;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BuildError, FetchError, Forbidden, JwksError, Malformed, VerifyError};
pub use verifier::{MAX_JWKS_KEYS, TokenType, Verifier, VerifierBuilder};
