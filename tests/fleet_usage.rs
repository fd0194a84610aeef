//! Fleet-wide usage: two gateway processes and a real redis-server. Traffic split over both
//! nodes gives exact totals in `/analytics/usage`, the per-version consumers report and
//! `turnpike report` (all `"scope": "fleet"`), with latency sketches merged across nodes; a
//! Redis that stops answering mid-traffic loses nothing (the rows wait and are written once,
//! not twice, when it answers again); past `max_series_per_minute` consumers are folded into
//! `(other)`; every bucket carries its retention as an expiry.

mod support;

use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::upstream::Upstream;
use support::{admin, metric_value, metrics_text, run_cli, wait_records, Gateway};

const KEYS: [(&str, &str); 4] = [
    ("acme", "tp_fleet_acme_0123456789abcdef01"),
    ("globex", "tp_fleet_globex_0123456789abcdef"),
    ("initech", "tp_fleet_initech_0123456789abcde"),
    ("umbrella", "tp_fleet_umbrella_0123456789abcd"),
];

fn store(redis: &RedisServer, prefix: &str) -> String {
    format!(
        "redis_url = \"{}\"\nredis_prefix = \"{prefix}\"\nnodes = 2\nsync_interval = \"250ms\"\nredis_timeout = \"1s\"",
        redis.url()
    )
}

fn body(up: &Upstream, fleet: &str) -> String {
    let consumers = support::consumers_toml(&KEYS);
    format!(
        r#"
[analytics.fleet]
{fleet}

[upstreams.orders]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
version = "v1"
base_path = "/orders/v1"
upstream = "orders"
[apis.auth]
methods = ["api_key"]

{consumers}"#,
        up = up.addr
    )
}

async fn call(gw: &Gateway, who: &str, path: &str, n: usize) {
    support::call_as(gw, &KEYS, who, path, n).await;
}

async fn usage(gw: &Gateway) -> serde_json::Value {
    let (s, v) = admin(
        gw,
        "GET",
        "/analytics/usage?api=orders&granularity=minute",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Requests per consumer in a usage answer.
fn by_consumer(v: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for r in v["rows"].as_array().into_iter().flatten() {
        *out.entry(r["consumer"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += r["requests"].as_u64().unwrap_or(0);
    }
    out
}

fn counts(v: &[(&str, u64)]) -> std::collections::BTreeMap<String, u64> {
    v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Waits, if needed, until at least `margin` seconds remain in the current minute, so that a
/// burst of requests falls in one minute bucket.
async fn away_from_minute_end(margin: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = 60 - now % 60;
    if left < margin {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_fleet_wide_exact_and_survives_a_redis_outage() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("orders").await;
    let text = body(&up, "");
    let a = Gateway::start_with_store(&store(&redis, "tp-fleet:"), &text);
    let b = Gateway::start_with_store(&store(&redis, "tp-fleet:"), &text);
    call(&a, "acme", "/orders/v1/items", 6).await;
    call(&a, "initech", "/orders/v1/items", 2).await;
    call(&b, "globex", "/orders/v1/items?delay_ms=120", 4).await;
    call(&b, "globex", "/orders/v1/items?status=503", 1).await;
    wait_records(&a, 8.0).await;
    wait_records(&b, 5.0).await;

    let want = counts(&[("acme", 6), ("globex", 5), ("initech", 2)]);
    // Each node answers for the whole fleet (it writes its own rows first; the other node's
    // come with its next flush, within 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in [&a, &b] {
        loop {
            let v = usage(gw).await;
            assert_eq!(v["scope"], "fleet");
            let seen = by_consumer(&v);
            if seen == want {
                assert_eq!(v["totals"]["errors"], 1);
                // The sketches of both nodes merged: the slowest quarter (globex's 120 ms,
                // answered by b) sets the p99, the fast majority (a's) the median.
                let p99 = v["totals"]["latency_ms"]["p99"].as_f64().expect("p99");
                let p50 = v["totals"]["latency_ms"]["p50"].as_f64().expect("p50");
                assert!(p99 >= 120.0 * 0.99, "p99 {p99}");
                assert!(p50 < 100.0, "p50 {p50}");
                break;
            }
            assert!(Instant::now() < deadline, "fleet usage {seen:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (s, report) = admin(&b, "GET", "/catalog/apis/orders/v1/consumers", None).await;
    assert_eq!(s, 200);
    assert_eq!(report["scope"], "fleet");
    let rows: Vec<(String, u64)> = report["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| {
            (
                c["consumer"].as_str().unwrap_or_default().to_string(),
                c["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("acme".to_string(), 6),
            ("globex".to_string(), 5),
            ("initech".to_string(), 2)
        ]
    );
    let file = a.config.display().to_string();
    let (code, out, err) = run_cli(&["report", "-c", &file, "--api", "orders"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("scope: fleet\n"), "{out}");
    let total = out
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("a total line");
    assert!(total.split_whitespace().nth(1) == Some("13"), "{out}");

    // Redis stops answering while both nodes take traffic; their rows wait, and are added
    // exactly once when it answers again.
    redis.pause();
    call(&a, "acme", "/orders/v1/items", 4).await;
    call(&b, "globex", "/orders/v1/items", 3).await;
    wait_records(&a, 12.0).await;
    wait_records(&b, 8.0).await;
    // At the next flush on each node (every 5 s) the rows wait, their writes timing out.
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in [&a, &b] {
        loop {
            let waiting =
                metric_value(&metrics_text(gw).await, "turnpike_fleet_usage_waiting_rows");
            if waiting >= 1.0 {
                break;
            }
            assert!(Instant::now() < deadline, "rows wait for Redis ({waiting})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.resume();
    let want = counts(&[("acme", 10), ("globex", 8), ("initech", 2)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = by_consumer(&usage(&a).await);
        if seen == want {
            break;
        }
        assert!(Instant::now() < deadline, "after the outage {seen:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing more arrives later (no batch added twice), and nothing was dropped.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(by_consumer(&usage(&b).await), want);
    for gw in [&a, &b] {
        let m = metrics_text(gw).await;
        assert_eq!(metric_value(&m, "turnpike_fleet_usage_dropped_total"), 0.0);
        assert_eq!(metric_value(&m, "turnpike_fleet_usage_waiting_rows"), 0.0);
    }
    redis.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_cap_folds_consumers_into_other_and_buckets_expire() {
    let redis = RedisServer::start();
    let up = Upstream::start("orders").await;
    let text = body(
        &up,
        "max_series_per_minute = 2\nminute_retention = \"2m\"\nhour_retention = \"3h\"\nday_retention = \"2d\"",
    );
    let a = Gateway::start_with_store(&store(&redis, "tp-cap:"), &text);
    away_from_minute_end(15).await;
    for (who, n) in [("acme", 3), ("globex", 2), ("initech", 4), ("umbrella", 1)] {
        call(&a, who, "/orders/v1/items", n).await;
        // One flush per consumer, so the order in which rows reach Redis is this one.
        wait_records(
            &a,
            match who {
                "acme" => 3.0,
                "globex" => 5.0,
                "initech" => 9.0,
                _ => 10.0,
            },
        )
        .await;
        let _ = usage(&a).await;
    }
    let v = usage(&a).await;
    assert_eq!(
        by_consumer(&v),
        counts(&[("acme", 3), ("globex", 2), ("(other)", 5)]),
        "{v:#}"
    );
    assert_eq!(v["totals"]["requests"], 10);
    let m = metrics_text(&a).await;
    assert_eq!(metric_value(&m, "turnpike_fleet_usage_folded_total"), 2.0);

    // Every bucket expires its retention after its start.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tp-cap:usage:*")
        .query(&mut conn)
        .expect("keys");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut seen = std::collections::BTreeSet::new();
    for k in keys.iter().filter(|k| !k.contains(":batch:")) {
        let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut conn).expect("ttl");
        let (limit, kind) = if k.contains(":rows:") || k.contains(":60:") {
            // (A row set lives an hour at most, here less: the minute retention.)
            (120, "minute")
        } else if k.contains(":3600:") {
            (3 * 3600, "hour")
        } else {
            (2 * 86_400, "day")
        };
        assert!(ttl > 0 && ttl <= limit, "{k}: ttl {ttl} (now {now})");
        seen.insert(kind);
    }
    assert_eq!(seen.len(), 3, "minute, hour and day buckets: {keys:?}");
}

/// The server-side merge against the store's, with a real Redis: two nodes' deltas for the same
/// rows read back equal to the deltas merged in Rust (counts and sketch buckets), and a batch
/// sent again under the same id (a retry after a reply was lost) is not added twice.
#[test]
fn redis_merges_rows_exactly_and_adds_a_batch_once() {
    use turnpike::cluster::usage::{query, write, Limits, Pending};
    use turnpike::store::usage::{Filter, UsageKey, UsageTotals, MINUTE};
    let redis = RedisServer::start();
    let cfg: turnpike::config::file::FileConfig =
        toml::from_str(&format!("[store]\n{}", store(&redis, "tp-merge:"))).expect("config");
    // Two nodes (each with its own node id, as two processes have).
    let node = || {
        turnpike::cluster::Cluster::from_config(&cfg.store)
            .expect("cluster")
            .expect("a redis url")
    };
    let (cluster, other) = (node(), node());
    let limits = Limits {
        minutes: 3_600,
        hours: 86_400,
        days: 86_400 * 3,
        max_series: 100,
    };
    let now = turnpike::clock::now();
    let minute = now - now % MINUTE;
    let key = |consumer: &str| UsageKey {
        api: "orders".into(),
        version: "v1".into(),
        consumer: consumer.into(),
        status_class: 2,
    };
    let totals = |seed: u64| {
        let mut t = UsageTotals {
            requests: 50 + seed,
            errors: seed % 3,
            bytes_in: 1_000 * seed,
            bytes_out: (1 << 33) + seed,
            ..Default::default()
        };
        for i in 0..50 + seed {
            t.latency.add(37 + i * i * (seed + 1));
        }
        t
    };
    let node_a = vec![
        (minute, key("acme"), totals(1)),
        (minute, key("globex"), totals(2)),
    ];
    let node_b = vec![
        (minute, key("acme"), totals(3)),
        (minute + 60, key("acme"), totals(4)),
    ];
    for (c, deltas) in [(&cluster, &node_a), (&other, &node_b)] {
        let mut p = Pending::default();
        p.push(deltas.clone());
        write(c, &mut p, limits).expect("write");
        assert_eq!(p.rows(), 0);
    }
    // The same batch id again (a fresh Pending numbers its batches from 0, as a retry keeps
    // the number of the batch it resends): nothing is added.
    let mut again = Pending::default();
    again.push(node_a.clone());
    write(&cluster, &mut again, limits).expect("write");

    let read = |granularity: i64| {
        let f = Filter {
            granularity,
            from: minute - minute % granularity,
            to: minute + 3_600,
            api: Some("orders".into()),
            consumer: Some("acme".into()),
        };
        query(&cluster, &f, 100).expect("query")
    };
    let minutes = read(MINUTE);
    assert_eq!(minutes.len(), 2);
    let mut want = totals(1);
    want.merge(&totals(3));
    assert_eq!(minutes[0].totals, want, "one minute, two nodes");
    assert_eq!(minutes[1].totals, totals(4));
    // The hour and the day hold both minutes (the second may fall in the next hour).
    let day = read(86_400);
    want.merge(&totals(4));
    let mut summed = UsageTotals::default();
    for r in &day {
        summed.merge(&r.totals);
    }
    assert_eq!(summed, want, "the day holds both minutes of both nodes");
}

/// Shadow endpoints of a fleet: shapes seen on either node are counted together in Redis, with
/// the callers of both; the cap holds for the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_endpoints_are_counted_for_the_fleet() {
    let redis = RedisServer::start();
    let up = Upstream::start("orders").await;
    let text = format!("[catalog]\nshadow_shapes = 3\n{}", body(&up, ""));
    let a = Gateway::start_with_store(&store(&redis, "tp-shadow:"), &text);
    let b = Gateway::start_with_store(&store(&redis, "tp-shadow:"), &text);
    let acme = KEYS[0].1;
    let miss = |gw: &Gateway, path: &str, key: Option<&str>| {
        let mut req = support::client().get(gw.url(path));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        async move {
            let r = req.send().await.expect("unrouted");
            assert_eq!(r.status(), 404);
        }
    };
    let shadow = |gw: &Gateway| {
        let gw_admin = gw.admin;
        async move {
            let url = format!("http://{gw_admin}/catalog/shadow");
            let r = support::client()
                .get(url)
                .bearer_auth(support::ADMIN_TOKEN)
                .send()
                .await
                .expect("shadow");
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.expect("json")
        }
    };
    miss(&a, "/legacy/orders/1", Some(acme)).await;
    miss(&a, "/legacy/orders/2", None).await;
    wait_records(&a, 2.0).await;
    shadow(&a).await;
    miss(&b, "/legacy/orders/3", None).await;
    miss(
        &b,
        "/users/3f2b8c1e-9d4a-4b7e-8a21-0c5d6e7f8a9b/profile",
        None,
    )
    .await;
    wait_records(&b, 2.0).await;
    let v = shadow(&b).await;
    assert_eq!(v["scope"], "fleet");
    let legacy = v["items"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["shape"] == "/legacy/orders/{id}"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(legacy["requests"], 3, "{v:#}");
    let top = legacy["top_callers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        top.contains(&serde_json::json!({ "kind": "ip", "id": "127.0.0.1", "requests": 2 }))
            && top
                .contains(&serde_json::json!({ "kind": "consumer", "id": "acme", "requests": 1 })),
        "{top:?}"
    );
    for w in ["alpha", "bravo", "charlie", "delta"] {
        miss(&a, &format!("/scan/{w}"), None).await;
    }
    wait_records(&a, 6.0).await;
    shadow(&a).await;
    let v = shadow(&b).await;
    assert_eq!(v["shapes_tracked"], 3, "{v:#}");
    assert!(
        v["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["shape"] == "/legacy/orders/{id}")),
        "the most seen shape stays: {v:#}"
    );
    let evicted = metric_value(
        &metrics_text(&a).await,
        "turnpike_shadow_shapes_evicted_total",
    ) + metric_value(
        &metrics_text(&b).await,
        "turnpike_shadow_shapes_evicted_total",
    );
    assert_eq!(evicted, 3.0, "six shapes, three kept");
    assert_eq!(v["evicted_total"], 3, "the fleet's count: {v:#}");
}

/// The fleet's shadow table in a real Redis stays bounded under a flood of new shapes: past the
/// cap the least-seen shapes go with every field they had (no day hash keeps a field of a shape
/// no longer tracked), a shape seen often over several days stays, a lowered cap is reached,
/// and a shape whose last day is past the retention no longer holds a place.
#[test]
fn fleet_shadow_table_is_bounded_and_ages() {
    use turnpike::cluster::shadow::{add, count, list};
    use turnpike::store::shadow::ShadowDelta;
    const DAY: i64 = 86_400;
    let redis = RedisServer::start();
    let cfg: turnpike::config::file::FileConfig =
        toml::from_str(&format!("[store]\n{}", store(&redis, "tp-flood:"))).expect("config");
    let cluster = turnpike::cluster::Cluster::from_config(&cfg.store)
        .expect("cluster")
        .expect("a redis url");
    let now = turnpike::clock::now();
    let today = now - now % DAY;
    let retention = 30 * DAY;
    let delta = |day: i64, shape: &str, n: u64| ShadowDelta {
        day,
        host: "api.example.com".into(),
        method: "GET".into(),
        shape: shape.into(),
        first_seen: day + 60,
        last_seen: day + 120,
        requests: n,
        callers: vec![("ip:10.0.0.1".into(), n)],
    };
    // A shape last seen 40 days ago (past the retention) with many requests.
    add(
        &cluster,
        &[delta(today - 40 * DAY, "/ancient", 1_000)],
        0,
        50,
        retention,
        now,
    )
    .expect("add");
    let mut deltas = vec![
        delta(today - 2 * DAY, "/often", 4),
        delta(today - DAY, "/often", 3),
        delta(today, "/often", 3),
    ];
    deltas.extend((0..1_000).map(|i| delta(today, &format!("/scan/w{i}"), 1)));
    let evicted = add(&cluster, &deltas, 0, 50, retention, now).expect("add");
    let (tracked, total) = count(&cluster).expect("count");
    assert_eq!(tracked, 50);
    assert_eq!(evicted, 951, "1,001 shapes this time, 50 kept");
    assert_eq!(total, 951, "the ancient shape aged out; it was not evicted");
    let mut conn = redis.conn();
    let mut hlen = |day: i64| -> u64 {
        redis::cmd("HLEN")
            .arg(format!("tp-flood:shadow:{day}"))
            .query(&mut conn)
            .expect("hlen")
    };
    assert_eq!(hlen(today), 50, "no field left behind by an evicted shape");
    assert_eq!((hlen(today - DAY), hlen(today - 2 * DAY)), (1, 1));
    assert_eq!(hlen(today - 40 * DAY), 0, "an expired day is gone");

    let shapes = list(&cluster, today - 7 * DAY, None, 5, retention, now).expect("list");
    assert_eq!(shapes[0].shape, "/often");
    assert_eq!(shapes[0].requests, 10);
    assert_eq!(shapes[0].first_seen, today - 2 * DAY + 60);
    assert!(shapes.iter().all(|s| s.shape != "/ancient"));

    // A lowered cap is reached (within one call here: 40 to evict) and the often-seen stays.
    let evicted = add(
        &cluster,
        &[delta(today, "/often", 1)],
        0,
        10,
        retention,
        now,
    )
    .expect("add");
    assert_eq!(evicted, 40);
    assert_eq!(count(&cluster).expect("count"), (10, 991));
    assert_eq!(hlen(today), 10);
    assert_eq!((hlen(today - DAY), hlen(today - 2 * DAY)), (1, 1));
    let shapes = list(&cluster, today, None, 20, retention, now).expect("list");
    assert_eq!(shapes.len(), 10);
    assert_eq!(
        (shapes[0].shape.as_str(), shapes[0].requests),
        ("/often", 4)
    );
}
