//! Semantic checks of a parsed config. Every problem is collected, each with its key path,
//! so one `turnpike check` run shows them all.

use super::error::Problem;
use super::file::*;
use crate::path::is_route_char;
use crate::route::{template_segments, Methods, Segment};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Returns every problem in `cfg`; empty means the config is valid. Governance rules at
/// severity error are problems too.
pub fn validate(cfg: &FileConfig) -> Vec<Problem> {
    let mut out = validate_base(cfg);
    out.extend(
        super::governance::evaluate(cfg)
            .into_iter()
            .filter(|f| f.severity == super::governance::Severity::Error)
            .map(|f| {
                Problem::at(
                    f.key_path,
                    format!("{} (governance rule {}, severity error)", f.message, f.rule),
                )
            }),
    );
    out
}

/// Every problem of `cfg` but the governance findings (which `turnpike lint` reports by rule).
pub fn validate_base(cfg: &FileConfig) -> Vec<Problem> {
    let mut v = Problems::default();
    server(&mut v, cfg);
    admin(&mut v, &cfg.admin);
    for (name, up) in &cfg.upstreams {
        upstream(&mut v, name, up);
        loops(&mut v, cfg, name, up);
    }
    apis(&mut v, cfg);
    cache(&mut v, &cfg.cache);
    v.0.extend(super::analytics::validate(&cfg.analytics));
    v.0.extend(super::telemetry::validate(&cfg.telemetry));
    v.0.extend(super::identity::validate(cfg));
    v.0.extend(super::catalog::validate(cfg));
    v.0.extend(super::governance::validate(&cfg.governance));
    v.0.extend(
        crate::policy::compile::check(cfg)
            .into_iter()
            .map(|(k, m)| Problem::at(k, m)),
    );
    v.0
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.0.push(Problem::at(key, msg));
    }
}

fn listen_addr(v: &mut Problems, key: &str, addr: &str, seen: &mut HashMap<SocketAddr, String>) {
    match addr.parse::<SocketAddr>() {
        Ok(a) => {
            if let Some(other) = seen.insert(a, key.to_string()) {
                v.add(key, format!("address {addr} is already used by {other}"));
            }
        }
        Err(_) => v.add(
            key,
            format!("invalid listen address {addr:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::]:443\""),
        ),
    }
}

fn server(v: &mut Problems, cfg: &FileConfig) {
    let s = &cfg.server;
    let mut seen = HashMap::new();
    for (key, list) in [
        ("server.strip_request_headers", &s.strip_request_headers),
        ("cache.strip_unkeyed", &cfg.cache.strip_unkeyed),
    ] {
        for (i, name) in list.iter().enumerate() {
            if let Err(e) = crate::headers::NameList::compile(std::slice::from_ref(name)) {
                v.add(format!("{key}[{i}]"), e);
            }
        }
    }
    if s.trusted_proxies.is_empty() {
        if s.proxy_protocol {
            v.add(
                "server.proxy_protocol",
                "needs server.trusted_proxies: the proxies allowed to send the header",
            );
        }
        for (i, t) in s.tls.iter().enumerate().filter(|(_, t)| t.proxy_protocol) {
            v.add(
                format!("server.tls[{i}].proxy_protocol"),
                format!(
                    "needs server.trusted_proxies: the proxies allowed to send the header to {}",
                    t.listen
                ),
            );
        }
    }
    if s.listen.is_empty() && s.tls.is_empty() {
        v.add(
            "server.listen",
            "no listener: give at least one address in server.listen or a [[server.tls]] listener",
        );
    }
    for (i, a) in s.listen.iter().enumerate() {
        listen_addr(v, &format!("server.listen[{i}]"), a, &mut seen);
    }
    for (i, t) in s.tls.iter().enumerate() {
        let key = format!("server.tls[{i}]");
        listen_addr(v, &format!("{key}.listen"), &t.listen, &mut seen);
        for (what, p) in [("cert", &t.cert), ("key", &t.key)] {
            if let Err(e) = std::fs::metadata(p) {
                v.add(
                    format!("{key}.{what}"),
                    format!("cannot read {}: {e}", p.display()),
                );
            }
        }
    }
    listen_addr(v, "admin.listen", &cfg.admin.listen, &mut seen);
    if s.keepalive_drain.0 >= s.grace_period.0 {
        v.add(
            "server.keepalive_drain",
            format!(
                "must be shorter than server.grace_period ({}s)",
                s.grace_period.0.as_secs()
            ),
        );
    }
    if s.threads == 0 || s.threads > 1024 {
        v.add(
            "server.threads",
            format!("must be between 1 and 1024, got {}", s.threads),
        );
    }
    let l = &s.limits;
    for (key, val) in [
        ("request_line", l.request_line.0),
        ("header_line", l.header_line.0),
        ("header_block", l.header_block.0),
        ("h2_max_header_list", l.h2_max_header_list.0),
        ("upstream_header_block", l.upstream_header_block.0),
    ] {
        if !(256..=1 << 20).contains(&val) {
            v.add(
                format!("server.limits.{key}"),
                format!("must be between 256B and 1MiB, got {val} bytes"),
            );
        }
    }
    for (key, val) in [
        ("h2_stream_window", l.h2_stream_window.0),
        ("h2_connection_window", l.h2_connection_window.0),
    ] {
        if !(65_535..=(1 << 31) - 1).contains(&val) {
            v.add(
                format!("server.limits.{key}"),
                format!("must be between 65535 bytes and 2GiB, got {val}"),
            );
        }
    }
    if l.header_count == 0 || l.header_count > 256 {
        v.add(
            "server.limits.header_count",
            format!("must be between 1 and 256, got {}", l.header_count),
        );
    }
    if l.h2_max_concurrent_streams == 0 {
        v.add(
            "server.limits.h2_max_concurrent_streams",
            "must be at least 1",
        );
    }
    for (key, d) in [
        ("head_timeout", l.head_timeout),
        ("idle_before_request", l.idle_before_request),
        ("keepalive_idle", l.keepalive_idle),
        ("body_rate_after", l.body_rate_after),
    ] {
        if d.0.as_millis() == 0 {
            v.add(format!("server.limits.{key}"), "must be longer than 0");
        }
    }
}

fn admin(v: &mut Problems, a: &AdminSection) {
    if a.token_env.is_some() && a.token_file.is_some() {
        v.add("admin", "set either token_env or token_file, not both");
    }
    if let Some(name) = &a.token_env {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            v.add(
                "admin.token_env",
                format!("{name:?} is not an environment variable name"),
            );
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn upstream(v: &mut Problems, name: &str, u: &UpstreamSection) {
    let key = format!("upstreams.{name}");
    if !is_name(name) {
        v.add(
            &key,
            "upstream names use letters, digits, '-', '_' and '.' (at most 64)",
        );
    }
    if u.targets.is_empty() {
        v.add(
            format!("{key}.targets"),
            "an upstream needs at least one target",
        );
    }
    let mut seen = HashSet::new();
    for (i, t) in u.targets.iter().enumerate() {
        let tkey = format!("{key}.targets[{i}]");
        if !valid_target_addr(&t.addr) {
            v.add(
                format!("{tkey}.addr"),
                format!("invalid target address {:?}: expected HOST:PORT", t.addr),
            );
        } else if !seen.insert(t.addr.to_ascii_lowercase()) {
            v.add(
                format!("{tkey}.addr"),
                format!("target {} is listed twice", t.addr),
            );
        }
        if t.weight == 0 || t.weight > 1000 {
            v.add(
                format!("{tkey}.weight"),
                format!("weight must be between 1 and 1000, got {}", t.weight),
            );
        }
    }
    match (u.hash_on, &u.hash_header) {
        (HashOn::Header, None) => v.add(
            format!("{key}.hash_header"),
            "hash_on = \"header\" needs hash_header",
        ),
        (HashOn::ClientIp, Some(_)) => v.add(
            format!("{key}.hash_header"),
            "hash_header only applies with hash_on = \"header\"",
        ),
        (_, Some(h)) if !is_header_name(h) => v.add(
            format!("{key}.hash_header"),
            format!("{h:?} is not a header name"),
        ),
        _ => {}
    }
    if u.balance == Balance::RoundRobin && u.hash_on == HashOn::Header {
        v.add(
            format!("{key}.hash_on"),
            "hash_on only applies to balance = \"consistent_hash\"",
        );
    }
    for (k, d) in [
        ("connect_timeout", u.connect_timeout),
        ("read_timeout", u.read_timeout),
        ("write_timeout", u.write_timeout),
        ("idle_timeout", u.idle_timeout),
    ] {
        if d.0.as_millis() == 0 {
            v.add(format!("{key}.{k}"), "must be longer than 0");
        }
    }
    if u.retries > 10 {
        v.add(
            format!("{key}.retries"),
            format!("at most 10, got {}", u.retries),
        );
    }
    if let Some(h) = &u.health {
        let hkey = format!("{key}.health");
        if !h.path.starts_with('/')
            || h.path.bytes().any(|b| b <= 0x20 || b >= 0x7f)
            || h.path.parse::<http::uri::PathAndQuery>().is_err()
        {
            v.add(
                format!("{hkey}.path"),
                format!("{:?} must be a path starting with '/'", h.path),
            );
        }
        if h.interval.0.as_millis() < 100 {
            v.add(format!("{hkey}.interval"), "must be at least 100ms");
        }
        if h.timeout.0.as_millis() == 0 {
            v.add(format!("{hkey}.timeout"), "must be longer than 0");
        }
        for (k, n) in [
            ("unhealthy_after", h.unhealthy_after),
            ("healthy_after", h.healthy_after),
        ] {
            if n == 0 || n > 100 {
                v.add(
                    format!("{hkey}.{k}"),
                    format!("must be between 1 and 100, got {n}"),
                );
            }
        }
        if let Some(host) = &h.host {
            if host.is_empty() || host.bytes().any(|b| b <= 0x20 || b >= 0x7f) {
                v.add(
                    format!("{hkey}.host"),
                    format!("{host:?} is not a host name"),
                );
            }
        }
    }
    if u.passive.enabled && (u.passive.failures == 0 || u.passive.cooldown.0.as_millis() == 0) {
        v.add(
            format!("{key}.passive"),
            "failures and cooldown must be above 0 (or set enabled = false)",
        );
    }
}

/// A target that is one of the gateway's own listeners would expose the admin API through the
/// proxy, or make requests loop.
fn loops(v: &mut Problems, cfg: &FileConfig, name: &str, u: &UpstreamSection) {
    let own: Vec<(SocketAddr, &str)> = cfg
        .server
        .listen
        .iter()
        .map(|a| (a.as_str(), "a proxy listener"))
        .chain(
            cfg.server
                .tls
                .iter()
                .map(|t| (t.listen.as_str(), "a TLS listener")),
        )
        .chain(std::iter::once((
            cfg.admin.listen.as_str(),
            "the admin listener",
        )))
        .filter_map(|(a, what)| a.parse().ok().map(|a| (a, what)))
        .collect();
    for (i, t) in u.targets.iter().enumerate() {
        let Ok(target) = t.addr.parse::<SocketAddr>() else {
            continue;
        };
        for (listen, what) in &own {
            let same_ip = listen.ip() == target.ip()
                || (listen.ip().is_unspecified()
                    && (target.ip().is_loopback() || target.ip().is_unspecified()));
            if same_ip && listen.port() == target.port() {
                v.add(
                    format!("upstreams.{name}.targets[{i}].addr"),
                    format!("{} is {what} of this gateway", t.addr),
                );
            }
        }
    }
}

fn valid_target_addr(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        }
        None => false,
    }
}

/// Checks a path template; returns its normalized shape (params as `{}`) for overlap checks.
fn template(v: &mut Problems, key: &str, t: &str, allow_root: bool) -> Option<String> {
    if !t.starts_with('/') {
        v.add(key, format!("{t:?} must start with '/'"));
        return None;
    }
    if t == "/" {
        return if allow_root {
            Some(String::new())
        } else {
            v.add(key, "a route path must name at least one segment (use the API's base_path for its root)");
            None
        };
    }
    let mut shape = String::new();
    let mut params = HashSet::new();
    for (i, raw) in t[1..].split('/').enumerate() {
        if raw.is_empty() {
            v.add(
                key,
                format!("{t:?} has an empty segment at position {}", i + 1),
            );
            return None;
        }
        match template_segments(&format!("/{raw}")).first() {
            Some(Segment::Param(name)) => {
                if !is_name(name) {
                    v.add(key, format!("{t:?}: parameter {{{name}}} needs a name of letters, digits, '-' or '_'"));
                    return None;
                }
                if !params.insert(name.clone()) {
                    v.add(key, format!("{t:?}: parameter {{{name}}} appears twice"));
                    return None;
                }
                shape.push_str("/{}");
            }
            _ => {
                if raw == "." || raw == ".." || !raw.bytes().all(is_route_char) {
                    v.add(key, format!("{t:?}: segment {raw:?} may only use letters, digits, '-', '_', '~', '.', ':' or a whole {{param}}"));
                    return None;
                }
                shape.push('/');
                shape.push_str(raw);
            }
        }
    }
    Some(shape)
}

/// Response headers a `respond` block may not set: framing and hop-by-hop headers, and the
/// ones the gateway sets itself.
const GATEWAY_SET_RESPONSE_HEADERS: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "x-request-id",
    "content-type",
    "date",
];

fn respond(v: &mut Problems, key: &str, r: &RespondSection) {
    if !(200..=599).contains(&r.status) {
        v.add(
            format!("{key}.status"),
            format!("must be between 200 and 599, got {}", r.status),
        );
    }
    if r.content_type.is_empty() || r.content_type.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        v.add(
            format!("{key}.content_type"),
            "must be a printable ASCII media type",
        );
    }
    for (name, value) in &r.headers {
        if !is_header_name(name) {
            v.add(
                format!("{key}.headers"),
                format!("{name:?} is not a header name"),
            );
        }
        if GATEWAY_SET_RESPONSE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            v.add(
                format!("{key}.headers.{name}"),
                "framing, hop-by-hop and gateway-set headers cannot be set here (use content_type for Content-Type)",
            );
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            v.add(
                format!("{key}.headers.{name}"),
                "header values may not contain control characters",
            );
        }
    }
}

/// One routable thing, for overlap checks: hosts, path shape, catch-all, methods, key path.
struct Claim {
    hosts: Vec<String>,
    shape: String,
    catch_all: bool,
    methods: Methods,
    key: String,
}

/// `[cache]`.
fn cache(v: &mut Problems, c: &CacheSection) {
    if c.max_memory.0 < 1 << 20 {
        v.add("cache.max_memory", "at least 1MiB");
    }
    if c.lock_timeout.0 < std::time::Duration::from_millis(100) {
        v.add("cache.lock_timeout", "at least 100ms");
    }
    if c.max_variants == 0 {
        v.add("cache.max_variants", "at least 1");
    }
    if !is_name(&c.purge_channel) {
        v.add(
            "cache.purge_channel",
            "letters, digits, '-', '_' and '.' (at most 64)",
        );
    }
}

/// `[apis.cache]` / `[apis.routes.cache]`.
fn cache_block(v: &mut Problems, cfg: &FileConfig, key: &str, c: &ApiCacheSection, auth: bool) {
    if c.ttl.0 < std::time::Duration::from_secs(1) {
        v.add(format!("{key}.ttl"), "at least 1s");
    }
    if c.scope == Some(CacheScope::Consumer) && !auth {
        v.add(
            format!("{key}.scope"),
            "\"consumer\" needs [apis.auth] to know the consumer; use \"shared\" on a public API",
        );
    }
    for (i, h) in c.vary.iter().enumerate() {
        if !is_header_name(h) {
            v.add(
                format!("{key}.vary[{i}]"),
                format!("{h:?} is not a header name"),
            );
        }
    }
    if c.max_object
        .is_some_and(|m| m.0 == 0 || m.0 > cfg.cache.max_memory.0 / 8)
    {
        v.add(
            format!("{key}.max_object"),
            format!(
                "between 1 byte and an eighth of [cache] max_memory ({} bytes)",
                cfg.cache.max_memory.0 / 8
            ),
        );
    }
}

fn apis(v: &mut Problems, cfg: &FileConfig) {
    if cfg.apis.is_empty() {
        v.add(
            "apis",
            "no [[apis]]: a gateway with nothing to serve is refused (is the file empty or cut short?)",
        );
    }
    let known: Vec<&str> = cfg.upstreams.keys().map(String::as_str).collect();
    let mut ids: HashMap<(String, Option<String>), usize> = HashMap::new();
    let mut claims: Vec<Claim> = Vec::new();
    for (i, api) in cfg.apis.iter().enumerate() {
        let key = format!("apis[{i}]");
        if !is_name(&api.name) {
            v.add(
                format!("{key}.name"),
                format!(
                    "{:?}: API names use letters, digits, '-', '_' and '.' (at most 64)",
                    api.name
                ),
            );
        }
        if let Some(ver) = &api.version {
            if !is_name(ver) {
                v.add(
                    format!("{key}.version"),
                    format!("{ver:?}: versions use letters, digits, '-', '_' and '.'"),
                );
            }
        }
        if let Some(first) = ids.insert((api.name.clone(), api.version.clone()), i) {
            v.add(
                format!("{key}.name"),
                format!(
                    "API {:?} version {:?} is already defined by apis[{first}]",
                    api.name,
                    api.version.as_deref().unwrap_or("")
                ),
            );
        }
        let base = template(v, &format!("{key}.base_path"), &api.base_path, true);
        if api.base_path.contains('{') {
            v.add(
                format!("{key}.base_path"),
                "a base path cannot hold {params}",
            );
        }
        if api.base_path.len() > 1 && api.base_path.ends_with('/') {
            v.add(
                format!("{key}.base_path"),
                "a base path must not end with '/'",
            );
        }
        for (h, host) in api.hosts.iter().enumerate() {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !ok {
                v.add(
                    format!("{key}.hosts[{h}]"),
                    format!("{host:?} is not a host name (a leading \"*.\" is allowed)"),
                );
            }
        }
        let has_respond = api.respond.is_some();
        match (&api.upstream, has_respond) {
            (Some(up), false) => {
                if !cfg.upstreams.contains_key(up) {
                    v.add(
                        format!("{key}.upstream"),
                        format!(
                            "unknown upstream {up:?}; known: {}",
                            if known.is_empty() {
                                "(none)".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
            (Some(_), true) => v.add(&key, "set either upstream or respond, not both"),
            (None, true) => {}
            (None, false) => {
                let answered = |r: &RouteSection| r.respond.is_some() || r.mock;
                if !api.mocked() && (api.routes.is_empty() || !api.routes.iter().all(answered)) {
                    v.add(format!("{key}.upstream"), "missing: an API needs an upstream, or a respond block (or mock = true) on the API or on every route");
                }
            }
        }
        if let Some(r) = &api.respond {
            respond(v, &format!("{key}.respond"), r);
        }
        if let Some(c) = &api.cache {
            cache_block(v, cfg, &format!("{key}.cache"), c, api.auth.is_some());
        }
        let mut hosts: Vec<String> = api.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        hosts.sort();
        if api.routes.is_empty() {
            if let Some(base) = &base {
                claims.push(Claim {
                    hosts: hosts.clone(),
                    shape: base.clone(),
                    catch_all: true,
                    methods: Methods::ANY,
                    key: key.clone(),
                });
            }
        }
        for (r, route) in api.routes.iter().enumerate() {
            let rkey = format!("{key}.routes[{r}]");
            let shape = template(v, &format!("{rkey}.path"), &route.path, false);
            let methods = match Methods::from_names(&route.methods) {
                Some(m) => m,
                None => {
                    let bad: Vec<&String> = route
                        .methods
                        .iter()
                        .filter(|m| Methods::from_names(&[m.as_str()]).is_none())
                        .collect();
                    v.add(
                        format!("{rkey}.methods"),
                        format!(
                            "unknown method {:?}; use {}",
                            bad.first().map_or("", |s| s.as_str()),
                            crate::route::KNOWN_METHODS.join(", ")
                        ),
                    );
                    continue;
                }
            };
            let mut uniq = HashSet::new();
            if route.methods.iter().any(|m| !uniq.insert(m)) {
                v.add(format!("{rkey}.methods"), "a method is listed twice");
            }
            if let Some(rr) = &route.respond {
                respond(v, &format!("{rkey}.respond"), rr);
            }
            if let Some(c) = &route.cache {
                cache_block(v, cfg, &format!("{rkey}.cache"), c, api.auth.is_some());
            }
            if let (Some(base), Some(shape)) = (&base, shape) {
                claims.push(Claim {
                    hosts: hosts.clone(),
                    shape: format!("{base}{shape}"),
                    catch_all: false,
                    methods,
                    key: rkey,
                });
            }
        }
    }
    // Two claims overlap when they share a host (or both have none), a path shape and a method.
    let mut by_shape: HashMap<(&str, &str, bool), Vec<&Claim>> = HashMap::new();
    for c in &claims {
        let hosts: Vec<&str> = if c.hosts.is_empty() {
            vec![""]
        } else {
            c.hosts.iter().map(String::as_str).collect()
        };
        for host in hosts {
            by_shape
                .entry((host, &c.shape, c.catch_all))
                .or_default()
                .push(c);
        }
    }
    let mut overlaps: Vec<(String, String)> = Vec::new();
    for group in by_shape.values() {
        for (a, first) in group.iter().enumerate() {
            for second in &group[a + 1..] {
                if first.methods.intersects(second.methods) {
                    overlaps.push((second.key.clone(), first.key.clone()));
                }
            }
        }
    }
    overlaps.sort();
    overlaps.dedup();
    for (second, first) in overlaps {
        v.add(
            second,
            format!("overlaps {first}: same hosts, same path and a shared method"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let cfg: FileConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        validate(&cfg).iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn hosts_may_be_exact_or_leading_wildcards() {
        let ok = "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\nhosts = [\"api.example.com\", \"*.example.com\"]\n[apis.respond]\n";
        assert!(problems(ok).is_empty(), "{:?}", problems(ok));
        for bad in ["*", "a.*.com", "**.example.com", "exa mple.com", ""] {
            let text = format!(
                "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\nhosts = [\"{bad}\"]\n[apis.respond]\n"
            );
            assert!(
                problems(&text)
                    .iter()
                    .any(|p| p.contains("apis[0].hosts[0]")),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn route_templates() {
        let route = |path: &str| {
            format!("[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\n[[apis.routes]]\npath = \"{path}\"\n")
        };
        for ok in [
            "/items",
            "/items/{id}",
            "/v1/things:batchGet",
            "/a/{x}/b/{y}",
        ] {
            assert!(
                problems(&route(ok)).is_empty(),
                "{ok}: {:?}",
                problems(&route(ok))
            );
        }
        for bad in [
            "items",
            "/",
            "/a//b",
            "/a/{x}/{x}",
            "/a/%41",
            "/a/..",
            "/a b",
            "/a/{}",
            "/a/x{y}",
        ] {
            assert!(!problems(&route(bad)).is_empty(), "{bad} should be refused");
        }
    }

    #[test]
    fn more_semantic_rules() {
        let all = problems(
            r#"
[server]
listen = ["0.0.0.0:8080"]
[admin]
listen = "127.0.0.1:9901"
[upstreams.self]
targets = [ { addr = "127.0.0.1:8080" }, { addr = "127.0.0.1:9901" } ]
hash_header = "x-user"
[upstreams.self.health]
type = "http"
path = "/a b"
[[apis]]
name = "nothing"
base_path = "/nothing"
[[apis]]
name = "two"
base_path = "/two"
hosts = ["a.com", "b.com"]
[apis.respond]
headers = { "Transfer-Encoding" = "chunked", "X-Ok" = "1" }
[[apis]]
name = "one"
base_path = "/two"
hosts = ["B.com"]
[apis.respond]
"#,
        )
        .join("\n");
        for expected in [
            "upstreams.self.targets[0].addr: 127.0.0.1:8080 is a proxy listener of this gateway",
            "upstreams.self.targets[1].addr: 127.0.0.1:9901 is the admin listener of this gateway",
            "upstreams.self.hash_header: hash_header only applies with hash_on = \"header\"",
            "upstreams.self.health.path",
            "apis[0].upstream: missing",
            "apis[1].respond.headers.Transfer-Encoding",
            "apis[2]: overlaps apis[1]",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
        assert!(!all.contains("X-Ok"), "{all}");
    }

    #[test]
    fn base_path_rules() {
        let api = |base: &str| {
            format!("[[apis]]\nname = \"a\"\nbase_path = \"{base}\"\n[apis.respond]\n")
        };
        assert!(problems(&api("/")).is_empty());
        assert!(problems(&api("/a/b")).is_empty());
        for bad in ["/a/", "a", "/{x}", "/a/../b"] {
            assert!(!problems(&api(bad)).is_empty(), "{bad} should be refused");
        }
    }
}
