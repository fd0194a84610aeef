//! Request-header rules shared by the proxy and the cache: the names the gateway owns (a
//! client's copy never reaches an upstream), the identity and client-address headers that
//! other gateways and CDNs set (`[server] strip_request_headers`), and compiled name lists
//! with `prefix-*` entries.

use http::HeaderName;

/// Request headers a client may not set for the upstream: the gateway sets them itself.
const GATEWAY_OWNED: [&str; 8] = [
    "x-consumer-id",
    "x-consumer-groups",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// Whether a client's copy of the header named `lowercase` is removed before the upstream: a
/// name the gateway sets itself, or a name with an underscore (some servers read them as
/// dashes, so a client could smuggle a copy of a trusted header).
pub fn is_gateway_owned(lowercase: &str) -> bool {
    lowercase.contains('_') || GATEWAY_OWNED.contains(&lowercase)
}

/// The default of `[server] strip_request_headers`: identity, limit and client-address headers
/// that other gateways (Kong, Tyk, APISIX, cloud load balancers) and CDNs set for their
/// upstreams. An upstream migrated from one of them may trust them, so a client's copy is
/// removed on every API.
pub const OTHER_GATEWAYS: &[&str] = &[
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups-*",
    "x-credential-identifier",
    "x-credential-username",
    "x-anonymous-consumer",
    "x-anonymous-groups",
    "x-authenticated-userid",
    "x-authenticated-scope",
    "x-authenticated-groups",
    "x-userinfo",
    "x-ratelimit-*",
    "ratelimit",
    "ratelimit-policy",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-envoy-external-address",
    "x-gateway-*",
    "x-tyk-*",
    "x-apisix-*",
    "x-kong-*",
];

/// A compiled list of header names: exact names and `prefix-*` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameList {
    exact: Vec<HeaderName>,
    prefixes: Vec<String>,
    /// The first bytes of every entry (a bit per byte value): most request headers are ruled
    /// out by their first byte alone, without comparing names.
    first: [u64; 4],
}

impl NameList {
    /// Compiles `names` (any case; `prefix*` for a prefix). `Err` names the first entry that
    /// is not a header name.
    pub fn compile(names: &[String]) -> Result<NameList, String> {
        let mut list = NameList::default();
        for n in names {
            let lower = n.trim().to_ascii_lowercase();
            let (bare, prefix) = match lower.strip_suffix('*') {
                Some(p) => (p, true),
                None => (lower.as_str(), false),
            };
            let name = HeaderName::from_bytes(bare.as_bytes())
                .map_err(|_| format!("{n:?} is not a header name (or name prefix ending in *)"))?;
            match name.as_str().as_bytes().first() {
                Some(&b) => list.first[usize::from(b / 64)] |= 1 << (b % 64),
                // An empty prefix ("*") matches every name.
                None => list.first = [u64::MAX; 4],
            }
            match prefix {
                true => list.prefixes.push(name.as_str().to_string()),
                false => list.exact.push(name),
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether `name` (a lowercase header name) is on the list.
    pub fn contains(&self, name: &str) -> bool {
        let Some(&b) = name.as_bytes().first() else {
            return false;
        };
        if self.first[usize::from(b / 64)] & (1 << (b % 64)) == 0 {
            return false;
        }
        self.exact.iter().any(|e| e.as_str() == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// The exact names (for a cache key).
    pub fn names(&self) -> &[HeaderName] {
        &self.exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_match_names_and_prefixes_and_refuse_bad_entries() {
        let l =
            NameList::compile(&["X-Client-IP".into(), "x-ratelimit-*".into()]).unwrap_or_default();
        assert!(l.contains("x-client-ip"));
        assert!(l.contains("x-ratelimit-remaining"));
        assert!(!l.contains("x-ratelimit"));
        assert!(!l.contains("x-client-ip2"));
        assert!(NameList::compile(&["bad name".into()]).is_err());
        let defaults: Vec<String> = OTHER_GATEWAYS.iter().map(|s| s.to_string()).collect();
        assert!(NameList::compile(&defaults).is_ok());
        assert!(is_gateway_owned("x_consumer_id") && is_gateway_owned("x-real-ip"));
    }
}
