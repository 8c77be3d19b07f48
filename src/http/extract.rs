//! Request edges shared by handlers: bounded form bodies and bearer tokens,
//! each failing in latchkey's OAuth error format rather than a framework's
//! plain-text rejection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::error::ApiError;
use crate::app::AppState;
use crate::config::IpNet;
use crate::oauth::{Error, ErrorCode, RequestContext};
use crate::token::claims::VerifiedAccess;
use crate::token::verify::MAX_TOKEN_LEN;

/// The caller's address, user agent and origin ([`RequestContext`]). The
/// address is the TCP peer unless that peer is a configured trusted proxy, in
/// which case it is the nearest untrusted hop named by `Forwarded` (RFC 7239)
/// or, failing that, `X-Forwarded-For`.
pub struct ClientMeta(pub RequestContext);

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let ip = peer.map(|p| client_ip(p, &parts.headers, &state.config.server.trusted_proxies));
        let text = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        Ok(Self(RequestContext::new(
            ip,
            text(header::USER_AGENT),
            text(header::ORIGIN),
        )))
    }
}

/// Most forwarding hops examined; a longer chain is attacker-padded.
const MAX_FORWARDED_HOPS: usize = 16;

/// Resolve the client address behind trusted proxies.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops = forwarded_for(headers).or_else(|| x_forwarded_for(headers));
    let Some(hops) = hops else { return peer };
    // Right to left: the last hop was added by our own proxy; the first
    // address that is not one of ours is the client. Anything further left
    // was written by the client and proves nothing.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(*ip) => client = *ip,
            Some(ip) => return *ip,
            // An obfuscated or unparsable hop: stop at the last address we trust.
            None => return client,
        }
    }
    client
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Option<Vec<&'a str>> {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        out.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()));
        if out.len() > MAX_FORWARDED_HOPS {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let values = header_values(headers, "x-forwarded-for")?;
    Some(values.into_iter().map(parse_node).collect())
}

fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let elements = header_values(headers, "forwarded")?;
    let hops: Vec<Option<IpAddr>> = elements
        .into_iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect();
    (!hops.is_empty()).then_some(hops)
}

/// A node as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `[2001:db8::1]`,
/// `[2001:db8::1]:443` or a bare IPv6 address.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.rsplit_once(':')?
        .0
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// Read an `application/x-www-form-urlencoded` body of at most `limit` bytes.
pub async fn form_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(Error::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let too_large = || {
        Error::new(
            ErrorCode::RequestTooLarge,
            format!("the request body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Past the limit the read stops; a failed read of a body this small is
    // that, the body deadline, or a client that went away.
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if super::layers::is_body_timeout(&e) {
            Error::new(
                ErrorCode::RequestTimeout,
                "the request body was not received in time",
            )
        } else {
            too_large()
        }
    })?;
    Ok(bytes.to_vec())
}

/// A live latchkey access token from `Authorization: Bearer` (RFC 6750 §2.1),
/// checked by [`crate::session::Sessions::authenticate`]. Rejections speak
/// RFC 6750: a bare challenge without a token, `invalid_token` otherwise.
pub struct Bearer(pub VerifiedAccess);

impl FromRequestParts<AppState> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        Ok(Self(state.sessions.authenticate(&token).await?))
    }
}

/// Verify the request's bearer token as a live latchkey access token.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<VerifiedAccess, ApiError> {
    let token = bearer(headers)?;
    Ok(state.sessions.authenticate(&token).await?)
}

/// The bearer token from `Authorization` (RFC 6750 §2.1).
pub fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::MissingBearer);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::invalid_request("malformed Authorization header"))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingBearer);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(Error::invalid_token("malformed bearer token").into());
    }
    Ok(token.to_string())
}

/// The value of one cookie from the `Cookie` headers, if present once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let peer: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), peer);
        assert_eq!(client_ip(peer, &h, &[]), peer);
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_wins() {
        let trusted = nets(&["10.0.0.0/8", "::1"]);
        // The client wrote a fake first hop; our two proxies appended theirs.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.5")]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.5",
        )]);
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=192.0.2.60:8080")]);
        assert_eq!(
            client_ip("::1".parse().unwrap(), &h, &trusted),
            "192.0.2.60".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn garbage_or_padded_chains_fall_back_to_a_trusted_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        let long = (0..40)
            .map(|i| format!("10.1.0.{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(&long).unwrap());
        assert_eq!(client_ip(peer, &h, &trusted), peer);
    }

    #[test]
    fn cidr_matching() {
        let n = IpNet::parse("192.168.0.0/16").unwrap();
        assert!(n.contains("192.168.40.1".parse().unwrap()));
        assert!(!n.contains("192.169.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:192.168.1.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nonsense").is_none());
    }
}
