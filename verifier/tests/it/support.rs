//! Shared fixtures: keys made with OpenSSL, token minting, and an issuer
//! served over real HTTP on a loopback port whose behaviour tests control.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey_verifier::ManualClock;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer};
use serde_json::{Value, json};

/// The time every test starts at.
pub const T0: u64 = 1_700_000_000;
/// Issuer and audience of the static-key tests.
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "https://api.example";

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rsa,
    P256,
    Ed25519,
}

/// A signing key with its kid and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub kind: Kind,
    pub pkey: PKey<Private>,
}

impl TestKey {
    pub fn rsa(kid: &str) -> TestKey {
        let pkey = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        TestKey {
            kid: kid.to_owned(),
            kind: Kind::Rsa,
            pkey,
        }
    }

    pub fn p256(kid: &str) -> TestKey {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let pkey = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        TestKey {
            kid: kid.to_owned(),
            kind: Kind::P256,
            pkey,
        }
    }

    pub fn ed25519(kid: &str) -> TestKey {
        TestKey {
            kid: kid.to_owned(),
            kind: Kind::Ed25519,
            pkey: PKey::generate_ed25519().unwrap(),
        }
    }

    /// The same key material published under another kid.
    pub fn renamed(&self, kid: &str) -> TestKey {
        TestKey {
            kid: kid.to_owned(),
            kind: self.kind,
            pkey: self.pkey.clone(),
        }
    }

    pub fn default_alg(&self) -> &'static str {
        match self.kind {
            Kind::Rsa => "RS256",
            Kind::P256 => "ES256",
            Kind::Ed25519 => "EdDSA",
        }
    }

    /// The public JWK, with `alg` and `use` set.
    pub fn jwk(&self) -> Value {
        let mut jwk = self.bare_jwk();
        jwk["alg"] = json!(self.default_alg());
        jwk["use"] = json!("sig");
        jwk
    }

    /// The public JWK with only the members a key needs (no alg, no use).
    pub fn bare_jwk(&self) -> Value {
        match self.kind {
            Kind::Rsa => {
                let rsa = self.pkey.rsa().unwrap();
                json!({"kty": "RSA", "kid": self.kid, "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())})
            }
            Kind::P256 => {
                let ec = self.pkey.ec_key().unwrap();
                let mut ctx = BigNumContext::new().unwrap();
                let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
                ec.public_key()
                    .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
                    .unwrap();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid,
                       "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())})
            }
            Kind::Ed25519 => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(&self.pkey.raw_public_key().unwrap())})
            }
        }
    }

    /// Signs `signing_input` with `alg` (which may deliberately not fit the
    /// key: an RS256 header on an EC key is signed with ECDSA).
    pub fn sign(&self, alg: &str, signing_input: &[u8]) -> Vec<u8> {
        match (self.kind, alg) {
            (Kind::Rsa, "PS256") => {
                let mut s = Signer::new(MessageDigest::sha256(), &self.pkey).unwrap();
                s.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
                s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).unwrap();
                s.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
                s.sign_oneshot_to_vec(signing_input).unwrap()
            }
            (Kind::Rsa, "RS512") => Signer::new(MessageDigest::sha512(), &self.pkey)
                .unwrap()
                .sign_oneshot_to_vec(signing_input)
                .unwrap(),
            (Kind::Rsa, _) => Signer::new(MessageDigest::sha256(), &self.pkey)
                .unwrap()
                .sign_oneshot_to_vec(signing_input)
                .unwrap(),
            (Kind::P256, _) => {
                let der = Signer::new(MessageDigest::sha256(), &self.pkey)
                    .unwrap()
                    .sign_oneshot_to_vec(signing_input)
                    .unwrap();
                let sig = EcdsaSig::from_der(&der).unwrap();
                let mut raw = sig.r().to_vec_padded(32).unwrap();
                raw.extend(sig.s().to_vec_padded(32).unwrap());
                raw
            }
            (Kind::Ed25519, _) => Signer::new_without_digest(&self.pkey)
                .unwrap()
                .sign_oneshot_to_vec(signing_input)
                .unwrap(),
        }
    }

    /// A token with the standard header (`typ: at+jwt`, this kid, the key's
    /// algorithm) and these claims.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with(&self.header(), claims)
    }

    pub fn header(&self) -> Value {
        json!({"alg": self.default_alg(), "typ": "at+jwt", "kid": self.kid})
    }

    /// A token with this header and these claims, signed with the header's
    /// algorithm.
    pub fn token_with(&self, header: &Value, claims: &Value) -> String {
        let h = b64(header.to_string().as_bytes());
        let p = b64(claims.to_string().as_bytes());
        self.sign_parts(header["alg"].as_str().unwrap_or("RS256"), &h, &p)
    }

    /// `h.p.signature` over already-encoded parts.
    pub fn sign_parts(&self, alg: &str, h: &str, p: &str) -> String {
        let input = format!("{h}.{p}");
        let sig = self.sign(alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// Shared keys: RSA generation costs a fraction of a second, so each kind is
/// made once per test binary.
pub fn rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::rsa("rsa-1"))
}

pub fn ec_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::p256("ec-1"))
}

/// A second RSA key, never published: the attacker's.
pub fn foreign_rsa_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::rsa("rsa-1"))
}

pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// Claims that pass every check at `now` against `issuer` and `audience`.
pub fn claims_for(issuer: &str, audience: &str, now: u64) -> Value {
    json!({
        "iss": issuer,
        "sub": "alice",
        "aud": audience,
        "exp": now + 300,
        "iat": now,
        "jti": "jti-1",
        "client_id": "my-app",
        "scope": "openid api:read",
        "roles": ["admin"],
        "email": "alice@example.com",
    })
}

pub fn claims(now: u64) -> Value {
    claims_for(ISSUER, AUDIENCE, now)
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

/// What the test issuer serves, and what it has seen.
#[derive(Default)]
pub struct IssuerControl {
    pub jwks: Mutex<Value>,
    /// `Cache-Control` on JWKS responses (200 and 304).
    pub cache_control: Mutex<Option<String>>,
    /// `ETag` on JWKS responses; a matching `If-None-Match` gets 304.
    pub etag: Mutex<Option<String>>,
    /// Answer 500 on the JWKS endpoint.
    pub fail: AtomicBool,
    /// Serve a JWKS body larger than any sane cap.
    pub oversize: AtomicBool,
    /// Delay before answering the JWKS request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Overrides the `issuer` in the discovery document.
    pub discovery_issuer: Mutex<Option<String>>,
    pub jwks_hits: AtomicUsize,
    pub not_modified: AtomicUsize,
    pub discovery_hits: AtomicUsize,
    /// Every request path, in order.
    pub paths: Mutex<Vec<String>>,
}

impl IssuerControl {
    pub fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().unwrap() = jwks;
    }

    pub fn set_cache_control(&self, value: &str) {
        *self.cache_control.lock().unwrap() = Some(value.to_owned());
    }

    pub fn set_etag(&self, value: &str) {
        *self.etag.lock().unwrap() = Some(value.to_owned());
    }

    pub fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

/// A JWKS-publishing issuer on `127.0.0.1:0`, stopped when dropped.
pub struct Issuer {
    pub url: String,
    pub ctl: Arc<IssuerControl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Issuer {
    /// JWKS requests received so far.
    pub fn hits(&self) -> usize {
        self.ctl.hits()
    }

    pub async fn start(jwks: Value) -> Issuer {
        let ctl = Arc::new(IssuerControl::default());
        ctl.set_jwks(jwks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_handler))
            .layer(middleware::from_fn_with_state(Arc::clone(&ctl), record))
            .with_state((Arc::clone(&ctl), url.clone()));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Issuer { url, ctl, task }
    }
}

async fn record(State(ctl): State<Arc<IssuerControl>>, request: Request, next: Next) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    ctl.paths.lock().unwrap().push(path);
    next.run(request).await
}

async fn discovery(State((ctl, url)): State<(Arc<IssuerControl>, String)>) -> Response {
    ctl.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let issuer = ctl
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(url.clone());
    let body = json!({"issuer": issuer, "jwks_uri": format!("{url}/jwks"), "token_endpoint": format!("{url}/token")});
    ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn jwks_handler(
    State((ctl, _)): State<(Arc<IssuerControl>, String)>,
    headers: HeaderMap,
) -> Response {
    ctl.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let delay = ctl.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if ctl.fail.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let cache_control = ctl.cache_control.lock().unwrap().clone();
    let etag = ctl.etag.lock().unwrap().clone();
    let mut response = if etag.is_some()
        && headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == etag.as_deref()
    {
        ctl.not_modified.fetch_add(1, Ordering::SeqCst);
        StatusCode::NOT_MODIFIED.into_response()
    } else if ctl.oversize.load(Ordering::SeqCst) {
        let padding = "x".repeat(300 * 1024);
        let body = json!({"keys": [], "padding": padding});
        ([(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    } else {
        let body = ctl.jwks.lock().unwrap().to_string();
        ([(CONTENT_TYPE, "application/json")], body).into_response()
    };
    if let Some(cc) = cache_control {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, cc.parse().unwrap());
    }
    if let Some(tag) = etag {
        response.headers_mut().insert(ETAG, tag.parse().unwrap());
    }
    response
}

/// Waits (bounded) until `cond` holds; for effects of background tasks.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
