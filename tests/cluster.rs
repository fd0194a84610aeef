//! Several gateway processes sharing a real `redis-server` (started by the test on a free
//! port): batched quotas never go over and end exact, strict plans are exact, batching keeps
//! Redis calls far below one per request, keys and revocations made on one node's admin API
//! work on the other within a second, and Redis stopped and restarted mid-test under each
//! `on_store_error` policy.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::upstream::Upstream;
use support::{admin, client, key_digest, problem, Gateway};

const KEYS: [&str; 4] = [
    "tpk_clustertestclustertestcluster000001",
    "tpk_clustertestclustertestcluster000002",
    "tpk_clustertestclustertestcluster000003",
    "tpk_clustertestclustertestcluster000004",
];

/// One API with key auth, `plans`, and consumers c0..c3 on the plans named in `on`.
fn config(upstream: std::net::SocketAddr, plans: &str, on: [&str; 4]) -> String {
    let mut text = format!(
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
"#
    );
    for (i, plan) in on.iter().enumerate() {
        text.push_str(&format!(
            "\n[[consumers]]\nid = \"c{i}\"\nplan = \"{plan}\"\nkeys = [{{ sha256 = \"{}\" }}]\n",
            key_digest(KEYS[i])
        ));
    }
    text
}

fn store(redis: &RedisServer, extra: &str) -> String {
    format!(
        "redis_url = \"{}\"\nredis_prefix = \"tp-test:\"\nnodes = 2\nsync_interval = \"250ms\"\nredis_timeout = \"2s\"\n{extra}",
        redis.url()
    )
}

/// Creates a consumer in the fleet's store through `gw`'s admin API and a key for it; returns
/// the key (shown once) and its id.
async fn store_key(gw: &Gateway, consumer: Value) -> (&'static str, String) {
    let id = consumer["id"].as_str().expect("consumer id").to_string();
    let (s, v) = admin(gw, "POST", "/consumers", Some(consumer)).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = admin(
        gw,
        "POST",
        &format!("/consumers/{id}/keys"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().expect("key shown once").to_string();
    let key_id = v["id"].as_str().expect("key id").to_string();
    (Box::leak(key.into_boxed_str()), key_id)
}

async fn get_with(url: &str, key: &str) -> (u16, String) {
    let r = client()
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// Waits while fewer than `need` seconds are left in the UTC day (quotas here are daily).
async fn away_from_day_boundary(need: i64) {
    let left = 86_400 - turnpike::clock::now().rem_euclid(86_400);
    if left < need {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
}

/// Sends `total` requests with `key`, `clients` at a time, alternating between the gateways;
/// returns (accepted, refused with 429). Any other status fails the test.
async fn hammer(
    gws: &[&Gateway],
    key: &'static str,
    clients: usize,
    total: usize,
) -> (usize, usize) {
    let urls: Vec<String> = gws.iter().map(|g| g.url("/app/x")).collect();
    let per = total / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0, 0);
            for i in 0..per {
                let url = &urls[(c + i) % urls.len()];
                match get_with(url, key).await {
                    (200, _) => ok += 1,
                    (429, _) => limited += 1,
                    (s, body) => panic!("unexpected status {s}: {body}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.expect("client");
        ok += o;
        limited += l;
    }
    (ok, limited)
}

/// The test's own view of a daily counter in Redis.
fn redis_count(redis: &RedisServer, consumer: &str) -> u64 {
    let day = turnpike::clock::now().div_euclid(86_400) * 86_400;
    let v: Option<u64> = redis::cmd("HGET")
        .arg(format!("tp-test:q:day:{day}:{consumer}"))
        .arg("n")
        .query(&mut redis.conn())
        .expect("GET counter");
    v.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_across_two_nodes_batched_and_strict() {
    away_from_day_boundary(60).await;
    let redis = RedisServer::start();
    let up = Upstream::start("app").await;
    let plans = "[plans.batched]\nquotas = [\"300/day\"]\n\n[plans.strict]\nquotas = [\"200/day\"]\nexactness = \"strict\"\n\n[plans.big]\nquotas = [\"1000000/day\"]\n";
    let body = config(up.addr, plans, ["batched", "strict", "big", "big"]);
    let a = Gateway::start_with_store(&store(&redis, ""), &body);
    let b = Gateway::start_with_store(&store(&redis, ""), &body);

    // Batched: 64 clients, 600 requests over both nodes for a quota of 300. Never more than
    // the quota; fewer only while the other node holds an unused lease.
    let (ok, limited) = hammer(&[&a, &b], KEYS[0], 64, 640).await;
    // (While Redis is marked unreachable, e.g. a redis_timeout on a starved machine, a plan
    // follows on_store_error = "local" and may pass its share: the logs say so.)
    let redis_lines = |gw: &Gateway| -> String {
        gw.log()
            .lines()
            .filter(|l| l.contains("redis"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        ok <= 300,
        "batched mode accepted {ok} of a quota of 300; logs:\n{}\n{}",
        redis_lines(&a),
        redis_lines(&b)
    );
    assert_eq!(ok + limited, 640);
    // Leases go back within one sync interval; after that the rest of the quota is usable
    // and the fleet's total is exactly the quota.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (more, _) = hammer(&[&a, &b], KEYS[0], 4, 400).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        ok + more,
        300,
        "the fleet's accepted total ends at the quota exactly"
    );
    assert_eq!(
        redis_count(&redis, "c0"),
        300,
        "redis holds the whole count"
    );
    eprintln!("batched: {ok} accepted in the burst (quota 300), {more} after the leases came back");

    // Strict: exactly the quota, at once, with 64 clients over both nodes.
    let (ok, limited) = hammer(&[&a, &b], KEYS[1], 64, 640).await;
    assert_eq!(
        ok,
        200,
        "strict mode accepts exactly the quota; logs:\n{}\n{}",
        redis_lines(&a),
        redis_lines(&b)
    );
    assert_eq!(limited, 440);
    let (s, text) = get_with(&b.url("/app/x"), KEYS[1]).await;
    problem(&text, s, "quota_exceeded");
    // An audited reset through node A clears the fleet's count (scanned page by page in
    // Redis): node B accepts the consumer again at once (strict counts in Redis).
    let (s, v) = admin(&a, "POST", "/consumers/c1/usage/reset", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        redis_count(&redis, "c1"),
        0,
        "the counter is gone from redis"
    );
    assert_eq!(get_with(&b.url("/app/x"), KEYS[1]).await.0, 200);

    // Batching: steady traffic from one client costs far fewer Redis script runs than requests.
    let before = redis.calls("evalsha") + redis.calls("eval");
    let started = Instant::now();
    let (ok, _) = hammer(&[&a], KEYS[2], 1, 1500).await;
    let runs = redis.calls("evalsha") + redis.calls("eval") - before;
    eprintln!(
        "batched steady load: {ok} requests in {:?} took {runs} redis script runs",
        started.elapsed()
    );
    assert_eq!(ok, 1500);
    assert!(
        runs * 5 < 1500,
        "{runs} script runs for 1500 requests: batching does not batch"
    );
    assert_eq!(up.hits() as u64, 300 + 200 + 1 + 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_revocations_reach_every_node_within_a_second() {
    const PASSWORD: &str = "redis-test-password-5d1c";
    let redis = RedisServer::start_with_password(Some(PASSWORD));
    let up = Upstream::start("app").await;
    let plans = "[plans.big]\nquotas = [\"1000000/day\"]\n";
    let body = config(up.addr, plans, ["big", "big", "big", "big"]);
    let a = Gateway::start_with_store(&store(&redis, ""), &body);
    let b = Gateway::start_with_store(&store(&redis, ""), &body);

    let (key, key_id) = store_key(&a, json!({"id": "beta", "plan": "big"})).await;
    let created = Instant::now();
    // Works on node A at once (its index is updated in the same call) ...
    assert_eq!(get_with(&a.url("/app/x"), key).await.0, 200);
    // ... and on node B within a second.
    turns(&b, key, 401, 200, created, "a key created on node A").await;
    eprintln!("key usable on the other node after {:?}", created.elapsed());
    // B lists it (the records are shared, not copied).
    let (s, v) = admin(&b, "GET", "/consumers/beta/keys", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["id"], json!(key_id));

    // Revoked through node B: refused on node A within a second.
    let (s, v) = admin(
        &b,
        "DELETE",
        &format!("/consumers/beta/keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let revoked = Instant::now();
    assert_eq!(get_with(&b.url("/app/x"), key).await.0, 401);
    turns(&a, key, 200, 401, revoked, "a key revoked on node B").await;
    eprintln!(
        "revocation effective on the other node after {:?}",
        revoked.elapsed()
    );

    // One audit log for the fleet, chained across nodes, and no key in Redis.
    let (s, v) = admin(&a, "GET", "/audit", None).await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["consumer.create", "key.create", "key.revoke"]);
    let (code, out, err) = support::run_cli(
        &["audit", "verify", "-c", &b.config.display().to_string()],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 entries"), "{out}");
    let stored = redis.dump_all("tp-test:*");
    assert!(stored.contains("key.revoke"), "the dump reads values");
    assert!(
        !stored.contains(key) && !stored.contains(&key[4..]),
        "the key itself is stored in redis"
    );
    // The Redis password is in no log line and not in /status.
    let (_, status) = admin(&a, "GET", "/status", None).await;
    assert_eq!(status["store"]["state"], json!("up"), "{status}");
    for text in [a.log(), b.log(), status.to_string()] {
        assert!(
            !text.contains(PASSWORD),
            "the redis password leaked: {text}"
        );
    }
    // The CLI writes to the same records: a key it creates works on both nodes.
    let (code, out, err) = support::run_cli(
        &[
            "keys",
            "create",
            "--consumer",
            "gamma",
            "--plan",
            "big",
            "-c",
            &a.config.display().to_string(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let cli_key: &'static str = Box::leak(out.trim().to_string().into_boxed_str());
    let start = Instant::now();
    for gw in [&a, &b] {
        while get_with(&gw.url("/app/x"), cli_key).await.0 != 200 {
            assert!(start.elapsed() < PROPAGATION_DEADLINE, "CLI key not usable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("CLI key usable on both nodes after {:?}", start.elapsed());
}

/// How long a change may take to reach the other node before a test fails. The designed
/// delay is one `sync_interval` (250 ms here) or one Redis message; the tests print what they
/// measured, and fail only far beyond it, so that a loaded machine does not fail them.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);

/// Polls `gw` with `key` until it answers `to` (answering `from` meanwhile), failing after
/// `PROPAGATION_DEADLINE` from `since`.
async fn turns(gw: &Gateway, key: &str, from: u16, to: u16, since: Instant, what: &str) {
    loop {
        let (s, _) = get_with(&gw.url("/app/x"), key).await;
        if s == to {
            eprintln!(
                "{what}: effective on the other node after {:?}",
                since.elapsed()
            );
            return;
        }
        assert_eq!(s, from);
        assert!(
            since.elapsed() < PROPAGATION_DEADLINE,
            "{what} still answered {from} on the other node after {PROPAGATION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(gw: &Gateway) -> Value {
    admin(gw, "GET", "/status", None).await.1
}

async fn wait_state(gw: &Gateway, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let v = status(gw).await;
        if v["store"]["state"] == json!(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "store state did not become {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_under_each_policy() {
    away_from_day_boundary(60).await;
    let mut redis = RedisServer::start();
    let up = Upstream::start("app").await;
    let plans = "[plans.deny]\nquotas = [\"1000/day\"]\non_store_error = \"deny\"\n\n\
                 [plans.allow]\nquotas = [\"1000/day\"]\non_store_error = \"allow\"\n\n\
                 [plans.local]\nquotas = [\"20/day\"]\non_store_error = \"local\"\n\n\
                 [plans.strict]\nquotas = [\"1000/day\"]\nexactness = \"strict\"\non_store_error = \"local\"\n";
    let body = config(up.addr, plans, ["deny", "allow", "local", "strict"]);
    let a = Gateway::start_with_store(&store(&redis, ""), &body);
    let b = Gateway::start_with_store(&store(&redis, ""), &body);
    wait_state(&a, "up").await;
    let s = status(&a).await;
    assert_eq!(s["store"]["kind"], json!("redis"), "{s}");
    for key in [KEYS[0], KEYS[1], KEYS[3]] {
        for gw in [&a, &b] {
            assert_eq!(get_with(&gw.url("/app/x"), key).await.0, 200);
        }
    }

    redis.stop();
    // The next sync notices (within one interval); status and log say so.
    let noticed = wait_state(&a, "down").await;
    eprintln!("outage seen in /status after {noticed:?}");
    assert!(a.log().contains("is unreachable"), "{}", a.log());
    let v = status(&a).await;
    assert_eq!(v["store"]["counting"], json!("on_store_error"), "{v}");
    assert!(
        !v.to_string().contains("redis://"),
        "status shows the URL: {v}"
    );

    // deny: the node's unused lease may still be spent; then 503 store_unavailable.
    let url = a.url("/app/x");
    let (mut leased, mut refused) = (0, 0);
    for _ in 0..60 {
        let (s, text) = get_with(&url, KEYS[0]).await;
        if s == 200 {
            leased += 1;
        } else {
            problem(&text, 503, "store_unavailable");
            refused += 1;
        }
    }
    assert!(
        leased <= 4,
        "deny accepted {leased} during the outage: more than its lease"
    );
    assert_eq!(leased + refused, 60);
    // allow: everything goes through.
    for _ in 0..30 {
        assert_eq!(get_with(&url, KEYS[1]).await.0, 200);
    }
    // local: this node's share of the quota: 20 / 2 nodes = 10.
    let (ok, limited) = hammer(&[&a], KEYS[2], 1, 30).await;
    assert_eq!(
        (ok, limited),
        (10, 20),
        "local fallback counts 1/nodes of the quota"
    );
    // A strict plan with local fallback works too.
    assert_eq!(get_with(&url, KEYS[3]).await.0, 200);

    // Redis comes back (empty: a restart without persistence): counting through it resumes
    // by itself, and what was counted meanwhile is pushed to it.
    redis.restart();
    let back = wait_state(&a, "up").await;
    eprintln!("recovery seen in /status after {back:?}");
    assert!(a.log().contains("reachable again"), "{}", a.log());
    // A quiet sync or two later every lease is back and the totals are the accepted counts:
    // the local-mode 10, and for allow 28 to 30 of the 30 (node A spent its lease first,
    // granted before the outage and so counted in the Redis that was lost).
    let pushed = Instant::now();
    loop {
        let (local, allowed) = (redis_count(&redis, "c2"), redis_count(&redis, "c1"));
        if local == 10 && (28..=30).contains(&allowed) {
            eprintln!("outage counts in redis after {:?}", pushed.elapsed());
            break;
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(10),
            "counts of the outage in redis: local {local} (want 10), allow {allowed} (want 28-30)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_state(&b, "up").await;
    assert_eq!(
        get_with(&url, KEYS[0]).await.0,
        200,
        "deny plan works again"
    );
    assert_eq!(
        get_with(&url, KEYS[3]).await.0,
        200,
        "strict plan works again"
    );
    // The restarted Redis has the local-mode count: 10 more for the fleet, then refused.
    let (ok, _) = hammer(&[&a, &b], KEYS[2], 2, 30).await;
    assert_eq!(ok, 10, "after recovery the fleet has the rest of the quota");
}

async fn cache_status(gw: &Gateway, path: &str) -> String {
    let r = client()
        .get(gw.url(path))
        .header(
            "x-test-respond",
            "Cache-Control=max-age=300|Surrogate-Key=t1",
        )
        .send()
        .await
        .expect("request");
    r.headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_purges_reach_every_node_through_redis() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("app").await;
    let body = format!(
        "[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"pub\"\nbase_path = \"/pub\"\nupstream = \"app\"\n[apis.cache]\nttl = \"300s\"\n",
        up.addr
    );
    let a = Gateway::start_with_store(&store(&redis, ""), &body);
    let b = Gateway::start_with_store(&store(&redis, ""), &body);
    // Ready is not subscribed: a purge published before a node subscribes never reaches it.
    let started = Instant::now();
    for gw in [&a, &b] {
        while !gw.log().contains("cache purge channel subscribed") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no purge subscription: {}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for gw in [&a, &b] {
        for path in ["/pub/p", "/pub/q"] {
            assert_eq!(cache_status(gw, path).await, "MISS");
            assert_eq!(cache_status(gw, path).await, "HIT");
        }
    }
    // A purge by URL on A reaches B (the URL names B's host:port, as B's clients sent it).
    let url = format!("{}pub/p", b.url("/"));
    let (s, v) = admin(&a, "POST", "/cache/purge", Some(json!({ "url": url }))).await;
    assert_eq!((s, &v["reached"]), (200, &json!("every node")), "{v}");
    until_miss(&b, "/pub/p", Instant::now()).await;
    assert_eq!(cache_status(&b, "/pub/q").await, "HIT", "only that URL");
    // A purge by tag on A reaches every copy on both nodes.
    let (s, v) = admin(&a, "POST", "/cache/purge", Some(json!({ "tag": "t1" }))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(cache_status(&a, "/pub/q").await, "MISS");
    until_miss(&b, "/pub/q", Instant::now()).await;
    let log = b.log();
    assert!(log.contains("cache purge from node"), "{log}");

    // Redis down: the purge is applied here and the caller is told the fleet did not get it.
    assert_eq!(cache_status(&b, "/pub/q").await, "HIT");
    redis.stop();
    let (s, v) = admin(&a, "POST", "/cache/purge", Some(json!({ "api": "pub" }))).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    assert_eq!(cache_status(&a, "/pub/q").await, "MISS");
    // When B subscribes again it clears what it may have missed.
    redis.restart();
    let since = Instant::now();
    loop {
        if status(&b).await["cache"]["objects"] == json!(0) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the other node kept its copies after missing purges"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cache_status(&b, "/pub/q").await, "MISS");
}

/// Polls `path` on `gw` until it is not served from the cache, failing after
/// `PROPAGATION_DEADLINE`.
async fn until_miss(gw: &Gateway, path: &str, since: Instant) {
    while cache_status(gw, path).await == "HIT" {
        assert!(
            since.elapsed() < PROPAGATION_DEADLINE,
            "the purge did not reach the other node within {PROPAGATION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "purge of {path} effective on the other node after {:?}",
        since.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_keys_fail_closed_when_redis_is_out_of_reach_too_long() {
    let redis = RedisServer::start();
    let up = Upstream::start("app").await;
    let body = format!(
        "[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/app\"\nupstream = \"app\"\n[apis.auth]\nmethods = [\"api_key\"]\n\n[[consumers]]\nid = \"c0\"\nkeys = [{{ sha256 = \"{}\" }}]\n",
        up.addr,
        key_digest(KEYS[0])
    );
    let a = Gateway::start_with_store(&store(&redis, "max_key_staleness = \"3s\""), &body);
    let (key, _) = store_key(&a, json!({"id": "beta"})).await;
    assert_eq!(get_with(&a.url("/app/x"), key).await.0, 200);

    // Redis hangs: the last copy of the keys serves for max_key_staleness, then keys of the
    // store get 503 (a revocation made meanwhile elsewhere must not keep working).
    redis.pause();
    let paused = Instant::now();
    let text = loop {
        let (s, text) = get_with(&a.url("/app/x"), key).await;
        if s == 503 {
            break text;
        }
        assert_eq!(s, 200, "{text}");
        assert!(
            paused.elapsed() < Duration::from_secs(15),
            "store keys still accepted {:?} after redis stopped answering",
            paused.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("store keys refused {:?} after redis hung", paused.elapsed());
    // Counted from the last good sync (every 250 ms), so up to one interval (and a loaded
    // machine's delay) before 3 s after the pause.
    assert!(
        paused.elapsed() >= Duration::from_millis(1500),
        "refused {:?} after the pause, well before max_key_staleness (3 s)",
        paused.elapsed()
    );
    problem(&text, 503, "store_unavailable");
    // Keys from the config file do not depend on Redis.
    assert_eq!(get_with(&a.url("/app/x"), KEYS[0]).await.0, 200);

    // Redis answers again: the store's keys work again.
    redis.resume();
    let resumed = Instant::now();
    while get_with(&a.url("/app/x"), key).await.0 != 200 {
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "store keys not accepted after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
