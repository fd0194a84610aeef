//! Who still calls a deprecated version, after real traffic: three consumers call orders/v1
//! through the gateway (and one also v2); `GET /catalog/apis/orders/v1/consumers` lists the
//! three with exact counts, errors, a last call to the minute and their contacts, and
//! `turnpike catalog consumers orders/v1` prints the same from the store.

mod support;

use support::upstream::Upstream;
use support::{client, problem, run_cli, Gateway, ADMIN_TOKEN};

const KEYS: [(&str, &str); 3] = [
    ("acme", "tp_callers_acme_0123456789abcdef"),
    ("globex", "tp_callers_globex_0123456789abcd"),
    ("initech", "tp_callers_initech_0123456789abc"),
];

fn config(up: &Upstream) -> String {
    let consumers = support::consumers_toml(&KEYS);
    format!(
        r#"
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
lifecycle = "deprecated"
deprecated_at = "2026-01-01T00:00:00Z"
sunset_at = "2099-01-01T00:00:00Z"
successor = "orders/v2"

[[apis]]
name = "orders"
version = "v2"
base_path = "/orders/v2"
upstream = "orders"
[apis.auth]
methods = ["api_key"]

{consumers}"#,
        up = up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_of_a_version_are_listed_with_exact_counts() {
    let up = Upstream::start("orders").await;
    let gw = Gateway::start(&config(&up));
    let c = client();
    // acme 5 calls to v1, globex 3 (one answered 503 by the upstream: an error), initech 1 to
    // v1 and 4 to v2.
    let calls = [
        ("acme", "/orders/v1/items", 5),
        ("globex", "/orders/v1/items", 2),
        ("globex", "/orders/v1/items?status=503", 1),
        ("initech", "/orders/v1/items", 1),
        ("initech", "/orders/v2/items", 4),
    ];
    for (who, path, n) in calls {
        let key = KEYS
            .iter()
            .find(|(id, _)| *id == who)
            .map(|(_, k)| *k)
            .unwrap_or_default();
        for _ in 0..n {
            let r = c
                .get(gw.url(path))
                .header("x-api-key", key)
                .send()
                .await
                .expect("call");
            let want = if path.contains("503") { 503 } else { 200 };
            assert_eq!(r.status().as_u16(), want, "{who} {path}");
        }
    }
    // Refused calls (no key) are anonymous and listed as such (a 401 is not an error of the API).
    let r = c
        .get(gw.url("/orders/v1/items"))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 401);

    // The report is exact for the records the aggregator has taken: wait for all 14.
    support::wait_records(&gw, 14.0).await;

    let r = c
        .get(gw.admin_url("/catalog/apis/orders/v1/consumers?since=7d"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["api"], "orders");
    assert_eq!(v["version"], "v1");
    assert_eq!(v["lifecycle"]["state"], "deprecated");
    assert_eq!(v["lifecycle"]["successor"], "orders/v2");
    let rows: Vec<(serde_json::Value, u64, u64, String)> = v["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| {
            (
                c["consumer"].clone(),
                c["requests"].as_u64().unwrap_or(0),
                c["errors"].as_u64().unwrap_or(0),
                c["last_call_precision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (serde_json::json!("acme"), 5, 0, "minute".into()),
            (serde_json::json!("globex"), 3, 1, "minute".into()),
            (serde_json::json!("initech"), 1, 0, "minute".into()),
            (serde_json::Value::Null, 1, 0, "minute".into()),
        ],
        "{v}"
    );
    assert_eq!(
        v["consumers"][0]["contacts"],
        serde_json::json!(["ops@acme.example"])
    );
    assert_eq!(v["consumers"][3]["anonymous"], true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let last =
        turnpike::clock::parse_rfc3339(v["consumers"][0]["last_call"].as_str().unwrap_or(""))
            .expect("an RFC 3339 last call");
    assert!(now - last < 180, "last call {last}, now {now}");

    // v2 has its own list; unknown versions and bad windows are refused.
    let v2: serde_json::Value = c
        .get(gw.admin_url("/catalog/apis/orders/v2/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("report")
        .json()
        .await
        .expect("json");
    assert_eq!(v2["consumers"][0]["consumer"], "initech");
    assert_eq!(v2["consumers"][0]["requests"], 4);
    assert_eq!(v2["consumers"].as_array().map(Vec::len), Some(1));
    let r = c
        .get(gw.admin_url("/catalog/apis/orders/v9/consumers"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("report");
    problem(&r.text().await.expect("body"), 404, "not_found");
    let r = c
        .get(gw.admin_url("/catalog/apis/orders/v1/consumers?since=9999d"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("report");
    problem(&r.text().await.expect("body"), 422, "invalid_request");
    // The admin token is required.
    let r = c
        .get(gw.admin_url("/catalog/apis/orders/v1/consumers"))
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), 401);

    // The command line reads the same rows from the store (the report above wrote them).
    let file = gw.config.display().to_string();
    let (code, out, err) = run_cli(&["catalog", "consumers", "orders/v1", "-c", &file], None);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("callers of orders/v1 from "), "{out}");
    assert!(
        lines[2].starts_with("acme")
            && lines[2].contains(" 5 ")
            && lines[2].ends_with("ops@acme.example"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("globex") && lines[3].contains(" 3 "),
        "{out}"
    );
    assert!(lines[5].starts_with("(anonymous)"), "{out}");
    let (code, out, _) = run_cli(
        &[
            "catalog",
            "consumers",
            "orders/v1",
            "-c",
            &file,
            "--json",
            "--since",
            "1d",
        ],
        None,
    );
    assert_eq!(code, 0);
    let cli: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(cli["consumers"], v["consumers"]);
}
