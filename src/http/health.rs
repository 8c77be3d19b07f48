//! `/healthz`: 200 while the database answers and the key ring is ready (every
//! algorithm has a loaded signing key this replica may use, the ring was
//! confirmed against the database within `lead − jwks_max_age`, the clock is
//! within the allowed skew); 503 otherwise. It also reports the key
//! scheduler's failure counters and the ring's age, which an operator alerts on.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::oauth::Alg;

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
    let health = state.ring.health();
    let keys_ok = health.ready;
    let body = json!({
        "status": if db_ok && keys_ok { "ok" } else { "degraded" },
        "database": db_ok,
        "ring_version": ring.version,
        "signing_keys": signing,
        "key_transition_failures": state.stats.transition_failures.load(Ordering::Relaxed),
        "key_transition_consecutive_failures": state.stats.consecutive_failures.load(Ordering::Relaxed),
        "jwks_requests": state.jwks_requests.load(Ordering::Relaxed),
        "key_load_failures": state.ring.incomplete_loads(),
        "key_ring": health,
    });
    let status = if db_ok && keys_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
