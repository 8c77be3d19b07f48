use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::clock::{Clock, ManualClock};
use latchkey::keyring::Alg;
use serde_json::Value;

use crate::helpers::{
    Env, Options, PASSWORD, TestApp, postgres_base_url, verify_with_jsonwebtoken,
};

const ISSUER: &str = "http://latchkey.test";

/// Seconds instead of days: rotation every 5 s, 4 s of pre-publication, 3 s
/// tokens, a 1 s JWKS max-age, 8 s of retention.
fn accelerated() -> Options {
    Options {
        issuer: Some(ISSUER.into()),
        top_toml: "[tokens]\naccess_ttl_secs = 3\nid_ttl_secs = 3\n".into(),
        keys_toml: "jwks_max_age_secs = 1\nsafety_margin_secs = 2\n".into(),
        extra_toml: "[keys.rs256]\nschedule = \"*/5 * * * * *\"\nlead_secs = 4\nretention_secs = 8\n\
                     [keys.es256]\nschedule = \"*/5 * * * * *\"\nlead_secs = 4\nretention_secs = 8\n"
            .into(),
        ..Default::default()
    }
}

/// A resource server that caches the JWKS exactly as long as max-age allows
/// and never refetches early, not even on an unknown kid.
struct CachingVerifier {
    jwks: Value,
    fetched: Instant,
    max_age: Duration,
    fetches: usize,
}

impl CachingVerifier {
    async fn fetch(http: &reqwest::Client, url: &str) -> (Value, Duration) {
        let r = http.get(url).send().await.unwrap();
        let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
        let max_age = cc
            .split(',')
            .find_map(|p| p.trim().strip_prefix("max-age="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        (r.json().await.unwrap(), Duration::from_secs(max_age))
    }

    async fn jwks(&mut self, http: &reqwest::Client, url: &str) -> &Value {
        if self.fetched.elapsed() >= self.max_age {
            let (jwks, max_age) = Self::fetch(http, url).await;
            self.jwks = jwks;
            self.max_age = max_age;
            self.fetched = Instant::now();
            self.fetches += 1;
        }
        &self.jwks
    }
}

async fn active_per_alg(app: &TestApp) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for k in app.state.store.list_keys(false).await.unwrap() {
        if k.state == "active" {
            *n.entry(k.alg).or_insert(0) += 1;
        }
    }
    n
}

#[tokio::test]
async fn scheduled_rotation_never_breaks_a_caching_verifier() {
    // Two replicas on one PostgreSQL database; one replica on SQLite.
    let env = Env::new().await;
    let mut replicas = vec![TestApp::spawn_in(env.clone(), accelerated()).await];
    if postgres_base_url().is_some() {
        replicas.push(TestApp::spawn_in(env.clone(), accelerated()).await);
    }
    let rs = replicas[0]
        .create_client("rs", "client_credentials", "api:read", "RS256")
        .await;
    let es = replicas[0]
        .create_client("es", "client_credentials", "api:read", "ES256")
        .await;
    let http = reqwest::Client::new();
    let (jwks, max_age) =
        CachingVerifier::fetch(&http, &replicas[0].url("/.well-known/jwks.json")).await;
    assert_eq!(max_age, Duration::from_secs(1));
    let mut verifier = CachingVerifier {
        jwks,
        fetched: Instant::now(),
        max_age,
        fetches: 1,
    };

    let mut kids_seen: HashMap<&str, HashSet<String>> = HashMap::new();
    let (mut tokens, mut failures, mut unknown_kid) = (0usize, Vec::new(), 0usize);
    let mut held: Vec<(String, i64)> = Vec::new();
    let (mut rotations_seen, mut reverified) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut i = 0usize;
    // Until each algorithm has signed with at least four keys: three rotations.
    while kids_seen.values().map(HashSet::len).min().unwrap_or(0) < 4 || kids_seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 rotations in 45 s: {kids_seen:?}"
        );
        i += 1;
        let issuing = &replicas[i % replicas.len()];
        let serving = &replicas[(i / 2) % replicas.len()];
        let (client, secret, alg) = if i.is_multiple_of(2) {
            ("rs", &rs, "RS256")
        } else {
            ("es", &es, "ES256")
        };
        let r = issuing
            .token((client, secret), &[("grant_type", "client_credentials")])
            .await;
        assert_eq!(r.status(), 200);
        let at = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        tokens += 1;
        let header = crate::helpers::jwt_part(&at, 0);
        let kid = header["kid"].as_str().unwrap().to_string();
        assert_eq!(header["alg"], alg);
        kids_seen.entry(alg).or_default().insert(kid.clone());
        let jwks = verifier
            .jwks(&http, &serving.url("/.well-known/jwks.json"))
            .await
            .clone();
        if !jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str())
        {
            unknown_kid += 1;
        }
        if let Err(e) = verify_with_jsonwebtoken(&jwks, &at, ISSUER, ISSUER) {
            failures.push(format!("token {tokens} ({alg}, kid {kid}): {e}"));
        }
        // Every issued token is kept and re-verified, while unexpired, after
        // each rotation: unpublishing a replaced key too early fails here.
        let exp = crate::helpers::jwt_part(&at, 1)["exp"].as_i64().unwrap();
        held.push((at, exp));
        let seen: usize = kids_seen.values().map(HashSet::len).sum();
        if seen > rotations_seen {
            rotations_seen = seen;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            held.retain(|(_, exp)| *exp > now + 1);
            for (t, _) in &held {
                reverified += 1;
                if let Err(e) = verify_with_jsonwebtoken(&jwks, t, ISSUER, ISSUER) {
                    failures.push(format!("held token after a rotation: {e}"));
                }
            }
        }
        // At every instant exactly one active key per algorithm: in the
        // database, and loaded for signing on every replica.
        let active = active_per_alg(&replicas[0]).await;
        assert_eq!(active.get("RS256"), Some(&1), "{active:?}");
        assert_eq!(active.get("ES256"), Some(&1), "{active:?}");
        for r in &replicas {
            let ring = r.state.ring.current();
            for a in Alg::ALL {
                assert!(
                    ring.active(a).is_some_and(|k| k.signer.is_some()),
                    "replica without active {a:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        unknown_kid, 0,
        "tokens carried a kid the verifier's cached JWKS did not have"
    );
    assert!(
        failures.is_empty(),
        "{} of {tokens} verifications failed: {failures:#?}",
        failures.len()
    );
    assert!(reverified > 0, "no token was re-verified after a rotation");
    assert!(
        verifier.fetches > 3,
        "the verifier refetched only when max-age ran out"
    );

    // Each transition was performed exactly once, whichever replica did it.
    let events = replicas[0]
        .state
        .store
        .list_events(None, 10_000)
        .await
        .unwrap();
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    for e in &events {
        if [
            "key.prepublish",
            "key.activate",
            "key.retiring",
            "key.retire",
        ]
        .contains(&e.action.as_str())
        {
            *per.entry((e.action.clone(), e.subject.clone().unwrap_or_default()))
                .or_insert(0) += 1;
        }
    }
    assert!(
        per.values().all(|n| *n == 1),
        "a transition was applied twice: {per:?}"
    );
    assert!(per.keys().filter(|(a, _)| a == "key.activate").count() >= 6);
}

#[tokio::test]
async fn a_rotation_missed_during_downtime_happens_exactly_once_on_start() {
    // Daily at midnight, with one hour of pre-publication; a manual clock.
    let options = |clock: Arc<ManualClock>| {
        Options {
        clock: Some(clock),
        extra_toml: "[keys.rs256]\nschedule = \"0 0 0 * * *\"\nlead_secs = 3600\nretention_secs = 7200\n\
                     [keys.es256]\nschedule = \"0 0 0 * * *\"\nlead_secs = 3600\nretention_secs = 7200\n"
            .into(),
        ..Default::default()
    }
    };
    let t0 = 1_767_225_630; // 2026-01-01T00:00:30Z
    let clock = Arc::new(ManualClock::new(t0));
    let app = TestApp::spawn_in(Env::new().await, options(clock.clone())).await;
    let first: Vec<String> = app
        .state
        .store
        .list_keys(false)
        .await
        .unwrap()
        .iter()
        .map(|k| k.kid.clone())
        .collect();
    assert_eq!(first.len(), 2);
    let (env, port) = app.stop().await;

    // Down across three scheduled rotations.
    clock.set(t0 + 3 * 86_400 + 12 * 3600);
    let app = TestApp::spawn_in(
        env,
        Options {
            port: Some(port),
            ..options(clock.clone())
        },
    )
    .await;
    let keys = app.state.store.list_keys(false).await.unwrap();
    for alg in ["RS256", "ES256"] {
        let pending: Vec<_> = keys
            .iter()
            .filter(|k| k.alg == alg && k.state == "pending")
            .collect();
        assert_eq!(
            pending.len(),
            1,
            "one catch-up key for {alg}, not one per missed fire time"
        );
        // It is pre-published like any other: it signs one lead from now.
        assert_eq!(pending[0].activate_at, clock.now() + 3600);
    }
    // Published at once, still not signing: tokens still carry the old kids.
    let kids = app.kids().await;
    assert_eq!(kids.len(), 4);
    let secret = app
        .create_client("cc", "client_credentials", "api:read", "RS256")
        .await;
    for _ in 0..3 {
        let r = app
            .token(("cc", &secret), &[("grant_type", "client_credentials")])
            .await;
        assert_eq!(r.status(), 200);
        let at = r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let kid = crate::helpers::jwt_part(&at, 0)["kid"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(first.contains(&kid), "the catch-up key signed early: {kid}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }

    clock.advance(3600);
    app.wait_for_ring("catch-up keys active", |r| {
        Alg::ALL.iter().all(|a| {
            r.active(*a)
                .is_some_and(|k| !first.contains(&k.kid().to_string()))
        })
    })
    .await;
    // A few more scheduler passes change nothing: the rotation happened once.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let keys = app.state.store.list_keys(true).await.unwrap();
    assert_eq!(
        keys.len(),
        4,
        "{:?}",
        keys.iter().map(|k| (&k.alg, &k.state)).collect::<Vec<_>>()
    );
    assert_eq!(keys.iter().filter(|k| k.state == "active").count(), 2);
    assert_eq!(keys.iter().filter(|k| k.state == "retiring").count(), 2);
    let activations = app
        .state
        .store
        .list_events(Some("key.activate"), 100)
        .await
        .unwrap();
    assert_eq!(activations.len(), 2);
}

#[tokio::test]
async fn keys_schedule_shows_the_next_transitions() {
    let app = TestApp::spawn().await;
    let out = app.cli(&["keys", "schedule", "--json"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), 2);
    for u in &v {
        assert_eq!(u["schedule"], "@monthly");
        let activation = u["next_activation_at"].as_i64().unwrap();
        let prepublish = u["next_prepublish_at"].as_i64().unwrap();
        assert_eq!(
            activation - prepublish,
            361, // 300 s max-age + 1 s reload (the test config) + 60 s margin
            "published one lead before it signs"
        );
        assert!(u["active_kid"].is_string());
    }
    let text = app.cli(&["keys", "schedule"], None).await;
    assert!(String::from_utf8_lossy(&text.stdout).contains("signs from"));
}

/// A token from an `--admin` client: with the admin role it carries
/// `latchkey:admin`; without the role it can only ask for `openid`.
pub(crate) async fn admin_token(app: &TestApp, user: &str, roles: &[&str]) -> String {
    app.create_user(user, PASSWORD, roles).await;
    let secret = app
        .create_admin_client(&format!("{user}-cli"), "password", "openid", "ES256")
        .await;
    let scope = if roles.contains(&"admin") {
        "openid latchkey:admin"
    } else {
        "openid"
    };
    app.login((&format!("{user}-cli"), &secret), user, PASSWORD, scope)
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn admin_api_operates_the_ring_and_refuses_non_admins() {
    let app = TestApp::spawn().await;
    let admin = admin_token(&app, "root", &["admin"]).await;
    let user = admin_token(&app, "eve", &["dev"]).await;

    let r = app.http.get(app.url("/admin/keys")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(app.url("/admin/keys"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    let r = app
        .http
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(&user)
        .json(&serde_json::json!({"alg": "ES256", "now": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        app.state.store.list_keys(true).await.unwrap().len(),
        2,
        "a refused call changed nothing"
    );

    let keys: Vec<Value> = app
        .http
        .get(app.url("/admin/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);

    // A manual rotation honours pre-publication and says when it signs.
    let r = app
        .http
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"alg": "RS256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out.as_array().unwrap().len(), 1);
    let out = &out[0];
    assert_eq!(out["state"], "pending");
    // The default lead: 300 s max-age + 1 s reload (the test config) + 60 s margin.
    let lead = out["activate_at"].as_i64().unwrap() - latchkey::clock::SystemClock.now();
    assert!(
        (351..=361).contains(&lead),
        "activates one lead (361 s) from now: {lead}"
    );
    let pending = out["kid"].as_str().unwrap().to_string();
    assert!(app.kids().await.contains(&pending), "published at once");

    let schedule: Vec<Value> = app
        .http
        .get(app.url("/admin/keys/schedule"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rs = schedule.iter().find(|u| u["alg"] == "RS256").unwrap();
    assert_eq!(rs["pending_kid"], pending.as_str());

    // Emergency retirement of the active ES256 key.
    let es_active = keys.iter().find(|k| k["alg"] == "ES256").unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .http
        .post(app.url(&format!("/admin/keys/{es_active}/retire")))
        .bearer_auth(&admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the active key needs emergency");
    let r = app
        .http
        .post(app.url(&format!("/admin/keys/{es_active}/retire")))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"emergency": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert!(out["warning"].as_str().unwrap().contains("cached"));
    assert!(!app.kids().await.contains(&es_active));
    // The admin's own token was signed by that key: it is no longer honoured.
    let r = app
        .http
        .get(app.url("/admin/keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let events = app.state.store.list_events(None, 100).await.unwrap();
    let emergency = events
        .iter()
        .find(|e| e.action == "key.retire_emergency")
        .unwrap();
    assert_eq!(emergency.subject.as_deref(), Some(es_active.as_str()));
    assert!(emergency.actor.starts_with("admin-api:"));
    // Malformed bodies are clear errors.
    let admin2 = {
        let secret = app
            .create_admin_client("root2", "password", "openid", "RS256")
            .await;
        app.login(
            ("root2", &secret),
            "root",
            PASSWORD,
            "openid latchkey:admin",
        )
        .await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let r = app
        .http
        .post(app.url("/admin/keys/rotate"))
        .bearer_auth(&admin2)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
}
