//! HTTPS in the binary: a client trusting a test CA reaches `/token`; a
//! certificate replaced on disk is served after a reload, without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::Value;

use crate::helpers::{Env, Options, TestApp};

pub struct TestCa {
    pub cert: X509,
    key: PKey<Private>,
}

fn p256() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}

impl TestCa {
    pub fn new() -> Self {
        let key = p256();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let serial = Asn1Integer::from_bn(&BigNum::from_u32(1).unwrap()).unwrap();
        b.set_serial_number(&serial).unwrap();
        b.set_subject_name(&name("latchkey test CA")).unwrap();
        b.set_issuer_name(&name("latchkey test CA")).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Self {
            cert: b.build(),
            key,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost: (chain PEM, key PEM).
    pub fn leaf(&self, serial: u32, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let key = p256();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        let sn = Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap();
        b.set_serial_number(&sn).unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let ctx = b.x509v3_context(Some(&self.cert), None);
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&ctx)
            .unwrap();
        b.append_extension(san).unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let mut chain = cert.to_pem().unwrap();
        chain.extend(self.cert.to_pem().unwrap());
        (chain, key.private_key_to_pem_pkcs8().unwrap())
    }

    /// A client that trusts only this CA and reports the server's certificate.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&self.cert.to_pem().unwrap()).unwrap(),
            )
            .tls_info(true)
            // A fresh connection per request, so each sees the current certificate.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }
}

pub struct TlsFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn new(dir: &Path) -> Self {
        Self {
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Replace both files the way a deploy tool does: write aside, rename over.
    pub fn install(&self, (chain, key): &(Vec<u8>, Vec<u8>)) {
        for (path, bytes) in [(&self.chain, chain), (&self.key, key)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    pub fn toml(&self, poll_secs: u64) -> String {
        format!(
            "[server.tls]\ncert_chain_file = \"{}\"\nkey_file = \"{}\"\npoll_secs = {poll_secs}\n",
            self.chain.display(),
            self.key.display()
        )
    }
}

/// The serial number (decimal) and subject CN of the certificate `r` came with.
pub fn served_certificate(r: &reqwest::Response) -> (String, String) {
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let cert = X509::from_der(info.peer_certificate().expect("a peer certificate")).unwrap();
    let serial = cert
        .serial_number()
        .to_bn()
        .unwrap()
        .to_dec_str()
        .unwrap()
        .to_string();
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap()
        .data()
        .to_string();
    (serial, cn.unwrap())
}

async fn spawn_tls(ca: &TestCa, poll_secs: u64) -> (TestApp, TlsFiles) {
    let env = Env::new().await;
    let files = TlsFiles::new(env.path());
    files.install(&ca.leaf(1001, "latchkey-one"));
    let app = TestApp::spawn_in(
        env,
        Options {
            extra_toml: files.toml(poll_secs),
            ..Options::default()
        },
    )
    .await;
    (app, files)
}

fn https(app: &TestApp, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", app.addr.port())
}

#[tokio::test]
async fn https_reaches_the_token_endpoint_with_hsts() {
    let ca = TestCa::new();
    let (app, _files) = spawn_tls(&ca, 3600).await;
    let secret = app
        .create_client("svc", "client_credentials", "api:read", "ES256")
        .await;
    let client = ca.client();
    let r = client
        .post(https(&app, "/token"))
        .basic_auth("svc", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(
        served_certificate(&r),
        ("1001".into(), "latchkey-one".into())
    );
    let v: Value = r.json().await.unwrap();
    assert!(v["access_token"].is_string(), "{v}");

    // Plain HTTP on the TLS port gets no answer it could mistake for one.
    let plain = reqwest::Client::new().get(app.url("/healthz")).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(https(&app, "/healthz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_after_reload_and_a_bad_one_is_refused() {
    let ca = TestCa::new();
    let (app, files) = spawn_tls(&ca, 3600).await;
    let client = ca.client();
    let get = || client.get(https(&app, "/healthz")).send();
    assert_eq!(served_certificate(&get().await.unwrap()).0, "1001");

    files.install(&ca.leaf(2002, "latchkey-two"));
    // Polling is hourly here: until the reload the old certificate stays.
    assert_eq!(served_certificate(&get().await.unwrap()).0, "1001");
    app.tls.as_ref().unwrap().reload().unwrap();
    assert_eq!(
        served_certificate(&get().await.unwrap()),
        ("2002".into(), "latchkey-two".into())
    );

    // A key that does not match the certificate is refused; the last good
    // certificate stays in service.
    let (chain3, _) = ca.leaf(3003, "latchkey-three");
    let (_, other_key) = ca.leaf(3004, "other");
    files.install(&(chain3, other_key));
    assert!(app.tls.as_ref().unwrap().reload().is_err());
    std::fs::write(&files.key, b"not a key").unwrap();
    assert!(app.tls.as_ref().unwrap().reload().is_err());
    assert_eq!(served_certificate(&get().await.unwrap()).0, "2002");
}

#[tokio::test]
async fn a_certificate_changed_on_disk_is_picked_up_by_polling() {
    let ca = TestCa::new();
    let (app, files) = spawn_tls(&ca, 1).await;
    let client = ca.client();
    // File times have a coarse resolution on some filesystems.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    files.install(&ca.leaf(4004, "latchkey-four"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(https(&app, "/healthz")).send().await.unwrap();
        if served_certificate(&r).0 == "4004" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
