//! Cache keys. A key is built from the scheme, the host, the path, the normalised query, the
//! API, the `vary` request headers of the cache block and, unless the API's cache is
//! `scope = "shared"`, the consumer. Each part is length-prefixed so that no two different
//! requests can frame to the same bytes. The upstream's own `Vary` is handled on top of this by
//! pingora-cache's variance (see `variance`).
//!
//! The normalised query drops empty pieces and the API key parameter (matched after
//! percent-decoding its name, as auth does: a credential is never part of a key or a purge
//! label) and orders the rest by name, keeping the order of repeated names (`?b=2&a=1` and
//! `?a=1&b=2` share a copy; `?id=1&id=2` and `?id=2&id=1` do not). Percent-encoding is kept as
//! sent. Values of `vary` headers enter the key hashed (a key's text may reach Pingora's logs).

use super::Policy;
use http::HeaderMap;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, VarianceBuilder};
use std::sync::Arc;

/// What the storage records about an entry for the admin purge (carried in the key's
/// extensions).
#[derive(Debug, Clone)]
pub struct Entry {
    pub api: Arc<str>,
    /// `scheme://host/path?normalised-query` (the host lowercased, as the client sent it).
    pub url: Arc<str>,
}

/// The request parts a key is built from.
pub struct Request<'a> {
    pub https: bool,
    pub host: &'a [u8],
    /// The raw request target (path and query).
    pub target: &'a [u8],
    pub headers: &'a HeaderMap,
    /// The API key query parameter to leave out, if the API takes one.
    pub credential_param: Option<&'a str>,
}

/// The normalised URL of a request: the purge label, and the first part of its key. Query
/// parameters named in `credential_params` (API keys) are left out.
pub fn url(https: bool, host: &[u8], target: &[u8], credential_params: &[&str]) -> String {
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    let mut out = String::with_capacity(16 + host.len() + target.len());
    out.push_str(if https { "https://" } else { "http://" });
    out.push_str(&String::from_utf8_lossy(host).to_ascii_lowercase());
    out.push_str(&String::from_utf8_lossy(path));
    if let Some(q) = query {
        let name = |p: &[u8]| -> Vec<u8> {
            crate::auth::percent_decode(p.split(|&b| b == b'=').next().unwrap_or_default())
        };
        let mut pieces: Vec<(Vec<u8>, &[u8])> = q
            .split(|&b| b == b'&')
            .filter(|p| !p.is_empty())
            .map(|p| (name(p), p))
            .filter(|(n, _)| !credential_params.iter().any(|c| n == c.as_bytes()))
            .collect();
        // Stable: repeated names keep their order (frameworks read the first or the last).
        pieces.sort_by(|a, b| a.0.cmp(&b.0));
        let pieces: Vec<&[u8]> = pieces.into_iter().map(|(_, p)| p).collect();
        for (i, p) in pieces.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(&String::from_utf8_lossy(p));
        }
    }
    out
}

fn part(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The consumer as the upstream sees it, for a key: its id and its groups (the upstream may
/// answer by group).
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub id: &'a str,
    /// The groups header value (`""` without groups).
    pub groups: &'a [u8],
}

/// The key of a request to an API with a cache block.
pub fn build(
    req: &Request<'_>,
    api: &crate::state::ApiInfo,
    policy: &Policy,
    consumer: Option<Who<'_>>,
) -> CacheKey {
    let url = url(
        req.https,
        req.host,
        req.target,
        req.credential_param.as_slice(),
    );
    let mut primary = Vec::with_capacity(64 + url.len());
    part(&mut primary, b"turnpike-cache-1");
    part(&mut primary, url.as_bytes());
    part(&mut primary, api.name.as_bytes());
    part(
        &mut primary,
        api.version.as_deref().unwrap_or("").as_bytes(),
    );
    // A shared copy and a consumer's copy never meet, nor do two consumers' copies.
    match (policy.shared, consumer) {
        (true, _) => part(&mut primary, b"shared"),
        (false, Some(who)) => {
            part(&mut primary, b"consumer");
            part(&mut primary, who.id.as_bytes());
            part(&mut primary, who.groups);
        }
        (false, None) => part(&mut primary, b"anonymous"),
    }
    for name in &policy.vary {
        part(&mut primary, name.as_str().as_bytes());
        let mut values = req.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            part(&mut primary, b"\0absent");
        }
        for v in values {
            part(&mut primary, &pingora::cache::key::hash_key(v.as_bytes()));
        }
    }
    // pingora-cache asks for the primary hash several times per request (lookup, lock,
    // eviction); the same BLAKE2 hash it would compute, taken once here.
    let hash = pingora::cache::key::hash_key(&primary);
    let mut key = CacheKey::new(primary, consumer.map_or("", |w| w.id));
    key.set_primary_bin_override(hash);
    key.extensions.insert(Entry {
        api: Arc::from(api.name.as_str()),
        url: Arc::from(url),
    });
    key
}

/// The variance of a stored response's `Vary` header for a request: the values of the named
/// request headers. `None` when the response does not vary.
pub fn variance(meta: &CacheMeta, headers: &HeaderMap) -> Option<HashBinary> {
    // The builder keeps names sorted and once each, and has no variance when none was added.
    let mut builder = VarianceBuilder::new();
    let names = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty());
    for name in names {
        let value: Vec<u8> = headers
            .get_all(name.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain(*b"\n"))
            .collect();
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ApiInfo;
    use pingora::cache::key::CacheHashKey;

    fn policy(shared: bool, vary: &[&str]) -> Policy {
        Policy {
            shared,
            vary: vary
                .iter()
                .map(|v| http::HeaderName::from_bytes(v.as_bytes()).expect("name"))
                .collect(),
            ..Policy::test_default()
        }
    }

    fn key(target: &str, headers: &HeaderMap, p: &Policy, consumer: Option<&str>) -> String {
        let who = consumer.map(|id| Who { id, groups: b"" });
        full_key(target, headers, p, who).combined()
    }

    fn full_key(
        target: &str,
        headers: &HeaderMap,
        p: &Policy,
        consumer: Option<Who<'_>>,
    ) -> CacheKey {
        let api = ApiInfo {
            name: "catalog".into(),
            version: Some("v1".into()),
        };
        let req = Request {
            https: false,
            host: b"API.example.com",
            target: target.as_bytes(),
            headers,
            credential_param: Some("apikey"),
        };
        build(&req, &api, p, consumer)
    }

    #[test]
    fn the_hash_taken_once_is_the_one_pingora_computes() {
        let k = full_key(
            "/i?a=1",
            &HeaderMap::new(),
            &policy(false, &[]),
            Some(Who {
                id: "acme",
                groups: b"gold",
            }),
        );
        let computed = CacheKey::new(k.primary_key().to_vec(), "acme").primary_bin();
        assert_eq!(k.primary_bin(), computed);
        assert_eq!(k.to_compact().primary, computed);
    }

    #[test]
    fn urls_are_normalised_and_lose_the_credential() {
        assert_eq!(
            url(
                true,
                b"Api.Example.com:8443",
                b"/a/b?z=1&&apikey=secret&a=2",
                &["apikey"]
            ),
            "https://api.example.com:8443/a/b?a=2&z=1"
        );
        assert_eq!(url(false, b"h", b"/p?", &[]), "http://h/p");
        assert_eq!(url(false, b"h", b"/p?apikey=x", &[]), "http://h/p?apikey=x");
        assert_eq!(
            url(false, b"h", b"/p?%61pikey=tpk_secret&b=1", &["apikey"]),
            "http://h/p?b=1",
            "an encoded name is still the credential"
        );
        assert_eq!(
            url(false, b"h", b"/p?id=2&b=1&id=1", &[]),
            "http://h/p?b=1&id=2&id=1",
            "repeated names keep their order"
        );
    }

    #[test]
    fn keys_separate_consumers_scopes_and_vary_values() {
        let none = HeaderMap::new();
        let consumer = policy(false, &[]);
        let shared = policy(true, &[]);
        let a = key("/i?b=1&a=2", &none, &consumer, Some("acme"));
        assert_eq!(
            a,
            key("/i?a=2&b=1&apikey=k2", &none, &consumer, Some("acme"))
        );
        assert_ne!(a, key("/i?a=2&b=1", &none, &consumer, Some("globex")));
        assert_ne!(a, key("/i?a=2&b=1", &none, &consumer, None));
        assert_ne!(a, key("/i?a=2&b=1", &none, &shared, Some("acme")));
        assert_eq!(
            key("/i", &none, &shared, Some("acme")),
            key("/i", &none, &shared, Some("globex"))
        );
        // A consumer id cannot be framed into a different key.
        assert_ne!(
            key("/i", &none, &consumer, Some("a")),
            key("/i", &none, &consumer, Some("a\0"))
        );
        // The groups the upstream is told are part of a consumer's key.
        let in_groups = |groups: &'static [u8]| {
            let who = Some(Who { id: "acme", groups });
            full_key("/i", &none, &consumer, who).combined()
        };
        assert_ne!(in_groups(b"gold"), in_groups(b"gold,beta"));
        assert_ne!(in_groups(b"gold"), in_groups(b""));
        let lang = policy(true, &["accept-language"]);
        let mut de = HeaderMap::new();
        de.insert("accept-language", "de".parse().expect("value"));
        let mut en = HeaderMap::new();
        en.insert("accept-language", "en".parse().expect("value"));
        assert_ne!(key("/i", &de, &lang, None), key("/i", &en, &lang, None));
        assert_ne!(key("/i", &de, &lang, None), key("/i", &none, &lang, None));
        assert_eq!(
            key("/i", &de, &lang, None),
            key("/i", &de.clone(), &lang, None)
        );
    }
}
