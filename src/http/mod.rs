//! The axum edge: the router, request extraction and response rendering.
//!
//! Handlers parse input into typed values (`oauth::request`), call one service
//! (`grant`, `keyring`, `token::verify`, `store`) and render the result. Only
//! this module knows status codes and headers; no handler contains policy.

pub mod account;
pub mod admin;
pub mod cors;
pub mod error;
pub mod extract;
pub mod health;
pub mod layers;
pub mod token;
pub mod userinfo;
pub mod wellknown;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};

use crate::app::AppState;

/// Every route with the layers of [`layers`] and [`cors`] around it
/// (outermost first: request log, security headers, CORS, request deadline,
/// body deadline).
pub fn router(state: AppState) -> Router {
    routes()
        .layer(from_fn_with_state(state.clone(), layers::body_deadline))
        .layer(from_fn_with_state(state.clone(), layers::request_deadline))
        .layer(from_fn_with_state(state.clone(), cors::cors))
        .layer(from_fn_with_state(state.clone(), layers::security_headers))
        .layer(from_fn_with_state(state.clone(), layers::request_log))
        .with_state(state)
}

/// The routes. `Router::layer` wraps only routes that exist when it is
/// called, so every route belongs here, never after the layers in [`router`].
fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(wellknown::discovery),
        )
        .route("/.well-known/jwks.json", get(wellknown::jwks))
        .route("/token", post(token::token))
        .route("/revoke", post(token::revoke))
        .route("/introspect", post(token::introspect))
        .route(
            "/userinfo",
            get(userinfo::userinfo).post(userinfo::userinfo),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/admin/keys", get(admin::list_keys))
        .route("/admin/keys/schedule", get(admin::schedule))
        .route("/admin/keys/rotate", post(admin::rotate))
        .route("/admin/keys/{kid}/retire", post(admin::retire))
        .route("/admin/events", get(admin::events))
        .route("/admin/sessions", get(admin::list_sessions))
        .route("/admin/sessions/{id}", delete(admin::revoke_session))
        .route(
            "/admin/users/{username}/sessions",
            delete(admin::revoke_user_sessions),
        )
        .route("/account/sessions", get(account::list))
        .route("/account/sessions/{id}", delete(account::end))
        .route("/account/logout", post(account::logout))
        .route("/account/logout-all", post(account::logout_all))
}
