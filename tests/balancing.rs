//! Load balancing and upstream failure handling: weights, consistent hashing, active health
//! checks, passive ejection, retry on connect failure, timeouts, keep-alive pooling.

mod support;

use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{client, problem, Gateway};

fn pool(name: &str, targets: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.{name}]
targets = [ {targets} ]
{extra}

[[apis]]
name = "{name}"
base_path = "/{name}"
upstream = "{name}"
strip_base_path = true
"#
    )
}

async fn which(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let up = r
        .headers()
        .get("x-upstream")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (status, up)
}

async fn admin_upstreams(c: &reqwest::Client, gw: &Gateway) -> serde_json::Value {
    c.get(gw.admin_url("/upstreams"))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json")
}

/// Polls `GET /upstreams` until the target at `addr` has the active health `want` (what the
/// balancer acts on: the two are set together).
async fn wait_health(c: &reqwest::Client, gw: &Gateway, addr: std::net::SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = admin_upstreams(c, gw).await;
        let found = v["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|u| u["targets"].as_array().into_iter().flatten())
            .any(|t| t["address"] == addr.to_string() && t["health"] == want);
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} never became {want}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_within_ten_percent() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let targets = format!(
        r#"{{ addr = "{}" }}, {{ addr = "{}", weight = 2 }}"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&pool("svc", &targets, ""));
    let c = client();
    for _ in 0..3000 {
        let (status, _) = which(&c, &gw.url("/svc/x")).await;
        assert_eq!(status, 200);
    }
    let (ha, hb) = (a.hits() as f64, b.hits() as f64);
    assert_eq!(ha + hb, 3000.0);
    assert!((ha - 1000.0).abs() <= 100.0, "a got {ha}, expected ~1000");
    assert!((hb - 2000.0).abs() <= 200.0, "b got {hb}, expected ~2000");
    // Keep-alive pooling: a handful of upstream connections, not one per request.
    assert!(
        a.connections() + b.connections() <= 16,
        "{} upstream connections for 3000 requests",
        a.connections() + b.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_sticky() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c3 = Upstream::start("c").await;
    let targets = format!(
        r#"{{ addr = "{}" }}, {{ addr = "{}" }}, {{ addr = "{}" }}"#,
        a.addr, b.addr, c3.addr
    );
    let gw = Gateway::start(&pool(
        "svc",
        &targets,
        "balance = \"consistent_hash\"\nhash_on = \"header\"\nhash_header = \"x-tenant\"",
    ));
    let c = client();
    let mut owners = std::collections::HashSet::new();
    for tenant in 0..20 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let r = c
                .get(gw.url("/svc/x"))
                .header("x-tenant", format!("t{tenant}"))
                .send()
                .await
                .expect("request");
            seen.insert(r.headers()["x-upstream"].to_str().unwrap_or("").to_string());
        }
        assert_eq!(seen.len(), 1, "tenant t{tenant} went to {seen:?}");
        owners.extend(seen);
    }
    assert!(
        owners.len() >= 2,
        "20 tenants spread over targets: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_a_target_fails_its_health_checks() {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let targets = format!(r#"{{ addr = "{}" }}, {{ addr = "{}" }}"#, a.addr, b.addr);
    let extra = "retries = 0\n[upstreams.svc.passive]\nenabled = false\n[upstreams.svc.health]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nunhealthy_after = 2\nhealthy_after = 2";
    let gw = Gateway::start(&pool("svc", &targets, extra));
    let c = client();
    for _ in 0..10 {
        assert_eq!(which(&c, &gw.url("/svc/x")).await.0, 200);
    }
    assert!(b.hits() > 0);
    b.stop().await;
    // interval x unhealthy_after = 400 ms, plus scheduling.
    wait_health(&c, &gw, b.addr, "unhealthy").await;
    let before = a.hits();
    for _ in 0..50 {
        let (status, up) = which(&c, &gw.url("/svc/x")).await;
        assert_eq!(
            (status, up.as_str()),
            (200, "a"),
            "once b is marked down every request succeeds on a"
        );
    }
    assert_eq!(a.hits() - before, 50);

    // The admin API shows the state.
    let v = admin_upstreams(&c, &gw).await;
    let targets = v["upstreams"][0]["targets"]
        .as_array()
        .expect("targets")
        .clone();
    let b_state = targets
        .iter()
        .find(|t| t["address"] == b.addr.to_string())
        .expect("b listed");
    assert_eq!(b_state["health"], "unhealthy");
    assert!(b_state["health_since"].as_u64().is_some());

    // b comes back and is marked healthy after healthy_after checks.
    let b2 = Upstream::start_on("b", b.addr).await;
    wait_health(&c, &gw, b.addr, "healthy").await;
    for _ in 0..20 {
        which(&c, &gw.url("/svc/x")).await;
    }
    assert!(b2.hits() > 0, "b gets traffic again after recovering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_consecutive_5xx() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let targets = format!(r#"{{ addr = "{}" }}, {{ addr = "{}" }}"#, a.addr, b.addr);
    let extra = "[upstreams.svc.passive]\nfailures = 3\ncooldown = \"2s\"";
    let gw = Gateway::start(&pool("svc", &targets, extra));
    let c = client();
    b.set_failing(true);
    let mut failures = 0;
    for _ in 0..40 {
        let (status, _) = which(&c, &gw.url("/svc/x")).await;
        if status == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3, "b is ejected after 3 consecutive 5xx");
    assert_eq!(b.hits(), 3);
    let v = admin_upstreams(&c, &gw).await;
    let ejected: Vec<&serde_json::Value> = v["upstreams"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| t["ejected"] == true)
        .collect();
    assert_eq!(ejected.len(), 1);
    assert_eq!(ejected[0]["address"], b.addr.to_string());

    // After the cool-down b gets traffic again.
    b.set_failing(false);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for _ in 0..10 {
        assert_eq!(which(&c, &gw.url("/svc/x")).await.0, 200);
    }
    assert!(b.hits() > 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_target() {
    let a = Upstream::start("a").await;
    let dead_port = support::dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let targets = format!(r#"{{ addr = "{}" }}, {{ addr = "{dead}" }}"#, a.addr);
    // No active checks and no ejection: only the retry can save these requests.
    let extra = "retries = 1\n[upstreams.svc.passive]\nenabled = false";
    let gw = Gateway::start(&pool("svc", &targets, extra));
    let c = client();
    for _ in 0..20 {
        let r = c
            .post(gw.url("/svc/x"))
            .body("payload")
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.status(),
            200,
            "POST is retried too: nothing was sent to the dead target"
        );
    }
    assert_eq!(a.hits(), 20);

    // With retries = 0, half of the requests fail with 502 upstream_unavailable.
    let a2 = Upstream::start("a2").await;
    let targets = format!(r#"{{ addr = "{}" }}, {{ addr = "{dead}" }}"#, a2.addr);
    let gw = Gateway::start(&pool(
        "svc",
        &targets,
        "retries = 0\n[upstreams.svc.passive]\nenabled = false",
    ));
    let mut bad = 0;
    for _ in 0..10 {
        let r = c.get(gw.url("/svc/x")).send().await.expect("request");
        if r.status() == 502 {
            problem(&r.text().await.expect("body"), 502, "upstream_unavailable");
            bad += 1;
        }
    }
    assert_eq!(bad, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504_and_dead_pool_gets_503() {
    let a = Upstream::start("a").await;
    let targets = format!(r#"{{ addr = "{}" }}"#, a.addr);
    let gw = Gateway::start(&pool(
        "svc",
        &targets,
        "read_timeout = \"300ms\"\nretries = 0",
    ));
    let c = client();
    let t0 = Instant::now();
    let r = c
        .get(gw.url("/svc/x?delay_ms=2000"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 504);
    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "answered at the read timeout"
    );
    problem(&r.text().await.expect("body"), 504, "upstream_timeout");
    let r = c.get(gw.url("/svc/x")).send().await.expect("request");
    assert_eq!(r.status(), 200, "a fast request still works");

    // All targets down by active checks: 503 no_healthy_upstream.
    let mut d = Upstream::start("d").await;
    let targets = format!(r#"{{ addr = "{}" }}"#, d.addr);
    let extra = "[upstreams.svc.health]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nunhealthy_after = 1\nhealthy_after = 1";
    let gw = Gateway::start(&pool("svc", &targets, extra));
    d.stop().await;
    wait_health(&c, &gw, d.addr, "unhealthy").await;
    let r = c.get(gw.url("/svc/x")).send().await.expect("request");
    assert_eq!(r.status(), 503);
    problem(&r.text().await.expect("body"), 503, "no_healthy_upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_consecutive_connect_failures() {
    let a = Upstream::start("a").await;
    let dead_port = support::dead_port();
    let dead = format!("127.0.0.1:{}", dead_port.port);
    let targets = format!(r#"{{ addr = "{}" }}, {{ addr = "{dead}" }}"#, a.addr);
    // No active checks: only live-traffic failures can take the dead target out.
    let extra = "retries = 1\n[upstreams.svc.passive]\nfailures = 2\ncooldown = \"30s\"";
    let gw = Gateway::start(&pool("svc", &targets, extra));
    let c = client();
    for _ in 0..10 {
        assert_eq!(
            which(&c, &gw.url("/svc/x")).await.0,
            200,
            "retried on the live target"
        );
    }
    let v = admin_upstreams(&c, &gw).await;
    let dead_state = v["upstreams"][0]["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["address"] == dead).cloned())
        .unwrap_or_default();
    assert_eq!(dead_state["ejected"], true, "{v}");
    assert_eq!(
        dead_state["ejections"], 1,
        "ejected once, then left out: {v}"
    );
    assert_eq!(a.hits(), 10);
}
