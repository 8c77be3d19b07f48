//! What a token costs inside latchkey, without HTTP: signing an access token
//! per algorithm, verifying one of our own, and whole grants through the
//! token service on SQLite (client authentication, database work, minting).
//!
//! Run: `cargo bench --bench tokens -- --warm-up-time 1 --measurement-time 3`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark setup"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey::app::AppState;
use latchkey::clock::{SharedClock, SystemClock};
use latchkey::config::Config;
use latchkey::keyring::Alg;
use latchkey::oauth::request::Password;
use latchkey::oauth::{ClientAuth, TokenRequest};
use latchkey::store::ClientRow;
use latchkey::token::Grant;
use latchkey::token::verify::verify_access;

const ISSUER: &str = "http://bench.latchkey";

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

    // One confidential client per algorithm, and a user for the refresh chain.
    let services = rt
        .block_on(latchkey::app::Services::open(&state.config, clock.clone()))
        .unwrap();
    let mut secrets = Vec::new();
    for alg in Alg::ALL {
        let (secret, digest) = services.secrets.new_client_secret().unwrap();
        let row = ClientRow {
            client_id: alg.as_str().to_lowercase(),
            secret_digest: Some(digest),
            is_public: false,
            grant_types: "password refresh_token client_credentials".into(),
            scopes: "api:read".into(),
            token_alg: alg.as_str().into(),
            created_at: clock.now(),
            refresh_cookie: false,
            origins: String::new(),
            may_introspect: false,
        };
        rt.block_on(state.store.create_client(&row)).unwrap();
        secrets.push((alg, row.client_id, secret));
    }
    let hash = rt
        .block_on(services.secrets.hash_password("bench password".into()))
        .unwrap();
    rt.block_on(
        state
            .store
            .create_user("u1", "bench", &hash, None, &[], clock.now()),
    )
    .unwrap();

    let minter = latchkey::token::Minter::new(
        ISSUER,
        state.config.tokens.clone(),
        state.ring.clone(),
        clock.clone(),
    );
    let grant = Grant {
        subject: "u1",
        client_id: "rs256",
        scope: "api:read".into(),
        roles: vec!["reader".into()],
        session_id: Some("s1"),
    };
    for alg in Alg::ALL {
        c.bench_function(&format!("sign_access_token/{}", alg.as_str()), |b| {
            b.iter(|| {
                rt.block_on(minter.access_token(black_box(&grant), alg))
                    .unwrap()
            })
        });
        let token = rt.block_on(minter.access_token(&grant, alg)).unwrap();
        c.bench_function(&format!("verify_own_access_token/{}", alg.as_str()), |b| {
            b.iter(|| {
                verify_access(
                    &state.ring.current(),
                    ISSUER,
                    black_box(&token),
                    clock.now(),
                )
                .unwrap()
            })
        });
    }

    let ctx = latchkey::oauth::RequestContext::default();
    for (alg, client_id, secret) in &secrets {
        c.bench_function(&format!("client_credentials_grant/{}", alg.as_str()), |b| {
            b.iter(|| {
                let auth = ClientAuth::Basic {
                    client_id: client_id.clone(),
                    secret: Password::new(secret.clone()),
                };
                rt.block_on(state.tokens.token(
                    auth,
                    TokenRequest::ClientCredentials { scope: None },
                    &ctx,
                ))
                .unwrap()
            })
        });
    }

    // The refresh grant on SQLite: consume, mint, store the successor.
    let (_, client_id, secret) = &secrets[1];
    let login = rt
        .block_on(state.tokens.token(
            ClientAuth::Basic {
                client_id: client_id.clone(),
                secret: Password::new(secret.clone()),
            },
            TokenRequest::Password {
                username: "bench".into(),
                password: Password::new("bench password".into()),
                scope: None,
                device_name: None,
            },
            &ctx,
        ))
        .unwrap();
    let mut refresh = login.response.refresh_token.unwrap();
    c.bench_function("refresh_grant/ES256/sqlite", |b| {
        b.iter(|| {
            let auth = ClientAuth::Basic {
                client_id: client_id.clone(),
                secret: Password::new(secret.clone()),
            };
            let r = rt
                .block_on(state.tokens.token(
                    auth,
                    TokenRequest::RefreshToken {
                        refresh_token: Password::new(refresh.clone()),
                        scope: None,
                        from_cookie: false,
                    },
                    &ctx,
                ))
                .unwrap();
            refresh = r.response.refresh_token.unwrap();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
