//! A resource server protected by latchkey access tokens.
//!
//! `GET /read` needs the scope `api:read` (checked in the handler);
//! `POST /write` needs `api:write` (checked by a route layer). Configure with:
//!
//! - `LATCHKEY_ISSUER`: the issuer URL, exactly as the issuer spells it
//!   (default `http://127.0.0.1:8080`);
//! - `AUDIENCE`: the audience tokens must carry (default: the issuer);
//! - `BIND`: the address to listen on (default `127.0.0.1:3000`).
//!
//! Run with `cargo run -p latchkey-verifier --example resource_server`.
#![allow(
    clippy::disallowed_methods,
    reason = "a stand-alone program outside the library: configured by its environment, timed by the wall clock"
)]

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use latchkey_verifier::axum::{AuthError, RequireScope, require_scope};
use latchkey_verifier::{Claims, Verifier};
use serde_json::{Value, json};

/// The router state: the verifier, reachable from the `Claims` extractor
/// through `FromRef`.
#[derive(Clone)]
struct AppState {
    verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Verifier {
        state.verifier.clone()
    }
}

/// Scope checked in the handler: the extractor verifies the token, the
/// handler decides what it needs.
async fn read(claims: Claims) -> Result<Json<Value>, AuthError> {
    claims.require_scope("api:read")?;
    Ok(Json(json!({
        "sub": claims.sub,
        "client_id": claims.client_id,
        "scope": claims.scope,
        "roles": claims.roles,
    })))
}

/// Scope checked by the route layer; the claims arrive already verified.
async fn write(claims: Claims) -> Json<Value> {
    Json(json!({ "written_by": claims.sub }))
}

fn app(verifier: Verifier) -> Router {
    let write_routes =
        Router::new()
            .route("/write", post(write))
            .route_layer(middleware::from_fn_with_state(
                RequireScope::new(verifier.clone(), "api:write"),
                require_scope,
            ));
    Router::new()
        .route("/read", get(read))
        .merge(write_routes)
        .with_state(AppState { verifier })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let issuer =
        std::env::var("LATCHKEY_ISSUER").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let audience = std::env::var("AUDIENCE").unwrap_or_else(|_| issuer.clone());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    let verifier = Verifier::builder(&issuer)
        .audience(audience)
        .build()
        .await?;
    println!(
        "verifying tokens from {issuer} with keys {:?}",
        verifier.key_ids()
    );

    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(verifier)).await?;
    Ok(())
}
