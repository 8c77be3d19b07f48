//! CORS for browser clients (Fetch standard): a request whose `Origin` is
//! registered by some client (`clients create --origins`) may call the
//! browser-facing endpoints with credentials (the refresh cookie); any other
//! origin gets no CORS headers, so the browser withholds the answer. Which
//! origins are registered is the store's business ([`crate::session::Sessions::origin_allowed`]);
//! this module only reads the request and renders the headers, inside
//! [`crate::http::layers::edge`].

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};

use crate::app::AppState;

/// Paths a browser page may call; introspection and admin stay server-to-server.
fn browser_facing(path: &str) -> bool {
    matches!(path, "/token" | "/revoke" | "/userinfo") || path.starts_with("/account/")
}

/// A cross-origin request to a browser-facing path.
pub struct CorsRequest {
    origin: String,
    preflight: bool,
}

impl CorsRequest {
    /// `None` when the request has no `Origin` or its path is not
    /// browser-facing: it then gets no CORS headers at all.
    pub fn of(request: &Request) -> Option<Self> {
        if !browser_facing(request.uri().path()) {
            return None;
        }
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())?
            .to_string();
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        Some(Self { origin, preflight })
    }

    /// A preflight is answered 204 here; the handler never sees it.
    pub fn is_preflight(&self) -> bool {
        self.preflight
    }

    /// Whether some client registered this origin.
    pub async fn allowed(&self, state: &AppState) -> bool {
        state.sessions.origin_allowed(&self.origin).await
    }

    /// `Vary: Origin` always; the allow headers only for a registered origin.
    pub fn render(&self, h: &mut HeaderMap, allowed: bool) {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if !allowed {
            return;
        }
        if let Ok(v) = HeaderValue::from_str(&self.origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.preflight {
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
    }
}
