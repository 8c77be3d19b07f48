//! HTTP: the discovery document and the JWKS.
//!
//! This module owns every network request the crate makes: one GET of
//! `{issuer}/.well-known/openid-configuration` at start-up and conditional GETs
//! of the `jwks_uri` afterwards. It bounds what it reads (a body cap checked
//! while streaming, timeouts, no redirects) and turns `Cache-Control`, `Age`
//! and `ETag` into plain numbers and strings. It must not decide when to
//! fetch, and it never puts anything taken from a token into a URL: the only
//! URLs it requests come from configuration and the issuer's own discovery
//! document.

use std::time::Duration;

use reqwest::header::{ACCEPT, AGE, CACHE_CONTROL, ETAG, HeaderMap, IF_NONE_MATCH};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::error::{BuildError, FetchError};
use crate::jwk::KeySet;

/// What a JWKS request produced.
pub(crate) enum JwksResponse {
    /// A new key set (HTTP 200).
    Fresh {
        keys: KeySet,
        etag: Option<String>,
        max_age: Option<u64>,
    },
    /// The cached set is still current (HTTP 304).
    NotModified { max_age: Option<u64> },
}

/// Limits that apply to every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) max_keys: usize,
}

/// The issuer's JWKS endpoint and the client that talks to it.
pub(crate) struct JwksSource {
    client: reqwest::Client,
    jwks_uri: String,
    limits: HttpLimits,
}

impl JwksSource {
    pub(crate) fn jwks_uri(&self) -> &str {
        &self.jwks_uri
    }

    /// Finds the JWKS through discovery, or uses `jwks_uri` when configured.
    pub(crate) async fn connect(
        issuer: &str,
        jwks_uri: Option<&str>,
        limits: HttpLimits,
    ) -> Result<JwksSource, BuildError> {
        let issuer_url = Url::parse(issuer)
            .map_err(|e| BuildError::Config(format!("issuer is not a URL: {e}")))?;
        if !matches!(issuer_url.scheme(), "https" | "http") {
            return Err(BuildError::Config(
                "issuer must be an http or https URL".to_owned(),
            ));
        }
        // Redirects are not followed: the issuer's endpoints are configured
        // and discovered, and a redirect to somewhere else is a fault to see,
        // not to follow silently.
        let client = reqwest::Client::builder()
            .timeout(limits.timeout)
            .connect_timeout(limits.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("latchkey-verifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::HttpClient(Box::new(e)))?;
        let jwks_uri = match jwks_uri {
            Some(uri) => uri.to_owned(),
            None => discover(&client, issuer, limits).await?,
        };
        let parsed = Url::parse(&jwks_uri)
            .map_err(|e| BuildError::Config(format!("jwks_uri is not a URL: {e}")))?;
        // An https issuer must not hand out its keys over plain http, where
        // anyone on the path could substitute their own.
        let allowed = match issuer_url.scheme() {
            "https" => parsed.scheme() == "https",
            _ => matches!(parsed.scheme(), "https" | "http"),
        };
        if !allowed {
            return Err(BuildError::Config(format!(
                "jwks_uri scheme {} is not allowed for this issuer",
                parsed.scheme()
            )));
        }
        Ok(JwksSource {
            client,
            jwks_uri,
            limits,
        })
    }

    /// One conditional GET of the JWKS.
    pub(crate) async fn fetch(&self, etag: Option<&str>) -> Result<JwksResponse, FetchError> {
        let (status, headers, body) =
            get(&self.client, &self.jwks_uri, etag, self.limits.max_body).await?;
        let max_age = max_age(&headers);
        if status == StatusCode::NOT_MODIFIED {
            return Ok(JwksResponse::NotModified { max_age });
        }
        let keys =
            KeySet::parse(&body, self.limits.max_keys).map_err(|source| FetchError::Jwks {
                url: self.jwks_uri.clone(),
                source,
            })?;
        let etag = headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(JwksResponse::Fresh {
            keys,
            etag,
            max_age,
        })
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// OIDC Discovery 1.0 section 4: the document lives under the issuer with
/// any trailing slash removed, and its `issuer` must equal the configured one
/// exactly (section 4.3), so a document for another tenant or a look-alike
/// host is refused.
async fn discover(
    client: &reqwest::Client,
    issuer: &str,
    limits: HttpLimits,
) -> Result<String, FetchError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let (status, _, body) = get(client, &url, None, limits.max_body).await?;
    if status != StatusCode::OK {
        return Err(FetchError::Status {
            url,
            status: status.as_u16(),
        });
    }
    let doc: Discovery = serde_json::from_slice(&body).map_err(|e| FetchError::Discovery {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    if doc.issuer != issuer {
        return Err(FetchError::IssuerMismatch {
            expected: issuer.to_owned(),
            found: doc.issuer,
        });
    }
    Ok(doc.jwks_uri)
}

/// A GET that reads at most `max_body` bytes. The cap is checked against
/// `Content-Length` first and then while streaming, so a lying or absent
/// length cannot make the verifier buffer more.
async fn get(
    client: &reqwest::Client,
    url: &str,
    etag: Option<&str>,
    max_body: usize,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), FetchError> {
    let request_error = |e: reqwest::Error| FetchError::Request {
        url: url.to_owned(),
        source: Box::new(e),
    };
    let mut request = client
        .get(url)
        .header(ACCEPT, "application/json, application/jwk-set+json");
    if let Some(etag) = etag {
        request = request.header(IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await.map_err(request_error)?;
    let status = response.status();
    let headers = response.headers().clone();
    if status == StatusCode::NOT_MODIFIED && etag.is_some() {
        return Ok((status, headers, Vec::new()));
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let too_large = || FetchError::BodyTooLarge {
        url: url.to_owned(),
        max: max_body,
    };
    if response
        .content_length()
        .is_some_and(|len| len > max_body as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, headers, body))
}

/// The remaining freshness lifetime in seconds from `Cache-Control` (RFC
/// 9111): `no-store` and `no-cache` count as zero (the caller's floor then
/// applies), `max-age` minus any `Age` a shared cache added. `None` when the
/// response says nothing, so the caller uses its default.
pub(crate) fn max_age(headers: &HeaderMap) -> Option<u64> {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return Some(0);
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                max_age = Some(secs);
            }
        }
    }
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    max_age.map(|m| m.saturating_sub(age))
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
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn max_age_is_read_and_reduced_by_age() {
        assert_eq!(
            max_age(&headers(&[("cache-control", "public, max-age=600")])),
            Some(600)
        );
        assert_eq!(
            max_age(&headers(&[
                ("cache-control", "Max-Age=600"),
                ("age", "100")
            ])),
            Some(500)
        );
        assert_eq!(
            max_age(&headers(&[("cache-control", "max-age=60"), ("age", "100")])),
            Some(0)
        );
    }

    #[test]
    fn no_store_and_no_cache_mean_zero_and_absence_means_none() {
        assert_eq!(max_age(&headers(&[("cache-control", "no-store")])), Some(0));
        assert_eq!(
            max_age(&headers(&[("cache-control", "max-age=60, no-cache")])),
            Some(0)
        );
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(
            max_age(&headers(&[("cache-control", "max-age=soon")])),
            None
        );
    }
}
