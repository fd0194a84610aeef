//! The admin listener: probes without a token, everything else only with the bearer token,
//! and none of it reachable through the proxy listener.

mod support;

use support::upstream::Upstream;
use support::{client, problem, Gateway, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_rule() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/\"\nupstream = \"app\"\n",
        up.addr
    ));
    let c = client();
    for probe in ["/health", "/ready"] {
        let r = c.get(gw.admin_url(probe)).send().await.expect("probe");
        assert_eq!(r.status(), 200, "{probe} needs no token");
    }
    let ready: serde_json::Value = c
        .get(gw.admin_url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["config_generation"], 1);

    for (auth, why) in [
        (None, "missing"),
        (Some("Bearer wrong"), "invalid"),
        (Some(ADMIN_TOKEN), "no scheme"),
    ] {
        let mut req = c.get(gw.admin_url("/upstreams"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.expect("admin");
        assert_eq!(r.status(), 401, "{why}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"turnpike-admin\""
        );
        problem(&r.text().await.expect("body"), 401, "unauthorized");
    }
    // Unknown admin routes say nothing without the token.
    assert_eq!(
        c.get(gw.admin_url("/secret-route"))
            .send()
            .await
            .expect("admin")
            .status(),
        401
    );
    let r = c
        .get(gw.admin_url("/secret-route"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 404);

    let r = c
        .get(gw.admin_url("/upstreams"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["upstreams"][0]["name"], "app");
    assert_eq!(
        v["upstreams"][0]["targets"][0]["address"],
        up.addr.to_string()
    );
    assert_eq!(v["upstreams"][0]["targets"][0]["state"], "up");

    // The proxy listener routes /upstreams like any other path: to the API, never to admin.
    let r = c
        .get(gw.url("/upstreams"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("proxy");
    assert_eq!(
        r.headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap_or("")),
        Some("app")
    );
    assert!(
        !gw.log().contains(ADMIN_TOKEN),
        "the token never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_the_proxy_listeners_accept_connections() {
    // A socket bound to the proxy port but not listening: Pingora cannot bind it (it retries
    // every second) and nothing accepts connections there.
    let blocker = tokio::net::TcpSocket::new_v4().expect("socket");
    blocker
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = blocker.local_addr().expect("addr").port();
    let mut gw = Gateway::spawn_on(
        port,
        "",
        "[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\n",
    );
    let c = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let health = loop {
        if let Ok(r) = c.get(gw.admin_url("/health")).send().await {
            break r.status();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admin never came up: {}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(health, 200, "alive");
    let r = c.get(gw.admin_url("/ready")).send().await.expect("ready");
    assert_eq!(
        r.status(),
        503,
        "not ready while the proxy listener is down"
    );
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["listeners_down"][0], format!("127.0.0.1:{port}"));

    // Once the port is free Pingora binds it and /ready turns 200.
    drop(blocker);
    gw.wait_ready();
    let r = c.get(gw.admin_url("/ready")).send().await.expect("ready");
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(gw.url("/a")).send().await.expect("proxy").status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_token_is_slowed_per_address() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&format!(
        "[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/\"\nupstream = \"app\"\n",
        up.addr
    ));
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..60 {
        let r = c
            .get(gw.admin_url("/status"))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .expect("admin");
        let status = r.status().as_u16();
        if status == 429 {
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            assert_eq!(retry.as_deref(), Some("60"));
            problem(&r.text().await.expect("body"), 429, "rate_limited");
        }
        statuses.push(status);
    }
    // The default guard: 20 wrong tokens a minute, then 429 for the rest of the minute.
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // The token is not even looked at meanwhile, so guessing learns nothing; probes still
    // answer.
    let r = c
        .get(gw.admin_url("/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 429);
    let r = c.get(gw.admin_url("/health")).send().await.expect("health");
    assert_eq!(r.status(), 200);
    let log = gw.log();
    assert_eq!(
        log.matches("wrong or missing tokens").count(),
        1,
        "logged once per episode:\n{log}"
    );
    assert!(!log.contains("guess-"), "a guessed token reached the log");
}
