//! OAuth 2.0 / OIDC protocol vocabulary: error codes, grant types, scopes, the
//! typed token request and the wire shapes of discovery, JWKS and token responses.
//!
//! This module does no I/O and knows no HTTP status codes or SQL. It turns raw
//! protocol input into typed values (parse once, at the edge) and defines the
//! values the HTTP layer renders.

pub mod alg;
pub mod authorize;
pub mod error;
pub mod request;
pub mod scope;
pub mod wire;

pub use alg::Alg;
pub use error::{Error, ErrorCode};
pub use request::{ClientAuth, GrantType, RequestContext, TokenRequest};
pub use scope::Scope;
