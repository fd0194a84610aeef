//! The policy engine end to end: each policy kind through the real binary to a recording
//! upstream, attachment at every level, the stage order, trusted proxies, load-time refusals
//! with key paths, reloads that swap policies under load, and the refusing policy named in
//! the access log and the metrics.

mod support;

use std::time::Duration;
use support::load::Load;
use support::upstream::Upstream;
use support::{client, key_digest, problem, run_cli, Gateway};

const PARTNER_KEY: &str = "tp_partner_key_0123456789abcdef";
const INSIDER_KEY: &str = "tp_insider_key_0123456789abcdef";

fn consumers() -> String {
    format!(
        r#"
[plans.basic]
rate = "1000/s"
quotas = ["3/hour"]

[[consumers]]
id = "partner"
plan = "basic"
groups = ["partners"]
metadata = {{ tenant = "acme-co" }}
keys = [ {{ sha256 = "{p}" }} ]

[[consumers]]
id = "insider"
plan = "basic"
groups = ["partners", "internal"]
keys = [ {{ sha256 = "{i}" }} ]
"#,
        p = key_digest(PARTNER_KEY),
        i = key_digest(INSIDER_KEY)
    )
}

fn cors_config(up: &Upstream) -> String {
    format!(
        r#"
[policies.partner-cors]
kind = "cors"
allow_origins = ["https://app.example.com", "https://*.partner.example"]
allow_methods = ["GET", "POST"]
allow_headers = ["content-type", "x-api-key"]
expose_headers = ["ratelimit", "ratelimit-policy"]
allow_credentials = true
max_age = "10m"

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
base_path = "/orders"
upstream = "app"
policies = ["partner-cors"]
[apis.auth]
methods = ["api_key"]
[[apis.routes]]
path = "/{{id}}"
methods = ["GET"]

[[apis]]
name = "notes"
base_path = "/notes"
upstream = "app"
[[apis.routes]]
path = "/items"
methods = ["GET"]
[[apis.routes]]
path = "/items"
methods = ["POST"]
policies = ["partner-cors"]
{consumers}
"#,
        up = up.addr,
        consumers = consumers()
    )
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn metrics(gw: &Gateway) -> String {
    support::metrics_text(gw).await
}

/// Waits until the metrics show `needle` (the aggregator counts off the request path).
async fn metrics_show(gw: &Gateway, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(gw).await;
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed {needle}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_before_identification_and_marks_allowed_origins() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&cors_config(&up));
    let c = client();
    let preflight = |origin: &str, method: &str, headers: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/orders/42"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
    };

    // A preflight to a GET-only route needs no key and never reaches the upstream.
    let r = preflight("https://app.example.com", "GET", "X-API-Key")
        .send()
        .await
        .expect("preflight");
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST")
    );
    assert!(header(&r, "access-control-allow-headers").is_some_and(|h| h.contains("x-api-key")));
    assert!(header(&r, "content-length").is_none(), "no length on a 204");

    // Wildcard origins match any subdomain.
    let r = preflight("https://eu.shop.partner.example", "POST", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://eu.shop.partner.example")
    );

    // A disallowed origin, method or header: 403 without CORS headers.
    for (origin, method, headers) in [
        ("https://evil.example", "GET", "x-api-key"),
        ("https://partner.example.evil.com", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "GET", "x-admin"),
    ] {
        let r = preflight(origin, method, headers)
            .send()
            .await
            .expect("preflight");
        assert_eq!(r.status(), 403, "{origin} {method} {headers}");
        assert!(header(&r, "access-control-allow-origin").is_none());
        problem(&r.text().await.expect("body"), 403, "cors_rejected");
    }
    assert_eq!(up.hits(), 0, "no preflight reached the upstream");

    // Actual requests: an allowed origin gets the CORS headers, on success and on refusal.
    let r = c
        .get(gw.url("/orders/42"))
        .header("origin", "https://app.example.com")
        .header("x-api-key", PARTNER_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("ratelimit, ratelimit-policy")
    );
    assert!(header(&r, "ratelimit").is_some(), "the plan's fields too");
    let vary: Vec<&str> = r
        .headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(vary.iter().any(|v| v.contains("Origin")), "{vary:?}");
    let r = c
        .get(gw.url("/orders/42"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://app.example.com"),
        "a browser can read the refusal"
    );
    let r = c
        .get(gw.url("/orders/42"))
        .header("origin", "https://evil.example")
        .header("x-api-key", PARTNER_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "CORS never blocks a server-side caller");
    assert!(header(&r, "access-control-allow-origin").is_none());

    // The upstream's own CORS headers never pass a cors policy.
    let r = c
        .get(gw.url("/orders/42"))
        .header("origin", "https://evil.example")
        .header("x-api-key", PARTNER_KEY)
        .header(
            "x-test-respond",
            "Access-Control-Allow-Origin=https://evil.example|Access-Control-Allow-Credentials=true",
        )
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(header(&r, "access-control-allow-origin").is_none());
    assert!(header(&r, "access-control-allow-credentials").is_none());

    // A preflight is answered by the policy of the route for the method it asks about.
    let ask = |method: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/notes/items"))
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", method)
    };
    let r = ask("POST").send().await.expect("preflight");
    assert_eq!(r.status(), 204, "POST /notes/items has the cors policy");
    let r = ask("GET").send().await.expect("preflight");
    assert_eq!(
        r.status(),
        405,
        "GET /notes/items has none (and OPTIONS is not a route)"
    );

    // An OPTIONS that is not a preflight is still a wrong method.
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/orders/42"))
        .send()
        .await
        .expect("options");
    assert_eq!(r.status(), 405);

    metrics_show(
        &gw,
        r#"turnpike_policy_refusals_total{api="orders",kind="cors",policy="partner-cors"} 4"#,
    )
    .await;
    metrics_show(
        &gw,
        r#"turnpike_policy_refusals_total{api="orders",kind="identify",policy="auth"} 1"#,
    )
    .await;
}

fn office_config(up: &Upstream, server_extra_policies: &str) -> String {
    format!(
        r#"
[policies.office-only]
kind = "ip_filter"
allow = ["192.0.2.0/24", "2001:db8::/32"]

[policies.no-loopback]
kind = "ip_filter"
deny = ["127.0.0.0/8", "::1"]

[analytics]
access_log = "logs/access.log"

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
base_path = "/orders"
upstream = "app"
[apis.auth]
methods = ["api_key"]
[[apis.routes]]
path = "/{{id}}"
methods = ["GET"]
policies = ["office-only"]

[[apis]]
name = "open"
base_path = "/open"
upstream = "app"
policies = ["no-loopback"]
{server_extra_policies}
{consumers}
"#,
        up = up.addr,
        consumers = consumers()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_filters_use_the_client_behind_trusted_proxies_and_run_before_identification() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "trusted_proxies = [\"127.0.0.1\"]\n",
        &office_config(&up, ""),
    );
    let c = client();
    let get = |xff: &str, key: &str| {
        c.get(gw.url("/orders/42"))
            .header("x-forwarded-for", xff)
            .header("x-api-key", key)
    };

    // IPv4 and IPv6 clients inside the ranges pass; the upstream sees the client address.
    for ip in ["192.0.2.7", "2001:db8::5"] {
        let r = get(ip, PARTNER_KEY).send().await.expect("get");
        assert_eq!(r.status(), 200, "{ip}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["headers"]["x-forwarded-for"][0], ip);
    }

    // Outside: 403 naming the policy; a prepended allowed address proves nothing (the
    // right-most untrusted entry is the client).
    for xff in ["203.0.113.9", "192.0.2.7, 203.0.113.9"] {
        let r = get(xff, PARTNER_KEY).send().await.expect("get");
        assert_eq!(r.status(), 403, "{xff}");
        problem(&r.text().await.expect("body"), 403, "forbidden");
    }

    // Stage order: a blocked address never reaches identification, so wrong keys are not
    // counted by the failed-auth guard and valid ones consume no quota.
    for _ in 0..8 {
        let r = get("203.0.113.9", "wrong-key").send().await.expect("get");
        assert_eq!(r.status(), 403, "refused at Edge, never 401 or 429");
    }
    let r = get("192.0.2.7", PARTNER_KEY).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let state = header(&r, "ratelimit").unwrap_or_default().to_string();
    assert!(
        state.contains(";r=0;"),
        "3 of 3 used: two passing requests before and this one; none of the blocked ones: {state}"
    );

    // An address-level deny on an API.
    let r = c.get(gw.url("/open/x")).send().await.expect("get");
    assert_eq!(r.status(), 403, "loopback is denied on /open");
    let r = c
        .get(gw.url("/open/x"))
        .header("x-forwarded-for", "198.51.100.4")
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        200,
        "the client behind the trusted proxy is not loopback"
    );

    // The refusing policy is named in the access log and the metrics.
    metrics_show(
        &gw,
        r#"turnpike_policy_refusals_total{api="orders",kind="ip_filter",policy="office-only"} 10"#,
    )
    .await;
    let log = std::fs::read_to_string(gw.dir.path().join("logs/access.log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("\"status\":403"))
        .unwrap_or_else(|| panic!("no 403 in the access log: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert_eq!(v["policy"], "office-only");
    assert_eq!(v["client_ip"], "203.0.113.9");
    assert!(!log.contains(PARTNER_KEY) && !log.contains("wrong-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_spoof_its_address() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "trusted_proxies = [\"10.0.0.0/8\"]\n",
        &office_config(&up, ""),
    );
    let c = client();
    let r = c
        .get(gw.url("/orders/42"))
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-api-key", PARTNER_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        403,
        "the loopback peer is not trusted: its header is ignored"
    );
    let r = c
        .get(gw.url("/open/x"))
        .header("x-forwarded-for", "198.51.100.4")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 403);
    assert_eq!(up.hits(), 0);
}

fn edits_config(up: &Upstream) -> String {
    format!(
        r#"
[policies.no-internal-headers]
kind = "headers"
request = {{ remove = ["x-debug"], set = {{ "x-tenant" = "{{consumer.metadata.tenant}}", "x-request" = "{{request.id}}" }} }}
response = {{ remove = ["x-upstream"], set = {{ "cache-control" = "no-store" }} }}

[policies.item-id]
kind = "headers"
request = {{ set = {{ "x-item" = "item-{{route.param.id}}", "x-client" = "{{client.ip}}" }} }}

[policies.v1-paths]
kind = "rewrite"
path = "/legacy/items/{{id}}"
query = {{ remove = ["debug"], set = {{ "source" = "gateway" }} }}

[policies.small-bodies]
kind = "body_size"
max = "1KiB"

[policies.no-scrapers]
kind = "bot"
deny_user_agents = ["(?i)curl/", "(?i)python-requests"]
require_user_agent = true

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
base_path = "/orders/v1"
upstream = "app"
strip_base_path = true
policies = ["small-bodies"]
[apis.auth]
methods = ["api_key"]
[[apis.routes]]
path = "/{{id}}"
methods = ["GET", "POST"]
policies = ["v1-paths", "item-id"]
[[apis.routes]]
path = "/upload"
methods = ["POST"]

[[apis]]
name = "public"
base_path = "/public"
upstream = "app"
policies = ["no-scrapers"]
{consumers}
"#,
        up = up.addr,
        consumers = consumers()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_rewrites_body_sizes_and_bot_rules() {
    let up = Upstream::start("app").await;
    // Attached to the server: every API.
    let gw = Gateway::start_with("policies = [\"no-internal-headers\"]\n", &edits_config(&up));
    let c = client();

    // Server-level header edits with templates, route-level rewrite from the parameter.
    let r = c
        .get(gw.url("/orders/v1/42?debug=1&keep=yes"))
        .header("x-api-key", PARTNER_KEY)
        .header("x-debug", "1")
        .header("x-request-id", "req-123")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert!(
        header(&r, "x-upstream").is_none(),
        "removed from the answer"
    );
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["uri"], "/legacy/items/42?keep=yes&source=gateway");
    let h = &v["headers"];
    assert!(h.get("x-debug").is_none(), "{h}");
    assert_eq!(h["x-tenant"][0], "acme-co");
    assert_eq!(h["x-request"][0], "req-123");
    assert_eq!(h["x-item"][0], "item-42");
    assert_eq!(h["x-client"][0], "127.0.0.1");
    assert!(h.get("x-api-key").is_none(), "credentials still stripped");

    // A consumer without the metadata key: that header is not set, the rest applies.
    let r = c
        .get(gw.url("/orders/v1/7"))
        .header("x-api-key", INSIDER_KEY)
        .send()
        .await
        .expect("get");
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["headers"].get("x-tenant").is_none());
    assert_eq!(v["uri"], "/legacy/items/7?source=gateway");

    // Body size: by length and chunked, refused with 413 before or while reading.
    let hits = up.hits();
    let r = c
        .post(gw.url("/orders/v1/upload"))
        .header("x-api-key", PARTNER_KEY)
        .body(vec![b'a'; 2000])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    problem(&r.text().await.expect("body"), 413, "payload_too_large");
    let chunk = "a".repeat(800);
    let raw = format!(
        "POST /orders/v1/upload HTTP/1.1\r\nHost: localhost\r\nx-api-key: {PARTNER_KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let r = support::raw_request(gw.addr, raw.as_bytes());
    assert!(
        r.starts_with("HTTP/1.1 413"),
        "a chunked body over the limit: {r}"
    );
    let r = c
        .post(gw.url("/orders/v1/upload"))
        .header("x-api-key", PARTNER_KEY)
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200, "under the limit");
    // (A chunked body streams: its head may have reached the upstream before the limit was
    // crossed, but never the whole body.)
    assert!(up.hits() <= hits + 2);
    assert_eq!(up.last().map(|s| s.body_len), Some(1000));

    // Bot rules.
    for ua in ["curl/8.5.0", "python-requests/2.31"] {
        let r = c
            .get(gw.url("/public/x"))
            .header("user-agent", ua)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 403, "{ua}");
    }
    let r = support::raw_request(
        gw.addr,
        b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "no User-Agent: {r}");
    let r = c
        .get(gw.url("/public/x"))
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    metrics_show(
        &gw,
        r#"turnpike_policy_refusals_total{api="orders",kind="body_size",policy="small-bodies"} 2"#,
    )
    .await;
}

fn pii_config(up: &Upstream) -> String {
    format!(
        r#"
[policies.hide-pii]
kind = "json_fields"
remove = ["/headers/x-secret"]
unless_groups = ["internal"]

[groups.partners]
description = "outside companies"
policies = ["hide-pii"]

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
base_path = "/orders"
upstream = "app"
[apis.auth]
methods = ["api_key"]
{consumers}
"#,
        up = up.addr,
        consumers = consumers()
    )
    .replace("quotas = [\"3/hour\"]", "quotas = [\"100/hour\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_fields_follow_groups_and_leave_other_bodies_alone() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&pii_config(&up));
    let c = client();
    let get = |path: &str, key: &str| {
        c.get(gw.url(path))
            .header("x-api-key", key)
            .header("x-secret", "s3cr3t")
            .header("accept-encoding", "gzip")
    };
    let r = get("/orders/1", PARTNER_KEY).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(
        v["headers"].get("x-secret").is_none(),
        "removed for partners: {v}"
    );
    assert_eq!(v["uri"], "/orders/1", "the rest is kept");
    let seen = up.last().expect("seen");
    assert!(
        seen.header("accept-encoding").is_none(),
        "the upstream is asked for an identity body"
    );

    let r = get("/orders/1", INSIDER_KEY).send().await.expect("get");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        v["headers"]["x-secret"][0], "s3cr3t",
        "internal consumers see everything"
    );
    assert_eq!(
        v["headers"]["accept-encoding"][0], "gzip",
        "and their requests are unchanged"
    );

    // A range of an answer that is edited whole: the whole answer, edited.
    let r = get("/orders/1", PARTNER_KEY)
        .header("range", "bytes=1-")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200, "not 206");
    assert_ne!(
        header(&r, "connection"),
        Some("close"),
        "the connection stays open"
    );
    let v: serde_json::Value = r.json().await.expect("whole JSON");
    assert!(v["headers"].get("x-secret").is_none());
    assert!(
        v["headers"].get("range").is_none(),
        "the upstream got no Range"
    );

    // A body that is not valid JSON passes unchanged, with its length.
    let r = get("/orders/1?size=10", PARTNER_KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "xxxxxxxxxx");
    // HEAD: no body to edit, and no length that would tell what was removed.
    let r = c
        .head(gw.url("/orders/1"))
        .header("x-api-key", PARTNER_KEY)
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-length").is_none());
}

#[test]
fn broken_policies_are_refused_at_load_with_their_key_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = ["127.0.0.1:18080"]
policies = ["cors-a", "nope"]
trusted_proxies = ["10.0.0.0/33"]

[policies.cors-a]
kind = "cors"
allow_origins = ["https://a.example"]

[policies.cors-b]
kind = "cors"
allow_origins = ["https://b.example"]

[policies.bad-cidr]
kind = "ip_filter"
allow = ["10.1.2.3/40"]

[policies.bad-regex]
kind = "bot"
deny_user_agents = ["(unclosed"]

[policies.bad-template]
kind = "headers"
request = { set = { "x-who" = "{consumer.name}" } }

[policies.wrong-key]
kind = "body_size"
max = "1KiB"
allow = ["10.0.0.0/8"]

[policies.needs-id]
kind = "rewrite"
path = "/items/{id}"

[upstreams.app]
targets = [ { addr = "127.0.0.1:9" } ]

[[apis]]
name = "a"
base_path = "/a"
upstream = "app"
policies = ["cors-b", "needs-id"]

[groups.partners]
policies = ["cors-a"]
"#,
    )
    .expect("write");
    let (code, out, err) = run_cli(&["check", "-c", &path.to_string_lossy()], None);
    assert_ne!(code, 0, "{out}");
    for expected in [
        "server.policies[1]: no policy named \"nope\"",
        "server.trusted_proxies[0]",
        "apis[0].policies[0]: a second cors policy on the same requests as server.policies[0]",
        "policies.bad-cidr.allow[0]",
        "policies.bad-regex.deny_user_agents[0]: invalid regex",
        "policies.bad-template.request.set.x-who: unknown template variable {consumer.name}",
        "policies.wrong-key.allow: not a key of kind \"body_size\"",
        "apis[0].policies[1]: policy \"needs-id\" uses the route parameter \"id\"",
        "groups.partners.policies[0]: a cors policy cannot be attached to a group",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_swap_policies_under_load_and_a_broken_policy_changes_nothing() {
    let up = Upstream::start("app").await;
    let config = |marker: &str| {
        format!(
            r#"
[policies.mark]
kind = "headers"
request = {{ set = {{ "x-generation" = "{marker}" }} }}

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "svc"
base_path = "/svc"
upstream = "app"
policies = ["mark"]
"#,
            up = up.addr
        )
    };
    let gw = Gateway::start(&config("one"));
    let c = client();
    let load = Load::start(&gw, "/svc");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..6 {
        let marker = if i % 2 == 0 { "two" } else { "one" };
        gw.rewrite(&config(marker));
        let (s, v) = support::admin(&gw, "POST", "/reload", None).await;
        assert_eq!(s, 200, "{v}");
        let r = c.get(gw.url("/svc/check")).send().await.expect("get");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["headers"]["x-generation"][0], marker, "reload {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken policy refuses the whole reload with its key path; the last one keeps serving.
    gw.rewrite(&config("one").replace("kind = \"headers\"", "kind = \"headers\"\nmax = \"1KiB\""));
    let (s, v) = support::admin(&gw, "POST", "/reload", None).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("policies.mark.max"), "{v}");
    let r = c.get(gw.url("/svc/check")).send().await.expect("get");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["headers"]["x-generation"][0], "one");
    let ok = load.finish().await.assert_no_failures();
    assert!(ok > 100, "the load ran: {ok} requests");
}

/// The Response stage runs after every action: a `headers` policy edits the gateway's own
/// static answers (`respond`) as it edits proxied ones, while `json_fields` leaves their bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_policies_edit_static_answers_too() {
    let gw = Gateway::start_with(
        "policies = [\"house\"]",
        r#"
[policies.house]
kind = "headers"
response = { set = { "x-content-type-options" = "nosniff" }, remove = ["x-internal"] }

[policies.hide]
kind = "json_fields"
remove = ["/secret"]

[[apis]]
name = "static"
base_path = "/static"
policies = ["hide"]
[apis.respond]
content_type = "application/json"
body = '{"secret":"kept: the gateway wrote it","ok":true}'
headers = { "x-internal" = "1", "x-kept" = "yes" }
"#,
    );
    let r = client()
        .get(gw.url("/static/x"))
        .send()
        .await
        .expect("static");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&r, "x-kept"), Some("yes"));
    assert_eq!(header(&r, "x-internal"), None);
    let body = r.text().await.expect("body");
    assert!(body.contains("\"secret\""), "{body}");
}
