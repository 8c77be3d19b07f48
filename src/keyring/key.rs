//! Key material: generation, public JWKs, RFC 7638 thumbprints, signers.
//!
//! OpenSSL does every private-key operation here (generation and RS256/ES256
//! signing, through josekit's signer objects): the `rsa` crate's private-key
//! path has an unfixed timing advisory (RUSTSEC-2023-0071). Public JWK members
//! are read straight from OpenSSL's key objects, so no second crypto stack is
//! needed. Private key bytes leave this file only to be wrapped by the KMS.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use josekit::jws::{ES256, JwsSigner, JwsVerifier, RS256};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
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

/// The RFC 7638 required members of the key, in lexicographic order.
fn required_members(
    alg: Alg,
    pkey: &PKey<Public>,
) -> Result<BTreeMap<&'static str, String>, KeyError> {
    let mut m = BTreeMap::new();
    match alg {
        Alg::Rs256 => {
            let rsa = pkey
                .rsa()
                .map_err(|_| KeyError::Mismatch("RS256 needs an RSA key"))?;
            if rsa.size() * 8 < 2048 {
                return Err(KeyError::Mismatch("RSA keys must be at least 2048 bits"));
            }
            m.insert("e", b64(&rsa.e().to_vec()));
            m.insert("kty", "RSA".into());
            m.insert("n", b64(&rsa.n().to_vec()));
        }
        Alg::Es256 => {
            let ec = pkey
                .ec_key()
                .map_err(|_| KeyError::Mismatch("ES256 needs an EC key"))?;
            if ec.group().curve_name() != Some(Nid::X9_62_PRIME256V1) {
                return Err(KeyError::Mismatch("ES256 needs a P-256 key"));
            }
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

/// An in-process signer from PKCS#8 DER, built once per key.
pub fn local_signer(alg: Alg, private_der: &[u8]) -> Result<Box<dyn JwsSigner>, KeyError> {
    Ok(match alg {
        Alg::Rs256 => Box::new(RS256.signer_from_der(private_der)?),
        Alg::Es256 => Box::new(ES256.signer_from_der(private_der)?),
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
    fn key_type_must_match_alg() {
        let ec = generate(Alg::Es256, 2048).unwrap();
        assert!(PublicKey::from_spki_der(Alg::Rs256, &ec.public_der).is_err());
        let rsa = generate(Alg::Rs256, 2048).unwrap();
        assert!(PublicKey::from_spki_der(Alg::Es256, &rsa.public_der).is_err());
    }
}
