//! HTTP routing: host first (exact, then the longest matching `*.suffix` wildcard, then `*`),
//! then the longest path prefix among that host's routes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RouteSpec {
    /// Exact names (`api.example.com`), wildcards (`*.example.com`) or `*` for any host.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub pool: String,
    /// Answer plain-HTTP requests with a 308 to https when the host has a certificate.
    pub redirect_https: bool,
    /// `Strict-Transport-Security` sent on this route's HTTPS responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
    /// Largest request body; larger ones get 413 (streamed bodies are cut when they pass it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// The whole exchange, from the request head to the last response byte; 504 when the
    /// response head is late, the response is cut when its body is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hsts {
    pub max_age_secs: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    pub fn header_value(&self) -> HeaderValue {
        let mut v = format!("max-age={}", self.max_age_secs);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        HeaderValue::from_str(&v).expect("digits and ASCII words form a header value")
    }
}

#[derive(Debug)]
pub struct Route {
    pub path_prefix: String,
    pub pool: Arc<str>,
    pub redirect_https: bool,
    pub hsts: Option<HeaderValue>,
    pub max_body_bytes: Option<u64>,
    pub timeout: Option<Duration>,
}

/// Routes of one host, longest prefix first.
#[derive(Debug, Default)]
struct HostRoutes(Vec<Arc<Route>>);

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.0.iter().find(|r| path.starts_with(&r.path_prefix))
    }
}

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, HostRoutes>,
    /// Keyed by the suffix after `*.`, e.g. `example.com`.
    wildcard: HashMap<String, HostRoutes>,
    any: HostRoutes,
}

impl Router {
    pub fn new(specs: &[RouteSpec]) -> Router {
        let mut router = Router::default();
        for spec in specs {
            let route = Arc::new(Route {
                path_prefix: spec.path_prefix.clone(),
                pool: Arc::from(spec.pool.as_str()),
                redirect_https: spec.redirect_https,
                hsts: spec.hsts.map(|h| h.header_value()),
                max_body_bytes: spec.max_body_bytes,
                timeout: spec.timeout_ms.map(Duration::from_millis),
            });
            for host in &spec.hosts {
                let host = host.to_ascii_lowercase();
                let slot = if host == "*" {
                    &mut router.any
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    router.wildcard.entry(suffix.to_string()).or_default()
                } else {
                    router.exact.entry(host).or_default()
                };
                slot.0.push(route.clone());
            }
        }
        let all = router
            .exact
            .values_mut()
            .chain(router.wildcard.values_mut())
            .chain(std::iter::once(&mut router.any));
        for routes in all {
            // Stable sort: among equal prefixes the first configured route wins.
            routes
                .0
                .sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        }
        router
    }

    /// `host` must already be lower-case and without port.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        if let Some(routes) = self.exact.get(host) {
            return routes.find(path);
        }
        if !self.wildcard.is_empty() {
            // Longest suffix first: a.b.example.com tries b.example.com, then example.com.
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(routes) = self.wildcard.get(suffix) {
                    return routes.find(path);
                }
                rest = suffix;
            }
        }
        self.any.find(path)
    }
}

/// Lower-cases a Host header or authority and strips the port and a trailing dot.
/// Returns `None` for a value that is not a plausible host name. Borrows when the value is
/// already lower case (the usual Host header), so routing a request allocates nothing here.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        &raw[..=raw.find(']')?]
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // One pass and one table lookup per byte: testing each byte against the punctuation
    // list, then again for upper case, took about 200 instructions per request (callgrind).
    let mut seen = 0u8;
    for b in host.bytes() {
        seen |= HOST_BYTE[b as usize];
    }
    if host.is_empty() || seen & INVALID != 0 {
        return None;
    }
    if seen & UPPER != 0 {
        return Some(Cow::Owned(host.to_ascii_lowercase()));
    }
    Some(Cow::Borrowed(host))
}

const INVALID: u8 = 1;
const UPPER: u8 = 2;

/// What each byte is in a host name: letters, digits and `-._[]:` are valid.
static HOST_BYTE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            t[b] = 0;
        } else if c.is_ascii_uppercase() {
            t[b] = UPPER;
        }
        b += 1;
    }
    let mut i = 0;
    let punct = b"-._[]:";
    while i < punct.len() {
        t[punct[i] as usize] = 0;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: &[&str], prefix: &str, pool: &str) -> RouteSpec {
        RouteSpec {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            pool: pool.into(),
            redirect_https: true,
            ..RouteSpec::default()
        }
    }

    fn pool_of<'a>(r: &'a Router, host: &str, path: &str) -> Option<&'a str> {
        r.find(host, path).map(|r| &*r.pool)
    }

    #[test]
    fn exact_then_longest_prefix() {
        let r = Router::new(&[
            spec(&["api.example.com"], "/", "root"),
            spec(&["api.example.com"], "/v1/", "v1"),
            spec(&["API.example.com"], "/v1/admin", "admin"),
        ]);
        assert_eq!(pool_of(&r, "api.example.com", "/x"), Some("root"));
        assert_eq!(pool_of(&r, "api.example.com", "/v1/users"), Some("v1"));
        assert_eq!(pool_of(&r, "api.example.com", "/v1/admin/x"), Some("admin"));
        assert_eq!(pool_of(&r, "other.example.com", "/"), None);
    }

    #[test]
    fn wildcard_longest_suffix_then_any() {
        let r = Router::new(&[
            spec(&["*.example.com"], "/", "wild"),
            spec(&["*.eu.example.com"], "/", "eu"),
            spec(&["exact.example.com"], "/only", "exact"),
            spec(&["*"], "/", "fallback"),
        ]);
        assert_eq!(pool_of(&r, "a.example.com", "/"), Some("wild"));
        assert_eq!(pool_of(&r, "a.b.example.com", "/"), Some("wild"));
        assert_eq!(pool_of(&r, "x.eu.example.com", "/"), Some("eu"));
        assert_eq!(pool_of(&r, "example.com", "/"), Some("fallback"));
        // An exact host owns its name: no fall-through to wildcard when no path matches.
        assert_eq!(pool_of(&r, "exact.example.com", "/other"), None);
        assert_eq!(pool_of(&r, "unrelated.org", "/"), Some("fallback"));
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalize_host("Example.COM:8443").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host("bad host"), None);
        assert_eq!(normalize_host("a/b"), None);
        assert_eq!(normalize_host("Bad Host"), None);
        assert_eq!(normalize_host("caf\u{e9}.example"), None);
        assert_eq!(normalize_host("a\u{0}b"), None);
        assert_eq!(
            normalize_host("A-Z_0.9:80").as_deref(),
            Some("a-z_0.9"),
            "every valid class of byte, one of them upper case"
        );
        // Every byte outside letters, digits and `-._[]:` is refused, alone or in a name.
        for b in 0..=255u8 {
            let valid = b.is_ascii_alphanumeric() || b"-._[]:".contains(&b);
            let name = format!("a{}b.example", b as char);
            assert_eq!(normalize_host(&name).is_some(), valid, "byte {b:#04x}");
        }
    }
}
