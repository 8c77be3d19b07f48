//! `/.well-known/openid-configuration` and `/.well-known/jwks.json`, both served
//! from memory. The JWKS carries `Cache-Control: public, max-age` (the number the
//! key lifecycle's pre-publication lead is built around) and a strong `ETag`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

pub async fn discovery(State(state): State<AppState>) -> Response {
    let mut r = Response::new(Body::from(state.discovery_json.clone()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "public, max-age={}",
        state.config.keys.jwks_max_age.get()
    )) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

/// Does an `If-None-Match` header match `etag` (RFC 9110 §13.1.2, weak comparison)?
fn matches(if_none_match: &str, etag: &str) -> bool {
    let bare = etag.trim_start_matches("W/");
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == bare)
}

pub async fn jwks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state
        .jwks_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ring = state.ring.current();
    let cache = HeaderValue::from_str(&format!(
        "public, max-age={}",
        state.config.keys.jwks_max_age.get()
    ));
    let etag = HeaderValue::from_str(&ring.jwks_etag);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches(v, &ring.jwks_etag));
    let mut r = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(ring.jwks_json.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = cache {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = etag {
        h.insert(header::ETAG, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn if_none_match_forms() {
        assert!(matches("\"abc\"", "\"abc\""));
        assert!(matches("W/\"abc\"", "\"abc\""));
        assert!(matches("\"x\", \"abc\"", "\"abc\""));
        assert!(matches("*", "\"abc\""));
        assert!(!matches("\"abd\"", "\"abc\""));
        assert!(!matches("abc", "\"abc\""));
    }
}
