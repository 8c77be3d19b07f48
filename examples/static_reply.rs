//! The machine's limits for an HTTP request, served the way latchkey serves
//! (the same axum and hyper, a multi-threaded tokio runtime, `ConnectInfo` on
//! every request), against which `scripts/bench.sh` states latchkey's figures:
//!
//! - `GET /`: the cheapest reply axum can give (a small JSON body with the
//!   headers a cacheable latchkey document carries);
//! - `POST /token`: the composed limit of the `client_credentials` grant,
//!   measured instead of summed: read the form body, sign one access token of
//!   latchkey's claim shape with latchkey's own signer, answer it as JSON.
//!   Nothing else: no client authentication, no scope policy, no logging. The
//!   Basic client id chooses the algorithm (`rs256` for RS256, anything else
//!   ES256). It publishes `/.well-known/openid-configuration` and
//!   `/.well-known/jwks.json`, so the load driver's `client-credentials`
//!   scenario runs against it unchanged and verifies what it signs.
//!
//! The summed limit, 1/(static reply + one `openssl speed` signature), leaves
//! out what serving a signature costs beyond both: on this loopback set-up,
//! each answer wakes the load driver's sleeping thread on the other core
//! (`sock_def_readable`), which the static reply, answering a saturated
//! driver, rarely pays.
//!
//! `cargo run --release --example static_reply -- 127.0.0.1:8099`, then
//! `cargo run --release --example load -- --url http://127.0.0.1:8099 --scenario static`, or
//! `... --scenario client-credentials --client-id es256 --client-secret x`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark baseline: a failed bind or key ends it with its message"
)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use latchkey::clock::{Clock as _, SystemClock};
use latchkey::keyring::Alg;
use latchkey::keyring::key::{self, LocalSigner, PublicKey};
use latchkey::token::claims::{ACCESS_TOKEN_TYP, AccessClaims};

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

struct BaselineKey {
    kid: String,
    signer: LocalSigner,
    jwk: serde_json::Value,
}

impl BaselineKey {
    fn new(alg: Alg) -> Self {
        let generated = key::generate(alg, 2048).expect("key generation");
        let public = PublicKey::from_spki_der(alg, &generated.public_der).expect("public key");
        Self {
            kid: public.kid.clone(),
            signer: key::local_signer(alg, &generated.private_der).expect("signer"),
            jwk: serde_json::Value::Object(public.jwk),
        }
    }
}

struct Baseline {
    issuer: String,
    rs256: BaselineKey,
    es256: BaselineKey,
}

/// The client id of a `Basic` header, if any.
fn basic_client_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let decoded = STANDARD.decode(v.strip_prefix("Basic ")?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next()?.to_string())
}

/// One signed access token of latchkey's claim shape, and nothing else.
async fn token(
    State(b): State<Arc<Baseline>>,
    headers: HeaderMap,
    // Read in full, as latchkey reads its form, and not parsed.
    _form: Bytes,
) -> impl IntoResponse {
    let (alg, key) = match basic_client_id(&headers).as_deref() {
        Some("rs256") => (Alg::Rs256, &b.rs256),
        _ => (Alg::Es256, &b.es256),
    };
    let now = SystemClock.now();
    let jti = latchkey::secret::random_id().expect("random");
    let claims = AccessClaims {
        iss: &b.issuer,
        sub: "baseline",
        aud: &b.issuer,
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: &jti,
        client_id: "baseline",
        scope: "api:read",
        roles: &[],
        sid: None,
    };
    let header =
        serde_json::json!({ "alg": alg.as_str(), "kid": key.kid, "typ": ACCESS_TOKEN_TYP });
    let mut jwt = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap());
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(serde_json::to_vec(&claims).unwrap(), &mut jwt);
    let signature = key.signer.sign(jwt.as_bytes()).expect("sign");
    jwt.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
    axum::Json(serde_json::json!({
        "access_token": jwt,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "api:read",
    }))
}

#[tokio::main]
async fn main() {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".to_string());
    let listener = tokio::net::TcpListener::bind(&bind).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    println!("listening on {addr}");
    let issuer = format!("http://{addr}");
    let baseline = Arc::new(Baseline {
        rs256: BaselineKey::new(Alg::Rs256),
        es256: BaselineKey::new(Alg::Es256),
        issuer: issuer.clone(),
    });
    let discovery = serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/token"),
    })
    .to_string();
    let jwks = serde_json::json!({ "keys": [baseline.rs256.jwk, baseline.es256.jwk] }).to_string();
    let json = |body: String| {
        move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }
    };
    let app = Router::new()
        .route("/", get(reply))
        .route("/.well-known/openid-configuration", get(json(discovery)))
        .route("/.well-known/jwks.json", get(json(jwks)))
        .route("/token", post(token))
        .with_state(baseline);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
