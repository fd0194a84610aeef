//! Plans end to end on one node: exact quotas under 64 concurrent clients, burst and rate, the
//! IETF RateLimit headers read by a strict structured-field parser, 429s that send nothing
//! upstream, a reload that changes numbers without resetting counts, and quota counts that
//! survive a graceful restart (nothing lost) and a kill -9 (at most the last second lost).

mod support;

use serde_json::json;
use std::process::Child;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{admin, client, key_digest, problem, Gateway, ADMIN_TOKEN};

const KEY: &str = "tpk_limitstestlimitstestlimitstest000000";

fn config(upstream: std::net::SocketAddr, plans: &str) -> String {
    format!(
        r#"
[upstreams.app]
targets = [ {{ addr = "{upstream}" }} ]

[[apis]]
name = "app"
base_path = "/app"
upstream = "app"
[apis.auth]
methods = ["api_key"]

{plans}

[[consumers]]
id = "acme"
plan = "tier"
keys = [{{ sha256 = "{digest}" }}]
"#,
        digest = key_digest(KEY)
    )
}

async fn get(gw_url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .get(gw_url)
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

/// Seconds left in the current UTC hour; waits for the next hour when fewer than `need`.
async fn away_from_hour_boundary(need: i64) {
    let now = turnpike::clock::now();
    let left = 3600 - now.rem_euclid(3600);
    if left < need {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
}

/// Parses a `RateLimit`/`RateLimit-Policy` value strictly and returns (name, params).
fn parse_list(value: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let list = sfv::Parser::new(value)
        .parse_list::<sfv::List>()
        .unwrap_or_else(|e| panic!("not a structured-field list: {value:?}: {e}"));
    list.into_iter()
        .map(|member| match member {
            sfv::ListEntry::Item(item) => {
                let name = match item.bare_item {
                    sfv::BareItem::String(s) => s.as_str().to_string(),
                    other => panic!("policy names are strings, got {other:?} in {value:?}"),
                };
                let params = item
                    .params
                    .into_iter()
                    .map(|(k, v)| match v {
                        sfv::BareItem::Integer(i) => (k.as_str().to_string(), i64::from(i)),
                        other => panic!("parameter {k:?} is not an integer: {other:?}"),
                    })
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("an inner list in {value:?}"),
        })
        .collect()
}

fn param(item: &(String, Vec<(String, i64)>), key: &str) -> i64 {
    item.1
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {key} in {item:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_are_exact_under_64_concurrent_clients() {
    away_from_hour_boundary(20).await;
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, "[plans.tier]\nquotas = [\"200/hour\"]"));
    let url = gw.url("/app/x");
    let mut clients = Vec::new();
    for _ in 0..64 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            let mut limited = 0;
            for _ in 0..6 {
                match get(&url).await.0 {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for c in clients {
        let (o, l) = c.await.expect("client");
        ok += o;
        limited += l;
    }
    assert_eq!(ok, 200, "accepted requests must equal the quota exactly");
    assert_eq!(limited, 64 * 6 - 200);
    assert_eq!(up.hits(), 200, "a 429 must send nothing upstream");
    let (s, h, body) = get(&url).await;
    assert_eq!(s, 429);
    let p = problem(&body, 429, "quota_exceeded");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("200 requests per hour"),
        "{p}"
    );
    let retry: i64 = h["retry-after"].to_str().unwrap_or("").parse().unwrap_or(0);
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_rate_headers_and_reload() {
    away_from_hour_boundary(20).await;
    let up = Upstream::start("app").await;
    // One request per 2 s with a burst of 3: the five requests below have 2 s before the
    // rate lets a fourth through.
    let plans = "[plans.tier]\nrate = \"30/min\"\nburst = 3\nquotas = [\"1000/hour\"]";
    let gw = Gateway::start(&config(up.addr, plans));
    let url = gw.url("/app/x");

    // A burst of 3 at once, then the rate.
    let mut statuses = Vec::new();
    let mut last_ok = None;
    for _ in 0..5 {
        let (s, h, body) = get(&url).await;
        statuses.push(s);
        if s == 200 {
            last_ok = Some(h);
        } else {
            let p = problem(&body, 429, "rate_limited");
            assert!(p["detail"].as_str().unwrap_or("").contains("tier"), "{p}");
            let retry: i64 = h["retry-after"].to_str().unwrap_or("").parse().unwrap_or(0);
            assert!(retry >= 1, "Retry-After {retry}");
            assert!(h.contains_key("ratelimit") && h.contains_key("ratelimit-policy"));
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429], "burst of 3");
    assert_eq!(up.hits(), 3);

    // The headers of the last accepted request, read by a strict structured-field parser.
    let h = last_ok.expect("an accepted request");
    let policy = parse_list(h["ratelimit-policy"].to_str().expect("ascii"));
    let state = parse_list(h["ratelimit"].to_str().expect("ascii"));
    assert_eq!(policy.len(), 2, "one item per active policy: {policy:?}");
    assert_eq!(policy[0].0, "rate");
    assert_eq!(param(&policy[0], "q"), 3);
    assert_eq!(param(&policy[0], "w"), 6, "3 requests of 2 s each");
    assert_eq!(policy[1].0, "hour");
    assert_eq!(param(&policy[1], "q"), 1000);
    assert_eq!(param(&policy[1], "w"), 3600);
    assert_eq!(state[0].0, "rate");
    assert_eq!(param(&state[0], "r"), 0);
    assert_eq!(state[1].0, "hour");
    assert_eq!(param(&state[1], "r"), 997);
    assert!((1..=3600).contains(&param(&state[1], "t")));

    // After 2 s one more is allowed (30/min).
    tokio::time::sleep(Duration::from_millis(2050)).await;
    assert_eq!(get(&url).await.0, 200);

    // A reload with new numbers keeps the count: 4 used of the hour, now out of 10.
    gw.rewrite(&config(
        up.addr,
        "[plans.tier]\nrate = \"100/s\"\nburst = 100\nquotas = [\"10/hour\"]",
    ));
    let r = client()
        .post(gw.admin_url("/reload"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 200);
    let (s, h, _) = get(&url).await;
    assert_eq!(s, 200);
    let state = parse_list(h["ratelimit"].to_str().expect("ascii"));
    assert_eq!(
        param(&state[1], "r"),
        5,
        "4 + this one used of 10: {state:?}"
    );
}

fn restart(gw: &Gateway) -> Child {
    gw.spawn_process(&[], "gateway-restarted.log")
}

async fn remaining_after_one(url: &str) -> i64 {
    let started = Instant::now();
    loop {
        if let Ok(r) = client().get(url).header("x-api-key", KEY).send().await {
            if r.status() == 200 {
                let state = parse_list(r.headers()["ratelimit"].to_str().expect("ascii"));
                return param(&state[0], "r");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_survive_restarts() {
    let up = Upstream::start("app").await;
    let mut gw = Gateway::start_with(
        "grace_period = \"1s\"\nkeepalive_drain = \"0s\"\ngraceful_shutdown_timeout = \"2s\"",
        &config(up.addr, "[plans.tier]\nquotas = [\"100000/month\"]"),
    );
    let url = gw.url("/app/x");
    let start = remaining_after_one(&url).await;
    for _ in 0..29 {
        assert_eq!(get(&url).await.0, 200);
    }
    // Graceful stop right after the requests: nothing may be lost.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "no graceful exit"
    );
    let mut second = restart(&gw);
    let after_graceful = remaining_after_one(&url).await;
    assert_eq!(
        after_graceful,
        start - 30,
        "counts lost in a graceful restart"
    );

    // kill -9: counts older than a second are kept, the last second may be lost.
    for _ in 0..20 {
        assert_eq!(get(&url).await.0, 200);
    }
    // The write-behind stores them within its 1 s tick; waiting for the row (rather than for
    // a fixed time) keeps a slow disk or a loaded machine from failing the test.
    let db = rusqlite::Connection::open(gw.dir.path().join("turnpike.db")).expect("open store");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let stored_want = 100_000 - after_graceful + 20;
    let written = Instant::now();
    loop {
        let stored: i64 = db
            .query_row(
                "SELECT COALESCE(SUM(used), 0) FROM quota_counters WHERE period = 'month'",
                [],
                |r| r.get(0),
            )
            .expect("read counters");
        if stored >= stored_want {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "{stored} of {stored_want} counts stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("20 counts stored after {:?}", written.elapsed());
    drop(db);
    for _ in 0..10 {
        assert_eq!(get(&url).await.0, 200);
    }
    second.kill().expect("kill -9");
    let _ = second.wait();
    let mut third = restart(&gw);
    let after_kill = remaining_after_one(&url).await;
    let used_since = after_graceful - after_kill - 1;
    assert!(
        (20..=30).contains(&used_since),
        "after kill -9: {used_since} of the 30 requests counted (the 20 stored must be)"
    );
    eprintln!(
        "kill -9 kept {used_since} of 30 requests' counts (the last 10 were under a second old)"
    );
    support::send_signal(third.id(), "TERM");
    assert!(
        support::wait_child(&mut third, Duration::from_secs(15)).is_some(),
        "the gateway did not exit after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_for_the_caller_and_the_admin_with_an_audited_reset() {
    away_from_hour_boundary(20).await;
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(
        up.addr,
        "[plans.tier]\nquotas = [\"50/hour\", \"900/month\"]",
    ));
    for _ in 0..7 {
        assert_eq!(get(&gw.url("/app/x")).await.0, 200);
    }
    let hits = up.hits();
    // The caller, with its own key: nothing is counted and nothing goes upstream.
    let (s, _, body) = get(&gw.url("/_turnpike/usage")).await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["consumer"], "acme");
    assert_eq!(v["plan"], "tier");
    let policies = &v["scopes"][0]["policies"];
    assert_eq!(policies[0]["policy"], "hour");
    assert_eq!(policies[0]["remaining"], 43);
    assert_eq!(policies[1]["policy"], "month");
    assert_eq!(policies[1]["remaining"], 893);
    assert!(policies[0]["resets_at"]
        .as_str()
        .unwrap_or("")
        .ends_with(":00:00Z"));
    assert_eq!(up.hits(), hits);
    let r = client()
        .get(gw.url("/_turnpike/usage"))
        .send()
        .await
        .expect("usage");
    assert_eq!(r.status(), 401, "usage needs the caller's credentials");

    // The admin sees the same, and a reset is audited.
    let (s, v) = admin(&gw, "GET", "/consumers/acme/usage", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["scopes"][0]["policies"][0]["remaining"], 43);
    let (s, v) = admin(&gw, "POST", "/consumers/acme/usage/reset", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["scopes"][0]["policies"][0]["remaining"], 50);
    let (_, audit) = admin(&gw, "GET", "/audit", None).await;
    assert!(audit.to_string().contains("usage.reset"), "{audit}");
    let (s, _) = admin(&gw, "GET", "/consumers/nobody/usage", None).await;
    assert_eq!(s, 404);

    // A store consumer on the plan keeps a reload from dropping the plan.
    let r = client()
        .post(gw.admin_url("/consumers"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .json(&serde_json::json!({"id": "beta", "plan": "tier"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let renamed = config(
        up.addr,
        "[plans.tier]\nquotas = [\"50/hour\"]\n[plans.other]\nquotas = [\"1/hour\"]",
    )
    .replace("plan = \"tier\"", "plan = \"other\"")
    .replace("[plans.tier]\nquotas = [\"50/hour\"]\n", "");
    gw.rewrite(&renamed);
    let (s, v) = admin(&gw, "POST", "/reload", None).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("store consumer \\\"beta\\\""), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_brute_force_guards_per_address() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "[server.limits]\nauth_failures_per_ip = \"5/min\"",
        &format!(
            "{}\n[[apis]]\nname = \"open\"\nbase_path = \"/open\"\nupstream = \"app\"\n[apis.limits]\nper_ip = \"5/min\"\n",
            config(up.addr, "[plans.tier]\nquotas = [\"1000/month\"]")
        ),
    );
    // A public API: 5 a minute from this address, then 429 with the headers.
    for i in 0..5 {
        let r = client().get(gw.url("/open/x")).send().await.expect("open");
        assert_eq!(r.status(), 200, "request {i}");
        assert!(r.headers()["ratelimit"]
            .to_str()
            .unwrap_or("")
            .starts_with("\"ip\";r="));
    }
    let hits = up.hits();
    let r = client().get(gw.url("/open/x")).send().await.expect("open");
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    problem(&r.text().await.expect("body"), 429, "rate_limited");
    assert_eq!(h["retry-after"], "60");
    parse_list(h["ratelimit"].to_str().expect("ascii"));
    assert_eq!(up.hits(), hits, "the refused request went upstream");

    // Five wrong keys, then even the right key is refused from this address for a while.
    for _ in 0..5 {
        let r = client()
            .get(gw.url("/app/x"))
            .header("x-api-key", "tpk_wrong")
            .send()
            .await
            .expect("wrong key");
        assert_eq!(r.status(), 401);
    }
    let (s, _, body) = get(&gw.url("/app/x")).await;
    assert_eq!(s, 429, "{body}");
    let p = problem(&body, 429, "rate_limited");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("failed authentication"),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_count_across_apis_unless_an_api_counts_its_own() {
    away_from_hour_boundary(20).await;
    let up = Upstream::start("app").await;
    let auth = "[apis.auth]\nmethods = [\"api_key\"]\n";
    let extra = format!(
        "[plans.tier]\nquotas = [\"5/hour\"]\n\n\
         [[apis]]\nname = \"other\"\nbase_path = \"/other\"\nupstream = \"app\"\n{auth}\n\
         [[apis]]\nname = \"own\"\nbase_path = \"/own\"\nupstream = \"app\"\nlimits_scope = \"consumer_api\"\n{auth}\
         [apis.plans.tier]\nquotas = [\"3/hour\"]\n"
    );
    let gw = Gateway::start(&config(up.addr, &extra));
    // "app" and "other" share the consumer's count of 5.
    for path in ["/app/x", "/other/x", "/app/x", "/other/x", "/app/x"] {
        assert_eq!(get(&gw.url(path)).await.0, 200, "{path}");
    }
    let (s, _, body) = get(&gw.url("/other/x")).await;
    assert_eq!(
        s, 429,
        "the shared count is used up on every API that shares it"
    );
    problem(&body, 429, "quota_exceeded");
    // "own" counts separately, with its own number for the plan (3), untouched by the others.
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/own/x")).await.0, 200);
    }
    let (s, h, body) = get(&gw.url("/own/x")).await;
    assert_eq!(s, 429);
    let p = problem(&body, 429, "quota_exceeded");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("3 requests per hour"),
        "{p}"
    );
    let policy = h["ratelimit-policy"].to_str().unwrap_or("");
    assert!(policy.contains("q=3"), "{policy}");
    assert_eq!(up.hits(), 8, "refused requests send nothing upstream");
}

/// A GET with `key` as the API key; the status and the problem code, if any.
async fn status_with_key(url: &str, key: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_a_plan_is_never_unlimited() {
    away_from_hour_boundary(30).await;
    let up = Upstream::start("app").await;
    let api = format!(
        "[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/app\"\nupstream = \"app\"\n[apis.auth]\nmethods = [\"api_key\"]\n",
        up.addr
    );
    let plans = "[plans.tier]\nquotas = [\"2/hour\"]\n";
    // Before plans exist, a consumer needs none.
    let gw = Gateway::start(&api);
    let (s, v) = admin(&gw, "POST", "/consumers", Some(json!({"id": "drifter"}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = admin(&gw, "POST", "/consumers/drifter/keys", Some(json!({}))).await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().expect("key").to_string();
    let url = gw.url("/app/x");
    assert_eq!(status_with_key(&url, &key).await.0, 200);

    // Plans appear: the consumer that has none is refused, not let through unlimited.
    gw.rewrite(&format!("{api}\n{plans}"));
    let (s, v) = admin(&gw, "POST", "/reload", None).await;
    assert_eq!(s, 200, "{v}");
    let hits = up.hits();
    assert_eq!(status_with_key(&url, &key).await, (403, "no_plan".into()));
    assert_eq!(up.hits(), hits, "nothing reached the upstream");

    // The admin API refuses to create a consumer without a plan or to take a plan away.
    let (s, v) = admin(&gw, "POST", "/consumers", Some(json!({"id": "other"}))).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("plan: required"),
        "{v}"
    );
    let (s, _) = admin(
        &gw,
        "POST",
        "/consumers",
        Some(json!({"id": "other", "plan": "tier"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = admin(
        &gw,
        "PATCH",
        "/consumers/other",
        Some(json!({"plan": null})),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = admin(
        &gw,
        "PATCH",
        "/consumers/drifter",
        Some(json!({"plan": "tier"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..2 {
        assert_eq!(status_with_key(&url, &key).await.0, 200);
    }
    assert_eq!(
        status_with_key(&url, &key).await,
        (429, "quota_exceeded".into())
    );

    // The command line follows the same rule for the consumers it creates.
    let config = gw.config.to_str().unwrap_or_default().to_string();
    let (code, _, err) = support::run_cli(
        &["keys", "create", "--consumer", "newbie", "-c", &config],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("--plan: required"), "{err}");
    let (code, out, err) = support::run_cli(
        &[
            "keys",
            "create",
            "--consumer",
            "newbie",
            "--plan",
            "tier",
            "-c",
            &config,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let newbie = out.trim().to_string();
    let start = Instant::now();
    while status_with_key(&url, &newbie).await.0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new key never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // With [consumer_defaults] plan, consumers without one get it: created, and limited.
    gw.rewrite(&format!(
        "{api}\n{plans}\n[consumer_defaults]\nplan = \"tier\"\n"
    ));
    let (s, v) = admin(&gw, "POST", "/reload", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = admin(&gw, "POST", "/consumers", Some(json!({"id": "third"}))).await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = admin(&gw, "POST", "/consumers/third/keys", Some(json!({}))).await;
    let third = v["key"].as_str().expect("key").to_string();
    for _ in 0..2 {
        assert_eq!(status_with_key(&url, &third).await.0, 200);
    }
    assert_eq!(
        status_with_key(&url, &third).await,
        (429, "quota_exceeded".into())
    );
    let (s, v) = admin(
        &gw,
        "PATCH",
        "/consumers/other",
        Some(json!({"plan": null})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // A config consumer without a plan, once plans exist and there is no default: the check
    // and a reload both refuse the file, naming the key.
    gw.rewrite(&format!(
        "{api}\n{plans}\n[[consumers]]\nid = \"cfg\"\nkeys = [{{ sha256 = \"{}\" }}]\n",
        key_digest(KEY)
    ));
    let (s, v) = admin(&gw, "POST", "/reload", None).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("consumers[0].plan"), "{v}");
    let (code, _, err) = support::run_cli(
        &["check", "-c", gw.config.to_str().unwrap_or_default()],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("consumers[0].plan: consumer \"cfg\" has no plan"),
        "{err}"
    );
}
