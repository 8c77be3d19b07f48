//! The `openidconnect` crate as an unchanged relying party: discovery, an
//! authorization URL with PKCE and nonce, the login page completed by a
//! cookie-keeping HTTP client, the code exchanged and the ID token verified by
//! the library (JWKS signature, nonce, audience, at_hash), userinfo fetched —
//! for an RS256 and an ES256 client.

use openidconnect::core::{
    CoreClient, CoreIdTokenVerifier, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreResponseType, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    HttpRequest, HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    RedirectUrl, Scope, TokenResponse,
};

use crate::authcode::{APP_CB, browser, code_client, form_action, hidden, param};
use crate::helpers::{PASSWORD, TestApp};

/// openidconnect brings no HTTP client here (default features off); this
/// adapter lends it the test's reqwest, unchanged in behaviour: no redirects
/// followed (as the library requires for its own requests).
async fn http(request: HttpRequest) -> Result<HttpResponse, reqwest::Error> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (parts, body) = request.into_parts();
    let mut req = client
        .request(parts.method, parts.uri.to_string())
        .body(body);
    for (name, value) in &parts.headers {
        req = req.header(name, value);
    }
    let response = req.send().await?;
    let mut out = axum::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        out = out.header(name, value);
    }
    let body = response.bytes().await?.to_vec();
    Ok(out.body(body).unwrap())
}

async fn relying_party_flow(alg: &str, jws: CoreJwsSigningAlgorithm) {
    let app = TestApp::spawn().await;
    let user_id = app.create_user("alice", PASSWORD, &[]).await;
    let client_id = format!("rp-{}", alg.to_lowercase());
    let secret = code_client(&app, &client_id, alg, &["--first-party"]).await;

    let issuer = IssuerUrl::new(app.issuer.clone()).unwrap();
    let metadata = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .expect("openidconnect accepts latchkey's discovery document");
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.clone()),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(RedirectUrl::new(APP_CB.to_string()).unwrap());

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf_state, nonce) = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    assert!(url.as_str().starts_with(&app.url("/authorize")), "{url}");

    // The user's part: the login page, filled in and posted with its CSRF token.
    let b = browser();
    let page = b
        .get(url.as_str())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&page, "csrf").unwrap();
    let r = b
        .post(form_action(&page))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(APP_CB));
    assert_eq!(param(&location, "state").unwrap(), *csrf_state.secret());
    assert_eq!(param(&location, "iss").unwrap(), app.issuer);
    let code = param(&location, "code").unwrap();

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("an ID token");
    let id_verifier: CoreIdTokenVerifier = client
        .id_token_verifier()
        .set_allowed_algs(vec![jws.clone()]);
    let claims = id_token
        .claims(&id_verifier, &nonce)
        .expect("openidconnect verifies signature, issuer, audience, expiry and nonce");
    assert_eq!(claims.subject().as_str(), user_id);
    assert_eq!(claims.audiences().len(), 1);
    assert_eq!(claims.audiences()[0].as_str(), client_id);
    assert_eq!(claims.nonce().unwrap().secret(), nonce.secret());
    assert!(claims.auth_time().is_some());
    assert_eq!(
        claims
            .preferred_username()
            .map(|u| u.as_str().to_string())
            .as_deref(),
        Some("alice")
    );
    assert_eq!(*id_token.signing_alg().unwrap(), jws);
    let expected_hash = claims.access_token_hash().expect("at_hash");
    let actual = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&id_verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(&actual, expected_hash);
    // A wrong nonce is caught by the library.
    assert!(id_token.claims(&id_verifier, &Nonce::new_random()).is_err());
    assert!(tokens.refresh_token().is_some());

    let info: CoreUserInfoClaims = client
        .user_info(
            tokens.access_token().to_owned(),
            Some(claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(info.subject().as_str(), user_id);
    assert_eq!(
        info.preferred_username()
            .map(|u| u.as_str().to_string())
            .as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn openidconnect_rp_signs_in_with_an_rs256_client() {
    relying_party_flow("RS256", CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256).await;
}

#[tokio::test]
async fn openidconnect_rp_signs_in_with_an_es256_client() {
    relying_party_flow("ES256", CoreJwsSigningAlgorithm::EcdsaP256Sha256).await;
}
