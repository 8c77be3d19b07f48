//! `/metrics` (Prometheus text format). Every request is counted and timed
//! by matched route, method and status in [`crate::http::layers::edge`].

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::metrics::{Observed, next_transition};

fn authorised(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.config.metrics.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| crate::secret::ct_eq(given.as_bytes(), token.expose()))
}

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorised(&state, &headers) {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"latchkey-metrics\""),
        );
        return r;
    }
    let now = state.clock.now();
    let ring = state.ring.current();
    // One indexed read of the key rows per scrape, for the next transition.
    let next = match state.store.list_keys(false).await {
        Ok(rows) => next_transition(now, &rows, &state.config.keys),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the key rows");
            None
        }
    };
    let (pool_size, pool_idle) = state.store.pool_usage();
    state
        .metrics
        .set_argon2_queue_depth(state.tokens.secrets.hash_queue_depth());
    state
        .metrics
        .set_argon2_buffers(state.tokens.secrets.hash_buffers());
    state
        .metrics
        .set_argon2_yield_micros(state.tokens.secrets.hash_yield_micros());
    let stats = &state.stats;
    state.metrics.observe(&Observed {
        now,
        ring: &ring,
        next_transition_at: next,
        pool_size,
        pool_idle,
        consecutive_failures: stats
            .consecutive_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        transition_failures: stats
            .transition_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        last_reload_ok_at: stats
            .last_reload_ok_at
            .load(std::sync::atomic::Ordering::Relaxed),
    });
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
