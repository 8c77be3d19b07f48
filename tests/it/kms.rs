//! The AWS KMS provider end to end: a real latchkey configured with
//! `keys.kms = "aws"` against the KMS emulator (`scripts/kms-emulator.sh`),
//! tokens checked by an independent verifier, KMS state checked with the AWS
//! SDK itself. Without `LATCHKEY_TEST_KMS_ENDPOINT` these tests skip (or fail,
//! when `LATCHKEY_TEST_REQUIRE_KMS` is set).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::types::{KeySpec, KeyState as KmsKeyState, KeyUsageType};
use latchkey::keyring::{Alg, KeyState};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{Options, PASSWORD, TestApp, jwt_part, verify_with_jsonwebtoken};

/// The emulator's URL, or `None` (after saying so) when these tests should skip.
fn kms_endpoint() -> Option<String> {
    match std::env::var("LATCHKEY_TEST_KMS_ENDPOINT") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
        _ => {
            // CI sets this so that a missing emulator fails instead of skipping.
            if std::env::var_os("LATCHKEY_TEST_REQUIRE_KMS").is_some() {
                panic!("LATCHKEY_TEST_REQUIRE_KMS is set but LATCHKEY_TEST_KMS_ENDPOINT is not");
            }
            eprintln!(
                "skipping: LATCHKEY_TEST_KMS_ENDPOINT is not set (run scripts/kms-emulator.sh start)"
            );
            None
        }
    }
}

/// An SDK client talking straight to the emulator, for set-up and checks.
pub(crate) async fn admin(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .http_client(http)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
        .load()
        .await;
    Client::new(&config)
}

/// A fresh SYMMETRIC_DEFAULT key behind a fresh alias; returns the alias.
pub(crate) async fn wrapping_key_alias(admin: &Client) -> String {
    let created = admin
        .create_key()
        .description("latchkey integration test wrapping key")
        .send()
        .await
        .unwrap();
    let key_id = created.key_metadata().unwrap().key_id().to_string();
    let alias = format!(
        "alias/latchkey-it-{}",
        latchkey::secret::random_id().unwrap()
    );
    admin
        .create_alias()
        .alias_name(&alias)
        .target_key_id(&key_id)
        .send()
        .await
        .unwrap();
    alias
}

/// `[keys] kms = "aws"` plus a `[keys.aws]` section for `endpoint`.
fn aws_options(endpoint: &str, mode: &str, key_id: Option<&str>) -> Options {
    let key_id = key_id
        .map(|k| format!("key_id = \"{k}\"\n"))
        .unwrap_or_default();
    Options {
        keys_toml: "kms = \"aws\"\n".into(),
        extra_toml: format!(
            "[keys.aws]\nmode = \"{mode}\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n{key_id}access_key_id = \"testing\"\n"
        ),
        // Secrets come from the environment, never from the config file.
        env: vec![(
            "LATCHKEY_KEYS__AWS__SECRET_ACCESS_KEY".into(),
            "testing".into(),
        )],
        ..Default::default()
    }
}

async fn cli_json(app: &TestApp, args: &[&str]) -> Value {
    let out = app.cli(args, None).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A user and one confidential client per algorithm; returns (RS256, ES256) secrets.
async fn user_and_clients(app: &TestApp) -> (String, String) {
    app.create_user("alice", PASSWORD, &[]).await;
    let rs = app
        .create_client("rs-app", "password", "api:read", "RS256")
        .await;
    let es = app
        .create_client("es-app", "password", "api:read", "ES256")
        .await;
    (rs, es)
}

async fn access_token(app: &TestApp, client: &str, secret: &str) -> String {
    app.login((client, secret), "alice", PASSWORD, "api:read")
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn kid_of(token: &str) -> String {
    jwt_part(token, 0)["kid"].as_str().unwrap().to_string()
}

/// Verify with `jsonwebtoken` against a freshly fetched JWKS; returns the kid.
async fn verify_fresh(app: &TestApp, token: &str, alg: &str) -> String {
    let jwks = app.jwks().await;
    let claims = verify_with_jsonwebtoken(&jwks, token, &app.issuer, &app.issuer)
        .unwrap_or_else(|e| panic!("{alg} token does not verify: {e}"));
    assert_eq!(
        claims["client_id"],
        if alg == "RS256" { "rs-app" } else { "es-app" }
    );
    let header = jwt_part(token, 0);
    assert_eq!(header["alg"], alg);
    header["kid"].as_str().unwrap().to_string()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn aws_envelope_server_issues_verifiable_tokens() {
    let Some(endpoint) = kms_endpoint() else {
        return;
    };
    let admin = admin(&endpoint).await;
    let alias = wrapping_key_alias(&admin).await;
    let options = aws_options(&endpoint, "envelope", Some(&alias));

    let app = TestApp::spawn_with(options.clone()).await;
    let (rs, es) = user_and_clients(&app).await;
    let rs_token = access_token(&app, "rs-app", &rs).await;
    let es_token = access_token(&app, "es-app", &es).await;
    let rs_kid = verify_fresh(&app, &rs_token, "RS256").await;
    let es_kid = verify_fresh(&app, &es_token, "ES256").await;

    let keys = cli_json(&app, &["keys", "list", "--json"]).await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        assert_eq!(k["kms_provider"], "aws-envelope", "{k}");
        assert_eq!(k["state"], "active", "{k}");
    }
    let listed = sorted(
        keys.iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect(),
    );
    assert_eq!(listed, sorted(vec![rs_kid.clone(), es_kid.clone()]));
    // Stored wrapped under the KMS key: an envelope blob, the alias recorded.
    for row in app.state.store.list_keys(true).await.unwrap() {
        let blob = row.wrapped_private.as_deref().expect("wrapped key stored");
        assert!(blob.starts_with(b"AWS1"), "{}", row.kid);
        assert_eq!(row.kms_key_ref.as_deref(), Some(alias.as_str()));
    }
    let kids_before = sorted(app.kids().await);

    // A restart loads both keys again, which means unwrapping them through KMS Decrypt.
    let issuer = app.issuer.clone();
    let (env, port) = app.stop().await;
    let app = TestApp::spawn_in(
        env,
        Options {
            port: Some(port),
            ..options
        },
    )
    .await;
    assert_eq!(app.issuer, issuer);
    assert_eq!(sorted(app.kids().await), kids_before, "the same keys");
    let ring = app.state.ring.current();
    for (alg, kid) in [(Alg::Rs256, &rs_kid), (Alg::Es256, &es_kid)] {
        let active = ring.active(alg).expect("an active key after restart");
        assert_eq!(active.kid(), kid.as_str());
        assert!(active.signer.is_some(), "{kid} was unwrapped");
    }
    let health: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");

    let rs_after = access_token(&app, "rs-app", &rs).await;
    let es_after = access_token(&app, "es-app", &es).await;
    assert_eq!(verify_fresh(&app, &rs_after, "RS256").await, rs_kid);
    assert_eq!(verify_fresh(&app, &es_after, "ES256").await, es_kid);
    // Tokens from before the restart still verify too.
    verify_fresh(&app, &rs_token, "RS256").await;
    verify_fresh(&app, &es_token, "ES256").await;
}

/// The JWK members a KMS public key (SPKI DER) must publish as.
fn jwk_members_of_spki(alg: Alg, der: &[u8]) -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let pkey = openssl::pkey::PKey::public_key_from_der(der).unwrap();
    match alg {
        Alg::Rs256 => {
            let rsa = pkey.rsa().unwrap();
            vec![
                ("kty", "RSA".into()),
                ("n", b64(&rsa.n().to_vec())),
                ("e", b64(&rsa.e().to_vec())),
            ]
        }
        Alg::Es256 => {
            let ec = pkey.ec_key().unwrap();
            let mut ctx = openssl::bn::BigNumContext::new().unwrap();
            let mut x = openssl::bn::BigNum::new().unwrap();
            let mut y = openssl::bn::BigNum::new().unwrap();
            ec.public_key()
                .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
                .unwrap();
            vec![
                ("kty", "EC".into()),
                ("crv", "P-256".into()),
                ("x", b64(&x.to_vec_padded(32).unwrap())),
                ("y", b64(&y.to_vec_padded(32).unwrap())),
            ]
        }
    }
}

/// The stored KMS key reference of `kid`.
async fn stored_key_ref(app: &TestApp, kid: &str) -> String {
    app.state
        .store
        .list_keys(true)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.kid == kid)
        .unwrap_or_else(|| panic!("no row for {kid}"))
        .kms_key_ref
        .unwrap_or_else(|| panic!("{kid} has no KMS key reference"))
}

async fn kms_key_state(admin: &Client, key_ref: &str) -> KmsKeyState {
    admin
        .describe_key()
        .key_id(key_ref)
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_state()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn aws_native_server_signs_through_kms() {
    let Some(endpoint) = kms_endpoint() else {
        return;
    };
    let admin = admin(&endpoint).await;
    let app = TestApp::spawn_with(aws_options(&endpoint, "native", None)).await;
    let (rs, es) = user_and_clients(&app).await;

    let keys = cli_json(&app, &["keys", "list", "--json"]).await;
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        assert_eq!(k["kms_provider"], "aws-native", "{k}");
    }

    // Each published key is the public half of an asymmetric KMS key.
    let jwks = app.jwks().await;
    for row in app.state.store.list_keys(true).await.unwrap() {
        assert!(row.wrapped_private.is_none(), "no private key leaves KMS");
        let key_ref = row.kms_key_ref.clone().unwrap();
        assert!(key_ref.starts_with("arn:aws:kms:"), "{key_ref}");
        let alg = Alg::parse(&row.alg).unwrap();
        let described = admin.describe_key().key_id(&key_ref).send().await.unwrap();
        let meta = described.key_metadata().unwrap();
        assert_eq!(meta.key_usage(), Some(&KeyUsageType::SignVerify));
        assert_eq!(meta.key_state(), Some(&KmsKeyState::Enabled));
        assert_eq!(
            meta.key_spec(),
            Some(&match alg {
                Alg::Rs256 => KeySpec::Rsa2048,
                Alg::Es256 => KeySpec::EccNistP256,
            })
        );
        let public = admin
            .get_public_key()
            .key_id(&key_ref)
            .send()
            .await
            .unwrap();
        let der = public.public_key().unwrap().as_ref();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == row.kid.as_str())
            .unwrap_or_else(|| panic!("{} not in the JWKS", row.kid));
        for (member, value) in jwk_members_of_spki(alg, der) {
            assert_eq!(jwk[member], value.as_str(), "{} {member}", row.kid);
        }
    }

    // Tokens from the token endpoint, signed by KMS Sign, verify independently.
    let rs_token = access_token(&app, "rs-app", &rs).await;
    let es_token = access_token(&app, "es-app", &es).await;
    verify_fresh(&app, &rs_token, "RS256").await;
    let old_es_kid = verify_fresh(&app, &es_token, "ES256").await;
    {
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(es_token.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64, "ES256 signatures are raw r||s, not DER");
    }

    // Immediate rotation through the CLI makes a new KMS key that signs at once.
    let out = cli_json(
        &app,
        &["keys", "rotate", "--now", "--alg", "ES256", "--json"],
    )
    .await;
    let out = &out[0];
    assert_eq!(out["state"], "active");
    assert_eq!(out["replaced"], old_es_kid.as_str());
    let new_es_kid = out["kid"].as_str().unwrap().to_string();
    assert_ne!(new_es_kid, old_es_kid);
    app.wait_for_ring("rotated ES256 key signing", |r| {
        r.active(Alg::Es256)
            .is_some_and(|k| k.kid() == new_es_kid && k.signer.is_some())
    })
    .await;
    let new_es_token = access_token(&app, "es-app", &es).await;
    assert_eq!(verify_fresh(&app, &new_es_token, "ES256").await, new_es_kid);
    verify_fresh(&app, &es_token, "ES256").await;
    let new_ref = stored_key_ref(&app, &new_es_kid).await;
    let old_ref = stored_key_ref(&app, &old_es_kid).await;
    assert_ne!(new_ref, old_ref, "a new KMS key, not a new alias");

    // Retiring the replaced (retiring) key while its tokens are valid needs
    // --emergency; it unpublishes it and schedules its KMS key for deletion.
    assert_eq!(kms_key_state(&admin, &old_ref).await, KmsKeyState::Enabled);
    let out = app
        .cli(&["keys", "retire", &old_es_kid, "--json"], None)
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--emergency"));
    assert_eq!(kms_key_state(&admin, &old_ref).await, KmsKeyState::Enabled);
    let out = app
        .cli(
            &["keys", "retire", &old_es_kid, "--emergency", "--json"],
            None,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING"),
        "its tokens may be unexpired"
    );
    let retired: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(retired["previous_state"], "retiring");
    assert_eq!(retired["emergency"], true);
    assert_eq!(
        kms_key_state(&admin, &old_ref).await,
        KmsKeyState::PendingDeletion
    );
    assert_eq!(kms_key_state(&admin, &new_ref).await, KmsKeyState::Enabled);
    app.wait_for_ring("retired key unpublished", |r| r.key(&old_es_kid).is_none())
        .await;
    assert!(!app.kids().await.contains(&old_es_kid));
    let again = access_token(&app, "es-app", &es).await;
    assert_eq!(verify_fresh(&app, &again, "ES256").await, new_es_kid);
}

/// A TCP forwarder to the emulator that can be cut off and brought back on
/// the same port, to simulate a KMS outage without touching the emulator.
pub(crate) struct Proxy {
    port: u16,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Self {
            port,
            upstream,
            task: Some(tokio::spawn(forward(listener, upstream))),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Refuse new connections and cut every open one.
    pub(crate) async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Once the task is gone its listener and its connection set (which
            // aborts every connection task) have been dropped.
            assert!(task.await.unwrap_err().is_cancelled());
        }
    }

    /// Listen on the same port again.
    pub(crate) async fn restart(&mut self) {
        assert!(self.task.is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("proxy port {} not free yet: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot listen on proxy port {} again: {e}", self.port),
            }
        };
        self.task = Some(tokio::spawn(forward(listener, self.upstream)));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn forward(listener: TcpListener, upstream: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut inbound, _)) = accepted else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn healthz(app: &TestApp) -> Value {
    app.http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Kids the database holds as published (pending, active, retiring).
async fn published_in_db(app: &TestApp) -> BTreeSet<String> {
    app.state
        .store
        .list_keys(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.state != "retired")
        .map(|r| r.kid)
        .collect()
}

async fn events(app: &TestApp, action: &str) -> Vec<Value> {
    cli_json(
        app,
        &[
            "events", "list", "--json", "--action", action, "--limit", "1000",
        ],
    )
    .await
    .as_array()
    .unwrap()
    .clone()
}

/// One token request while the ring may be moving: it must succeed, its kid
/// must be published, it must verify, and the JWKS may hold only keys the
/// database has as published. Returns the token's kid.
async fn token_checks(app: &TestApp, secret: &str) -> String {
    let token = access_token(app, "rs-app", secret).await;
    let jwks = app.jwks().await;
    let kid = kid_of(&token);
    verify_with_jsonwebtoken(&jwks, &token, &app.issuer, &app.issuer)
        .unwrap_or_else(|e| panic!("token signed by {kid} does not verify: {e}"));
    // A key the database retired within the last reload interval may still
    // be served until the next reload; anything else must be published there.
    let rows = app.state.store.list_keys(true).await.unwrap();
    let now = latchkey::clock::Clock::now(&latchkey::clock::SystemClock);
    for k in jwks["keys"].as_array().unwrap() {
        let k = k["kid"].as_str().unwrap();
        assert!(
            rows.iter().any(|r| r.kid == k
                && (r.state != "retired" || r.retired_at.is_some_and(|t| t >= now - 2))),
            "JWKS publishes {k}, which the database does not"
        );
    }
    kid
}

#[tokio::test]
async fn kms_outage_keeps_signing_and_transition_completes_after_recovery() {
    let Some(endpoint) = kms_endpoint() else {
        return;
    };
    let admin = admin(&endpoint).await;
    let alias = wrapping_key_alias(&admin).await;
    let upstream: SocketAddr =
        tokio::net::lookup_host(endpoint.trim_start_matches("http://").trim_end_matches('/'))
            .await
            .unwrap()
            .next()
            .unwrap();
    let mut proxy = Proxy::start(upstream).await;

    // A fast ring: a new key every 5 s, published 3 s before it signs.
    let mut options = aws_options(&proxy.url(), "envelope", Some(&alias));
    options
        .keys_toml
        .push_str("jwks_max_age_secs = 1\nsafety_margin_secs = 1\nmax_clock_skew_secs = 1\n");
    options.top_toml = "[tokens]\naccess_ttl_secs = 5\nid_ttl_secs = 5\n".into();
    // Logins in a loop from one address: no rate limit in this test.
    options
        .env
        .push(("LATCHKEY_RATE_LIMIT__ENABLED".into(), "false".into()));
    for alg in ["rs256", "es256"] {
        options.extra_toml.push_str(&format!(
            "[keys.{alg}]\nschedule = \"*/5 * * * * *\"\nlead_secs = 3\nretention_secs = 12\n"
        ));
    }
    let app = TestApp::spawn_with(options).await;
    app.create_user("alice", PASSWORD, &[]).await;
    let rs = app
        .create_client("rs-app", "password", "api:read", "RS256")
        .await;
    let first_kid = token_checks(&app, &rs).await;

    // Cut KMS off while both algorithms have a pending key loaded: no key
    // creation is in flight then (a pending key is made only when there is
    // none), so the outage cannot catch a key half-way.
    let waiting = Instant::now();
    let prepublished = loop {
        let ring = app.state.ring.current();
        let pending = |alg: Alg| {
            ring.keys()
                .iter()
                .find(|k| k.alg == alg && k.state == KeyState::Pending && k.signer.is_some())
                .map(|k| k.kid().to_string())
        };
        if let (Some(rs_pending), Some(_)) = (pending(Alg::Rs256), pending(Alg::Es256)) {
            proxy.stop().await;
            break rs_pending;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "no pending key per algorithm appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(prepublished, first_kid);
    let outage_started = Instant::now();
    let kids_at_outage = published_in_db(&app).await;
    let mut signing_kids = BTreeSet::new();
    let mut failures_reported = false;
    let mut failure_events = 0;
    while outage_started.elapsed() < Duration::from_secs(6) || failure_events == 0 {
        assert!(
            outage_started.elapsed() < Duration::from_secs(20),
            "no failed transition recorded during the outage: {}",
            healthz(&app).await
        );
        signing_kids.insert(token_checks(&app, &rs).await);
        assert_eq!(
            published_in_db(&app).await,
            kids_at_outage,
            "no key can be made while KMS is unreachable"
        );
        if !failures_reported {
            let health = healthz(&app).await;
            failures_reported = health["key_transition_failures"].as_u64().unwrap() > 0;
            assert_eq!(
                health["status"], "ok",
                "current keys keep signing: {health}"
            );
        }
        // The CLI reads the database only; opening the AWS KMS client makes no
        // request, so it works during the outage.
        if failures_reported && failure_events == 0 {
            let failed = events(&app, "key.transition_failed").await;
            failure_events = failed.len();
            for e in &failed {
                assert!(
                    e["detail"].as_str().unwrap().contains("KMS request failed"),
                    "{e}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        signing_kids.contains(&prepublished),
        "the key pre-published before the outage activates during it: {signing_kids:?}"
    );
    let health = healthz(&app).await;
    assert!(
        health["key_transition_consecutive_failures"]
            .as_u64()
            .unwrap()
            > 0,
        "{health}"
    );

    // KMS is back: the delayed transition goes through on a later retry.
    proxy.restart().await;
    let recovered = Instant::now();
    let known: BTreeSet<String> = app
        .state
        .store
        .list_keys(true)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kid)
        .collect();
    let new_kid = loop {
        let ring = app.state.ring.current();
        if let Some(k) = ring.active(Alg::Rs256)
            && !known.contains(k.kid())
            && k.signer.is_some()
        {
            break k.kid().to_string();
        }
        drop(ring);
        assert!(
            recovered.elapsed() < Duration::from_secs(25),
            "no new RS256 key activated after KMS came back: {}",
            healthz(&app).await
        );
        token_checks(&app, &rs).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "new key {new_kid} signing {:?} after recovery",
        recovered.elapsed()
    );
    assert_eq!(token_checks(&app, &rs).await, new_kid);
    let token = access_token(&app, "rs-app", &rs).await;
    assert_eq!(verify_fresh(&app, &token, "RS256").await, new_kid);
    let row = app
        .state
        .store
        .list_keys(false)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.kid == new_kid)
        .unwrap();
    assert_eq!(row.kms_provider, "aws-envelope");
    assert!(row.wrapped_private.as_deref().unwrap().starts_with(b"AWS1"));
    assert!(
        row.activated_at.unwrap() - row.created_at >= 3,
        "published for the lead before signing: {row:?}"
    );
    let health = healthz(&app).await;
    assert_eq!(health["key_transition_consecutive_failures"], 0, "{health}");

    // Every transition happened once, however many attempts it took.
    for action in ["key.activate", "key.prepublish", "key.bootstrap"] {
        let mut per_kid: HashMap<String, usize> = HashMap::new();
        for e in events(&app, action).await {
            *per_kid
                .entry(e["subject"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert!(per_kid.values().all(|n| *n == 1), "{action}: {per_kid:?}");
        if action != "key.bootstrap" {
            assert!(per_kid.contains_key(&new_kid), "{action}: {per_kid:?}");
        } else {
            assert_eq!(per_kid.len(), 2, "{per_kid:?}");
        }
    }
}
