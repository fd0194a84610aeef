//! Hot reload under continuous load: alternating configs by `POST /reload` and SIGHUP with no
//! failed request, the routing change visible right after each reload, and refused reloads
//! (invalid file, restart-only change) leaving the running config intact.

mod support;

use std::time::Duration;
use support::load::Load;
use support::upstream::Upstream;
use support::{client, Gateway, ADMIN_TOKEN};

fn config(target: &Upstream, pool: &str, marker: &str) -> String {
    format!(
        r#"
[upstreams.{pool}]
targets = [ {{ addr = "{}" }} ]

[[apis]]
name = "svc"
base_path = "/svc"
upstream = "{pool}"

[[apis]]
name = "marker"
base_path = "/marker"
[apis.respond]
body = "{marker}"
"#,
        target.addr
    )
}

async fn text(c: &reqwest::Client, url: &str) -> String {
    c.get(url)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

async fn admin_json(c: &reqwest::Client, gw: &Gateway, path: &str) -> serde_json::Value {
    c.get(gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("json")
}

async fn post_reload(c: &reqwest::Client, gw: &Gateway) -> reqwest::Response {
    c.post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload")
}

async fn generation(c: &reqwest::Client, gw: &Gateway) -> u64 {
    let v: serde_json::Value = admin_json(c, gw, "/status").await;
    v["config_generation"].as_u64().expect("generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_fail_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&a, "one", "first"));
    let c = client();
    let load = Load::start(&gw, "/svc");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20u64 {
        let (target, pool, marker, name) = if i % 2 == 0 {
            (&b, "two", "second", "b")
        } else {
            (&a, "one", "first", "a")
        };
        gw.rewrite(&config(target, pool, marker));
        if i % 4 == 3 {
            // By signal: wait until the new generation is live.
            gw.sighup();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while generation(&c, &gw).await != i + 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "SIGHUP reload {i} not applied: {}",
                    gw.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            let r = post_reload(&c, &gw).await;
            assert_eq!(r.status(), 200, "reload {i}");
            let v: serde_json::Value = r.json().await.expect("json");
            assert_eq!(v["config_generation"], i + 2);
        }
        // The change is visible right away.
        let r = c.get(gw.url("/svc/check")).send().await.expect("request");
        assert_eq!(r.headers()["x-upstream"], name, "after reload {i}");
        assert_eq!(text(&c, &gw.url("/marker")).await, marker);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = load.finish().await.assert_no_failures();
    assert!(ok > 200, "the load ran: {ok} requests");
    assert!(
        a.hits() > 50 && b.hits() > 50,
        "both configs served traffic: a {} b {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_reloads_change_nothing() {
    let a = Upstream::start("a").await;
    let gw = Gateway::start(&config(&a, "one", "first"));
    let c = client();
    let load = Load::start(&gw, "/svc");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // An invalid file: every problem is reported with its location, nothing changes.
    gw.rewrite(&format!(
        "{}\n[[apis]]\nname = \"broken\"\nbase_path = \"/broken\"\nupstream = \"nope\"\n",
        config(&a, "one", "first")
    ));
    let r = post_reload(&c, &gw).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "invalid_config");
    assert_eq!(v["problems"][0]["key_path"], "apis[2].upstream");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown upstream \"nope\"")),
        "{v}"
    );
    // A syntax error carries file:line:col.
    gw.rewrite("[[apis]\nname = 1\n");
    let v: serde_json::Value = post_reload(&c, &gw).await.json().await.expect("json");
    let location = v["problems"][0]["location"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        location.starts_with(&format!("{}:", gw.config.display()))
            && location.matches(':').count() >= 2,
        "{v}"
    );

    // The old behaviour is intact.
    assert_eq!(text(&c, &gw.url("/marker")).await, "first");
    assert_eq!(
        c.get(gw.url("/broken"))
            .send()
            .await
            .expect("request")
            .status(),
        404
    );

    // A change of a listener is refused as a whole, naming the key.
    let moved = gw.header().replace(
        &format!("127.0.0.1:{}", gw.addr.port()),
        &format!("127.0.0.1:{}", support::free_port()),
    );
    gw.rewrite_raw(&format!("{moved}{}", config(&a, "one", "changed")));
    let r = post_reload(&c, &gw).await;
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "restart_required");
    assert_eq!(v["keys"], serde_json::json!(["server.listen"]));
    assert_eq!(
        text(&c, &gw.url("/marker")).await,
        "first",
        "routes were not half-applied"
    );

    // A SIGHUP with a broken file is refused the same way and shows in /status.
    gw.rewrite("this is not toml");
    gw.sighup();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let v: serde_json::Value = admin_json(&c, &gw, "/status").await;
        if v["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not toml") || e.contains("expected"))
        {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP reload not reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["last_reload"]["ok"], false);
    assert_eq!(status["config_generation"], 1);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["config_file"]
        .as_str()
        .is_some_and(|f| f.ends_with("turnpike.toml")));

    let ok = load.finish().await.assert_no_failures();
    assert!(ok > 50, "{ok}");
    assert!(
        gw.log().contains("config reload refused"),
        "problems are logged"
    );
    // Still alive after all of it.
    assert_eq!(
        c.get(gw.url("/svc/x"))
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_pools_keep_their_health_state_across_reloads() {
    let a = Upstream::start("a").await;
    let mut down = Upstream::start("down").await;
    let pool = format!(
        "[upstreams.one]\ntargets = [ {{ addr = \"{}\" }}, {{ addr = \"{}\" }} ]\n[upstreams.one.health]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nunhealthy_after = 1\nhealthy_after = 100\n",
        a.addr, down.addr
    );
    let api = |marker: &str| {
        format!("{pool}\n[[apis]]\nname = \"svc\"\nbase_path = \"/svc\"\nupstream = \"one\"\n\n[[apis]]\nname = \"marker\"\nbase_path = \"/marker\"\n[apis.respond]\nbody = \"{marker}\"\n")
    };
    let gw = Gateway::start(&api("first"));
    let c = client();
    down.stop().await;
    let state = |v: &serde_json::Value| {
        v["upstreams"][0]["targets"]
            .as_array()
            .and_then(|t| {
                t.iter()
                    .find(|t| t["address"] == down.addr.to_string())
                    .cloned()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let before = loop {
        let v: serde_json::Value = admin_json(&c, &gw, "/upstreams").await;
        if state(&v)["health"] == "unhealthy" {
            break state(&v);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never marked down: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A reload that does not touch the pool: the target stays down at once (a rebuilt pool
    // would start healthy and send traffic to the dead target until checks caught up).
    gw.rewrite(&api("second"));
    let r = post_reload(&c, &gw).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = admin_json(&c, &gw, "/upstreams").await;
    assert_eq!(state(&v)["health"], "unhealthy", "{v}");
    assert_eq!(
        state(&v)["health_since"],
        before["health_since"],
        "the same state, carried over"
    );
    for _ in 0..20 {
        let r = c.get(gw.url("/svc/x")).send().await.expect("request");
        assert_eq!(
            r.status(),
            200,
            "no request goes to the dead target after the reload"
        );
    }
    assert_eq!(text(&c, &gw.url("/marker")).await, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_cut_short_files_are_refused_unless_asked_for() {
    let target = Upstream::start("a").await;
    let extra = "\n[[apis]]\nname = \"extra1\"\nbase_path = \"/extra1\"\n[apis.respond]\nbody = \"1\"\n\n[[apis]]\nname = \"extra2\"\nbase_path = \"/extra2\"\n[apis.respond]\nbody = \"2\"\n";
    let full = format!("{}{extra}", config(&target, "pool", "one"));
    let gw = Gateway::start(&full);
    let c = client();
    let path = gw.config.to_str().unwrap_or_default().to_string();

    // An empty file is valid TOML but serves nothing: `check` refuses it.
    let empty = gw.dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("write");
    let (code, _, err) =
        support::run_cli(&["check", "-c", empty.to_str().unwrap_or_default()], None);
    assert_eq!(code, 1);
    assert!(err.contains("apis: no [[apis]]"), "{err}");

    // The file cut after its first API: three of four APIs would go.
    let cut_at = full
        .find("[[apis]]\nname = \"marker\"")
        .expect("second api");
    gw.rewrite(&full[..cut_at]);
    let r = post_reload(&c, &gw).await;
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["code"], "large_removal", "{v}");
    assert_eq!(
        v["would_remove"]["apis"],
        serde_json::json!(["marker", "extra1", "extra2"])
    );
    assert_eq!(
        text(&c, &gw.url("/extra2")).await,
        "2",
        "the running config serves on"
    );
    assert_eq!(generation(&c, &gw).await, 1);
    gw.sighup();
    let start = std::time::Instant::now();
    while !gw.log().contains("removes 3 API(s)") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGHUP refusal not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(generation(&c, &gw).await, 1);

    // From the command line: refused, then applied with --force.
    std::env::set_var("TURNPIKE_TEST_ADMIN_TOKEN", ADMIN_TOKEN);
    let (code, _, err) = support::run_cli(&["reload", "-c", &path], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("large_removal"), "{err}");
    let (code, out, err) = support::run_cli(&["reload", "--force", "-c", &path], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("config generation 2"), "{out}");
    let r = c.get(gw.url("/extra2")).send().await.expect("request");
    assert_eq!(r.status(), 404);

    // And through the admin API with the explicit parameter.
    gw.rewrite(&full);
    assert_eq!(post_reload(&c, &gw).await.status(), 200);
    gw.rewrite(&full[..cut_at]);
    let r = c
        .post(gw.admin_url("/reload?allow_large_removal=true"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 200);
    assert_eq!(generation(&c, &gw).await, 4);
}
