//! The one integration-test binary: every test starts a real latchkey on a
//! loopback port with a fresh database (SQLite, or PostgreSQL when
//! `LATCHKEY_TEST_DATABASE_URL` is set).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests read their switches from the environment and time from the wall clock"
)]

mod helpers;

// Discovery document and JWKS shape, caching headers.
mod wellknown;
// Token endpoint: grants, client authentication, every RFC 6749 error, bad input.
mod token_endpoint;
// Access and ID tokens checked by an independent verifier library.
mod tokens;
// Refresh rotation, reuse detection, scope narrowing, client binding, races.
mod refresh;
// Userinfo, revocation and introspection.
mod resource;
// Sessions: listing, logout, logout-all, admin revocation, password change, cleanup, storms.
mod sessions;
// Browser clients: the refresh token only in an HttpOnly cookie, CORS by registered origin.
mod cookie;
// Cookie mode in headless Chromium: refresh through the HttpOnly cookie, script cannot read it.
mod browser_cookie;
// Key ring operations from the CLI while a server runs; restarts.
mod keys;
// Scheduled lifecycle across replicas, downtime catch-up, the admin API.
mod lifecycle;
// The resource-server verifier crate against a real latchkey.
mod verifier;
// The AWS KMS provider against the emulator: envelope, native, an outage.
mod kms;
// The load driver (examples/load.rs) against a real server: scenarios, bad tokens, errors.
mod load;
// Connection limits, timeouts, load shedding, security headers, request ids, readiness.
mod hardening;
// HTTPS with rustls: a test CA, certificate reload by call and by file polling.
mod tls;
// Graceful shutdown under load, a rolling restart, the binary's signals and JSON logs.
mod shutdown;
// The audit log: each action's event and fields, filters, pagination, retention.
mod audit;
// Prometheus /metrics parsed by a real text-format parser; values move.
mod metrics;
// The OpenAPI document against the router's routes.
mod openapi;
// Known secrets grepped in every captured log line, CLI stderr and audit row.
pub mod no_secrets;
// The fault soak: replicas killed, KMS cut, skewed clocks (LATCHKEY_TEST_SOAK_SECS).
mod soak;
// Rate limits (in-process and Redis), lockout and unlock, the argon2 queue, the admin scope.
mod abuse;
// Authorization-code flow with PKCE: sign-in, SSO, consent, logout, every refusal.
mod authcode;
// The openidconnect crate as relying party: discovery, code + PKCE, ID token, userinfo.
mod oidc_rp;
// A real headless Chromium (LATCHKEY_TEST_BROWSER=1): sign-in, SSO, consent, CSRF, prompt=none.
pub mod browser;
