//! latchkey: an OIDC-style identity provider with a rotating, KMS-backed
//! signing key ring.
//!
//! A token request flows one way, one hop per module:
//!
//! ```text
//! http::token  →  oauth::request (parse once)  →  grant (client auth, grant
//! type check, one file per grant, scope policy)  →  store (users, clients,
//! refresh families)  →  token (claims)  →  keyring (sign with the in-memory
//! active key)  →  http::error / JSON response
//! ```
//!
//! A browser sign-in flows the same way: `http::authorize` (query, cookies,
//! bounded forms) → `oauth::authorize` (parse once) → `authorize` (client and
//! redirect URI, sign-in, SSO session, consent, code) → `store`; the code then
//! comes back through `/token` to `grant::authorization_code`.
//!
//! The key ring lives in memory ([`keyring::KeyRing`]), rebuilt from the database
//! when its version moves; [`keyring::scheduler`] applies lifecycle transitions
//! ([`keyring::lifecycle`]) in locked transactions. [`server`] accepts
//! connections (TLS, limits, graceful shutdown) and hands requests to
//! [`http::router`]. See ARCHITECTURE.md.

pub mod app;
pub mod audit;
pub mod authorize;
pub mod cli;
pub mod clock;
pub mod config;
pub mod grant;
pub mod http;
pub mod keyring;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod oauth;
pub mod readiness;
pub mod secret;
pub mod server;
pub mod session;
pub mod store;
pub mod token;
