//! `/healthz`: 200 while the database answers and every algorithm has a
//! loaded signing key; 503 otherwise. It also reports the key scheduler's
//! failure counters, which an operator alerts on.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::keyring::Alg;

pub async fn healthz(State(state): State<AppState>) -> Response {
    let db_ok = state.store.ping().await.is_ok();
    let ring = state.ring.current();
    let signing: Vec<_> = Alg::ALL
        .iter()
        .map(|a| {
            let kid = ring
                .active(*a)
                .filter(|k| k.signer.is_some())
                .map(|k| k.kid().to_string());
            json!({ "alg": a.as_str(), "kid": kid })
        })
        .collect();
    let keys_ok = Alg::ALL
        .iter()
        .all(|a| ring.active(*a).is_some_and(|k| k.signer.is_some()));
    let body = json!({
        "status": if db_ok && keys_ok { "ok" } else { "degraded" },
        "database": db_ok,
        "ring_version": ring.version,
        "signing_keys": signing,
        "key_transition_failures": state.stats.transition_failures.load(Ordering::Relaxed),
        "key_transition_consecutive_failures": state.stats.consecutive_failures.load(Ordering::Relaxed),
        "jwks_requests": state.jwks_requests.load(Ordering::Relaxed),
        "key_load_failures": state.ring.incomplete_loads(),
        // With the Redis backend and Redis unreachable, limits are enforced per
        // replica (degraded, not down: the server still serves).
        "rate_limit": {
            "backend": state.tokens.limits().backend(),
            "redis_reachable": state.tokens.limits().redis_healthy(),
            "shared": state.tokens.limits().redis_healthy().unwrap_or(false),
        },
    });
    let status = if db_ok && keys_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
