//! Lifecycle notices to `[catalog] notify_webhook`, with a real local receiver: consumers that
//! called a deprecated version get `api.deprecated` and, 20 days before the sunset,
//! `api.sunset_in_30_days`, once each (the receiver refuses the first POST: the retry delivers
//! it); after a restart with the sunset 5 days away they get `api.sunset_in_7_days` and nothing
//! twice; a consumer whose first notices come within the last week never gets the 30-day one.
//! Each POST is signed (HMAC-SHA256 of the body) and carries a stable delivery id.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::hook::{Delivery, Hook};
use support::upstream::Upstream;
use support::{client, wait_child, Gateway, ADMIN_TOKEN};

const KEYS: [(&str, &str); 3] = [
    ("acme", "tp_notice_acme_0123456789abcdef0"),
    ("globex", "tp_notice_globex_0123456789abcde"),
    ("initech", "tp_notice_initech_0123456789abcd"),
];
const DAY: i64 = 86_400;

fn body(up: &Upstream, hook: &Hook, sunset_in_days: i64) -> String {
    let now = turnpike::clock::now();
    let consumers = support::consumers_toml(&KEYS);
    format!(
        r#"
[catalog]
notify_webhook = "{hook}"
notify_secret_env = "TURNPIKE_TEST_ADMIN_TOKEN"
notify_every = "1s"

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
lifecycle = "deprecated"
deprecated_at = "{deprecated}"
sunset_at = "{sunset}"
successor = "orders/v2"
migration_url = "https://wiki.example.com/orders/v1-to-v2"

[[apis]]
name = "orders"
version = "v2"
base_path = "/orders/v2"
upstream = "orders"
[apis.auth]
methods = ["api_key"]

{consumers}"#,
        hook = hook.url("/lifecycle"),
        up = up.addr,
        deprecated = turnpike::clock::rfc3339(now - 10 * DAY),
        // Half a day more than whole days, so the count does not move during the test.
        sunset = turnpike::clock::rfc3339(now + sunset_in_days * DAY + DAY / 2),
    )
}

async fn call(gw: &Gateway, who: &str, path: &str, n: usize) {
    support::call_as(gw, &KEYS, who, path, n).await;
}

/// (consumer, event) of each delivery.
fn pairs(d: &[Delivery]) -> Vec<(String, String)> {
    d.iter()
        .map(|d| {
            (
                d.json["consumer"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d.json["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until `n` notices were delivered, then two more looks, and returns them all.
async fn delivered(hook: &Hook, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.delivered().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} notices: {:?}",
            hook.delivered().len(),
            pairs(&hook.delivered())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    hook.delivered()
}

fn set(v: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_go_once_per_consumer_and_event_across_a_restart() {
    let up = Upstream::start("orders").await;
    let hook = Hook::start(1).await;
    let mut gw = Gateway::start_with(
        "grace_period = \"1s\"\nkeepalive_drain = \"0s\"\ngraceful_shutdown_timeout = \"2s\"",
        &body(&up, &hook, 20),
    );
    call(&gw, "acme", "/orders/v1/items", 3).await;
    call(&gw, "globex", "/orders/v1/items", 2).await;
    call(&gw, "initech", "/orders/v2/items", 2).await;

    let got = delivered(&hook, 4).await;
    assert_eq!(got.len(), 4, "{:?}", pairs(&got));
    assert_eq!(
        pairs(&got).into_iter().collect::<BTreeSet<_>>(),
        set(&[
            ("acme", "api.deprecated"),
            ("acme", "api.sunset_in_30_days"),
            ("globex", "api.deprecated"),
            ("globex", "api.sunset_in_30_days"),
        ])
    );
    let acme = got
        .iter()
        .find(|d| d.json["consumer"]["id"] == "acme" && d.json["type"] == "api.deprecated")
        .expect("acme's notice");
    let j = &acme.json;
    assert_eq!(j["api"]["ref"], "orders/v1");
    assert_eq!(j["api"]["successor"], "orders/v2");
    assert_eq!(
        j["api"]["migration_url"],
        "https://wiki.example.com/orders/v1-to-v2"
    );
    assert_eq!(
        j["consumer"]["contacts"],
        serde_json::json!(["ops@acme.example"])
    );
    assert_eq!(j["usage_30d"]["requests"], 3);
    assert_eq!(j["days_to_sunset"], 20);
    assert_eq!(
        acme.headers.get("x-turnpike-event").map(String::as_str),
        Some("api.deprecated")
    );
    assert_eq!(
        acme.headers.get("x-turnpike-delivery"),
        j["id"].as_str().map(String::from).as_ref()
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ADMIN_TOKEN.as_bytes());
    let sig = acme
        .headers
        .get("x-turnpike-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .expect("signed");
    let sig: Vec<u8> = (0..sig.len() / 2)
        .filter_map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).ok())
        .collect();
    assert!(
        ring::hmac::verify(&key, &acme.body, &sig).is_ok(),
        "signature"
    );
    let ids: BTreeSet<&str> = got.iter().filter_map(|d| d.json["id"].as_str()).collect();
    assert_eq!(ids.len(), 4, "one id per notice");

    // The who-still-calls report says which notices each consumer got.
    let (status, report) =
        support::admin(&gw, "GET", "/catalog/apis/orders/v1/consumers", None).await;
    assert_eq!(status, 200);
    let acme_row = report["consumers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["consumer"] == "acme"))
        .expect("acme in the report");
    let events: BTreeSet<(String, String)> = acme_row["notices"]
        .as_array()
        .expect("notices")
        .iter()
        .map(|n| {
            (
                n["event"].as_str().unwrap_or_default().to_string(),
                n["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        events,
        set(&[
            ("api.deprecated", "sent"),
            ("api.sunset_in_30_days", "sent")
        ])
    );

    // Restart with the sunset five days away; initech now calls v1 too.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "no graceful exit"
    );
    gw.rewrite(&body(&up, &hook, 5));
    let mut second = gw.spawn_process(&[], "gateway-restarted.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = client().get(gw.url("/orders/v2/items")).send().await;
        if ok.is_ok_and(|r| r.status() == 401) {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call(&gw, "initech", "/orders/v1/items", 1).await;
    let got = delivered(&hook, 8).await;
    let all = pairs(&got);
    assert_eq!(all.len(), 8, "nothing twice: {all:?}");
    assert_eq!(
        all[4..].iter().cloned().collect::<BTreeSet<_>>(),
        set(&[
            ("acme", "api.sunset_in_7_days"),
            ("globex", "api.sunset_in_7_days"),
            ("initech", "api.deprecated"),
            ("initech", "api.sunset_in_7_days"),
        ])
    );
    // The store remembers each notice, and the 30-day one initech never gets.
    let db = rusqlite::Connection::open(gw.dir.path().join("turnpike.db")).expect("store");
    db.busy_timeout(Duration::from_secs(5)).expect("busy");
    let state: String = db
        .query_row(
            "SELECT state FROM catalog_notices WHERE consumer = 'initech'
             AND event = 'api.sunset_in_30_days'",
            [],
            |r| r.get(0),
        )
        .expect("initech's 30-day notice row");
    assert_eq!(state, "superseded");
    let sent: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM catalog_notices WHERE state = 'sent'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(sent, 8);
    support::send_signal(second.id(), "TERM");
    assert!(wait_child(&mut second, Duration::from_secs(15)).is_some());
}

/// Two gateways sharing a real Redis, each with its own store: both see acme's calls, and the
/// fleet's claim in Redis lets only one of them send each notice. A notice another node marked
/// sent is never sent; one whose claim another node holds (a node that stopped mid-send) waits
/// until that claim expires, then goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_sends_each_notice_once() {
    let redis = support::redis::RedisServer::start();
    let up = Upstream::start("orders").await;
    let hook = Hook::start(0).await;
    let store = format!(
        "redis_url = \"{}\"\nredis_prefix = \"tp-notices:\"\nnodes = 2\nsync_interval = \"250ms\"",
        redis.url()
    );
    let mut conn = redis.conn();
    let globex = |event: &str| format!("tp-notices:notice:globex:orders:v1:{event}");
    redis::cmd("SET")
        .arg(globex("api.sunset_in_30_days"))
        .arg("sent")
        .query::<()>(&mut conn)
        .expect("set");
    redis::cmd("SET")
        .arg(globex("api.deprecated"))
        .arg("claim:node_stopped")
        .arg("EX")
        .arg(6)
        .query::<()>(&mut conn)
        .expect("set");
    let held_until = Instant::now() + Duration::from_secs(5);

    let text = body(&up, &hook, 20);
    let a = Gateway::start_with_store(&store, &text);
    let b = Gateway::start_with_store(&store, &text);
    call(&a, "acme", "/orders/v1/items", 2).await;
    call(&b, "acme", "/orders/v1/items", 2).await;
    call(&b, "globex", "/orders/v1/items", 1).await;
    let got = delivered(&hook, 3).await;
    let all = pairs(&got);
    assert_eq!(all.len(), 3, "each notice once in the fleet: {all:?}");
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        set(&[
            ("acme", "api.deprecated"),
            ("acme", "api.sunset_in_30_days"),
            ("globex", "api.deprecated"),
        ])
    );
    let globex_at = got
        .iter()
        .find(|d| d.json["consumer"]["id"] == "globex")
        .map(|d| d.at)
        .expect("globex's notice");
    assert!(
        globex_at >= held_until,
        "globex's notice went out while another node's claim held it"
    );
    let mark: String = redis::cmd("GET")
        .arg(globex("api.deprecated"))
        .query(&mut conn)
        .expect("get");
    assert_eq!(
        mark, "sent",
        "the sender marks the notice sent for the fleet"
    );
    // Both nodes report the fleet's calls (usage rollups are shared through Redis), and the
    // notice the fleet had sent is recorded as such by the node that looked at it.
    let mut by_fleet = 0;
    for gw in [&a, &b] {
        let (_, report) =
            support::admin(gw, "GET", "/catalog/apis/orders/v1/consumers", None).await;
        assert_eq!(report["scope"], "fleet");
        let row = |who: &str| {
            report["consumers"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["consumer"] == who))
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(row("acme")["requests"], 4);
        by_fleet += row("globex")["notices"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter(|n| {
                        n["event"] == "api.sunset_in_30_days" && n["state"] == "sent_by_fleet"
                    })
                    .count()
            })
            .unwrap_or(0);
    }
    assert!(
        by_fleet >= 1,
        "the 30-day notice is recorded as the fleet's"
    );
}
