//! Key material: generation, public JWKs, RFC 7638 thumbprints, signers.
//!
//! OpenSSL generates every key and makes every RS256 signature (the RSA
//! key's private operation over a `DigestInfo` encoded here, see
//! [`LocalSigner::Rs256`]): the `rsa` crate's private-key path has an unfixed
//! timing advisory (RUSTSEC-2023-0071). ES256 signatures are made by `ring` (already linked for
//! TLS): its constant-time P-256 signs in about 17 µs on this class of machine
//! against 22 µs through OpenSSL's EVP layer, which sets up a digest and key
//! context per signature, and it returns the JWS form (raw r‖s) directly
//! instead of DER to be re-encoded. Public JWK members are read straight from
//! OpenSSL's key objects. Private key bytes leave this file only to be wrapped
//! by the KMS.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jws::{ES256, JwsVerifier, RS256};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use zeroize::Zeroizing;

use super::Alg;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("jose: {0}")]
    Jose(#[from] josekit::JoseError),
    #[error("key does not match its algorithm: {0}")]
    Mismatch(&'static str),
    #[error("ES256 key rejected: {0}")]
    Ring(String),
    #[error("signing failed")]
    Sign,
}

/// A freshly generated key pair.
pub struct GeneratedKey {
    /// PKCS#8 DER; wiped from memory when dropped.
    pub private_der: Zeroizing<Vec<u8>>,
    /// SubjectPublicKeyInfo DER.
    pub public_der: Vec<u8>,
}

/// Generate a key for `alg` with OpenSSL.
pub fn generate(alg: Alg, rsa_bits: u32) -> Result<GeneratedKey, KeyError> {
    let pkey = match alg {
        Alg::Rs256 => PKey::from_rsa(Rsa::generate(rsa_bits)?)?,
        Alg::Es256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            PKey::from_ec_key(EcKey::generate(&group)?)?
        }
    };
    Ok(GeneratedKey {
        private_der: Zeroizing::new(pkey.private_key_to_pkcs8()?),
        public_der: pkey.public_key_to_der()?,
    })
}

/// The public half of a ring key, ready to publish and to verify with.
pub struct PublicKey {
    pub alg: Alg,
    pub kid: String,
    /// The JWK as published (RFC 7517), members in a stable order.
    pub jwk: serde_json::Map<String, serde_json::Value>,
    pub verifier: Box<dyn JwsVerifier>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The RSA key inside `pkey`, or why it is not one.
fn rsa_key<T>(pkey: &PKey<T>) -> Result<Rsa<T>, KeyError> {
    pkey.rsa()
        .map_err(|_| KeyError::Mismatch("RS256 needs an RSA key"))
}

/// The P-256 key inside `pkey`, or why it is not one.
fn p256_key<T: openssl::pkey::HasParams>(pkey: &PKey<T>) -> Result<EcKey<T>, KeyError> {
    let ec = pkey
        .ec_key()
        .map_err(|_| KeyError::Mismatch("ES256 needs an EC key"))?;
    if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
        return Err(KeyError::Mismatch("ES256 needs a P-256 key"));
    }
    Ok(ec)
}

/// The RFC 7638 required members of the key, in lexicographic order.
fn required_members(
    alg: Alg,
    pkey: &PKey<Public>,
) -> Result<BTreeMap<&'static str, String>, KeyError> {
    let mut m = BTreeMap::new();
    match alg {
        Alg::Rs256 => {
            let rsa = rsa_key(pkey)?;
            if rsa.size() * 8 < 2048 {
                return Err(KeyError::Mismatch("RSA keys must be at least 2048 bits"));
            }
            m.insert("e", b64(&rsa.e().to_vec()));
            m.insert("kty", "RSA".into());
            m.insert("n", b64(&rsa.n().to_vec()));
        }
        Alg::Es256 => {
            let ec = p256_key(pkey)?;
            let mut ctx = BigNumContext::new()?;
            let mut x = openssl::bn::BigNum::new()?;
            let mut y = openssl::bn::BigNum::new()?;
            ec.public_key()
                .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
            // RFC 7518 §6.2.1.2: coordinates are the full field size, left-padded.
            m.insert("crv", "P-256".into());
            m.insert("kty", "EC".into());
            m.insert("x", b64(&x.to_vec_padded(32)?));
            m.insert("y", b64(&y.to_vec_padded(32)?));
        }
    }
    Ok(m)
}

/// RFC 7638 thumbprint: SHA-256 over the required members serialised with no
/// whitespace in lexicographic order, base64url.
fn thumbprint(members: &BTreeMap<&'static str, String>) -> Result<String, KeyError> {
    // serde_json writes a BTreeMap in key order with no whitespace, and the
    // values (base64url, "RSA", "EC", "P-256") need no escaping.
    let canonical =
        serde_json::to_vec(members).map_err(|_| KeyError::Mismatch("unserialisable JWK"))?;
    Ok(b64(&crate::secret::sha256(&canonical)))
}

impl PublicKey {
    /// Build from SubjectPublicKeyInfo DER (local keys and KMS `GetPublicKey`).
    pub fn from_spki_der(alg: Alg, der: &[u8]) -> Result<Self, KeyError> {
        let pkey = PKey::public_key_from_der(der)?;
        let members = required_members(alg, &pkey)?;
        let kid = thumbprint(&members)?;
        let mut jwk = serde_json::Map::new();
        for (k, v) in &members {
            jwk.insert((*k).to_string(), serde_json::Value::String(v.clone()));
        }
        jwk.insert("use".into(), "sig".into());
        jwk.insert("alg".into(), alg.as_str().into());
        jwk.insert("kid".into(), kid.clone().into());
        let verifier: Box<dyn JwsVerifier> = match alg {
            Alg::Rs256 => Box::new(RS256.verifier_from_der(der)?),
            Alg::Es256 => Box::new(ES256.verifier_from_der(der)?),
        };
        Ok(Self {
            alg,
            kid,
            jwk,
            verifier,
        })
    }
}

/// The DER `DigestInfo` prefix of a SHA-256 digest (RFC 8017 §9.2, note 1):
/// what RSASSA-PKCS1-v1_5 signs, followed by the 32 digest bytes.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// An in-process signer, built once per key from its PKCS#8 DER.
pub enum LocalSigner {
    /// OpenSSL RSASSA-PKCS1-v1_5 with SHA-256, on the RSA key itself: the
    /// `DigestInfo` is encoded here and the private operation (CRT, blinded)
    /// is `RSA_private_encrypt` with PKCS#1 type-1 padding, exactly what
    /// `RSA_sign` does. `EVP_DigestSign` makes the same bytes but sets up a
    /// digest and key context through the provider for every signature,
    /// which cost up to 5 % more per signature here (ARCHITECTURE.md,
    /// "Crates").
    Rs256(Rsa<Private>),
    /// ring ECDSA P-256 with SHA-256, fixed-length (JWS) signatures.
    Es256(Box<EcdsaKeyPair>),
}

impl LocalSigner {
    /// The JWS signature over `input` (RFC 7518 §3: raw r‖s for ES256).
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Rs256(rsa) => {
                let mut info = [0u8; SHA256_DIGEST_INFO.len() + 32];
                info[..SHA256_DIGEST_INFO.len()].copy_from_slice(&SHA256_DIGEST_INFO);
                info[SHA256_DIGEST_INFO.len()..].copy_from_slice(&openssl::sha::sha256(input));
                let mut sig = vec![0; rsa.size() as usize];
                let n = rsa.private_encrypt(&info, &mut sig, Padding::PKCS1)?;
                sig.truncate(n);
                Ok(sig)
            }
            Self::Es256(pair) => pair
                .sign(&SystemRandom::new(), input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
        }
    }
}

/// An in-process signer from PKCS#8 DER, built once per key.
pub fn local_signer(alg: Alg, private_der: &[u8]) -> Result<LocalSigner, KeyError> {
    let pkey = PKey::private_key_from_pkcs8(private_der)?;
    Ok(match alg {
        Alg::Rs256 => {
            let rsa = rsa_key(&pkey)?;
            if rsa.size() * 8 < 2048 {
                return Err(KeyError::Mismatch(
                    "RS256 needs an RSA key of 2048 bits or more",
                ));
            }
            LocalSigner::Rs256(rsa)
        }
        Alg::Es256 => {
            let ec = p256_key(&pkey)?;
            // ring takes the private scalar with its public point; both are
            // read from the OpenSSL key, so a PKCS#8 written without the
            // optional public key loads too.
            let mut ctx = BigNumContext::new()?;
            let point = ec.public_key().to_bytes(
                ec.group(),
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )?;
            let scalar = Zeroizing::new(ec.private_key().to_vec_padded(32)?);
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &scalar,
                &point,
                &SystemRandom::new(),
            )
            .map_err(|e| KeyError::Ring(e.to_string()))?;
            LocalSigner::Es256(Box::new(pair))
        }
    })
}

/// The SPKI DER of a PKCS#8 private key, to check unwrapped material matches
/// the published key.
pub fn public_der_of(private_der: &[u8]) -> Result<Vec<u8>, KeyError> {
    Ok(PKey::private_key_from_pkcs8(private_der)?.public_key_to_der()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use openssl::hash::MessageDigest;
    use openssl::sign::Signer;

    #[test]
    fn rfc7638_example_thumbprint() {
        // The RSA key of RFC 7638 §3.1, whose thumbprint is given there.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let mut m = BTreeMap::new();
        m.insert("e", "AQAB".to_string());
        m.insert("kty", "RSA".to_string());
        m.insert("n", n.to_string());
        assert_eq!(
            thumbprint(&m).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_publish_without_private_members() {
        for alg in [Alg::Rs256, Alg::Es256] {
            let k = generate(alg, 2048).unwrap();
            let public = PublicKey::from_spki_der(alg, &k.public_der).unwrap();
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(
                    !public.jwk.contains_key(private),
                    "{alg:?} JWK has {private}"
                );
            }
            assert_eq!(public.jwk["kid"], public.kid.as_str());
            assert_eq!(public.jwk["alg"], alg.as_str());
            assert_eq!(public_der_of(&k.private_der).unwrap(), k.public_der);
            // A signature by the private half verifies with the published half.
            let signer = local_signer(alg, &k.private_der).unwrap();
            let sig = signer.sign(b"payload").unwrap();
            public.verifier.verify(b"payload", &sig).unwrap();
            assert!(public.verifier.verify(b"tampered", &sig).is_err());
        }
    }

    #[test]
    fn a_signer_refuses_a_key_of_the_other_algorithm() {
        let ec = generate(Alg::Es256, 2048).unwrap();
        let rsa = generate(Alg::Rs256, 2048).unwrap();
        assert!(matches!(
            local_signer(Alg::Rs256, &ec.private_der),
            Err(KeyError::Mismatch(_))
        ));
        assert!(matches!(
            local_signer(Alg::Es256, &rsa.private_der),
            Err(KeyError::Mismatch(_))
        ));
        assert!(local_signer(Alg::Es256, b"not a key").is_err());
    }

    #[test]
    fn es256_signatures_are_raw_r_s_and_randomised() {
        let k = generate(Alg::Es256, 2048).unwrap();
        let public = PublicKey::from_spki_der(Alg::Es256, &k.public_der).unwrap();
        let signer = local_signer(Alg::Es256, &k.private_der).unwrap();
        let (a, b) = (
            signer.sign(b"input").unwrap(),
            signer.sign(b"input").unwrap(),
        );
        // RFC 7518 §3.4: 32-byte r then 32-byte s, not DER.
        assert_eq!((a.len(), b.len()), (64, 64));
        assert_ne!(a, b, "ECDSA needs a fresh nonce per signature");
        public.verifier.verify(b"input", &a).unwrap();
        public.verifier.verify(b"input", &b).unwrap();
    }

    #[test]
    fn rs256_signatures_are_the_pkcs1_v1_5_signatures_openssl_makes() {
        let k = generate(Alg::Rs256, 2048).unwrap();
        let signer = local_signer(Alg::Rs256, &k.private_der).unwrap();
        let pkey = PKey::private_key_from_pkcs8(&k.private_der).unwrap();
        let public = PublicKey::from_spki_der(Alg::Rs256, &k.public_der).unwrap();
        for input in [&b""[..], b"header.payload", &[0xa5; 3000]] {
            let ours = signer.sign(input).unwrap();
            // RSASSA-PKCS1-v1_5 is deterministic: EVP's one-shot signature of
            // the same input must be the same bytes.
            let mut evp = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
            evp.set_rsa_padding(Padding::PKCS1).unwrap();
            assert_eq!(ours, evp.sign_oneshot_to_vec(input).unwrap());
            assert_eq!(ours.len(), 256);
            public.verifier.verify(input, &ours).unwrap();
        }
    }

    #[test]
    fn a_short_rsa_key_is_refused_for_signing() {
        let short = generate(Alg::Rs256, 1024).unwrap();
        assert!(matches!(
            local_signer(Alg::Rs256, &short.private_der),
            Err(KeyError::Mismatch(_))
        ));
    }

    #[test]
    fn key_type_must_match_alg() {
        let ec = generate(Alg::Es256, 2048).unwrap();
        assert!(PublicKey::from_spki_der(Alg::Rs256, &ec.public_der).is_err());
        let rsa = generate(Alg::Rs256, 2048).unwrap();
        assert!(PublicKey::from_spki_der(Alg::Es256, &rsa.public_der).is_err());
    }
}
