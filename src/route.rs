//! The route table: hosts, base paths, path templates with `{param}` segments, and methods.
//!
//! Matching walks a segment trie on the raw request path (already checked by `path`). At each
//! level a static segment beats a `{param}`, which beats an API's catch-all base path, so the
//! most specific template wins regardless of config order. The method is checked only against
//! the most specific path match: when it does not allow the method the answer is 405 with its
//! methods, never a less specific route (which could belong to another API with other
//! policies). Exact hosts beat `*.suffix` wildcards, which beat routes without hosts. Cost grows
//! with path depth, not with the number of routes.

use std::collections::HashMap;

/// Methods that routes may name; any other request method only matches "any method" routes.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// TRACE (echoes the request, credentials included) and CONNECT (a tunnel) are allowed only
/// on routes that list them, never by "every method".
const ONLY_WHEN_LISTED: u16 = (1 << 7) | (1 << 8);

/// A set of methods as a bit mask over `KNOWN_METHODS`; `Methods::ANY` allows every method
/// but TRACE and CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Methods(u16);

impl Methods {
    pub const ANY: Methods = Methods(u16::MAX);

    /// Builds a set from method names; `None` if a name is unknown. An empty list means any.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Option<Methods> {
        if names.is_empty() {
            return Some(Methods::ANY);
        }
        let mut bits = 0u16;
        for n in names {
            bits |= method_bit(n.as_ref().as_bytes());
            if method_bit(n.as_ref().as_bytes()) == 0 {
                return None;
            }
        }
        Some(Methods(bits))
    }

    pub fn allows(self, bit: u16) -> bool {
        match self == Methods::ANY {
            true => bit & ONLY_WHEN_LISTED == 0,
            false => self.0 & bit != 0,
        }
    }

    pub fn intersects(self, other: Methods) -> bool {
        self.0 & other.0 != 0
    }

    pub fn union(self, other: Methods) -> Methods {
        Methods(self.0 | other.0)
    }

    /// The value of an `Allow` header for this set.
    pub fn allow_header(self) -> String {
        let bits = match self == Methods::ANY {
            true => self.0 & !ONLY_WHEN_LISTED,
            false => self.0,
        };
        KNOWN_METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The bit of a request method, 0 for methods outside `KNOWN_METHODS`.
pub fn method_bit(method: &[u8]) -> u16 {
    KNOWN_METHODS
        .iter()
        .position(|m| m.as_bytes() == method)
        .map_or(0, |i| 1 << i)
}

#[derive(Default)]
struct Node {
    statics: HashMap<Box<[u8]>, Node>,
    param: Option<Box<Node>>,
    /// Endpoints whose template ends exactly here.
    exact: Vec<usize>,
    /// Endpoints matching this node and everything below it (APIs without routes).
    prefix: Vec<usize>,
}

/// A template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Static(String),
    Param(String),
}

/// Splits a config path template (`/items/{id}`) into segments. The template is validated
/// elsewhere; this only splits it. `/` has no segments.
pub fn template_segments(template: &str) -> Vec<Segment> {
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => Segment::Param(name.to_string()),
                None => Segment::Static(s.to_string()),
            },
        )
        .collect()
}

/// What matching a request gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found(usize),
    /// The path matched but not the method: the methods allowed there, and the first
    /// endpoint of that path (its API's policies, e.g. CORS, still answer).
    MethodNotAllowed(Methods, usize),
    NotFound,
}

/// A route table over endpoints numbered by the caller.
#[derive(Default)]
pub struct Router {
    exact_hosts: HashMap<String, Node>,
    wildcard_hosts: Vec<(String, Node)>,
    any_host: Node,
    methods: Vec<Methods>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds endpoint `id` for `hosts` (empty: any host). `segments` is the full template from
    /// the root; `catch_all` makes it match every path below it too.
    pub fn insert(
        &mut self,
        hosts: &[String],
        segments: &[Segment],
        catch_all: bool,
        methods: Methods,
        id: usize,
    ) {
        if self.methods.len() <= id {
            self.methods.resize(id + 1, Methods(0));
        }
        self.methods[id] = methods;
        if hosts.is_empty() {
            add_path(&mut self.any_host, segments, catch_all, id);
            return;
        }
        for host in hosts {
            let host = host.to_ascii_lowercase();
            let root = match host.strip_prefix('*') {
                Some(suffix) => {
                    if !self.wildcard_hosts.iter().any(|(s, _)| s == suffix) {
                        self.wildcard_hosts
                            .push((suffix.to_string(), Node::default()));
                        // Longest suffix first, so the most specific wildcard wins.
                        self.wildcard_hosts
                            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
                    }
                    match self.wildcard_hosts.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, node)) => node,
                        None => continue,
                    }
                }
                None => self.exact_hosts.entry(host).or_default(),
            };
            add_path(root, segments, catch_all, id);
        }
    }

    /// Finds the endpoint for a host (as sent, port allowed), a checked raw path and a method.
    pub fn find(&self, host: Option<&[u8]>, path: &[u8], method: &[u8]) -> Match {
        let bit = method_bit(method);
        // One trailing dot names the same host (`a.example.` is `a.example`).
        let host = host
            .map(host_name)
            .map(|h| h.strip_suffix(b".").unwrap_or(h));
        if let Some(host) = host {
            let lower;
            let host = if host.iter().any(u8::is_ascii_uppercase) {
                lower = host.to_ascii_lowercase();
                &lower[..]
            } else {
                host
            };
            let exact = std::str::from_utf8(host)
                .ok()
                .and_then(|h| self.exact_hosts.get(h));
            let wild = self
                .wildcard_hosts
                .iter()
                .filter(|(suffix, _)| {
                    host.len() > suffix.len() && host.ends_with(suffix.as_bytes())
                })
                .map(|(_, n)| n);
            for root in exact.into_iter().chain(wild) {
                if let Some(m) = self.walk(root, rest_of(path), bit) {
                    return m;
                }
            }
        }
        self.walk(&self.any_host, rest_of(path), bit)
            .unwrap_or(Match::NotFound)
    }

    /// Depth-first in specificity order; the first node whose endpoints match the path decides.
    /// `rest` is the path after the current node's '/', `None` once the path is used up.
    fn walk(&self, node: &Node, rest: Option<&[u8]>, bit: u16) -> Option<Match> {
        match rest {
            None => {
                if let Some(m) = self.pick(&node.exact, bit) {
                    return Some(m);
                }
            }
            // A trailing slash: "/items/" is not "/items", but catch-alls take it.
            Some([]) => {}
            Some(rest) => {
                let (seg, next) = match rest.iter().position(|&b| b == b'/') {
                    Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                    None => (rest, None),
                };
                if let Some(child) = node.statics.get(seg) {
                    if let Some(m) = self.walk(child, next, bit) {
                        return Some(m);
                    }
                }
                if let (Some(child), false) = (&node.param, seg.is_empty()) {
                    if let Some(m) = self.walk(child, next, bit) {
                        return Some(m);
                    }
                }
            }
        }
        self.pick(&node.prefix, bit)
    }

    /// The endpoint among `ids` that allows the method, or 405 with their methods; `None` when
    /// there are no endpoints here.
    fn pick(&self, ids: &[usize], bit: u16) -> Option<Match> {
        if ids.is_empty() {
            return None;
        }
        let mut here = Methods(0);
        for &id in ids {
            let m = self.methods[id];
            if m.allows(bit) {
                return Some(Match::Found(id));
            }
            here = here.union(m);
        }
        Some(Match::MethodNotAllowed(here, ids[0]))
    }
}

fn add_path(root: &mut Node, segments: &[Segment], catch_all: bool, id: usize) {
    let mut node = root;
    for seg in segments {
        node = match seg {
            Segment::Static(s) => node.statics.entry(s.as_bytes().into()).or_default(),
            Segment::Param(_) => node.param.get_or_insert_with(Default::default),
        };
    }
    if catch_all {
        node.prefix.push(id);
    } else {
        node.exact.push(id);
    }
}

/// The path after the leading '/', or `None` for "/".
fn rest_of(path: &[u8]) -> Option<&[u8]> {
    match path {
        [] | [b'/'] => None,
        [b'/', rest @ ..] => Some(rest),
        other => Some(other),
    }
}

/// The host name of a Host header value, without a port.
pub fn host_name(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(t: &str) -> Vec<Segment> {
        template_segments(t)
    }

    fn table() -> Router {
        let mut r = Router::new();
        let get = Methods::from_names(&["GET"]).unwrap_or(Methods::ANY);
        let get_post = Methods::from_names(&["GET", "POST"]).unwrap_or(Methods::ANY);
        r.insert(&[], &seg("/catalog/v1/items/{id}"), false, get, 0);
        r.insert(&[], &seg("/catalog/v1/items"), false, get_post, 1);
        r.insert(&[], &seg("/catalog/v1/items/special"), false, get, 2);
        r.insert(&[], &seg("/hello"), true, Methods::ANY, 3);
        r.insert(
            &["api.example.com".into()],
            &seg("/catalog/v1/items"),
            false,
            get,
            4,
        );
        r.insert(
            &["*.example.com".into()],
            &seg("/catalog/v1/items"),
            false,
            get,
            5,
        );
        r.insert(&[], &seg("/"), true, get, 6);
        r
    }

    #[test]
    fn most_specific_wins() {
        let r = table();
        assert_eq!(
            r.find(None, b"/catalog/v1/items/42", b"GET"),
            Match::Found(0)
        );
        assert_eq!(
            r.find(None, b"/catalog/v1/items/special", b"GET"),
            Match::Found(2)
        );
        assert_eq!(r.find(None, b"/catalog/v1/items", b"POST"), Match::Found(1));
        assert_eq!(r.find(None, b"/hello", b"DELETE"), Match::Found(3));
        assert_eq!(r.find(None, b"/hello/x/y/", b"GET"), Match::Found(3));
        assert_eq!(r.find(None, b"/helloworld", b"GET"), Match::Found(6));
        assert_eq!(r.find(None, b"/", b"GET"), Match::Found(6));
    }

    #[test]
    fn method_not_allowed_lists_the_best_match() {
        let r = table();
        // The root catch-all allows only GET, so DELETE on items is refused with the items' methods.
        match r.find(None, b"/catalog/v1/items", b"DELETE") {
            Match::MethodNotAllowed(m, _) => assert_eq!(m.allow_header(), "GET, POST"),
            other => panic!("{other:?}"),
        }
        // Never a less specific route: the root catch-all allows DELETE here, but the items
        // route is the best match for the path, so DELETE gets 405.
        let mut fall = table();
        fall.insert(&[], &seg("/"), true, Methods::ANY, 7);
        assert!(matches!(
            fall.find(None, b"/catalog/v1/items/42", b"DELETE"),
            Match::MethodNotAllowed(..)
        ));
        assert_eq!(
            fall.find(None, b"/catalog/v1/other", b"DELETE"),
            Match::Found(7)
        );
        let mut only = Router::new();
        only.insert(
            &[],
            &seg("/a/{x}"),
            false,
            Methods::from_names(&["PUT"]).unwrap_or(Methods::ANY),
            0,
        );
        assert_eq!(only.find(None, b"/b", b"GET"), Match::NotFound);
        assert_eq!(only.find(None, b"/a/", b"PUT"), Match::NotFound);
        assert_eq!(only.find(None, b"/a/1/2", b"PUT"), Match::NotFound);
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = table();
        assert_eq!(
            r.find(Some(b"API.example.com:8080"), b"/catalog/v1/items", b"GET"),
            Match::Found(4)
        );
        assert_eq!(
            r.find(Some(b"eu.example.com"), b"/catalog/v1/items", b"GET"),
            Match::Found(5)
        );
        assert_eq!(
            r.find(Some(b"example.com"), b"/catalog/v1/items", b"GET"),
            Match::Found(1)
        );
        assert_eq!(
            r.find(Some(b"other.org"), b"/catalog/v1/items", b"GET"),
            Match::Found(1)
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name(b"a.com:80"), b"a.com");
        assert_eq!(host_name(b"a.com"), b"a.com");
        assert_eq!(host_name(b"[::1]:80"), b"[::1]");
    }

    #[test]
    fn ten_thousand_routes() {
        let mut r = Router::new();
        for i in 0..10_000 {
            r.insert(
                &[],
                &seg(&format!("/svc{}/v1/items/{{id}}", i)),
                false,
                Methods::ANY,
                i,
            );
        }
        assert_eq!(
            r.find(None, b"/svc9999/v1/items/7", b"GET"),
            Match::Found(9999)
        );
        assert_eq!(
            r.find(None, b"/svc10000/v1/items/7", b"GET"),
            Match::NotFound
        );
    }
}
