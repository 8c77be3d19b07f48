//! The layer every request passes through ([`edge`]): the request log (with
//! its request id), metrics, security headers, CORS, the per-request deadline
//! and the body-read deadline.
//!
//! It is applied with `Router::layer`, so it runs after routing and sees
//! the matched route (the log names the route template, never the raw URL: a
//! query string can carry a secret). Connection-level limits (header-read
//! timeout, connection limit, TLS) belong to `crate::server`.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tracing::Instrument as _;

use super::cors::CorsRequest;
use super::error::ApiError;
use super::extract::client_ip;
use crate::app::AppState;
use crate::oauth::{Error, ErrorCode};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming `X-Request-Id` longer than this is replaced by our own.
const MAX_REQUEST_ID_LEN: usize = 64;

/// The CSP of HTML answers: nothing loads but the page's own styles, forms
/// post only back to latchkey, and no one may frame it.
pub const HTML_CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// Everything else (JSON) needs no content at all.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
pub const HSTS: &str = "max-age=31536000";

/// A caller's request id, if it is short and printable (it is logged and
/// echoed, so it must not smuggle control characters or log-line noise).
fn accepted_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= MAX_REQUEST_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(s)
}

/// A fresh request id: a random 64-bit prefix drawn once per process and a
/// counter (`Kto5VyWd8PA-1f3`). Ids need to be unique, not unpredictable (they
/// authorise nothing), and drawing 16 random bytes per request cost more
/// than the rest of the request's bookkeeping.
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        crate::secret::random_bytes(8)
            .map(|b| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, b))
            // Randomness failing is near impossible; an id must still exist.
            .unwrap_or_else(|_| format!("p{}", std::process::id()))
    });
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The one layer every request passes through. In order, outermost first:
/// the request id and the request's log span, timing for the metrics,
/// security headers, CORS, the request deadline and the body-read deadline.
///
/// One layer rather than one per concern: every `from_fn` layer boxes the
/// rest of the stack's future and clones the inner service for each request,
/// which at six layers cost more than answering a JWKS request. The concerns
/// stay separate functions ([`security_headers`], [`crate::http::cors`],
/// [`request_deadline`], [`body_deadline`]); only their composition is here.
pub async fn edge(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(accepted_request_id)
        .map_or_else(new_request_id, str::to_string);
    let id_header = HeaderValue::from_str(&id).ok();
    if let Some(v) = &id_header {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| {
            client_ip(
                c.0.ip(),
                req.headers(),
                &state.config.server.trusted_proxies,
            )
        });
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let method = req.method().clone();
    let private = private_path(req.uri().path());
    let cors = CorsRequest::of(&req);
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = async {
        let allowed = match &cors {
            Some(c) => c.allowed(&state).await,
            None => false,
        };
        let mut response = if cors.as_ref().is_some_and(CorsRequest::is_preflight) {
            axum::http::StatusCode::NO_CONTENT.into_response()
        } else {
            request_deadline(&state, next.run(body_deadline(&state, req))).await
        };
        if let Some(c) = &cors {
            c.render(response.headers_mut(), allowed);
        }
        response
    }
    .instrument(span.clone())
    .await;
    security_headers(&state, private, &mut response);
    let status = response.status().as_u16();
    let latency = started.elapsed();
    state
        .metrics
        .http_request(route, method.as_str(), status, latency.as_secs_f64());
    if let Some(v) = id_header {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    span.in_scope(|| {
        tracing::info!(
            target: "latchkey::request",
            request_id = %id,
            client_ip = %LoggedIp(ip),
            method = %method,
            route = %route,
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            "request"
        );
    });
    response
}

/// The client address as the request line shows it, `-` when the
/// connection has none (a router called in process), formatted in place.
struct LoggedIp(Option<std::net::IpAddr>);

impl std::fmt::Display for LoggedIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Label and log name for requests no route matched (raw paths never become
/// labels: a path can carry anything).
const UNMATCHED: &str = "unmatched";

/// Answers under `/admin` and `/account` are never stored by a cache.
fn private_path(path: &str) -> bool {
    ["/admin", "/account"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// Headers on every answer, errors included.
fn security_headers(state: &AppState, private: bool, response: &mut Response) {
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
    let h = response.headers_mut();
    // Room for the headers below at once, instead of the map growing (and
    // rehashing) while they are inserted.
    h.reserve(8);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A page that set its own policy keeps it: the sign-in pages must allow
    // the redirect to a client's registered URI after a form post, which
    // `form-action 'self'` would block.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(if html { HTML_CSP } else { API_CSP }),
        );
    }
    if state.config.server.tls.is_some() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    if private {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// A request not answered within `server.request_timeout_secs` gets 503
/// `temporarily_unavailable`; the handler's future is dropped.
async fn request_deadline(
    state: &AppState,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    let limit = state.config.server.request_timeout;
    match tokio::time::timeout(limit, handler).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_secs = limit.as_secs(), "request deadline exceeded");
            ApiError::from(Error::new(
                ErrorCode::TemporarilyUnavailable,
                "the request was not completed in time",
            ))
            .into_response()
        }
    }
}

/// The body must be complete within `server.body_read_timeout_secs` of the
/// headers; readers then fail with [`BodyTimeout`] (answered 408). A request
/// without a body gets no timer.
fn body_deadline(state: &AppState, req: Request) -> Request {
    let limit = state.config.server.body_read_timeout;
    req.map(|body| {
        if http_body::Body::is_end_stream(&body) {
            body
        } else {
            Body::new(DeadlineBody::new(body, limit))
        }
    })
}

/// The error a body read returns past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within the deadline")]
pub struct BodyTimeout;

/// Whether a body-read error (anywhere in its source chain) is [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_short_and_printable() {
        let ok = HeaderValue::from_static("abc-123_XYZ.4");
        assert_eq!(accepted_request_id(&ok), Some("abc-123_XYZ.4"));
        let long = HeaderValue::from_str(&"a".repeat(65)).unwrap();
        assert_eq!(accepted_request_id(&long), None);
        let spaced = HeaderValue::from_static("a b");
        assert_eq!(accepted_request_id(&spaced), None);
        let empty = HeaderValue::from_static("");
        assert_eq!(accepted_request_id(&empty), None);
    }

    #[test]
    fn body_timeouts_are_found_through_wrappers() {
        let inner: axum::BoxError = Box::new(BodyTimeout);
        let wrapped = axum::Error::new(inner);
        assert!(is_body_timeout(&wrapped));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert!(!is_body_timeout(&other));
    }
}
