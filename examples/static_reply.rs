//! The cheapest reply axum can give, served the way latchkey serves (the same
//! axum and hyper, a multi-threaded tokio runtime, `ConnectInfo` on every
//! request): the machine's limit for an HTTP request, against which
//! `scripts/bench.sh` states latchkey's figures.
//!
//! `cargo run --release --example static_reply -- 127.0.0.1:8099`, then
//! `cargo run --release --example load -- --url http://127.0.0.1:8099 --scenario static`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark baseline: a failed bind ends it with its message"
)]

use std::net::SocketAddr;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// A small JSON body with the headers a cacheable latchkey document carries.
async fn reply() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        "{\"status\":\"ok\"}",
    )
}

#[tokio::main]
async fn main() {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".to_string());
    let listener = tokio::net::TcpListener::bind(&bind).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("address"));
    let app = Router::new().route("/", get(reply));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
