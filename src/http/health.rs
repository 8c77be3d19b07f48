//! `/healthz` (alive) and `/readyz` (ready for traffic).
//!
//! `/healthz` touches no database: it answers 200 while the process serves,
//! with the key scheduler's counters an operator alerts on. `/readyz` renders
//! the checks of [`crate::readiness`]: 200 when all pass, 503 naming the
//! failing ones otherwise.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::keyring::Alg;

pub async fn healthz(State(state): State<AppState>) -> Response {
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
        "status": if keys_ok { "ok" } else { "degraded" },
        "ring_version": ring.version,
        "signing_keys": signing,
        "key_transition_failures": state.stats.transition_failures.load(Ordering::Relaxed),
        "key_transition_consecutive_failures": state.stats.consecutive_failures.load(Ordering::Relaxed),
        "jwks_requests": state.jwks_requests.load(Ordering::Relaxed),
        "key_load_failures": state.ring.incomplete_loads(),
    });
    no_store((StatusCode::OK, Json(body)).into_response())
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.readiness.assess().await;
    let checks: Map<String, Value> = readiness
        .checks
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                json!({ "ok": c.ok, "detail": c.detail }),
            )
        })
        .collect();
    let ready = readiness.ready();
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "failing": readiness.failing(),
        "checks": checks,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    no_store((status, Json(body)).into_response())
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
