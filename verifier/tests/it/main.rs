//! The one integration test binary of latchkey-verifier.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests; they read the wall clock to make real tokens"
)]

// Keys, token minting and a controllable issuer over real HTTP.
mod support;

// Valid tokens, typed claims, and every rejected attack with its error.
mod tokens;

// exp / nbf / iat at their exact boundaries, with an injected clock.
mod time;

// Discovery, JWKS caching, revalidation, rotation, single-flight, stale-if-error.
mod cache;

// The axum extractor and scope layer, driven by a real HTTP client.
mod extractor;
