//! Shadow endpoint discovery through the real binary: requests that match no route are counted
//! by host, method and path shape (numeric and UUID segments as `{id}`, the query dropped), with
//! the consumer of a known key or the client address among the top callers; the cap evicts the
//! least-seen shapes and counts them; the shapes survive a restart (they are in the store).

mod support;

use std::process::Child;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{
    admin, client, key_digest, metric_value, metrics_text, wait_child, wait_records, Gateway,
    ADMIN_TOKEN,
};

const KEY: &str = "tp_shadow_acme_0123456789abcdef";

fn config(up: &Upstream) -> String {
    format!(
        r#"
[catalog]
shadow_shapes = 5

[upstreams.orders]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
version = "v2"
base_path = "/orders/v2"
upstream = "orders"
[apis.auth]
methods = ["api_key"]

[[consumers]]
id = "acme"
keys = [ {{ sha256 = "{digest}" }} ]
"#,
        up = up.addr,
        digest = key_digest(KEY)
    )
}

async fn shadow(gw: &Gateway, query: &str) -> serde_json::Value {
    let (s, v) = admin(gw, "GET", &format!("/catalog/shadow{query}"), None).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn find<'a>(
    v: &'a serde_json::Value,
    host: &str,
    method: &str,
    shape: &str,
) -> Option<&'a serde_json::Value> {
    v["items"]
        .as_array()?
        .iter()
        .find(|i| i["host"] == host && i["method"] == method && i["shape"] == shape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_requests_are_counted_by_shape_capped_and_kept() {
    let up = Upstream::start("orders").await;
    let mut gw = Gateway::start_with(
        "grace_period = \"1s\"\nkeepalive_drain = \"0s\"\ngraceful_shutdown_timeout = \"2s\"",
        &config(&up),
    );
    let c = client();
    let get = |path: &str| c.get(gw.url(path));
    // A routed request is not a shadow endpoint.
    let r = get("/orders/v2/items")
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("routed");
    assert_eq!(r.status(), 200);
    let sent: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (get("/orders/v1/items/42").header("x-api-key", KEY), "acme"),
        (
            get(&format!("/orders/v1/items/43?api_key={KEY}")).header("x-api-key", KEY),
            "acme",
        ),
        (get("/orders/v1/items/44?token=s3cr3t-query"), "ip"),
        (get("/orders/v1/items/45"), "ip"),
        (
            get("/users/3f2b8c1e-9d4a-4b7e-8a21-0c5d6e7f8a9b/profile"),
            "ip",
        ),
        (
            get("/users/0c5d6e7f-9d4a-4b7e-8a21-3f2b8c1e8a9b/profile"),
            "ip",
        ),
        (
            get("/users/9d4a3f2b-8c1e-4b7e-8a21-0c5d6e7f8a9b/profile"),
            "ip",
        ),
        (c.post(gw.url("/orders/v1/items/46")), "ip"),
        (c.post(gw.url("/orders/v1/items/47")), "ip"),
        (get("/status/7").header("host", "Legacy.Example:8080"), "ip"),
        (get("/status/8").header("host", "legacy.example"), "ip"),
    ];
    for (req, _) in sent {
        let r = req.send().await.expect("unrouted");
        assert_eq!(r.status(), 404);
    }
    wait_records(&gw, 12.0).await;

    let v = shadow(&gw, "?since=1d").await;
    let text = v.to_string();
    assert!(
        !text.contains(KEY) && !text.contains("s3cr3t"),
        "no key or query: {text}"
    );
    let host = gw.addr.to_string();
    let host = host.split(':').next().unwrap_or_default();
    let items = |v: &serde_json::Value| v["items"].as_array().map_or(0, Vec::len);
    assert_eq!(items(&v), 4, "{v:#}");
    let orders = find(&v, host, "GET", "/orders/v1/items/{id}").expect("orders shape");
    assert_eq!(orders["requests"], 4);
    let top = orders["top_callers"].as_array().expect("top");
    assert!(
        top.contains(&serde_json::json!({ "kind": "consumer", "id": "acme", "requests": 2 })),
        "{top:?}"
    );
    assert!(
        top.contains(&serde_json::json!({ "kind": "ip", "id": "127.0.0.1", "requests": 2 })),
        "{top:?}"
    );
    assert_eq!(
        find(&v, host, "GET", "/users/{id}/profile").expect("users")["requests"],
        3
    );
    assert_eq!(
        find(&v, host, "POST", "/orders/v1/items/{id}").expect("post")["requests"],
        2
    );
    assert_eq!(
        find(&v, "legacy.example", "GET", "/status/{id}").expect("host")["requests"],
        2
    );
    assert!(orders["first_seen"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // Most requests first.
    assert_eq!(v["items"][0]["shape"], "/orders/v1/items/{id}");
    assert_eq!(v["shapes_cap"], 5);
    assert_eq!(v["evicted_total"], 0);
    let by_host = shadow(&gw, "?host=LEGACY.example").await;
    assert_eq!(items(&by_host), 1);

    // Ten new shapes, once each, past a cap of five: the four seen most stay, one of the new
    // ones with them, and each of the other nine is counted as evicted.
    for w in [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    ] {
        let r = get(&format!("/scan/{w}")).send().await.expect("scan");
        assert_eq!(r.status(), 404);
    }
    wait_records(&gw, 22.0).await;
    let v = shadow(&gw, "").await;
    assert_eq!(v["shapes_tracked"], 5, "{v:#}");
    assert_eq!(v["evicted_total"], 9, "{v:#}");
    for (h, m, s) in [
        (host, "GET", "/orders/v1/items/{id}"),
        (host, "GET", "/users/{id}/profile"),
        (host, "POST", "/orders/v1/items/{id}"),
        ("legacy.example", "GET", "/status/{id}"),
    ] {
        assert!(find(&v, h, m, s).is_some(), "{m} {s} kept: {v:#}");
    }
    let metrics = metrics_text(&gw).await;
    assert_eq!(
        metric_value(&metrics, "turnpike_shadow_requests_total"),
        21.0
    );
    assert_eq!(
        metric_value(&metrics, "turnpike_shadow_shapes_evicted_total"),
        9.0
    );

    // A bad window is refused with a problem.
    let (s, p) = admin(&gw, "GET", "/catalog/shadow?since=forever", None).await;
    assert_eq!((s, p["code"].as_str()), (422, Some("invalid_request")));

    // After a graceful restart the shapes are read back from the store.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "no graceful exit"
    );
    let mut second: Child = gw.spawn_process(&[], "gateway-restarted.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let answer = client()
            .get(gw.admin_url("/catalog/shadow"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        if let Ok(r) = answer {
            if r.status() == 200 {
                break r.json::<serde_json::Value>().await.expect("json");
            }
        }
        assert!(Instant::now() < deadline, "the gateway did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        find(&v, host, "GET", "/orders/v1/items/{id}").map(|o| o["requests"].clone()),
        Some(serde_json::json!(4)),
        "{v:#}"
    );
    support::send_signal(second.id(), "TERM");
    assert!(wait_child(&mut second, Duration::from_secs(15)).is_some());
}
