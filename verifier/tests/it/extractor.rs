//! The axum integration over real HTTP: a router shaped like the example
//! resource server, on a loopback port, driven by reqwest.

use std::sync::Arc;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use latchkey_verifier::axum::{AuthError, RequireScope, require_scope};
use latchkey_verifier::{Claims, ManualClock, Verifier};
use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{Value, json};

use crate::support::*;

#[derive(Clone)]
struct AppState {
    verifier: Verifier,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Verifier {
        state.verifier.clone()
    }
}

async fn read(claims: Claims) -> Result<Json<Value>, AuthError> {
    claims.require_scope("api:read")?;
    Ok(Json(json!({"sub": claims.sub})))
}

async fn write(claims: Claims) -> Json<Value> {
    Json(json!({"written_by": claims.sub}))
}

async fn whoami(claims: Option<Claims>) -> String {
    claims.map_or_else(|| "anonymous".to_owned(), |c| c.sub)
}

async fn admin(claims: Claims) -> Result<&'static str, AuthError> {
    claims.require_role("admin")?;
    Ok("welcome")
}

/// Serves the router and returns its base URL and the issuer's verifier.
async fn serve(clock: &Arc<ManualClock>) -> (String, Issuer) {
    let issuer = Issuer::start(jwks(&[rsa_key(), ec_key()])).await;
    let verifier = Verifier::builder(&issuer.url)
        .audience(&issuer.url)
        .clock(Arc::clone(clock))
        .build()
        .await
        .unwrap();
    let write_routes =
        Router::new()
            .route("/write", post(write))
            .route_layer(middleware::from_fn_with_state(
                RequireScope::new(verifier.clone(), "api:write"),
                require_scope,
            ));
    let app = Router::new()
        .route("/read", get(read))
        .route("/whoami", get(whoami))
        .route("/admin", get(admin))
        .merge(write_routes)
        .with_state(AppState { verifier });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, issuer)
}

fn token_with_scope(issuer: &Issuer, scope: &str, roles: Value) -> String {
    let mut c = claims_for(&issuer.url, &issuer.url, T0);
    c["scope"] = json!(scope);
    c["roles"] = roles;
    rsa_key().token(&c)
}

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn missing_token_gets_401_with_a_bare_bearer_challenge() {
    let clock = clock();
    let (url, _issuer) = serve(&clock).await;
    let http = reqwest::Client::new();

    let resp = http.get(format!("{url}/read")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), "Bearer");

    // Another scheme counts as no token (RFC 6750 section 3).
    let resp = http
        .get(format!("{url}/read"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), "Bearer");
}

#[tokio::test]
async fn invalid_token_gets_401_invalid_token_with_a_json_body() {
    let clock = clock();
    let (url, issuer) = serve(&clock).await;
    let mut c = claims_for(&issuer.url, &issuer.url, T0);
    c["exp"] = json!(T0 - 3600);
    let expired = rsa_key().token(&c);

    let resp = reqwest::Client::new()
        .get(format!("{url}/read"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge(&resp),
        r#"Bearer error="invalid_token", error_description="token has expired""#
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "invalid_token", "error_description": "token has expired"})
    );

    let resp = reqwest::Client::new()
        .get(format!("{url}/read"))
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&resp).starts_with(r#"Bearer error="invalid_token""#),
        "{}",
        challenge(&resp)
    );
}

#[tokio::test]
async fn good_token_gets_200_and_missing_scope_gets_403() {
    let clock = clock();
    let (url, issuer) = serve(&clock).await;
    let http = reqwest::Client::new();
    let reader = token_with_scope(&issuer, "openid api:read", json!([]));

    let resp = http
        .get(format!("{url}/read"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"sub": "alice"}));

    // The route layer refuses a token without api:write.
    let resp = http
        .post(format!("{url}/write"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&resp),
        r#"Bearer error="insufficient_scope", scope="api:write""#
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["scope"], "api:write");

    // The handler check refuses a token without api:read.
    let writer = token_with_scope(&issuer, "api:write", json!([]));
    let resp = http
        .get(format!("{url}/read"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&resp),
        r#"Bearer error="insufficient_scope", scope="api:read""#
    );

    let resp = http
        .post(format!("{url}/write"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"written_by": "alice"})
    );

    // The layer's missing-token answer is the same as the extractor's.
    let resp = http.post(format!("{url}/write")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&resp), "Bearer");
}

#[tokio::test]
async fn roles_and_optional_claims() {
    let clock = clock();
    let (url, issuer) = serve(&clock).await;
    let http = reqwest::Client::new();

    let admin = token_with_scope(&issuer, "openid", json!(["admin"]));
    let user = token_with_scope(&issuer, "openid", json!(["user"]));
    let resp = http
        .get(format!("{url}/admin"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(format!("{url}/admin"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&resp),
        r#"Bearer error="insufficient_scope", error_description="the token lacks the role admin""#
    );

    let resp = http.get(format!("{url}/whoami")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "anonymous");
    let resp = http
        .get(format!("{url}/whoami"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "alice");
    let resp = http
        .get(format!("{url}/whoami"))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_authorization_header_gets_400_invalid_request() {
    let clock = clock();
    let (url, _issuer) = serve(&clock).await;
    let resp = reqwest::Client::new()
        .get(format!("{url}/read"))
        .header("authorization", "Bearer a b c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(challenge(&resp).starts_with(r#"Bearer error="invalid_request""#));
}

#[tokio::test]
async fn unavailable_keys_render_503() {
    use axum::response::IntoResponse;
    let clock = clock();
    let issuer = Issuer::start(jwks(&[rsa_key()])).await;
    issuer.ctl.set_cache_control("max-age=60");
    let verifier = Verifier::builder(&issuer.url)
        .audience(&issuer.url)
        .clock(Arc::clone(&clock))
        .stale_if_error(std::time::Duration::from_secs(0))
        .build()
        .await
        .unwrap();
    issuer
        .ctl
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    clock.set(T0 + 60);
    let err = verifier
        .verify(&rsa_key().token(&claims_for(&issuer.url, &issuer.url, T0 + 60)))
        .await
        .unwrap_err();
    let resp = AuthError::from(err).into_response();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().get(WWW_AUTHENTICATE).is_none());
}
