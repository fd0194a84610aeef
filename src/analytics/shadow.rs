//! Shadow endpoint discovery: requests that match no route, counted per host, method and path
//! shape, so that an owner sees the endpoints clients call that the catalogue does not know
//! (OWASP API9: old integrations after a migration, clients guessing, scanners).
//!
//! A full path is never kept: the proxy reduces it to a shape at once (`shape`: numeric, UUID,
//! long hex, base64-like, e-mail-like and date-like segments become `{id}`; the query is
//! dropped; at most `MAX_SEGMENTS` segments). The aggregator adds each hit to `Table`, per UTC
//! day, with first and last seen, the request count and the callers who sent most (the
//! consumer when a key the gateway knows was presented, else the client address), kept by a
//! small heavy-hitters list. The table is bounded: past `[catalog] shadow_shapes` shapes, the
//! least-seen are evicted in batches and counted. `flush` adds the table into the store with the
//! usage rollups, where the same cap and `shadow_retention` apply (`store::shadow`).

use crate::store::shadow::{self as stored, ShadowDelta};
use crate::store::usage::DAY;
use foldhash::HashMap;
use std::net::IpAddr;

/// Path segments kept in a shape; more end it with `/**`.
pub const MAX_SEGMENTS: usize = 12;
/// Callers tracked per shape and day (the five with most requests are reported).
pub const TRACKED_CALLERS: usize = 16;
/// Segments longer than this are identifiers or noise.
const MAX_SEGMENT: usize = 64;

/// Who sent a request to a shadow endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Consumer(String),
    Address(IpAddr),
    Unknown,
}

impl Caller {
    /// As stored: `consumer:ID`, `ip:ADDRESS` or `unknown`.
    pub fn label(&self) -> String {
        match self {
            Caller::Consumer(id) => format!("consumer:{id}"),
            Caller::Address(ip) => format!("ip:{ip}"),
            Caller::Unknown => "unknown".to_string(),
        }
    }
}

/// One request that matched no route, already reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub host: String,
    pub method: String,
    pub shape: String,
    pub caller: Caller,
}

impl Hit {
    /// A hit from the request's host (as routing read it), method, path (without the query)
    /// and caller.
    pub fn new(host: &str, method: &str, path: &str, caller: Caller) -> Hit {
        Hit {
            host: host_of(host),
            method: method.chars().take(16).collect(),
            shape: shape(path),
            caller,
        }
    }
}

/// The host as a shape keeps it: lower case, without a port, at most 253 bytes of the
/// characters a host name may have (anything else becomes `?`).
pub fn host_of(raw: &str) -> String {
    let no_port = match raw.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => raw,
    };
    no_port
        .bytes()
        .take(253)
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'[' | b']' | b':' => b as char,
            b'A'..=b'Z' => b.to_ascii_lowercase() as char,
            _ => '?',
        })
        .collect()
}

/// The shape of a path: identifier-like segments replaced by `{id}`, the query dropped.
pub fn shape(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len().min(256));
    let mut segments = path.split('/').skip(1).peekable();
    if segments.peek().is_none() {
        return "/".to_string();
    }
    for (n, seg) in segments.enumerate() {
        if n == MAX_SEGMENTS {
            out.push_str("/**");
            break;
        }
        out.push('/');
        if is_identifier(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// Whether a path segment is an identifier (or too long to keep): all digits; a UUID; 16 or
/// more hex digits; 16 or more base64url-like characters with at least two digits (or 24 or
/// more with one, or 10 or more with three: short tokens and codes); an e-mail-like `a@b`; a date or number with separators (four or more digits
/// and only `-_.:+,` between them).
pub fn is_identifier(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.len() > MAX_SEGMENT {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    if digits == b.len() {
        return true;
    }
    if is_uuid(b) || (b.len() >= 16 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit)) {
        return true;
    }
    if seg.contains('@') || seg.contains("%40") {
        return true;
    }
    if digits >= 4
        && b.iter()
            .all(|c| c.is_ascii_digit() || b"-_.:+,".contains(c))
    {
        return true;
    }
    let base64ish = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || b"-_=+~.%".contains(c));
    base64ish
        && ((b.len() >= 16 && digits >= 2)
            || (b.len() >= 24 && digits >= 1)
            || (b.len() >= 10 && digits >= 3))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    day: i64,
    host: String,
    method: String,
    shape: String,
}

#[derive(Debug, Clone, Default)]
struct Entry {
    first: i64,
    last: i64,
    requests: u64,
    /// A heavy-hitters list: when full, a new caller replaces the one with fewest requests and
    /// inherits its count (so counts are upper bounds for callers that came late).
    callers: Vec<(Caller, u64)>,
}

impl Entry {
    fn add_caller(&mut self, caller: &Caller) {
        if let Some(c) = self.callers.iter_mut().find(|(c, _)| c == caller) {
            c.1 += 1;
            return;
        }
        if self.callers.len() < TRACKED_CALLERS {
            self.callers.push((caller.clone(), 1));
            return;
        }
        if let Some(min) = self.callers.iter_mut().min_by_key(|(_, n)| *n) {
            *min = (caller.clone(), min.1 + 1);
        }
    }
}

/// Shadow hits between two flushes, per day and shape; bounded.
pub struct Table {
    pending: HashMap<Key, Entry>,
    /// `[catalog] shadow_shapes` and `shadow_retention` (seconds), as last configured.
    pub cap: usize,
    pub retention: i64,
    /// Shapes evicted from this table since it was last taken.
    evicted: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            pending: HashMap::default(),
            evicted: 0,
            cap: 10_000,
            retention: 30 * DAY,
        }
    }
}

impl Table {
    /// Adds a hit seen at `at` (seconds); how many shapes were evicted to make room.
    pub fn add(&mut self, hit: &Hit, at: i64) -> u64 {
        let key = Key {
            day: at - at.rem_euclid(DAY),
            host: hit.host.clone(),
            method: hit.method.clone(),
            shape: hit.shape.clone(),
        };
        let mut evicted = 0;
        if !self.pending.contains_key(&key) && self.pending.len() >= self.cap.max(1) {
            evicted = self.evict();
        }
        let e = self.pending.entry(key).or_insert_with(|| Entry {
            first: at,
            ..Default::default()
        });
        e.first = e.first.min(at);
        e.last = e.last.max(at);
        e.requests += 1;
        e.add_caller(&hit.caller);
        evicted
    }

    /// Evicts the least-seen tenth of the table (at least one): a flood of new shapes costs a
    /// sort per tenth of the cap, not a scan per request.
    fn evict(&mut self) -> u64 {
        let mut counts: Vec<(u64, i64, Key)> = self
            .pending
            .iter()
            .map(|(k, e)| (e.requests, e.last, k.clone()))
            .collect();
        counts.sort_by_key(|c| (c.0, c.1));
        let n = (self.pending.len() / 10).max(1);
        for (_, _, k) in counts.into_iter().take(n) {
            self.pending.remove(&k);
        }
        self.evicted += n as u64;
        n as u64
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the pending hits, in the store's terms, and how many shapes were evicted from the
    /// table since the last take.
    pub fn take(&mut self) -> (Vec<ShadowDelta>, u64) {
        let evicted = std::mem::take(&mut self.evicted);
        let deltas = self
            .pending
            .drain()
            .map(|(k, e)| ShadowDelta {
                day: k.day,
                host: k.host,
                method: k.method,
                shape: k.shape,
                first_seen: e.first,
                last_seen: e.last,
                requests: e.requests,
                callers: e.callers.iter().map(|(c, n)| (c.label(), *n)).collect(),
            })
            .collect();
        (deltas, evicted)
    }
}

/// Adds the pending hits into the store and, with a fleet, into its Redis (merged with what is
/// there, the cap and retention applied); how many shapes were evicted (the fleet's count when
/// there is a fleet, whose listing is the one reported). On an error the hits are dropped and
/// logged: they are an inventory signal, and the next requests bring them back.
pub fn flush(
    table: &std::sync::Mutex<Table>,
    store: &crate::store::Store,
    fleet: Option<&crate::cluster::Cluster>,
) -> Result<u64, crate::store::StoreError> {
    let ((deltas, evicted_here), cap, retention) = {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        (t.take(), t.cap, t.retention)
    };
    if deltas.is_empty() {
        return Ok(0);
    }
    let now = crate::clock::now();
    let node = store.write(|tx| stored::add(tx, &deltas, cap, now - retention))?;
    match fleet {
        None => Ok(node),
        Some(c) => crate::cluster::shadow::add(c, &deltas, evicted_here, cap, retention, now)
            .map_err(|e| crate::store::StoreError::Redis(format!("fleet shadow endpoints: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_id_and_words_stay() {
        assert_eq!(shape("/orders/42"), "/orders/{id}");
        assert_eq!(
            shape("/users/3f2b8c1e-9d4a-4b7e-8a21-0c5d6e7f8a9b/orders?x=1"),
            "/users/{id}/orders"
        );
        assert_eq!(shape("/blobs/0123456789abcdef0123"), "/blobs/{id}");
        assert_eq!(
            shape("/t/eyJhbGciOiJIUzI1NiJ9aBc12/x"),
            "/t/{id}/x",
            "base64-like"
        );
        assert_eq!(shape("/by-mail/ana@example.com"), "/by-mail/{id}");
        assert_eq!(shape("/reports/2026-12-05"), "/reports/{id}");
        assert_eq!(shape("/reset/a1b2c3d4e5"), "/reset/{id}", "a short token");
        assert_eq!(shape("/invite/Xk7pQ2m9Lw"), "/invite/{id}");
        assert_eq!(shape("/v2/sha256/check"), "/v2/sha256/check");
        assert_eq!(shape("/v1/oauth2/token"), "/v1/oauth2/token");
        assert_eq!(shape("/api/authentication_v2"), "/api/authentication_v2");
        assert_eq!(shape("/"), "/");
        assert_eq!(shape(""), "/");
        assert_eq!(shape("/a/"), "/a/");
        let deep = "/a".repeat(20);
        assert_eq!(shape(&deep), format!("{}/**", "/a".repeat(MAX_SEGMENTS)));
        assert_eq!(shape(&format!("/x/{}", "a".repeat(65))), "/x/{id}");
    }

    #[test]
    fn hosts_lose_ports_and_case() {
        assert_eq!(host_of("API.Example.com:8443"), "api.example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("bad host\u{7f}"), "bad?host?");
    }

    fn hit(shape: &str, caller: Caller) -> Hit {
        Hit::new("h", "GET", shape, caller)
    }

    #[test]
    fn counts_first_last_and_top_callers() {
        let mut t = Table::default();
        let ip = |n: u8| Caller::Address(IpAddr::from([10, 0, 0, n]));
        for (at, c) in [(100, ip(1)), (50, ip(1)), (200, ip(2))] {
            t.add(&hit("/old/7", c), at);
        }
        t.add(&hit("/old/8", Caller::Consumer("acme".into())), 300);
        let (d, evicted) = t.take();
        assert_eq!((d.len(), evicted), (1, 0));
        assert_eq!(d[0].shape, "/old/{id}");
        assert_eq!(
            (d[0].first_seen, d[0].last_seen, d[0].requests),
            (50, 300, 4)
        );
        let mut callers = d[0].callers.clone();
        callers.sort();
        assert_eq!(
            callers,
            [
                ("consumer:acme".to_string(), 1),
                ("ip:10.0.0.1".to_string(), 2),
                ("ip:10.0.0.2".to_string(), 1)
            ]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn the_cap_evicts_the_least_seen() {
        let mut t = Table {
            cap: 20,
            ..Default::default()
        };
        for _ in 0..5 {
            t.add(&hit("/kept", Caller::Unknown), 10);
        }
        let mut evicted = 0;
        for n in 0..100 {
            evicted += t.add(&hit(&format!("/w{n}"), Caller::Unknown), 10);
        }
        assert!(t.len() <= 20);
        assert_eq!(
            evicted as usize + t.len(),
            101,
            "every shape is kept or counted"
        );
        let (kept, taken_evicted) = t.take();
        assert!(kept.iter().any(|d| d.shape == "/kept"));
        assert_eq!(
            taken_evicted, evicted,
            "the evictions are handed on with the hits"
        );
    }

    #[test]
    fn callers_past_the_list_replace_the_smallest() {
        let mut e = Entry::default();
        for n in 0..40u8 {
            e.add_caller(&Caller::Address(IpAddr::from([10, 0, 0, n])));
        }
        for _ in 0..10 {
            e.add_caller(&Caller::Consumer("big".into()));
        }
        assert_eq!(e.callers.len(), TRACKED_CALLERS);
        let top = e
            .callers
            .iter()
            .max_by_key(|(_, n)| *n)
            .map(|(c, _)| c.clone());
        assert_eq!(top, Some(Caller::Consumer("big".into())));
    }
}
