//! CORS for browser clients (Fetch standard): a request whose `Origin` is
//! registered by some client (`clients create --origins`) may call the
//! browser-facing endpoints with credentials (the refresh cookie); any other
//! origin gets no CORS headers, so the browser withholds the answer. Which
//! origins are registered is the store's business ([`crate::session::Sessions::origin_allowed`]);
//! this layer only renders the headers.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// Paths a browser page may call; introspection and admin stay server-to-server.
fn browser_facing(path: &str) -> bool {
    matches!(path, "/token" | "/revoke" | "/userinfo") || path.starts_with("/account/")
}

pub async fn cors(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(origin) = origin.filter(|_| browser_facing(request.uri().path())) else {
        return next.run(request).await;
    };
    let allowed = state.sessions.origin_allowed(&origin).await;
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if !allowed {
        return response;
    }
    if let Ok(v) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}
