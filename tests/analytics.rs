//! Analytics end to end with the real binary: after requests of known shapes the metrics, the
//! usage rollups, the CSV and top answers and `turnpike report` all give the same exact counts;
//! latency percentiles agree with the access log within the sketch's 1 %; the access log holds
//! no secret and is reopened on SIGUSR1; the consumer label stays capped with 10,000
//! consumers; a stalled aggregator drops (and counts) records while requests keep succeeding;
//! spikes and error surges raise alerts that reach a real webhook receiver, steady traffic none.

mod support;

use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{admin, client, key_digest, run_cli, Gateway, ADMIN_TOKEN};

const ACME: &str = "tpk_analyticsacmeanalyticsacme0000000000";
const GLOBEX: &str = "tpk_analyticsglobexanalyticsglobex000000";
const TINY: &str = "tpk_analyticstinyanalyticstiny0000000000";
const BEARER: &str = "very-secret-bearer-token-value";

/// `name{labels} value` lines of a Prometheus text answer.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(n, _)| n == series)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn sum(text: &str, metric: &str) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, _)| n.starts_with(&format!("{metric}{{")) || n == metric)
        .map(|(_, v)| v)
        .sum()
}

async fn metrics(gw: &Gateway) -> String {
    let r = client()
        .get(gw.admin_url("/metrics"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/plain; version=0.0.4"));
    r.text().await.expect("text")
}

/// Waits until the aggregator has absorbed `n` records and returns a scrape taken after that.
/// The scrape that shows `n` is not returned: its other metrics may have been collected
/// before the last records were counted in them.
async fn records(gw: &Gateway, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(gw).await;
        let seen = value(&text, "turnpike_analytics_records_total") as u64;
        if seen == n {
            let after = metrics(gw).await;
            let again = value(&after, "turnpike_analytics_records_total") as u64;
            assert_eq!(again, n, "records arrived after {n}:\n{after}");
            return after;
        }
        assert!(seen < n, "more records than requests: {seen} > {n}");
        assert!(Instant::now() < deadline, "{seen} of {n} records:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn shapes_config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
[analytics]
access_log = "logs/access.log"

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "orders"
version = "v1"
base_path = "/orders"
upstream = "app"
[apis.auth]
methods = ["api_key"]
api_key = {{ header = "x-api-key", query_param = "api_key" }}
[[apis.routes]]
path = "/items/{{id}}"

[[apis]]
name = "public"
base_path = "/public"
upstream = "app"
[apis.cache]
ttl = "60s"

[plans.tiny]
quotas = ["2/month"]

[plans.open]
quotas = ["1000000/month"]

[[consumers]]
id = "acme"
plan = "open"
keys = [{{ sha256 = "{acme}" }}]

[[consumers]]
id = "globex"
plan = "open"
keys = [{{ sha256 = "{globex}" }}]

[[consumers]]
id = "tiny"
plan = "tiny"
keys = [{{ sha256 = "{tiny}" }}]
"#,
        acme = key_digest(ACME),
        globex = key_digest(GLOBEX),
        tiny = key_digest(TINY),
    )
}

async fn status_of(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_rollups_csv_top_and_report_agree_on_known_requests() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&shapes_config(up.addr));
    let c = client();
    // 7 from acme (each waits 40 ms upstream), 3 upstream failures for globex (key in the
    // query), 2 + 1 quota refusal for tiny, 1 without a key (but with a bearer token), 2 to a
    // cached API (miss, hit), 1 to no route: 17 requests.
    for i in 0..7 {
        let url = gw.url(&format!("/orders/items/{i}?delay_ms=40"));
        assert_eq!(status_of(c.get(url).header("x-api-key", ACME)).await, 200);
    }
    for _ in 0..3 {
        let url = gw.url(&format!("/orders/items/x?status=503&api_key={GLOBEX}"));
        assert_eq!(status_of(c.get(url)).await, 503);
    }
    let tiny: Vec<u16> = futures_util::stream::iter(0..3)
        .then(|_| status_of(c.get(gw.url("/orders/items/t")).header("x-api-key", TINY)))
        .collect()
        .await;
    assert_eq!(tiny, vec![200, 200, 429]);
    let anon = c
        .get(gw.url("/orders/items/1"))
        .header("authorization", format!("Bearer {BEARER}"));
    assert_eq!(status_of(anon).await, 401);
    for expect in ["MISS", "HIT"] {
        let r = c.get(gw.url("/public/x")).send().await.expect("public");
        assert_eq!(r.headers()["x-cache-status"], expect);
    }
    assert_eq!(status_of(c.get(gw.url("/nowhere"))).await, 404);

    let text = records(&gw, 17).await;
    let route = "route=\"/orders/items/{id}\"";
    let req = |consumer: &str, class: &str| {
        format!(
            "turnpike_requests_total{{api=\"orders\",consumer=\"{consumer}\",method=\"GET\",{route},status_class=\"{class}\",version=\"v1\"}}"
        )
    };
    assert_eq!(value(&text, &req("acme", "2xx")), 7.0);
    assert_eq!(value(&text, &req("globex", "5xx")), 3.0);
    assert_eq!(value(&text, &req("tiny", "2xx")), 2.0);
    assert_eq!(value(&text, &req("tiny", "4xx")), 1.0);
    assert_eq!(value(&text, &req("", "4xx")), 1.0);
    assert_eq!(value(&text, "turnpike_requests_total{api=\"public\",consumer=\"\",method=\"GET\",route=\"/public\",status_class=\"2xx\",version=\"\"}"), 2.0);
    assert_eq!(value(&text, "turnpike_requests_total{api=\"\",consumer=\"\",method=\"GET\",route=\"\",status_class=\"4xx\",version=\"\"}"), 1.0);
    assert_eq!(sum(&text, "turnpike_requests_total"), 17.0);
    assert_eq!(
        value(
            &text,
            "turnpike_limited_total{api=\"orders\",plan=\"tiny\",policy=\"quota_month\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "turnpike_cache_requests_total{api=\"public\",status=\"HIT\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "turnpike_cache_requests_total{api=\"public\",status=\"MISS\"}"
        ),
        1.0
    );
    let hist = |m: &str| format!("{m}_count{{api=\"orders\",{route}}}");
    assert_eq!(
        value(&text, &hist("turnpike_request_duration_seconds")),
        14.0
    );
    assert_eq!(
        value(&text, &hist("turnpike_upstream_duration_seconds")),
        12.0,
        "the 429 and the 401 never went upstream"
    );
    assert_eq!(value(&text, "turnpike_config_generation"), 1.0);
    assert_eq!(value(&text, "turnpike_analytics_dropped_total"), 0.0);
    assert_eq!(
        value(
            &text,
            &format!(
                "turnpike_upstream_target_up{{target=\"{}\",upstream=\"app\"}}",
                up.addr
            )
        ),
        1.0
    );
    assert!(text.contains("turnpike_build_info{pingora=\"0.9.1\",version=\""));
    for secret in [ACME, GLOBEX, TINY, BEARER] {
        assert!(!text.contains(secret), "a credential in the metrics");
    }
    // Every metric the Grafana dashboard queries exists (the vectors that are still empty
    // here, store_up without Redis and anomalies, show up once they have a value).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana/turnpike.json"
        ))
        .expect("dashboard"),
    )
    .expect("dashboard json");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let Some(name) = word.strip_prefix("turnpike_").map(|_| word) else {
                    continue;
                };
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                queried += 1;
                assert!(
                    text.contains(&format!("# TYPE {base} "))
                        || ["turnpike_store_up", "turnpike_anomalies_total"].contains(&base),
                    "the dashboard queries {base}, which /metrics does not have"
                );
            }
        }
    }
    assert!(queried >= 12);
    let anonymous = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("m");
    assert_eq!(anonymous.status(), 401, "metrics need the admin token");

    // Usage rollups.
    let (s, all) = admin(&gw, "GET", "/analytics/usage", None).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(all["granularity"], "minute");
    assert_eq!(all["totals"]["requests"], 17);
    assert_eq!(all["totals"]["errors"], 3);
    let (_, acme) = admin(
        &gw,
        "GET",
        "/analytics/usage?api=orders&consumer=acme",
        None,
    )
    .await;
    assert_eq!(acme["totals"]["requests"], 7, "{acme}");
    let rows = acme["rows"].as_array().expect("rows");
    assert!(rows
        .iter()
        .all(|r| r["consumer"] == "acme" && r["status_class"] == "2xx"));
    let (_, hours) = admin(
        &gw,
        "GET",
        "/analytics/usage?granularity=hour&consumer=globex",
        None,
    )
    .await;
    assert_eq!(hours["totals"]["requests"], 3);
    assert_eq!(hours["totals"]["errors"], 3);
    let (s, bad) = admin(&gw, "GET", "/analytics/usage?from=yesterday", None).await;
    assert_eq!(
        (s, bad["code"].as_str()),
        (422, Some("invalid_request")),
        "{bad}"
    );

    // Percentiles against the exact values of the access log.
    let log_path = gw.dir.path().join("logs/access.log");
    // The aggregator writes the log after each batch it takes: wait for all 17 lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.lines().count() >= 17 || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 17);
    let mut acme_ms: Vec<f64> = lines
        .iter()
        .filter(|l| l["consumer"] == "acme")
        .map(|l| l["duration_ms"].as_f64().expect("ms"))
        .collect();
    acme_ms.sort_by(f64::total_cmp);
    let exact_p50 = acme_ms[(0.5 * 6.0) as usize];
    let p50 = acme["totals"]["latency_ms"]["p50"].as_f64().expect("p50");
    assert!(exact_p50 >= 40.0, "the upstream waited 40 ms: {exact_p50}");
    assert!(
        (p50 - exact_p50).abs() <= 0.01 * exact_p50 + 0.01,
        "p50 {p50} vs exact {exact_p50}"
    );
    for secret in [ACME, GLOBEX, TINY, BEARER] {
        assert!(!log.contains(secret), "a credential in the access log");
    }
    let limited = lines.iter().find(|l| l["status"] == 429).expect("429 line");
    assert_eq!(limited["code"], "quota_exceeded");
    assert_eq!(limited["limited"], "quota_month");
    assert_eq!(limited["route"], "/orders/items/{id}");
    assert!(lines
        .iter()
        .all(|l| l["request_id"].as_str().is_some_and(|r| !r.is_empty())));

    // CSV and top.
    let csv = client()
        .get(gw.admin_url("/analytics/usage?consumer=acme"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("accept", "text/csv")
        .send()
        .await
        .expect("csv");
    assert!(csv.headers()["content-type"]
        .to_str()
        .expect("t")
        .starts_with("text/csv"));
    let csv = csv.text().await.expect("csv text");
    let mut csv_lines = csv.lines();
    assert!(csv_lines
        .next()
        .expect("header")
        .starts_with("start,api,version,consumer,status_class,requests"));
    let total: u64 = csv_lines
        .map(|l| {
            l.split(',')
                .nth(5)
                .expect("requests")
                .parse::<u64>()
                .expect("n")
        })
        .sum();
    assert_eq!(total, 7);
    let (_, top) = admin(
        &gw,
        "GET",
        "/analytics/top?by=consumer&metric=requests",
        None,
    )
    .await;
    let names: Vec<&str> = top["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|t| t["consumer"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["acme", "globex", "tiny"]);
    let (_, top) = admin(&gw, "GET", "/analytics/top?by=api&metric=errors", None).await;
    assert_eq!(top["top"][0]["api"], "orders");
    assert_eq!(top["top"][0]["errors"], 3);
    let (_, top) = admin(
        &gw,
        "GET",
        "/analytics/top?by=consumer&metric=latency",
        None,
    )
    .await;
    // Ranked by p95, slowest first; acme's 40 ms upstream waits are in its p95. (Whether
    // acme comes first depends on how fast this machine answered the others.)
    let ranked = top["top"].as_array().expect("top");
    let p95 = |t: &serde_json::Value| t["latency_ms"]["p95"].as_f64().expect("p95");
    assert_eq!(ranked.len(), 3, "{top}");
    assert!(ranked.windows(2).all(|w| p95(&w[0]) >= p95(&w[1])), "{top}");
    let acme_top = ranked
        .iter()
        .find(|t| t["consumer"] == "acme")
        .expect("acme");
    assert!(p95(acme_top) >= 40.0, "{top}");

    // The command line reads the same rollups from the store.
    let config = gw.config.display().to_string();
    let (code, out, err) = run_cli(&["report", "-c", &config, "--consumer", "acme"], None);
    assert_eq!(code, 0, "{err}");
    let total_line = out
        .lines()
        .find(|l| l.starts_with("total"))
        .expect("total line");
    let cols: Vec<&str> = total_line.split_whitespace().collect();
    assert_eq!(cols[1], "7", "{out}");

    // logrotate: move the file away, signal, and the next lines go to a new file.
    std::fs::rename(&log_path, gw.dir.path().join("logs/access.log.1")).expect("rotate");
    gw.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("access log reopened") {
        assert!(
            Instant::now() < deadline,
            "SIGUSR1 did not reopen the access log"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_of(c.get(gw.url("/public/x"))).await, 200);
    records(&gw, 18).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log_path).map_or(0, |t| t.lines().count()) != 1 {
        assert!(Instant::now() < deadline, "no new access log after SIGUSR1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = std::fs::read_to_string(gw.dir.path().join("logs/access.log.1")).expect("old");
    assert_eq!(old.lines().count(), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consumer_label_stays_capped_with_ten_thousand_consumers() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    std::env::set_var(
        "TURNPIKE_TEST_ANALYTICS_JWT",
        "analytics-test-secret-0123456789abcdef",
    );
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = [ {{ addr = "{}" }} ]

[[apis]]
name = "fleet"
base_path = "/fleet"
upstream = "app"
[apis.auth]
methods = ["jwt"]
[apis.auth.jwt]
issuer = "https://issuer.test"
audience = "fleet"
secret_env = "TURNPIKE_TEST_ANALYTICS_JWT"
algorithms = ["HS256"]
link_consumers = false
"#,
        up.addr
    ));
    let key = EncodingKey::from_secret(b"analytics-test-secret-0123456789abcdef");
    let exp = turnpike::clock::now() + 3600;
    let tokens: Vec<String> = (0..10_000)
        .map(|i| {
            let claims = serde_json::json!({
                "iss": "https://issuer.test", "aud": "fleet", "sub": format!("c{i:05}"), "exp": exp,
            });
            encode(&Header::default(), &claims, &key).expect("sign")
        })
        .collect();
    let c = client();
    let ok = futures_util::stream::iter(tokens)
        .map(|t| {
            let req = c.get(gw.url("/fleet/x")).bearer_auth(t);
            async move { status_of(req).await }
        })
        .buffer_unordered(32)
        .filter(|s| std::future::ready(*s == 200))
        .count()
        .await;
    assert_eq!(ok, 10_000);
    let text = records(&gw, 10_000).await;
    let mut labels = BTreeMap::new();
    for (name, v) in samples(&text) {
        if let Some(rest) = name.strip_prefix("turnpike_requests_total{") {
            let consumer = rest
                .split("consumer=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .expect("consumer label");
            *labels.entry(consumer.to_string()).or_insert(0.0) += v;
        }
    }
    assert_eq!(
        labels.len(),
        101,
        "100 consumers (the default cap) and other"
    );
    assert_eq!(labels.get("other"), Some(&9_900.0));
    assert_eq!(labels.values().sum::<f64>(), 10_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_aggregator_drops_records_and_requests_still_succeed() {
    let up = Upstream::start("app").await;
    // The access log is a FIFO nobody reads yet: opening it blocks the aggregator, so the
    // channel (64 records) fills up and stays full.
    let dir = tempfile::tempdir().expect("tmp");
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "mkfifo (coreutils) is needed for this test"
    );
    let gw = Gateway::start(&format!(
        "[analytics]\nbuffer = 64\naccess_log = \"{}\"\n\n[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/app\"\nupstream = \"app\"\n",
        fifo.display(),
        up.addr
    ));
    let c = client();
    let statuses: Vec<u16> = futures_util::stream::iter(0..300)
        .map(|_| status_of(c.get(gw.url("/app/x"))))
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeded"
    );
    // A record is sent in Pingora's logging phase, after the answer went out: wait for the
    // last ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics(&gw).await;
        let dropped = value(&text, "turnpike_analytics_dropped_total");
        assert!(dropped <= 236.0, "more dropped than 300 - 64: {dropped}");
        if dropped == 236.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "{dropped} of 300 - 64 dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(value(&text, "turnpike_analytics_records_total"), 0.0);

    // A reader unblocks the aggregator: the 64 kept records come through, in the log too.
    let lines = Arc::new(Mutex::new(0usize));
    let counted = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let f = std::fs::File::open(&fifo).expect("open fifo");
        for _ in std::io::BufReader::new(f).lines() {
            *counted.lock().expect("lock") += 1;
        }
    });
    let text = records(&gw, 64).await;
    assert_eq!(sum(&text, "turnpike_requests_total"), 64.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while *lines.lock().expect("lock") != 64 {
        assert!(Instant::now() < deadline, "64 access log lines");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn alerts(gw: &Gateway) -> Vec<serde_json::Value> {
    let (s, v) = admin(gw, "GET", "/analytics/alerts", None).await;
    assert_eq!(s, 200);
    v["alerts"].as_array().expect("alerts").clone()
}

/// Sends `per_second` requests a second for `secs` seconds, evenly.
async fn steady(gw: &Gateway, path: &str, per_second: u32, secs: u32) {
    let c = client();
    let gap = Duration::from_secs(1) / per_second;
    let start = Instant::now();
    for i in 0..per_second * secs {
        let due = start + gap * i;
        tokio::time::sleep_until(due.into()).await;
        let _ = c.get(gw.url(path)).send().await.expect("request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spikes_and_error_surges_raise_alerts_that_reach_the_webhook() {
    let up = Upstream::start("app").await;
    let hook = support::hook::Hook::start(1).await;
    let gw = Gateway::start(&format!(
        r#"
[analytics.alerts]
window = "1s"
warmup_windows = 3
min_requests = 20
min_errors = 5
factor = 4.0
webhook = "{hook}"

[upstreams.app]
targets = [ {{ addr = "{}" }} ]

[[apis]]
name = "busy"
base_path = "/busy"
upstream = "app"
"#,
        up.addr,
        hook = hook.url("/alerts")
    ));
    steady(&gw, "/busy/x", 30, 6).await;
    assert!(
        alerts(&gw).await.is_empty(),
        "steady traffic raises nothing"
    );

    let c = client();
    futures_util::stream::iter(0..600)
        .map(|_| status_of(c.get(gw.url("/busy/x"))))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alerts(&gw).await.iter().any(|a| a["kind"] == "spike") {
        assert!(Instant::now() < deadline, "no spike alert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    steady(&gw, "/busy/x?status=500", 30, 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alerts(&gw).await.iter().any(|a| a["kind"] == "error_surge") {
        assert!(Instant::now() < deadline, "no error surge alert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = alerts(&gw).await;
    let spike = list.iter().find(|a| a["kind"] == "spike").expect("spike");
    assert_eq!(spike["api"], "busy");
    assert!(spike["requests"].as_u64().expect("n") >= 80);

    let text = metrics(&gw).await;
    assert!(
        value(
            &text,
            "turnpike_anomalies_total{api=\"busy\",kind=\"spike\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            "turnpike_anomalies_total{api=\"busy\",kind=\"error_surge\"}"
        ) >= 1.0
    );
    let log = gw.log();
    assert!(
        log.contains("anomaly: API busy")
            && log.contains("(spike)")
            && log.contains("(error_surge)"),
        "alerts are logged:\n{log}"
    );

    // The receiver refused the first delivery; the retry got through, and both kinds arrived.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = hook.bodies();
        let kinds: Vec<&str> = got.iter().filter_map(|b| b["kind"].as_str()).collect();
        if kinds.contains(&"spike") && kinds.contains(&"error_surge") {
            break;
        }
        assert!(Instant::now() < deadline, "webhook got {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(&gw).await;
    assert_eq!(
        value(&text, "turnpike_alert_webhook_failures_total"),
        0.0,
        "the refused delivery was retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_writes_every_record_out() {
    let up = Upstream::start("app").await;
    let mut gw = Gateway::start_with(
        // The grace period is several times the slow request's 500 ms: a loaded machine must
        // not turn the request into a cut-off one.
        "grace_period = \"3s\"\nkeepalive_drain = \"0s\"\ngraceful_shutdown_timeout = \"2s\"",
        &format!(
            "[analytics]\naccess_log = \"access.log\"\n\n[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/app\"\nupstream = \"app\"\n",
            up.addr
        ),
    );
    // Rollups are written every 5 s; these are still in memory (and some in the channel) when
    // the stop begins, and one request finishes during the grace period.
    let c = client();
    for _ in 0..5 {
        assert_eq!(status_of(c.get(gw.url("/app/x"))).await, 200);
    }
    let slow = tokio::spawn(status_of(c.get(gw.url("/app/slow?delay_ms=500"))));
    // The slow request has reached the upstream (counted before its delay) when the stop begins.
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.hits() < 6 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.signal("TERM");
    assert_eq!(slow.await.expect("join"), 200);
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "no graceful exit"
    );
    let config = gw.config.display().to_string();
    let (code, out, err) = run_cli(&["report", "-c", &config, "--api", "app"], None);
    assert_eq!(code, 0, "{err}");
    let total = out.lines().find(|l| l.starts_with("total")).expect("total");
    assert_eq!(total.split_whitespace().nth(1), Some("6"), "{out}");
    let log = std::fs::read_to_string(gw.dir.path().join("access.log")).expect("log");
    assert_eq!(log.lines().count(), 6);
    assert!(gw.log().contains("analytics written at exit"));
}

/// After a second without traffic the aggregator stops polling and waits on its channel (an
/// idle gateway does not wake 100 times a second): the first requests after the pause are
/// still counted, and so are the ones after a second pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_an_idle_pause_are_counted() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&shapes_config(up.addr));
    let c = client();
    for round in 1..=2u64 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        for _ in 0..3 {
            let r = c.get(gw.url("/public/x")).send().await.expect("request");
            assert_eq!(r.status(), 200);
        }
        records(&gw, 3 * round).await;
    }
}
