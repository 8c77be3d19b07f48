//! Redirect URIs: registration rules, matching, and adding result parameters.
//!
//! Matching is exact string comparison (RFC 9700 §2.1: no patterns, no
//! prefix matching), with one exception from RFC 8252 §7.3: a registered
//! `http` URI on a loopback IP literal (`127.0.0.1`, `[::1]`) matches any port,
//! because native apps listen on an ephemeral port chosen at run time.
//! `localhost` gets no such exception (RFC 8252 §8.3: it may not resolve to the
//! loopback interface).

use url::{Host, Url};

fn is_loopback_http(u: &Url) -> bool {
    u.scheme() == "http"
        && match u.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        }
}

/// Does a presented redirect URI match one registered URI?
pub fn redirect_uri_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(r), Ok(p)) = (Url::parse(registered), Url::parse(presented)) else {
        return false;
    };
    if !is_loopback_http(&r) || !is_loopback_http(&p) {
        return false;
    }
    // Everything but the port must be identical, and the presented string
    // must already be in normal form: a URI that only matches after
    // normalisation (case, dot segments, `127.1`) is not a match.
    let mut p_portless = p.clone();
    let mut r_portless = r.clone();
    if p_portless.set_port(None).is_err() || r_portless.set_port(None).is_err() {
        return false;
    }
    p.as_str() == presented && p_portless == r_portless
}

/// Check a URI before it is registered: absolute, no fragment (RFC 6749
/// §3.1.2), no user info, and `https` except for loopback `http` (native and
/// development clients) or a private-use scheme of a native app
/// (RFC 8252 §7.1, reverse-domain with a dot).
pub fn validate_registered_uri(uri: &str) -> Result<(), String> {
    let u = Url::parse(uri).map_err(|e| format!("{uri:?} is not an absolute URI: {e}"))?;
    if u.as_str() != uri {
        return Err(format!(
            "{uri:?} is not in normal form (latchkey compares redirect URIs exactly); register {:?}",
            u.as_str()
        ));
    }
    if u.fragment().is_some() {
        return Err(format!("{uri:?} must not contain a fragment"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{uri:?} must not contain user information"));
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_http(&u) || u.host_str() == Some("localhost") => Ok(()),
        "http" => Err(format!(
            "{uri:?}: plain http is allowed only on loopback addresses; use https"
        )),
        s if s.contains('.') => Ok(()),
        s => Err(format!(
            "{uri:?}: scheme {s} is neither https, loopback http, nor a reverse-domain private-use scheme"
        )),
    }
}

/// Add query parameters to a redirect URI, keeping its own query (RFC 6749
/// §3.1.2: "MUST retain the query component").
pub fn with_params(uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut u = Url::parse(uri).ok()?;
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(u.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn exact_and_loopback_matching() {
        let reg = "https://app.example.com/cb";
        assert!(redirect_uri_matches(reg, reg));
        for near in [
            "https://app.example.com/cb/",
            "https://app.example.com/cb/x",
            "https://app.example.com:8443/cb",
            "https://app.example.com/cb?x=1",
            "https://APP.example.com/cb",
            "http://app.example.com/cb",
            "https://app.example.com.evil.test/cb",
            "https://app.example.com/cb#frag",
        ] {
            assert!(!redirect_uri_matches(reg, near), "{near}");
        }
        let lo = "http://127.0.0.1/callback";
        assert!(redirect_uri_matches(lo, "http://127.0.0.1:53211/callback"));
        assert!(redirect_uri_matches(
            "http://[::1]:80/cb",
            "http://[::1]:5000/cb"
        ));
        assert!(!redirect_uri_matches(
            lo,
            "http://127.0.0.1:53211/callback/x"
        ));
        assert!(!redirect_uri_matches(
            lo,
            "http://127.0.0.1:53211/callback?a=b"
        ));
        assert!(!redirect_uri_matches(lo, "http://127.1:53211/callback"));
        assert!(!redirect_uri_matches(
            lo,
            "https://127.0.0.1:53211/callback"
        ));
        assert!(!redirect_uri_matches(
            "http://localhost/cb",
            "http://localhost:9/cb"
        ));
    }

    #[test]
    fn registration_rules() {
        assert!(validate_registered_uri("https://app.example.com/cb").is_ok());
        assert!(validate_registered_uri("http://127.0.0.1:8080/cb").is_ok());
        assert!(validate_registered_uri("com.example.app:/cb").is_ok());
        assert!(validate_registered_uri("http://app.example.com/cb").is_err());
        assert!(validate_registered_uri("https://app.example.com/cb#x").is_err());
        assert!(validate_registered_uri("/cb").is_err());
        assert!(validate_registered_uri("javascript:alert(1)").is_err());
        assert!(validate_registered_uri("https://u:p@app.example.com/cb").is_err());
    }

    #[test]
    fn params_keep_the_registered_query() {
        let u = with_params("https://a.example/cb?x=1", &[("code", "a b&c")]).unwrap();
        assert_eq!(u, "https://a.example/cb?x=1&code=a+b%26c");
    }
}
