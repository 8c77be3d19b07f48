//! Each primitive latchkey's hot paths wrap, measured beside the raw library
//! call it wraps, in the same run, with the ratio printed at the end:
//!
//! - signing an access token (`token::Minter`, through the key ring) vs one raw
//!   OpenSSL RSA-2048 / P-256 signature of an input of the same size;
//! - verifying one of our access tokens (`token::verify::verify_access`) vs one
//!   raw OpenSSL verification;
//! - the refresh-token digest (`secret::refresh_token_digest`) vs raw SHA-256;
//! - a password check (`Secrets::verify_password`: queue, hashing thread,
//!   argon2id with the pepper) vs the `argon2` crate called directly with the
//!   exact parameters read from a hash latchkey made.
//!
//! Run: `cargo bench --bench primitives -- --warm-up-time 1 --measurement-time 3`.
//! With `PRIMITIVES_JSON=FILE` the figures are also written there as JSON
//! (scripts/bench.sh reads them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "benchmark setup"
)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use latchkey::app::{AppState, Services};
use latchkey::clock::{SharedClock, SystemClock};
use latchkey::config::Config;
use latchkey::keyring::Alg;
use latchkey::token::Grant;
use latchkey::token::verify::verify_access;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::{Signer, Verifier};

const ISSUER: &str = "http://bench.latchkey";

/// Total time and iterations per benchmark id, collected through
/// `iter_custom` so the ratios come from exactly what criterion ran.
static TIMES: Mutex<BTreeMap<String, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(id: &str, iters: u64, took: Duration) -> Duration {
    let mut t = TIMES.lock().unwrap();
    let e = t.entry(id.to_string()).or_insert((0, Duration::ZERO));
    e.0 += iters;
    e.1 += took;
    took
}

fn mean_us(id: &str) -> Option<f64> {
    let t = TIMES.lock().unwrap();
    t.get(id)
        .filter(|(n, _)| *n > 0)
        .map(|(n, d)| d.as_secs_f64() * 1e6 / *n as f64)
}

fn timed(c: &mut Criterion, id: &str, mut f: impl FnMut()) {
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            record(id, iters, start.elapsed())
        })
    });
}

fn raw_key(alg: Alg) -> PKey<Private> {
    match alg {
        Alg::Rs256 => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
        Alg::Es256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
        }
    }
}

fn raw_sign(key: &PKey<Private>, data: &[u8]) -> Vec<u8> {
    let mut s = Signer::new(MessageDigest::sha256(), key).unwrap();
    s.update(data).unwrap();
    s.sign_to_vec().unwrap()
}

fn raw_verify(key: &PKey<Private>, data: &[u8], sig: &[u8]) -> bool {
    let mut v = Verifier::new(MessageDigest::sha256(), key).unwrap();
    v.update(data).unwrap();
    v.verify(sig).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "issuer = \"{ISSUER}\"\n[database]\nurl = \"sqlite://{}\"\n[keys]\ndir = \"{}\"\n",
        dir.path().join("bench.db").display(),
        dir.path().join("keys").display()
    );
    let config = Config::from_toml_str(&toml, Vec::new()).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let state = rt.block_on(AppState::build(config, clock.clone())).unwrap();
    let services = rt
        .block_on(Services::open(&state.config, clock.clone()))
        .unwrap();
    let minter = latchkey::token::Minter::new(
        ISSUER,
        state.config.tokens.clone(),
        state.ring.clone(),
        clock.clone(),
    );
    let grant = Grant {
        subject: "u1",
        client_id: "bench",
        scope: "openid api:read".into(),
        roles: vec!["reader".into()],
        session_id: Some("s1"),
    };

    for alg in Alg::ALL {
        let name = alg.as_str();
        timed(c, &format!("sign/{name}/latchkey"), || {
            rt.block_on(minter.access_token(black_box(&grant), alg))
                .unwrap();
        });
        // The same signing input (header.payload) signed by OpenSSL directly.
        let token = rt.block_on(minter.access_token(&grant, alg)).unwrap();
        let input = token.as_bytes()[..token.rfind('.').unwrap()].to_vec();
        let key = raw_key(alg);
        timed(c, &format!("sign/{name}/openssl"), || {
            black_box(raw_sign(&key, black_box(&input)));
        });

        timed(c, &format!("verify/{name}/latchkey"), || {
            verify_access(
                &state.ring.current(),
                ISSUER,
                black_box(&token),
                clock.now(),
            )
            .unwrap();
        });
        let sig = raw_sign(&key, &input);
        timed(c, &format!("verify/{name}/openssl"), || {
            assert!(raw_verify(&key, black_box(&input), &sig));
        });
    }

    let refresh = latchkey::secret::random_token().unwrap();
    timed(c, "refresh_digest/latchkey", || {
        black_box(latchkey::secret::refresh_token_digest(black_box(&refresh)));
    });
    timed(c, "refresh_digest/openssl", || {
        black_box(openssl::sha::sha256(black_box(refresh.as_bytes())));
    });

    // argon2: the parameters come from a hash latchkey itself made, so the raw
    // figure uses exactly latchkey's m, t, p.
    let password = "bench password".to_string();
    let stored = rt
        .block_on(services.secrets.hash_password(password.clone()))
        .unwrap();
    let params = argon2::PasswordHash::new(&stored).unwrap();
    let get = |name: &str| -> u32 {
        params
            .params
            .get_decimal(name)
            .unwrap_or_else(|| panic!("{name} missing in {stored}"))
    };
    let (m, t, p) = (get("m"), get("t"), get("p"));
    println!("argon2id parameters from latchkey's hash: m={m} KiB, t={t}, p={p}");
    let mut group = c.benchmark_group("argon2");
    group.sample_size(10);
    group.bench_function("verify_password/latchkey", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    let ok = services
                        .secrets
                        .verify_password(password.clone(), Some(stored.clone()))
                        .await
                        .unwrap();
                    assert!(ok);
                }
            });
            record("argon2/latchkey", iters, start.elapsed())
        })
    });
    let pepper = [7u8; 32];
    let salt = [9u8; 16];
    let raw = argon2::Argon2::new_with_secret(
        &pepper,
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(m, t, p, Some(32)).unwrap(),
    )
    .unwrap();
    group.bench_function("hash/argon2-crate", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut out = [0u8; 32];
            for _ in 0..iters {
                raw.hash_password_into(password.as_bytes(), &salt, &mut out)
                    .unwrap();
                black_box(&out);
            }
            record("argon2/raw", iters, start.elapsed())
        })
    });
    group.finish();
}

/// The ratio table: latchkey's wrapper ÷ the raw call, from this run.
fn report() {
    let pairs = [
        ("sign RS256", "sign/RS256/latchkey", "sign/RS256/openssl"),
        ("sign ES256", "sign/ES256/latchkey", "sign/ES256/openssl"),
        (
            "verify RS256",
            "verify/RS256/latchkey",
            "verify/RS256/openssl",
        ),
        (
            "verify ES256",
            "verify/ES256/latchkey",
            "verify/ES256/openssl",
        ),
        (
            "refresh digest",
            "refresh_digest/latchkey",
            "refresh_digest/openssl",
        ),
        ("argon2id", "argon2/latchkey", "argon2/raw"),
    ];
    println!("\nlatchkey ÷ raw primitive, measured in this run:");
    println!(
        "{:<16} {:>14} {:>14} {:>8}",
        "primitive", "latchkey µs", "raw µs", "ratio"
    );
    let mut json = serde_json::Map::new();
    for (name, ours, raw) in pairs {
        // A filtered run (`-- argon2/hash`, as scripts/bench.sh does beside
        // each password scenario) measures only the raw call: it is written
        // without a ratio.
        match (mean_us(ours), mean_us(raw)) {
            (Some(a), Some(b)) => {
                println!("{name:<16} {a:>14.2} {b:>14.2} {:>7.2}×", a / b);
                json.insert(
                    name.to_string(),
                    serde_json::json!({ "latchkey_us": a, "raw_us": b, "ratio": a / b }),
                );
            }
            (None, Some(b)) => {
                println!("{name:<16} {:>14} {b:>14.2} {:>8}", "—", "—");
                json.insert(name.to_string(), serde_json::json!({ "raw_us": b }));
            }
            _ => {}
        }
    }
    if let Ok(path) = std::env::var("PRIMITIVES_JSON") {
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    report();
}
