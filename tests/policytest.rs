//! `turnpike explain` and `turnpike test`: their outputs, and one case file run offline and
//! against the live binary with a real upstream, with the same outcomes.

mod support;

use support::upstream::Upstream;
use support::{client, key_digest, run_cli, Gateway};

const KEY: &str = "tp_acme_key_0123456789abcdef0123";

fn config(up: &Upstream) -> String {
    format!(
        r#"
[analytics]
access_log = "logs/access.log"

[policies.office-only]
kind = "ip_filter"
allow = ["192.0.2.0/24", "2001:db8::/32"]

[policies.no-internal-headers]
kind = "headers"
request = {{ remove = ["x-debug"], set = {{ "x-tenant" = "{{consumer.metadata.tenant}}" }} }}

[policies.v1-paths]
kind = "rewrite"
path = "/legacy/items/{{id}}"
query = {{ remove = ["debug"], set = {{ "source" = "gateway" }} }}

[policies.small-bodies]
kind = "body_size"
max = "1KiB"

[policies.partner-cors]
kind = "cors"
allow_origins = ["https://app.example.com"]
allow_methods = ["GET"]

[plans.gold]
rate = "100/s"
quotas = ["3/day"]

[upstreams.orders]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
version = "v1"
base_path = "/orders/v1"
hosts = ["api.example.com"]
upstream = "orders"
strip_base_path = true
policies = ["no-internal-headers", "small-bodies", "partner-cors"]
[apis.auth]
methods = ["api_key"]
[[apis.routes]]
path = "/{{id}}"
methods = ["GET", "POST"]
policies = ["office-only", "v1-paths"]

[[consumers]]
id = "acme"
plan = "gold"
metadata = {{ tenant = "acme-co" }}
keys = [ {{ sha256 = "{digest}" }} ]
"#,
        up = up.addr,
        digest = key_digest(KEY)
    )
}

const CASES: &str = r#"
[[case]]
name = "partners from outside the office get 403"
request = { method = "GET", url = "http://api.example.com/orders/v1/42", client_ip = "203.0.113.9", headers = { "x-api-key" = "tp_acme_key_0123456789abcdef0123" } }
expect = { status = 403, code = "forbidden", policy = "office-only" }

[[case]]
name = "internal headers never reach the upstream"
request = { method = "GET", url = "http://api.example.com/orders/v1/42?debug=1&page=2", client_ip = "192.0.2.10", headers = { "x-debug" = "1", "x-api-key" = "tp_acme_key_0123456789abcdef0123" } }
expect = { proxied = true, upstream = { path = "/legacy/items/42?page=2&source=gateway", headers = { "x-tenant" = "acme-co", "x-forwarded-for" = "192.0.2.10" }, headers_absent = ["x-debug", "x-api-key"] } }

[[case]]
name = "a wrong key is refused by the API's auth"
request = { method = "GET", url = "http://api.example.com/orders/v1/42", client_ip = "192.0.2.10", headers = { "x-api-key" = "tp_not_a_key" } }
expect = { status = 401, code = "invalid_credentials", policy = "auth" }

[[case]]
name = "bodies over 1 KiB are refused before identification"
request = { method = "POST", url = "http://api.example.com/orders/v1/42", client_ip = "192.0.2.10", body_size = 5000 }
expect = { status = 413, code = "payload_too_large", policy = "small-bodies" }

[[case]]
name = "a preflight is answered by the CORS policy"
request = { method = "OPTIONS", url = "http://api.example.com/orders/v1/42", client_ip = "192.0.2.10", headers = { "origin" = "https://app.example.com", "access-control-request-method" = "GET" } }
expect = { status = 204, answer_headers = { "access-control-allow-origin" = "https://app.example.com" } }

[[case]]
name = "a preflight from elsewhere is refused"
request = { method = "OPTIONS", url = "http://api.example.com/orders/v1/42", client_ip = "192.0.2.10", headers = { "origin" = "https://evil.example", "access-control-request-method" = "GET" } }
expect = { status = 403, code = "cors_rejected", policy = "partner-cors", answer_headers_absent = ["access-control-allow-origin"] }

[[case]]
name = "an unknown path"
request = { url = "http://api.example.com/nowhere" }
expect = { status = 404, code = "route_not_found", policy = "" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_case_file_gives_the_same_outcomes_offline_and_live() {
    let up = Upstream::start("orders").await;
    let gw = Gateway::start_with("trusted_proxies = [\"127.0.0.1\"]\n", &config(&up));
    let cases = gw.dir.path().join("cases.toml");
    std::fs::write(&cases, CASES).expect("write cases");
    let config_path = gw.config.to_string_lossy().to_string();
    let cases_path = cases.to_string_lossy().to_string();

    // Offline: every case passes.
    let (code, out, err) = run_cli(&["test", "-c", &config_path, &cases_path], None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("7 passed, 0 failed"), "{out}");
    let (code, json, err) = run_cli(&["test", "--json", "-c", &config_path, &cases_path], None);
    assert_eq!(code, 0, "{err}");
    let results: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json");
    assert_eq!(results.len(), 7);

    // Live: each case's request, from its client address through the trusted loopback proxy.
    let parsed: toml::Value = toml::from_str(CASES).expect("cases");
    let c = client();
    for (i, (case, offline)) in parsed["case"]
        .as_array()
        .expect("cases")
        .iter()
        .zip(&results)
        .enumerate()
    {
        let name = case["name"].as_str().unwrap_or_default();
        let actual = &offline["actual"];
        let req = &case["request"];
        let url = req["url"]
            .as_str()
            .unwrap_or_default()
            .replace("http://api.example.com", &format!("http://{}", gw.addr));
        let method: reqwest::Method = req
            .get("method")
            .and_then(|m| m.as_str())
            .unwrap_or("GET")
            .parse()
            .expect("method");
        let request_id = format!("case-{i}");
        let mut r = c
            .request(method, &url)
            .header("host", "api.example.com")
            .header("x-request-id", &request_id);
        if let Some(ip) = req.get("client_ip").and_then(|v| v.as_str()) {
            r = r.header("x-forwarded-for", ip);
        }
        for (n, v) in req
            .get("headers")
            .and_then(|h| h.as_table())
            .into_iter()
            .flatten()
        {
            r = r.header(n.as_str(), v.as_str().unwrap_or_default());
        }
        if let Some(n) = req.get("body_size").and_then(|v| v.as_integer()) {
            r = r.body(vec![b'x'; n as usize]);
        }
        let hits = up.hits();
        let live = r.send().await.expect("live request");
        let status = live.status().as_u16();
        let headers = live.headers().clone();
        let body = live.text().await.expect("body");
        match actual["status"].as_u64() {
            Some(s) => {
                assert_eq!(u64::from(status), s, "{name}: live {status} {body}");
                if let Some(code) = actual["code"].as_str() {
                    let v: serde_json::Value = serde_json::from_str(&body).expect("problem");
                    assert_eq!(v["code"], code, "{name}");
                }
                assert_eq!(up.hits(), hits, "{name}: nothing went upstream");
                for pair in actual["answer_headers"].as_array().into_iter().flatten() {
                    let (n, v) = (
                        pair[0].as_str().unwrap_or(""),
                        pair[1].as_str().unwrap_or(""),
                    );
                    if n.starts_with("access-control") {
                        assert_eq!(
                            headers.get(n).and_then(|h| h.to_str().ok()),
                            Some(v),
                            "{name}: {n}"
                        );
                    }
                }
            }
            None => {
                assert_eq!(status, 200, "{name}: proxied live");
                let seen = up.last().expect("the upstream saw it");
                let offline_up = &actual["upstream"];
                assert_eq!(
                    seen.uri, offline_up["path"],
                    "{name}: the same upstream target"
                );
                for pair in offline_up["headers"].as_array().into_iter().flatten() {
                    let (n, v) = (
                        pair[0].as_str().unwrap_or(""),
                        pair[1].as_str().unwrap_or(""),
                    );
                    if [
                        "x-tenant",
                        "x-forwarded-for",
                        "x-consumer-id",
                        "x-forwarded-host",
                    ]
                    .contains(&n)
                    {
                        assert_eq!(seen.header(n), Some(v), "{name}: {n}");
                    }
                }
                for n in ["x-debug", "x-api-key"] {
                    assert!(
                        seen.header(n).is_none(),
                        "{name}: {n} reached the upstream live"
                    );
                    assert!(
                        !offline_up["headers"]
                            .to_string()
                            .contains(&format!("\"{n}\"")),
                        "{name}: {n} in the offline upstream request"
                    );
                }
            }
        }
        // The refusing policy, as the live access log records it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let line = loop {
            let log =
                std::fs::read_to_string(gw.dir.path().join("logs/access.log")).unwrap_or_default();
            if let Some(l) = log
                .lines()
                .find(|l| l.contains(&format!("\"request_id\":\"{request_id}\"")))
            {
                break l.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no access log line"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let logged: serde_json::Value = serde_json::from_str(&line).expect("log line");
        assert_eq!(
            logged["policy"], actual["policy"],
            "{name}: the refusing policy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_every_stage_the_upstream_request_and_usage() {
    let up = Upstream::start("orders").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[store]\npath = \"{}/t.db\"\n{}",
        dir.path().display(),
        config(&up)
    );
    std::fs::write(&path, text).expect("write");
    let cfg = path.to_string_lossy().to_string();
    let (code, out, err) = run_cli(
        &[
            "explain",
            "-c",
            &cfg,
            "GET http://api.example.com/orders/v1/42?debug=1",
            "-H",
            &format!("x-api-key: {KEY}"),
            "-H",
            "x-debug: 1",
            "--client-ip",
            "192.0.2.1",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    for expected in [
        "route    orders v1 /orders/v1/{id}",
        "params   id=42",
        "edge       small-bodies (body_size)",
        "edge       office-only (ip_filter)",
        "identify   auth (identify)              continue",
        "transform  v1-paths (rewrite)           target /legacy/items/42?source=gateway",
        "remove x-debug; set x-tenant: acme-co",
        "upstream GET /legacy/items/42?source=gateway (upstream orders)",
        "x-forwarded-for: 192.0.2.1",
        "ratelimit:",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        !out.contains(KEY),
        "the key is never printed upstream: {out}"
    );
    let edge = out.find("edge ").unwrap_or(usize::MAX);
    let identify = out.find("identify ").unwrap_or(0);
    assert!(edge < identify, "stages print in their order");

    // With the quota used up by --usage, the plan refuses.
    let (code, json, err) = run_cli(
        &[
            "explain",
            "--json",
            "--usage",
            "3",
            "-c",
            &cfg,
            "GET http://api.example.com/orders/v1/42",
            "-H",
            &format!("x-api-key: {KEY}"),
            "--client-ip",
            "192.0.2.1",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["status"], 429, "{v}");
    assert_eq!(v["code"], "quota_exceeded");
    assert_eq!(v["policy"], "plan");
    assert_eq!(up.hits(), 0, "explain never calls the upstream");
    assert!(!dir.path().join("t.db").exists(), "explain writes no store");

    // {key:ID} identifies a consumer for one run.
    let (code, out, _) = run_cli(
        &[
            "explain",
            "-c",
            &cfg,
            "GET http://api.example.com/orders/v1/7",
            "-H",
            "x-api-key: {key:acme}",
            "--client-ip",
            "192.0.2.1",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert!(out.contains("x-consumer-id: acme"), "{out}");

    // A bad request line is a clear error.
    let (code, _, err) = run_cli(&["explain", "-c", &cfg, "GET"], None);
    assert_eq!(code, 1);
    assert!(err.contains("give the method and the URL"), "{err}");
}

#[test]
fn failed_cases_print_expected_and_actual_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[store]\npath = \"{}/t.db\"\n\n[upstreams.app]\ntargets = [ {{ addr = \"127.0.0.1:9\" }} ]\n\n[policies.office-only]\nkind = \"ip_filter\"\nallow = [\"192.0.2.0/24\"]\n\n[[apis]]\nname = \"a\"\nbase_path = \"/a\"\nupstream = \"app\"\npolicies = [\"office-only\"]\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "passes"
request = { url = "http://x/a/1", client_ip = "192.0.2.1" }
expect = { proxied = true, upstream = { path = "/a/1" } }

[[case]]
name = "expects the wrong thing"
request = { url = "http://x/a/1", client_ip = "203.0.113.1" }
expect = { proxied = true, policy = "" }
"#,
    )
    .expect("write");
    let cfg = path.to_string_lossy().to_string();
    let (code, out, _) = run_cli(&["test", "-c", &cfg, &cases.to_string_lossy()], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    "), "{out}");
    assert!(out.contains("FAIL  "), "{out}");
    assert!(
        out.contains("proxied: expected true, got false (forbidden)"),
        "{out}"
    );
    assert!(
        out.contains("policy: expected \"\", got \"office-only\""),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");

    // A case file with a typo is refused with its line.
    std::fs::write(
        &cases,
        "[[case]]\nname = \"x\"\nrequest = { url = \"http://x/a\" }\nexpect = { stauts = 200 }\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["test", "-c", &cfg, &cases.to_string_lossy()], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("cases.toml:4") && err.contains("stauts"),
        "{err}"
    );
}
