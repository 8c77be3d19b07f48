//! Public keys: JWK parsing and signature checks.
//!
//! This module owns turning a JWKS document into ready-to-use OpenSSL public
//! keys, once per JWKS load, and checking one signature with one key. It
//! decides which keys are usable (RFC 7517/7518: `use` must be `sig` if
//! present, `key_ops` must include `verify` if present, RSA moduli of 2048 to
//! 8192 bits, exact coordinate lengths on named curves) and which algorithm a
//! key accepts. It must not parse tokens, fetch anything, or read the clock.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde::Deserialize;

use crate::alg::Algorithm;
use crate::error::{JwksError, Malformed, VerifyError};

/// RSA keys shorter than this are refused (RFC 7518 section 3.3 requires 2048).
const MIN_RSA_BITS: u32 = 2048;
/// RSA keys longer than this are refused: verification cost grows with the
/// modulus, and a huge key published by a misconfigured issuer should not turn
/// every request into a slow one.
const MAX_RSA_BITS: u32 = 8192;

/// The named curves the crate supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn nid(self) -> Nid {
        match self {
            Curve::P256 => Nid::X9_62_PRIME256V1,
            Curve::P384 => Nid::SECP384R1,
        }
    }
}

/// Key material, built once when the JWKS is loaded.
enum Material {
    Rsa(PKey<Public>),
    Ec(Curve, EcKey<Public>),
    Ed25519(PKey<Public>),
}

/// One usable verification key.
pub(crate) struct Key {
    /// The JWK's own `alg`, if it declared one; the header must then match it.
    alg: Option<Algorithm>,
    material: Material,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.material {
            Material::Rsa(_) => "RSA",
            Material::Ec(Curve::P256, _) => "EC P-256",
            Material::Ec(Curve::P384, _) => "EC P-384",
            Material::Ed25519(_) => "OKP Ed25519",
        };
        f.debug_struct("Key")
            .field("kind", &kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    /// Whether this key may verify a token whose header says `alg`: the JWK's
    /// `alg` (if any) must be equal, and the key type and curve must fit. This
    /// is the check that stops alg-confusion (an RS256 header on an EC key, or
    /// the reverse).
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        matches!(
            (&self.material, alg),
            (
                Material::Rsa(_),
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512,
            ) | (Material::Ec(Curve::P256, _), Algorithm::ES256)
                | (Material::Ec(Curve::P384, _), Algorithm::ES384)
                | (Material::Ed25519(_), Algorithm::EdDSA)
        )
    }

    /// Checks `signature` over `signing_input`. The caller has already checked
    /// [`Key::accepts`]; a mismatch here still fails closed.
    pub(crate) fn verify(
        &self,
        alg: Algorithm,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let ok = match (&self.material, alg) {
            (Material::Rsa(pkey), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) => {
                verify_rsa(pkey, digest_for(alg), None, signing_input, signature)
            }
            (Material::Rsa(pkey), Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512) => {
                verify_rsa(
                    pkey,
                    digest_for(alg),
                    Some(Padding::PKCS1_PSS),
                    signing_input,
                    signature,
                )
            }
            (Material::Ec(curve, key), Algorithm::ES256 | Algorithm::ES384) => {
                verify_ecdsa(*curve, key, signing_input, signature)?
            }
            (Material::Ed25519(pkey), Algorithm::EdDSA) => {
                if signature.len() != 64 {
                    return Err(VerifyError::Malformed(Malformed::SignatureLength));
                }
                Verifier::new_without_digest(pkey)
                    .and_then(|mut v| v.verify_oneshot(signature, signing_input))
                    .unwrap_or(false)
            }
            _ => return Err(VerifyError::KeyAlgorithmMismatch { alg }),
        };
        if ok {
            Ok(())
        } else {
            Err(VerifyError::InvalidSignature)
        }
    }
}

fn digest_for(alg: Algorithm) -> MessageDigest {
    match alg {
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 => MessageDigest::sha384(),
        Algorithm::RS512 | Algorithm::PS512 => MessageDigest::sha512(),
        _ => MessageDigest::sha256(),
    }
}

/// An OpenSSL error during verification (for example a signature of the
/// wrong length for the modulus) is a failed verification, never a pass.
fn verify_rsa(
    pkey: &PKey<Public>,
    md: MessageDigest,
    padding: Option<Padding>,
    signing_input: &[u8],
    signature: &[u8],
) -> bool {
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        let mut verifier = Verifier::new(md, pkey)?;
        if let Some(padding) = padding {
            verifier.set_rsa_padding(padding)?;
            // RFC 7518 section 3.5: the salt is as long as the digest, and
            // MGF1 uses the same hash.
            verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            verifier.set_rsa_mgf1_md(md)?;
        }
        verifier.verify_oneshot(signature, signing_input)
    };
    check().unwrap_or(false)
}

/// JWS ECDSA signatures are the raw concatenation r || s, each exactly one
/// coordinate long (RFC 7518 section 3.4), not DER. Anything else is rejected
/// before any arithmetic.
fn verify_ecdsa(
    curve: Curve,
    key: &EcKey<Public>,
    signing_input: &[u8],
    signature: &[u8],
) -> Result<bool, VerifyError> {
    let half = curve.coordinate_len();
    if signature.len() != 2 * half {
        return Err(VerifyError::Malformed(Malformed::SignatureLength));
    }
    let (r, s) = signature.split_at(half);
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        let sig =
            EcdsaSig::from_private_components(BigNum::from_slice(r)?, BigNum::from_slice(s)?)?;
        match curve {
            Curve::P256 => sig.verify(&openssl::sha::sha256(signing_input), key),
            Curve::P384 => sig.verify(&openssl::sha::sha384(signing_input), key),
        }
    };
    Ok(check().unwrap_or(false))
}

/// The key set as loaded from one JWKS document: kid to key.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: HashMap<Box<str>, Arc<Key>>,
}

impl KeySet {
    pub(crate) fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| &**k)
    }

    /// Parses a JWKS document. Keys that cannot be used (wrong `use`, no
    /// `kid`, an unsupported type, a short modulus, a point off the curve) are
    /// skipped with a warning rather than failing the whole set, so an issuer
    /// that adds a key type this crate does not know cannot break
    /// verification of the keys it does know. A set with no usable key at all
    /// is an error, so that a broken document never replaces a working cache.
    pub(crate) fn parse(body: &[u8], max_keys: usize) -> Result<KeySet, JwksError> {
        let doc: RawJwks = serde_json::from_slice(body).map_err(JwksError::Json)?;
        if doc.keys.len() > max_keys {
            return Err(JwksError::TooManyKeys {
                count: doc.keys.len(),
                max: max_keys,
            });
        }
        let mut keys = HashMap::with_capacity(doc.keys.len());
        for raw in doc.keys {
            let Some(kid) = raw.kid.clone() else {
                tracing::warn!(kty = %raw.kty, "skipping a JWK without kid");
                continue;
            };
            match raw.into_key() {
                Ok(key) => {
                    // A second key under the same kid would make lookups
                    // ambiguous; the first one wins and the issuer hears about
                    // it in the logs.
                    if keys.contains_key(kid.as_str()) {
                        tracing::warn!(%kid, "skipping a JWK with a duplicate kid");
                        continue;
                    }
                    keys.insert(kid.into_boxed_str(), Arc::new(key));
                }
                Err(reason) => tracing::warn!(%kid, reason, "skipping an unusable JWK"),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(KeySet { keys })
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

/// The JWK members this crate reads; all others (x5c, x5t, ...) are ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl RawJwk {
    fn into_key(self) -> Result<Key, &'static str> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("use is not sig");
        }
        if self
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
        {
            return Err("key_ops does not include verify");
        }
        let alg = match self.alg.as_deref() {
            None => None,
            Some(name) => Some(
                Algorithm::from_name(name).ok_or("alg is not a supported signature algorithm")?,
            ),
        };
        let material = match self.kty.as_str() {
            "RSA" => rsa_material(self.n.as_deref(), self.e.as_deref())?,
            "EC" => ec_material(self.crv.as_deref(), self.x.as_deref(), self.y.as_deref())?,
            "OKP" => okp_material(self.crv.as_deref(), self.x.as_deref())?,
            _ => return Err("unsupported kty"),
        };
        let key = Key { alg, material };
        // A JWK whose own alg contradicts its key type (alg RS256 on an EC
        // key) can never verify anything; say so now rather than per token.
        if let Some(alg) = alg
            && !key.accepts(alg)
        {
            return Err("alg does not fit the key type");
        }
        Ok(key)
    }
}

fn b64(field: Option<&str>, missing: &'static str) -> Result<Vec<u8>, &'static str> {
    let text = field.ok_or(missing)?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "a member is not unpadded base64url")
}

fn rsa_material(n: Option<&str>, e: Option<&str>) -> Result<Material, &'static str> {
    let n = BigNum::from_slice(&b64(n, "RSA key without n")?).map_err(|_| "bad n")?;
    let e = BigNum::from_slice(&b64(e, "RSA key without e")?).map_err(|_| "bad e")?;
    let bits = n.num_bits().unsigned_abs();
    if bits < MIN_RSA_BITS {
        return Err("RSA modulus shorter than 2048 bits");
    }
    if bits > MAX_RSA_BITS {
        return Err("RSA modulus longer than 8192 bits");
    }
    // A public exponent must be odd and greater than one; a very large one is
    // a sign of a broken or hostile key and makes verification slow.
    if !e.is_bit_set(0) || e.num_bits() < 2 || e.num_bits() > 64 {
        return Err("bad RSA public exponent");
    }
    let rsa = Rsa::from_public_components(n, e).map_err(|_| "bad RSA key")?;
    // Round-trip through SubjectPublicKeyInfo DER so the key is a native
    // OpenSSL 3 provider key: a key built from raw components is a legacy key,
    // which OpenSSL would convert again on every verification.
    let der = PKey::from_rsa(rsa)
        .and_then(|p| p.public_key_to_der())
        .map_err(|_| "bad RSA key")?;
    let pkey = PKey::public_key_from_der(&der).map_err(|_| "bad RSA key")?;
    Ok(Material::Rsa(pkey))
}

fn ec_material(
    crv: Option<&str>,
    x: Option<&str>,
    y: Option<&str>,
) -> Result<Material, &'static str> {
    let curve = match crv {
        Some("P-256") => Curve::P256,
        Some("P-384") => Curve::P384,
        _ => return Err("unsupported EC curve"),
    };
    let x = b64(x, "EC key without x")?;
    let y = b64(y, "EC key without y")?;
    if x.len() != curve.coordinate_len() || y.len() != curve.coordinate_len() {
        return Err("EC coordinate of the wrong length");
    }
    let group = EcGroup::from_curve_name(curve.nid()).map_err(|_| "EC group")?;
    let x = BigNum::from_slice(&x).map_err(|_| "bad x")?;
    let y = BigNum::from_slice(&y).map_err(|_| "bad y")?;
    // This rejects points that are not on the curve, which is what makes
    // invalid-curve attacks impossible.
    let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y)
        .map_err(|_| "EC point not on the curve")?;
    key.check_key().map_err(|_| "EC point not on the curve")?;
    // Confirm the coordinates are what OpenSSL holds (a paranoid check that
    // also catches values at or above the field prime).
    let mut ctx = BigNumContext::new().map_err(|_| "EC context")?;
    let mut px = BigNum::new().map_err(|_| "EC context")?;
    let mut py = BigNum::new().map_err(|_| "EC context")?;
    key.public_key()
        .affine_coordinates(&group, &mut px, &mut py, &mut ctx)
        .map_err(|_| "EC point")?;
    if px != x || py != y {
        return Err("EC coordinates out of range");
    }
    Ok(Material::Ec(curve, key))
}

fn okp_material(crv: Option<&str>, x: Option<&str>) -> Result<Material, &'static str> {
    if crv != Some("Ed25519") {
        return Err("unsupported OKP curve");
    }
    let x = b64(x, "OKP key without x")?;
    if x.len() != 32 {
        return Err("Ed25519 key of the wrong length");
    }
    let pkey = PKey::public_key_from_raw_bytes(&x, Id::ED25519).map_err(|_| "bad Ed25519 key")?;
    Ok(Material::Ed25519(pkey))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )]

    use super::*;
    use openssl::ec::EcKey;
    use openssl::rsa::Rsa;

    fn enc(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk(bits: u32, extra: &str) -> String {
        let rsa = Rsa::generate(bits).unwrap();
        format!(
            r#"{{"kty":"RSA","kid":"r","n":"{}","e":"{}"{extra}}}"#,
            enc(&rsa.n().to_vec()),
            enc(&rsa.e().to_vec())
        )
    }

    fn ec_xy() -> (Vec<u8>, Vec<u8>) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        key.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        (x.to_vec_padded(32).unwrap(), y.to_vec_padded(32).unwrap())
    }

    fn set(keys: &[String]) -> Result<KeySet, JwksError> {
        KeySet::parse(format!(r#"{{"keys":[{}]}}"#, keys.join(",")).as_bytes(), 16)
    }

    #[test]
    fn rsa_key_accepts_rs_and_ps_but_not_es() {
        let keys = set(&[rsa_jwk(2048, "")]).unwrap();
        let key = keys.get("r").unwrap();
        assert!(key.accepts(Algorithm::RS256));
        assert!(key.accepts(Algorithm::PS256));
        assert!(!key.accepts(Algorithm::ES256));
        assert!(!key.accepts(Algorithm::EdDSA));
    }

    #[test]
    fn jwk_alg_pins_the_algorithm() {
        let keys = set(&[rsa_jwk(2048, r#","alg":"RS256""#)]).unwrap();
        let key = keys.get("r").unwrap();
        assert!(key.accepts(Algorithm::RS256));
        assert!(!key.accepts(Algorithm::RS512));
        assert!(!key.accepts(Algorithm::PS256));
    }

    #[test]
    fn short_rsa_modulus_is_refused() {
        let err = set(&[rsa_jwk(1024, "")]).unwrap_err();
        assert!(matches!(err, JwksError::NoUsableKeys), "{err:?}");
    }

    #[test]
    fn encryption_keys_and_wrong_key_ops_are_skipped() {
        assert!(matches!(
            set(&[rsa_jwk(2048, r#","use":"enc""#)]).unwrap_err(),
            JwksError::NoUsableKeys
        ));
        assert!(matches!(
            set(&[rsa_jwk(2048, r#","key_ops":["encrypt"]"#)]).unwrap_err(),
            JwksError::NoUsableKeys
        ));
        assert_eq!(
            set(&[rsa_jwk(2048, r#","use":"sig","key_ops":["verify"]"#)])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn ec_coordinates_must_be_exactly_32_bytes_and_on_the_curve() {
        let (x, y) = ec_xy();
        let good = format!(
            r#"{{"kty":"EC","kid":"e","crv":"P-256","x":"{}","y":"{}"}}"#,
            enc(&x),
            enc(&y)
        );
        let keys = set(std::slice::from_ref(&good)).unwrap();
        assert!(keys.get("e").unwrap().accepts(Algorithm::ES256));
        assert!(!keys.get("e").unwrap().accepts(Algorithm::RS256));

        let short = format!(
            r#"{{"kty":"EC","kid":"e","crv":"P-256","x":"{}","y":"{}"}}"#,
            enc(&x[1..]),
            enc(&y)
        );
        assert!(matches!(
            set(&[short]).unwrap_err(),
            JwksError::NoUsableKeys
        ));

        let mut off = y.clone();
        off[31] ^= 1;
        let off_curve = format!(
            r#"{{"kty":"EC","kid":"e","crv":"P-256","x":"{}","y":"{}"}}"#,
            enc(&x),
            enc(&off)
        );
        assert!(matches!(
            set(&[off_curve]).unwrap_err(),
            JwksError::NoUsableKeys
        ));
    }

    #[test]
    fn too_many_keys_and_bad_json_are_errors() {
        let keys: Vec<String> = (0..3).map(|_| rsa_jwk(2048, "")).collect();
        let body = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
        assert!(matches!(
            KeySet::parse(body.as_bytes(), 2).unwrap_err(),
            JwksError::TooManyKeys { count: 3, max: 2 }
        ));
        assert!(matches!(
            KeySet::parse(b"[]", 2).unwrap_err(),
            JwksError::Json(_)
        ));
    }

    #[test]
    fn duplicate_kid_keeps_the_first_key() {
        let (x, y) = ec_xy();
        let ec = format!(
            r#"{{"kty":"EC","kid":"r","crv":"P-256","x":"{}","y":"{}"}}"#,
            enc(&x),
            enc(&y)
        );
        let keys = set(&[rsa_jwk(2048, ""), ec]).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.get("r").unwrap().accepts(Algorithm::RS256));
    }
}
