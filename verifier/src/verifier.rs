//! The verifier: configuration, and the path of one token.
//!
//! This module owns [`Verifier`], its builder, and the order of checks for a
//! token: size, segments, header (algorithm allow-list, `typ`, `kid`), key
//! lookup, key/algorithm fit, signature, and only then the payload and its
//! claims. The payload is not even decoded before the signature verifies, so
//! unauthenticated JSON never reaches the claims parser. This module must not
//! do I/O itself (it asks the cache) and must not read the wall clock (it asks
//! the [`Clock`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::alg::{self, AlgSet, Algorithm};
use crate::cache::{CachePolicy, CacheStats, KeyCache, Snapshot};
use crate::claims::{Claims, RawClaims};
use crate::clock::{Clock, SystemClock};
use crate::error::{BuildError, FetchError, Malformed, VerifyError};
use crate::fetch::{HttpLimits, JwksSource};
use crate::jwk::KeySet;

/// Longest accepted header, in base64url characters. Real headers are under
/// 200; the limit keeps the decode on the stack.
const HEADER_B64_MAX: usize = 1024;

/// Most keys accepted in one JWKS by default; latchkey's
/// `keys.max_published_keys` is bounded by the same number.
pub const MAX_JWKS_KEYS: usize = 64;
/// Longest accepted signature, in base64url characters: an 8192-bit RSA
/// signature (1024 bytes) is 1366.
const SIGNATURE_B64_MAX: usize = 1366;

/// Which `typ` header the verifier requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TokenType {
    /// RFC 9068 access tokens: `typ` must be `at+jwt` or `application/at+jwt`
    /// (case-insensitive). This is the default.
    #[default]
    AccessToken,
    /// OIDC ID tokens and other plain JWTs: `typ` absent, `JWT` or
    /// `application/jwt`. An `at+jwt` token is refused, so an access token
    /// cannot be replayed where an ID token is expected.
    Jwt,
}

/// Verifies tokens from one issuer. Cheap to clone (one `Arc`); share one per
/// issuer across the whole service so all requests use one key cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audiences: Vec<String>,
    algorithms: AlgSet,
    token_type: TokenType,
    leeway: u64,
    max_token_size: usize,
    max_kid_len: usize,
    clock: Arc<dyn Clock>,
    cache: Arc<KeyCache>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.issuer)
            .field("audiences", &self.inner.audiences)
            .field("token_type", &self.inner.token_type)
            .finish_non_exhaustive()
    }
}

/// The result of one pass over a token against one snapshot.
enum Reject {
    Token(VerifyError),
    /// The `kid` is not in the snapshot with this attempt number.
    UnknownKid {
        attempt: u64,
    },
}

impl From<VerifyError> for Reject {
    fn from(e: VerifyError) -> Reject {
        Reject::Token(e)
    }
}

/// The JOSE header members this crate reads. Strings borrow from the decoded
/// header when they have no escapes.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Text<'a>,
    #[serde(borrow, default)]
    kid: Option<Text<'a>>,
    #[serde(borrow, default)]
    typ: Option<Text<'a>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A JSON string that borrows from the input when it can.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(V(std::marker::PhantomData))
    }
}

impl Verifier {
    /// Starts configuring a verifier for tokens from `issuer` (compared
    /// exactly with `iss` and with the discovery document's `issuer`).
    pub fn builder(issuer: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder::new(issuer.into())
    }

    /// A verifier over a fixed JWKS document, with no network access, for
    /// tests and offline use. Defaults apply to everything else; use
    /// [`VerifierBuilder::build_with_jwks`] to change them.
    pub fn from_jwks(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks: impl AsRef<[u8]>,
    ) -> Result<Verifier, BuildError> {
        Verifier::builder(issuer)
            .audience(audience)
            .build_with_jwks(jwks)
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The `kid`s currently cached.
    pub fn key_ids(&self) -> Vec<String> {
        let snap = self.inner.cache.load();
        let mut kids: Vec<String> = snap.keys.kids().map(str::to_owned).collect();
        kids.sort();
        kids
    }

    /// Counters about the JWKS cache.
    pub fn stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// Revalidates the JWKS now, whatever its freshness. Verification never
    /// needs this; it is for operators ("pick up the new key now") and tests.
    pub async fn refresh(&self) -> Result<(), Arc<FetchError>> {
        self.inner.cache.force_refresh().await
    }

    /// Verifies a compact JWS access token (or ID token, per
    /// [`TokenType`]) and returns its claims.
    ///
    /// Does no I/O while the cached keys are fresh and know the token's
    /// `kid`. Otherwise it may wait for one JWKS fetch, shared with every
    /// other request waiting for the same thing.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        // The fast path holds the snapshot guard only for synchronous work; it
        // is dropped before any await.
        let first = {
            let snap = inner.cache.load();
            if snap.is_fresh(now) {
                inner.cache.refresh_ahead(&snap, now);
                Some(self.check(token, &snap, now))
            } else {
                None
            }
        };
        let outcome = match first {
            Some(outcome) => outcome,
            None => {
                // The slow paths are boxed so their (large) futures do not
                // grow every `verify` future; they run rarely.
                let snap = Box::pin(inner.cache.usable(now)).await?;
                self.check(token, &snap, now)
            }
        };
        match outcome {
            Ok(claims) => Ok(claims),
            Err(Reject::Token(e)) => Err(e),
            Err(Reject::UnknownKid { attempt }) => {
                let Some(snap) = Box::pin(inner.cache.after_unknown_kid(attempt, now)).await else {
                    return Err(VerifyError::UnknownKid);
                };
                match self.check(token, &snap, now) {
                    Ok(claims) => Ok(claims),
                    Err(Reject::Token(e)) => Err(e),
                    Err(Reject::UnknownKid { .. }) => Err(VerifyError::UnknownKid),
                }
            }
        }
    }

    /// Every check, against one snapshot of the keys.
    fn check(&self, token: &str, snap: &Snapshot, now: u64) -> Result<Claims, Reject> {
        let inner = &self.inner;
        if token.len() > inner.max_token_size {
            return Err(VerifyError::TokenTooLarge {
                size: token.len(),
                max: inner.max_token_size,
            }
            .into());
        }
        let malformed = |m| Reject::Token(VerifyError::Malformed(m));
        let (header_b64, rest) = token
            .split_once('.')
            .ok_or(malformed(Malformed::Segments))?;
        let (payload_b64, signature_b64) =
            rest.split_once('.').ok_or(malformed(Malformed::Segments))?;
        if signature_b64.contains('.') {
            return Err(malformed(Malformed::Segments));
        }
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];

        // Header: decoded on the stack, parsed into borrowed strings.
        if header_b64.len() > HEADER_B64_MAX {
            return Err(malformed(Malformed::HeaderEncoding));
        }
        let mut header_buf = [0u8; HEADER_B64_MAX];
        let header_len = URL_SAFE_NO_PAD
            .decode_slice(header_b64, &mut header_buf)
            .map_err(|_| malformed(Malformed::HeaderEncoding))?;
        let header: Header<'_> = serde_json::from_slice(&header_buf[..header_len])
            .map_err(|_| malformed(Malformed::HeaderJson))?;
        if header.crit.is_some() {
            return Err(VerifyError::UnsupportedCriticalHeader.into());
        }
        // The algorithm must be on the allow-list; `none` and HMAC never are.
        let alg = Algorithm::from_name(&header.alg.0)
            .filter(|a| inner.algorithms.contains(*a))
            .ok_or_else(|| VerifyError::AlgorithmNotAllowed {
                alg: alg::static_name(&header.alg.0),
            })?;
        check_type(inner.token_type, header.typ.as_ref().map(|t| &*t.0))?;
        let kid = header.kid.ok_or(VerifyError::MissingKid)?;
        if kid.0.len() > inner.max_kid_len {
            return Err(VerifyError::KidTooLong {
                max: inner.max_kid_len,
            }
            .into());
        }
        // The kid is only ever a hash-map key: never a path, URL or query.
        let Some(key) = snap.keys.get(&kid.0) else {
            return Err(Reject::UnknownKid {
                attempt: snap.attempt,
            });
        };
        if !key.accepts(alg) {
            return Err(VerifyError::KeyAlgorithmMismatch { alg }.into());
        }

        if signature_b64.len() > SIGNATURE_B64_MAX {
            return Err(malformed(Malformed::SignatureLength));
        }
        let mut signature_buf = [0u8; SIGNATURE_B64_MAX];
        let signature_len = URL_SAFE_NO_PAD
            .decode_slice(signature_b64, &mut signature_buf)
            .map_err(|_| malformed(Malformed::SignatureEncoding))?;
        key.verify(
            alg,
            signing_input.as_bytes(),
            &signature_buf[..signature_len],
        )?;

        // Authenticated from here on.
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| malformed(Malformed::PayloadEncoding))?;
        let raw: RawClaims =
            serde_json::from_slice(&payload).map_err(|_| malformed(Malformed::ClaimsJson))?;
        Ok(self.check_claims(raw, now)?)
    }

    /// RFC 7519 section 4.1 and RFC 9068 section 4. Boundaries, with leeway
    /// `L`: valid while `now < exp + L`; `nbf` and `iat` may be at most `L`
    /// seconds ahead of `now`.
    fn check_claims(&self, raw: RawClaims, now: u64) -> Result<Claims, VerifyError> {
        let inner = &self.inner;
        let iss = raw.iss.ok_or(VerifyError::MissingClaim("iss"))?;
        if iss != inner.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        let aud = raw.aud.ok_or(VerifyError::MissingClaim("aud"))?;
        if !aud
            .iter()
            .any(|a| inner.audiences.iter().any(|want| want == a))
        {
            return Err(VerifyError::WrongAudience);
        }
        let exp = raw.exp.ok_or(VerifyError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(inner.leeway) {
            return Err(VerifyError::Expired);
        }
        let horizon = now.saturating_add(inner.leeway);
        if raw.nbf.is_some_and(|nbf| nbf > horizon) {
            return Err(VerifyError::NotYetValid);
        }
        if raw.iat.is_some_and(|iat| iat > horizon) {
            return Err(VerifyError::IssuedInFuture);
        }
        let sub = raw.sub.ok_or(VerifyError::MissingClaim("sub"))?;
        Ok(Claims {
            iss,
            sub,
            aud,
            exp,
            iat: raw.iat,
            nbf: raw.nbf,
            jti: raw.jti,
            client_id: raw.client_id,
            scope: raw.scope.unwrap_or_default(),
            roles: raw.roles.unwrap_or_default(),
            extra: raw.extra,
        })
    }
}

/// RFC 9068 section 2.1 and RFC 8725 section 3.11: explicit typing keeps an
/// access token from being accepted as another kind of JWT, and the reverse.
fn check_type(expected: TokenType, typ: Option<&str>) -> Result<(), VerifyError> {
    let is = |name: &str| typ.is_some_and(|t| t.eq_ignore_ascii_case(name));
    match expected {
        TokenType::AccessToken => match typ {
            None => Err(VerifyError::MissingType),
            Some(_) if is("at+jwt") || is("application/at+jwt") => Ok(()),
            Some(_) => Err(VerifyError::WrongType { expected: "at+jwt" }),
        },
        TokenType::Jwt => {
            if typ.is_none() || is("JWT") || is("application/jwt") {
                Ok(())
            } else {
                Err(VerifyError::WrongType { expected: "JWT" })
            }
        }
    }
}

/// Configures a [`Verifier`]. Every limit has a default suited to a resource
/// server; only the audience is required.
#[derive(Clone)]
pub struct VerifierBuilder {
    issuer: String,
    audiences: Vec<String>,
    algorithms: AlgSet,
    token_type: TokenType,
    leeway: Duration,
    max_token_size: usize,
    max_kid_len: usize,
    clock: Arc<dyn Clock>,
    jwks_uri: Option<String>,
    min_cache_ttl: Duration,
    max_cache_ttl: Duration,
    default_cache_ttl: Duration,
    refetch_cooldown: Duration,
    stale_if_error: Duration,
    http_timeout: Duration,
    connect_timeout: Duration,
    max_response_size: usize,
    max_keys: usize,
}

impl fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl VerifierBuilder {
    fn new(issuer: String) -> VerifierBuilder {
        VerifierBuilder {
            issuer,
            audiences: Vec::new(),
            algorithms: AlgSet::DEFAULT,
            token_type: TokenType::AccessToken,
            leeway: Duration::from_secs(30),
            max_token_size: 8 * 1024,
            max_kid_len: 128,
            clock: Arc::new(SystemClock),
            jwks_uri: None,
            min_cache_ttl: Duration::from_secs(1),
            max_cache_ttl: Duration::from_secs(24 * 3600),
            default_cache_ttl: Duration::from_secs(300),
            refetch_cooldown: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(3600),
            http_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_response_size: 256 * 1024,
            max_keys: MAX_JWKS_KEYS,
        }
    }

    /// Adds an accepted audience; a token must name at least one. Required.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Adds several accepted audiences.
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, audiences: I) -> Self {
        self.audiences.extend(audiences.into_iter().map(Into::into));
        self
    }

    /// Replaces the algorithm allow-list (default: RS256 and ES256).
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = AlgSet::from_iter(algorithms);
        self
    }

    /// Which `typ` header to require (default: [`TokenType::AccessToken`]).
    pub fn token_type(mut self, token_type: TokenType) -> Self {
        self.token_type = token_type;
        self
    }

    /// Clock-skew allowance for `exp`, `nbf` and `iat` (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Tokens longer than this many bytes are refused unparsed (default 8 KiB).
    pub fn max_token_size(mut self, bytes: usize) -> Self {
        self.max_token_size = bytes;
        self
    }

    /// Longest accepted `kid` (default 128 bytes).
    pub fn max_kid_len(mut self, bytes: usize) -> Self {
        self.max_kid_len = bytes;
        self
    }

    /// The time source for claim checks and cache freshness (default: the
    /// system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses this JWKS URL instead of reading `jwks_uri` from the discovery
    /// document, for issuers without discovery.
    pub fn jwks_uri(mut self, uri: impl Into<String>) -> Self {
        self.jwks_uri = Some(uri.into());
        self
    }

    /// Floor and ceiling for the JWKS lifetime taken from `Cache-Control:
    /// max-age` (default 1 s and 24 h). A floor above the issuer's max-age
    /// holds keys longer than the issuer pre-publishes for: keep it below.
    pub fn cache_ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_cache_ttl = min;
        self.max_cache_ttl = max;
        self
    }

    /// JWKS lifetime when the issuer sends no `max-age` (default 5 min).
    pub fn default_cache_ttl(mut self, ttl: Duration) -> Self {
        self.default_cache_ttl = ttl;
        self
    }

    /// Minimum time between refetches caused by unknown `kid`s, and between
    /// retries after a failed fetch (default 30 s).
    pub fn refetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.refetch_cooldown = cooldown;
        self
    }

    /// How long past their lifetime cached keys keep verifying while the
    /// issuer cannot be reached (default 1 h).
    pub fn stale_if_error(mut self, allowance: Duration) -> Self {
        self.stale_if_error = allowance;
        self
    }

    /// Whole-request timeout for discovery and JWKS requests (default 10 s).
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// Connection timeout for discovery and JWKS requests (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Largest discovery or JWKS body read (default 256 KiB).
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.max_response_size = bytes;
        self
    }

    /// Most keys accepted in one JWKS (default [`MAX_JWKS_KEYS`]).
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Fetches the discovery document and the JWKS once, then returns a
    /// verifier that keeps the keys current by itself. Call it inside a tokio
    /// runtime.
    pub async fn build(self) -> Result<Verifier, BuildError> {
        let policy = self.validate()?;
        let limits = HttpLimits {
            timeout: self.http_timeout,
            connect_timeout: self.connect_timeout,
            max_body: self.max_response_size,
            max_keys: self.max_keys,
        };
        let source = JwksSource::connect(&self.issuer, self.jwks_uri.as_deref(), limits).await?;
        let cache = KeyCache::remote(source, policy, Arc::clone(&self.clock)).await?;
        Ok(self.finish(cache))
    }

    /// A verifier over a fixed JWKS document: no network, keys never expire.
    pub fn build_with_jwks(self, jwks: impl AsRef<[u8]>) -> Result<Verifier, BuildError> {
        let policy = self.validate()?;
        let keys = KeySet::parse(jwks.as_ref(), self.max_keys)?;
        let cache = KeyCache::fixed(keys, policy, Arc::clone(&self.clock));
        Ok(self.finish(cache))
    }

    fn validate(&self) -> Result<CachePolicy, BuildError> {
        let fail = |msg: &str| Err(BuildError::Config(msg.to_owned()));
        if self.issuer.is_empty() {
            return fail("the issuer is empty");
        }
        if self.audiences.is_empty() {
            return fail("at least one audience is required");
        }
        if self.algorithms.is_empty() {
            return fail("the algorithm allow-list is empty");
        }
        // A zero lifetime would make every request a fetch.
        let min_ttl = self.min_cache_ttl.as_secs().max(1);
        let max_ttl = self.max_cache_ttl.as_secs();
        if max_ttl < min_ttl {
            return fail("the cache TTL ceiling is below its floor");
        }
        Ok(CachePolicy {
            min_ttl,
            max_ttl,
            default_ttl: self.default_cache_ttl.as_secs(),
            cooldown: self.refetch_cooldown.as_secs(),
            stale_if_error: self.stale_if_error.as_secs(),
        })
    }

    fn finish(self, cache: KeyCache) -> Verifier {
        Verifier {
            inner: Arc::new(Inner {
                issuer: self.issuer,
                audiences: self.audiences,
                algorithms: self.algorithms,
                token_type: self.token_type,
                leeway: self.leeway.as_secs(),
                max_token_size: self.max_token_size,
                max_kid_len: self.max_kid_len,
                clock: self.clock,
                cache: Arc::new(cache),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_typ_is_case_insensitive_and_required() {
        assert!(check_type(TokenType::AccessToken, Some("at+jwt")).is_ok());
        assert!(check_type(TokenType::AccessToken, Some("AT+JWT")).is_ok());
        assert!(check_type(TokenType::AccessToken, Some("application/at+jwt")).is_ok());
        assert!(matches!(
            check_type(TokenType::AccessToken, None),
            Err(VerifyError::MissingType)
        ));
        assert!(matches!(
            check_type(TokenType::AccessToken, Some("JWT")),
            Err(VerifyError::WrongType { .. })
        ));
    }

    #[test]
    fn plain_jwt_mode_refuses_access_tokens() {
        assert!(check_type(TokenType::Jwt, None).is_ok());
        assert!(check_type(TokenType::Jwt, Some("jwt")).is_ok());
        assert!(matches!(
            check_type(TokenType::Jwt, Some("at+jwt")),
            Err(VerifyError::WrongType { .. })
        ));
    }

    #[test]
    fn builder_requires_an_audience() {
        let err = Verifier::builder("https://issuer.example")
            .build_with_jwks(r#"{"keys":[]}"#)
            .err();
        assert!(matches!(err, Some(BuildError::Config(_))), "{err:?}");
    }
}
