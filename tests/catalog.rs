//! The catalogue's lifecycle at the gateway: a deprecated API's answers carry Deprecation,
//! Sunset and Link (proxied and refused alike); a retired API, or one past its sunset, answers
//! 410 api_retired and sends nothing upstream; catalogue entries are checked with key paths.

mod support;

use support::upstream::Upstream;
use support::{client, key_digest, problem, run_cli, Gateway};

const KEY: &str = "tp_catalog_key_0123456789abcdef";

fn config(up: &Upstream) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A brownout window around now, and one that ended an hour ago.
    let rfc3339 = |secs: u64| turnpike::clock::rfc3339(secs as i64);
    let brownouts = format!(
        "[\"{}/PT1H\", \"{}/PT10M\"]",
        rfc3339(now - 60),
        rfc3339(now - 3_600)
    );
    format!(
        r#"
[teams.fulfilment]
name = "Fulfilment"
contacts = [ {{ name = "Ana", email = "fulfilment@example.com" }} ]

[upstreams.orders]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
version = "v1"
base_path = "/orders/v1"
upstream = "orders"
[apis.auth]
methods = ["api_key"]
[apis.catalog]
title = "Orders"
owner = "fulfilment"
audience = "partner"
lifecycle = "deprecated"
deprecated_at = "2026-12-01T00:00:00Z"
sunset_at = "2099-06-30T00:00:00Z"
successor = "orders/v2"
migration_url = "https://wiki.example.com/orders/v1-to-v2"

[[apis]]
name = "orders"
version = "v2"
base_path = "/orders/v2"
upstream = "orders"
[apis.catalog]
owner = "fulfilment"
docs_url = "https://docs.example.com/orders/v2"

[[apis]]
name = "orders"
version = "v0"
base_path = "/orders/v0"
upstream = "orders"
[apis.catalog]
lifecycle = "retired"
successor = "orders/v2"

[[apis]]
name = "legacy"
base_path = "/legacy"
upstream = "orders"
[apis.catalog]
lifecycle = "deprecated"
deprecated_at = "2020-01-01T00:00:00Z"
sunset_at = "2021-01-01T00:00:00Z"

[[apis]]
name = "brown"
base_path = "/brown"
upstream = "orders"
[apis.catalog]
lifecycle = "deprecated"
deprecated_at = "2026-01-01T00:00:00Z"
sunset_at = "2099-01-01T00:00:00Z"
brownouts = {brownouts}

[[consumers]]
id = "acme"
keys = [ {{ sha256 = "{digest}" }} ]
"#,
        up = up.addr,
        digest = key_digest(KEY)
    )
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_answers_carry_the_lifecycle_headers_and_retired_apis_answer_410() {
    let up = Upstream::start("orders").await;
    let gw = Gateway::start(&config(&up));
    let c = client();

    // Proxied and refused answers of a deprecated API alike.
    let ok = c
        .get(gw.url("/orders/v1/items"))
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), 200);
    let refused = c.get(gw.url("/orders/v1/items")).send().await.expect("get");
    assert_eq!(refused.status(), 401);
    for r in [&ok, &refused] {
        assert_eq!(header(r, "deprecation"), Some("@1796083200"));
        // A structured-field Date (RFC 9745 on RFC 9651).
        let item = sfv::Parser::new(header(r, "deprecation").unwrap_or_default())
            .parse_item::<sfv::Item>()
            .expect("a structured field item");
        assert_eq!(
            item.bare_item.as_date().map(|d| d.unix_seconds()),
            Some(sfv::Integer::constant(1_796_083_200))
        );
        assert_eq!(header(r, "sunset"), Some("Tue, 30 Jun 2099 00:00:00 GMT"));
        let link = header(r, "link").unwrap_or_default();
        assert!(
            link.contains("<https://wiki.example.com/orders/v1-to-v2>; rel=\"deprecation\""),
            "{link}"
        );
        assert!(
            link.contains("<https://docs.example.com/orders/v2>; rel=\"successor-version\""),
            "{link}"
        );
    }
    // The successor is not deprecated.
    let r = c.get(gw.url("/orders/v2/items")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert!(header(&r, "deprecation").is_none());

    // Retired, and past its sunset: 410, nothing upstream.
    let hits = up.hits();
    for path in ["/orders/v0/items", "/legacy/x"] {
        let r = c.get(gw.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 410, "{path}");
        let link = header(&r, "link").map(str::to_string);
        problem(&r.text().await.expect("body"), 410, "api_retired");
        if path == "/orders/v0/items" {
            assert!(link
                .unwrap_or_default()
                .contains("rel=\"successor-version\""));
        }
    }
    assert_eq!(up.hits(), hits, "a retired API sends nothing upstream");

    // A brownout window now: 410 api_brownout, with the lifecycle headers.
    let r = c.get(gw.url("/brown/x")).send().await.expect("get");
    assert_eq!(r.status(), 410);
    assert_eq!(header(&r, "deprecation"), Some("@1767225600"));
    problem(&r.text().await.expect("body"), 410, "api_brownout");
    assert_eq!(up.hits(), hits, "nothing upstream in a brownout");

    // Who still calls a deprecated version, in the metrics.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = client()
            .get(gw.admin_url("/metrics"))
            .bearer_auth(support::ADMIN_TOKEN)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let acme =
            r#"turnpike_deprecated_requests_total{api="orders",consumer="acme",version="v1"} 1"#;
        let retired =
            r#"turnpike_deprecated_requests_total{api="orders",consumer="",version="v0"} 1"#;
        if text.contains(acme) && text.contains(retired) {
            assert!(
                !text
                    .lines()
                    .any(|l| l.starts_with("turnpike_deprecated_requests_total")
                        && l.contains("version=\"v2\"")),
                "the successor is not counted: {text}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The offline runner shows the step.
    let (code, out, err) = run_cli(
        &[
            "explain",
            "-c",
            &gw.config.to_string_lossy(),
            "GET http://localhost/legacy/x",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lifecycle (lifecycle)"), "{out}");
    assert!(out.contains("410 api_retired"), "{out}");
}

#[test]
fn catalogue_entries_are_checked_with_key_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = ["127.0.0.1:1"]

[teams.core]
name = "Core"
contacts = [ { name = "nobody" } ]

[upstreams.app]
targets = [ { addr = "127.0.0.1:9" } ]

[[apis]]
name = "a"
version = "v1"
base_path = "/a"
upstream = "app"
[apis.catalog]
owner = "ghosts"
lifecycle = "deprecated"
deprecated_at = "2027-01-01T00:00:00Z"
sunset_at = "2026-01-01T00:00:00Z"
successor = "a/v9"

[[apis]]
name = "b"
base_path = "/b"
upstream = "app"
[apis.catalog]
lifecycle = "design"
deprecated_at = "yesterday"
"#,
    )
    .expect("write");
    let (code, _, err) = run_cli(&["check", "-c", &path.to_string_lossy()], None);
    assert_eq!(code, 1);
    for expected in [
        "teams.core.contacts[0]: a contact needs an email or a url",
        "apis[0].catalog.owner: no team \"ghosts\"",
        "apis[0].catalog.sunset_at: is before deprecated_at",
        "apis[0].catalog.successor: no other API \"a/v9\"",
        "apis[1].upstream: an API in design has no upstream yet",
        "apis[1].catalog.deprecated_at: \"yesterday\" is not an RFC 3339 time",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\nbody = \"x\"\n[apis.catalog]\nlifecycle = \"sunsetting\"\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["check", "-c", &path.to_string_lossy()], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("lifecycle") && err.contains("sunsetting"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beta_api_answers_its_beta_groups_only() {
    let early = "tp_catalog_beta_early_0123456789";
    let late = "tp_catalog_beta_late_01234567890";
    let body = format!(
        r#"
[[apis]]
name = "preview"
base_path = "/preview"
[apis.respond]
body = "preview"
[apis.auth]
methods = ["api_key"]
[apis.catalog]
lifecycle = "beta"
beta_groups = ["early-access"]

[[consumers]]
id = "early"
groups = ["early-access"]
keys = [ {{ sha256 = "{}" }} ]

[[consumers]]
id = "late"
keys = [ {{ sha256 = "{}" }} ]
"#,
        key_digest(early),
        key_digest(late)
    );
    let gw = Gateway::start(&body);
    let c = client();
    let r = c
        .get(gw.url("/preview"))
        .header("x-api-key", early)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "preview");
    let r = c
        .get(gw.url("/preview"))
        .header("x-api-key", late)
        .send()
        .await
        .expect("get");
    problem(&r.text().await.expect("body"), 403, "api_beta");
    let r = c.get(gw.url("/preview")).send().await.expect("get");
    assert_eq!(r.status(), 401);

    // beta_groups belong to a beta API with [apis.auth].
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("beta.toml");
    std::fs::write(
        &path,
        "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\nbody = \"x\"\n[apis.catalog]\nlifecycle = \"stable\"\nbeta_groups = [\"early\"]\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["check", "-c", &path.to_string_lossy()], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("apis[0].catalog.beta_groups: beta_groups are for APIs in beta")
            && err.contains("apis[0].catalog.beta_groups: beta_groups need [apis.auth]"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_is_listed_filtered_and_paged_from_the_running_config() {
    let up = Upstream::start("orders").await;
    let gw = Gateway::start(&config(&up));
    let c = client();
    let get = |path: &str| {
        let c = c.clone();
        let url = gw.admin_url(path);
        async move {
            let r = c
                .get(url)
                .bearer_auth(support::ADMIN_TOKEN)
                .send()
                .await
                .expect("admin");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    let refs = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["ref"].as_str().map(String::from))
            .collect()
    };
    let (status, body) = get("/catalog").await;
    assert_eq!(status, 200);
    assert_eq!(
        refs(&body),
        ["brown", "legacy", "orders/v0", "orders/v1", "orders/v2"]
    );
    let (_, body) = get("/catalog?owner=fulfilment&lifecycle=deprecated").await;
    assert_eq!(refs(&body), ["orders/v1"]);
    let (_, body) = get("/catalog?audience=partner").await;
    assert_eq!(refs(&body), ["orders/v1"]);
    let (_, body) = get("/catalog?q=orders&limit=2").await;
    assert_eq!(refs(&body), ["orders/v0", "orders/v1"]);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["next"], "orders/v1");
    let (_, body) = get("/catalog?q=orders&limit=2&after=orders%2Fv1").await;
    assert_eq!(refs(&body), ["orders/v2"]);
    let (status, body) = get("/catalog?limit=0").await;
    assert_eq!(status, 422, "{body}");

    let (status, body) = get("/catalog/apis/orders").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["versions"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["versions"][1]["successor"], "orders/v2");
    assert_eq!(get("/catalog/apis/nothing").await.0, 404);
    let (status, body) = get("/catalog/teams/fulfilment").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["apis"], serde_json::json!(["orders/v1", "orders/v2"]));
    assert_eq!(v["contacts"][0]["email"], "fulfilment@example.com");
    assert_eq!(get("/catalog/teams/nobody").await.0, 404);
    let r = c.get(gw.admin_url("/catalog")).send().await.expect("admin");
    assert_eq!(r.status(), 401);

    let file = gw.config.display().to_string();
    let (code, out, err) = run_cli(&["catalog", "-c", &file], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("orders/v1")
            && l.contains("deprecated")
            && l.contains("fulfilment")),
        "{out}"
    );
    let (code, out, _) = run_cli(&["catalog", "-c", &file, "--json"], None);
    assert_eq!(code, 0);
    let all: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_version_in_full_with_its_upstream_and_last_day_of_traffic() {
    let up = Upstream::start("orders").await;
    let gw = Gateway::start(&config(&up));
    let c = client();
    for path in [
        "/orders/v1/a",
        "/orders/v1/b",
        "/orders/v1/c",
        "/orders/v1/d?status=503",
    ] {
        let r = c
            .get(gw.url(path))
            .header("x-api-key", KEY)
            .send()
            .await
            .expect("call");
        assert!(r.status() == 200 || r.status() == 503, "{path}");
    }
    support::wait_records(&gw, 4.0).await;
    let (status, v) = support::admin(&gw, "GET", "/catalog/apis/orders/v1", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entry"]["ref"], "orders/v1");
    assert_eq!(v["owner_team"]["name"], "Fulfilment");
    assert_eq!(v["routes"][0]["path"], "/orders/v1");
    assert_eq!(v["routes"][0]["catch_all"], true);
    assert_eq!(v["auth"]["methods"], serde_json::json!(["api_key"]));
    assert_eq!(v["status"]["lifecycle"], "deprecated");
    assert_eq!(v["status"]["answers"], "served");
    assert_eq!(
        v["status"]["headers"],
        serde_json::json!(["deprecation", "sunset", "link"])
    );
    assert!(v["status"]["days_to_sunset"]
        .as_i64()
        .is_some_and(|d| d > 365));
    assert_eq!(v["upstream"]["name"], "orders");
    assert_eq!(v["upstream"]["targets"][0]["state"], "up");
    assert_eq!(v["usage_24h"]["requests"], 4);
    assert_eq!(v["usage_24h"]["errors"], 1);
    assert_eq!(v["usage_24h"]["error_rate"], 0.25);
    assert!(v["usage_24h"]["p95_ms"].as_f64().is_some_and(|ms| ms > 0.0));

    let (_, brown) = support::admin(&gw, "GET", "/catalog/apis/brown/-", None).await;
    assert_eq!(brown["status"]["answers"], "brownout");
    assert!(brown["status"]["brownout_until"].as_str().is_some());
    assert_eq!(brown["usage_24h"]["requests"], 0);
    let (_, legacy) = support::admin(&gw, "GET", "/catalog/apis/legacy/-", None).await;
    assert_eq!(legacy["status"]["answers"], "retired");
    let (_, retired) = support::admin(&gw, "GET", "/catalog/apis/orders/v0", None).await;
    assert_eq!(retired["status"]["answers"], "retired");
    let (status, p) = support::admin(&gw, "GET", "/catalog/apis/orders/v9", None).await;
    assert_eq!((status, p["code"].as_str()), (404, Some("not_found")));
    let (status, _) = support::admin(&gw, "DELETE", "/catalog/apis/orders/v1", None).await;
    assert_eq!(status, 405);
}
