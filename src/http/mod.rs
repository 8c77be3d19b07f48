//! The axum edge: the router, request extraction and response rendering.
//!
//! Handlers parse input into typed values (`oauth::request`), call one service
//! (`grant`, `keyring`, `token::verify`, `store`) and render the result. Only
//! this module knows status codes and headers; no handler contains policy.
//!
//! Every route is one row of [`routes`]: method, path, handler and its API
//! documentation. The router and the OpenAPI document (`openapi.rs`) are both
//! built from that table, so adding a route is one row and the document cannot
//! drift from what is served.

pub mod account;
pub mod admin;
pub mod authorize;
pub mod cors;
pub mod error;
pub mod extract;
pub mod health;
pub mod layers;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod token;
pub mod userinfo;
pub mod wellknown;

use axum::Router;
use axum::handler::Handler;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::app::AppState;
use crate::config::Config;

/// The HTTP methods latchkey serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
            Self::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who may call a route, as the OpenAPI document states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// OAuth client authentication (HTTP Basic, or the client in the form).
    Client,
    /// A latchkey access token (`Authorization: Bearer`).
    Bearer,
    /// A latchkey access token of an admin.
    Admin,
    /// The optional metrics bearer token.
    Metrics,
}

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    None,
    Form,
    Json,
}

/// One route's documentation.
#[derive(Debug, Clone)]
pub struct Doc {
    pub tag: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub input: Input,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// The media type of a successful answer.
    pub produces: &'static str,
}

impl Doc {
    const fn new(tag: &'static str, summary: &'static str, access: Access) -> Self {
        Self {
            tag,
            summary,
            access,
            input: Input::None,
            query: &[],
            produces: "application/json",
        }
    }

    const fn input(mut self, input: Input) -> Self {
        self.input = input;
        self
    }

    const fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Self {
        self.query = query;
        self
    }

    const fn produces(mut self, media: &'static str) -> Self {
        self.produces = media;
        self
    }
}

/// One row of the route table.
pub struct Route {
    pub verb: Verb,
    pub path: &'static str,
    pub handler: MethodRouter<AppState>,
    pub doc: Doc,
}

fn route<H, T>(verb: Verb, path: &'static str, handler: H, doc: Doc) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        verb,
        path,
        handler: on(verb.filter(), handler),
        doc,
    }
}

const AUDIT_QUERY: &[(&str, &str)] = &[
    (
        "since",
        "Only events at or after this time (Unix seconds or RFC 3339)",
    ),
    (
        "until",
        "Only events before this time (Unix seconds or RFC 3339)",
    ),
    ("user", "A user id or username"),
    ("client", "A client id"),
    ("type", "An event type, e.g. login.failure"),
    ("severity", "info, warning or critical"),
    ("cursor", "The `next` value of the previous page"),
    ("limit", "Events per page, 1 to 1000 (default 100)"),
];

/// Every route latchkey serves on its main listener, for `config`.
pub fn routes(config: &Config) -> Vec<Route> {
    use Access::*;
    use Verb::*;
    let mut r = vec![
        route(
            Get,
            "/.well-known/openid-configuration",
            wellknown::discovery,
            Doc::new(
                "discovery",
                "OpenID Provider metadata (OIDC Discovery 1.0)",
                Public,
            ),
        ),
        route(
            Get,
            "/.well-known/jwks.json",
            wellknown::jwks,
            Doc::new("discovery", "The published signing keys (RFC 7517)", Public),
        ),
        route(
            Get,
            "/.well-known/oauth-authorization-server",
            wellknown::discovery,
            Doc::new(
                "discovery",
                "OAuth 2.0 Authorization Server Metadata (RFC 8414)",
                Public,
            ),
        ),
        route(
            Get,
            "/authorize",
            authorize::authorize,
            Doc::new(
                "oauth",
                "Authorization endpoint: code flow with PKCE (OIDC Core §3.1.2)",
                Public,
            )
            .produces("text/html"),
        ),
        route(
            Post,
            "/authorize/login",
            authorize::login,
            Doc::new("oauth", "The sign-in form", Public)
                .input(Input::Form)
                .produces("text/html"),
        ),
        route(
            Post,
            "/authorize/consent",
            authorize::consent,
            Doc::new("oauth", "The consent form", Public)
                .input(Input::Form)
                .produces("text/html"),
        ),
        route(
            Get,
            "/logout",
            authorize::logout,
            Doc::new(
                "oauth",
                "RP-initiated logout (OIDC RP-Initiated Logout 1.0)",
                Public,
            )
            .produces("text/html"),
        ),
        route(
            Post,
            "/logout",
            authorize::logout_confirmed,
            Doc::new("oauth", "Logout confirmation", Public)
                .input(Input::Form)
                .produces("text/html"),
        ),
        route(
            Post,
            "/token",
            token::token,
            Doc::new("oauth", "Token endpoint (RFC 6749 §3.2)", Client).input(Input::Form),
        ),
        route(
            Post,
            "/revoke",
            token::revoke,
            Doc::new("oauth", "Token revocation (RFC 7009)", Client).input(Input::Form),
        ),
        route(
            Post,
            "/introspect",
            token::introspect,
            Doc::new("oauth", "Token introspection (RFC 7662)", Client).input(Input::Form),
        ),
        route(
            Get,
            "/userinfo",
            userinfo::userinfo,
            Doc::new(
                "oauth",
                "Claims about the token's user (OIDC Core §5.3)",
                Bearer,
            ),
        ),
        route(
            Post,
            "/userinfo",
            userinfo::userinfo,
            Doc::new(
                "oauth",
                "Claims about the token's user (OIDC Core §5.3)",
                Bearer,
            ),
        ),
        route(
            Get,
            "/healthz",
            health::healthz,
            Doc::new("operations", "Liveness and key-ring health", Public),
        ),
        route(
            Get,
            "/readyz",
            health::readyz,
            Doc::new(
                "operations",
                "Readiness: database, signing keys, scheduler (503 naming what fails)",
                Public,
            ),
        ),
        route(
            Get,
            "/openapi.json",
            openapi::openapi,
            Doc::new("operations", "This OpenAPI 3.1 document", Public),
        ),
        route(
            Get,
            "/admin/keys",
            admin::list_keys,
            Doc::new("admin", "The key ring, every state", Admin),
        ),
        route(
            Get,
            "/admin/keys/schedule",
            admin::schedule,
            Doc::new("admin", "The next key transitions per algorithm", Admin),
        ),
        route(
            Post,
            "/admin/keys/rotate",
            admin::rotate,
            Doc::new("admin", "Rotate one or every algorithm", Admin).input(Input::Json),
        ),
        route(
            Post,
            "/admin/keys/{kid}/retire",
            admin::retire,
            Doc::new("admin", "Retire a key (emergency: at once)", Admin).input(Input::Json),
        ),
        route(
            Get,
            "/admin/events",
            admin::events,
            Doc::new(
                "admin",
                "The event log's original columns, newest first",
                Admin,
            )
            .query(&[("action", "Only this event type"), ("limit", "1 to 1000")]),
        ),
        route(
            Get,
            "/admin/audit",
            admin::audit,
            Doc::new(
                "admin",
                "Security events, filtered, newest first, paginated",
                Admin,
            )
            .query(AUDIT_QUERY),
        ),
        route(
            Post,
            "/admin/users/{username}/unlock",
            admin::unlock_user,
            Doc::new("admin", "Clear a user's lockout and failure count", Admin),
        ),
        route(
            Get,
            "/admin/sessions",
            admin::list_sessions,
            Doc::new("admin", "A user's live sessions", Admin)
                .query(&[("user", "The username (required)")]),
        ),
        route(
            Delete,
            "/admin/sessions/{id}",
            admin::revoke_session,
            Doc::new("admin", "End one session", Admin).produces("none"),
        ),
        route(
            Delete,
            "/admin/users/{username}/sessions",
            admin::revoke_user_sessions,
            Doc::new("admin", "End every session of a user", Admin).produces("none"),
        ),
        route(
            Get,
            "/account/sessions",
            account::list,
            Doc::new("account", "The caller's sessions", Bearer),
        ),
        route(
            Delete,
            "/account/sessions/{id}",
            account::end,
            Doc::new("account", "End one of the caller's sessions", Bearer).produces("none"),
        ),
        route(
            Post,
            "/account/logout",
            account::logout,
            Doc::new("account", "End the caller's session", Bearer).produces("none"),
        ),
        route(
            Post,
            "/account/logout-all",
            account::logout_all,
            Doc::new("account", "End every session of the caller", Bearer).produces("none"),
        ),
    ];
    if config.metrics.enabled && config.metrics.bind.is_none() {
        r.push(metrics_route());
    }
    r
}

fn metrics_route() -> Route {
    route(
        Verb::Get,
        "/metrics",
        metrics::metrics,
        Doc::new(
            "operations",
            "Prometheus metrics (text format 0.0.4)",
            Access::Metrics,
        )
        .produces("text/plain"),
    )
}

fn build(table: Vec<Route>, state: AppState) -> Router {
    let mut router = Router::new();
    for r in table {
        // Two rows with one path merge into one method router.
        router = router.route(r.path, r.handler);
    }
    // `Router::layer` wraps only the routes already added, so every route is
    // a row of the table, never added after this.
    router
        .layer(from_fn_with_state(state.clone(), layers::edge))
        .with_state(state)
}

pub fn router(state: AppState) -> Router {
    build(routes(&state.config), state)
}

/// The router of the separate metrics listener (`[metrics] bind`).
pub fn metrics_router(state: AppState) -> Router {
    build(vec![metrics_route()], state)
}
