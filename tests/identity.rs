//! Consumers and API keys end to end: the admin API creates, rotates and revokes keys in the
//! real store, the proxy identifies callers with them, the upstream sees the identity headers
//! and never the key, and the key appears nowhere after its creation answer.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{admin, client, problem, run_cli, Gateway, ADMIN_TOKEN};

fn sha256_hex(s: &str) -> String {
    let (code, out, err) = {
        use std::io::Write;
        let mut child = std::process::Command::new(support::binary())
            .args(["keys", "hash"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("keys hash");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write key");
        let out = child.wait_with_output().expect("keys hash output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

async fn call(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("proxy call");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    (status, r.text().await.expect("body"), h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_identify_callers_end_to_end() {
    let up = Upstream::start("orders").await;
    let config_key = "tpk_configkeyconfigkeyconfigkey000000";
    let expired_key = "legacy-key-that-expired";
    let closed = support::dead_port();
    let config_body = format!(
        r#"
[upstreams.orders]
targets = [ {{ addr = "{addr}" }} ]

[upstreams.down]
targets = [ {{ addr = "127.0.0.1:{closed}" }} ]
retries = 0

[[apis]]
name = "down"
base_path = "/down"
upstream = "down"
[apis.auth]
methods = ["api_key"]
api_key = {{ header = "x-api-key", query_param = "api_key" }}

[[apis]]
name = "orders"
base_path = "/orders/v1"
upstream = "orders"
[apis.auth]
methods = ["api_key"]
api_key = {{ header = "x-api-key", query_param = "api_key" }}
allow_groups = ["partners"]
[[apis.routes]]
path = "/items"
[[apis.routes]]
path = "/admin-only"
scopes = ["orders:admin"]

[[apis]]
name = "public"
base_path = "/public"
upstream = "orders"

[[consumers]]
id = "from-config"
groups = ["partners"]
keys = [
  {{ sha256 = "{config_digest}", label = "ci" }},
  {{ sha256 = "{expired_digest}", expires_at = "2020-01-01T00:00:00Z" }},
]
"#,
        addr = up.addr,
        closed = closed.port,
        config_digest = sha256_hex(config_key),
        expired_digest = sha256_hex(expired_key),
    );
    let gw = Gateway::start(&config_body);

    // A consumer and a key through the admin API.
    let (s, v) = admin(
        &gw,
        "POST",
        "/consumers",
        Some(json!({"id": "acme", "groups": ["partners"], "plan": "free",
            "metadata": {"team": "erp", "tier": 2}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = admin(&gw, "POST", "/consumers", Some(json!({"id": "acme"}))).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = admin(&gw, "POST", "/consumers", Some(json!({"id": "bad id"}))).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );
    let (s, v) = admin(
        &gw,
        "POST",
        "/consumers",
        Some(json!({"id": "x", "extra": 1})),
    )
    .await;
    assert_eq!(s, 422, "unknown fields are refused: {v}");
    let (s, v) = admin(
        &gw,
        "POST",
        "/consumers/acme/keys",
        Some(json!({"label": "erp"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key"].as_str().expect("key shown once").to_string();
    let key_id = v["id"].as_str().expect("key id").to_string();
    assert!(key.starts_with("tpk_") && key.len() == 42, "{key}");
    assert_eq!(v["prefix"].as_str(), Some(&key[..10]));

    // A valid key: the upstream sees who called, never the key, never forged identity headers.
    let (s, body, _) = call(
        &gw,
        "/orders/v1/items?x=1",
        &[
            ("x-api-key", &key),
            ("x-consumer-id", "admin"),
            ("x-consumer-groups", "root"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let seen = up.last().expect("upstream saw the request");
    assert_eq!(seen.header("x-consumer-id"), Some("acme"));
    assert_eq!(seen.header("x-consumer-groups"), Some("partners"));
    assert_eq!(seen.headers.get("x-consumer-id").map(Vec::len), Some(1));
    assert!(seen.header("x-api-key").is_none(), "the key was forwarded");
    assert_eq!(seen.uri, "/orders/v1/items?x=1");

    // The key in the query parameter is accepted and removed before the upstream.
    let (s, _, _) = call(&gw, &format!("/orders/v1/items?a=1&api_key={key}&b=2"), &[]).await;
    assert_eq!(s, 200);
    let seen = up.last().expect("upstream");
    assert_eq!(seen.uri, "/orders/v1/items?a=1&b=2");

    // A failing upstream makes Pingora log the request: never with its query (the key).
    let (s, _, _) = call(&gw, &format!("/down/x?api_key={key}&y=2"), &[]).await;
    assert_eq!(s, 502);

    // The config consumer's key works; its expired one does not.
    let (s, _, _) = call(&gw, "/orders/v1/items", &[("x-api-key", config_key)]).await;
    assert_eq!(s, 200);
    assert_eq!(
        up.last().expect("upstream").header("x-consumer-id"),
        Some("from-config")
    );
    let hits = up.hits();
    let (s, body, h) = call(&gw, "/orders/v1/items", &[("x-api-key", expired_key)]).await;
    let expired = problem(&body, 401, "invalid_credentials");
    assert_eq!(s, 401);
    let (_, body, _) = call(&gw, "/orders/v1/items", &[("x-api-key", "tpk_nope")]).await;
    let unknown = problem(&body, 401, "invalid_credentials");
    assert_eq!(
        expired["detail"], unknown["detail"],
        "an expired key is answered like an unknown one"
    );
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap_or("")
        .contains("x-api-key"));

    // Missing, unknown, ambiguous.
    let (_, body, h) = call(&gw, "/orders/v1/items", &[]).await;
    problem(&body, 401, "missing_credentials");
    assert!(h.contains_key("www-authenticate"));
    let (_, body, _) = call(&gw, "/orders/v1/items", &[("x-api-key", "tpk_nope")]).await;
    let p = problem(&body, 401, "invalid_credentials");
    assert!(
        !p.to_string().contains("tpk_nope"),
        "the error repeats the key: {p}"
    );
    let (_, body, _) = call(
        &gw,
        &format!("/orders/v1/items?api_key={key}"),
        &[("x-api-key", &key)],
    )
    .await;
    problem(&body, 401, "invalid_credentials");
    let c = client();
    let r = c
        .get(gw.url("/orders/v1/items"))
        .header("x-api-key", &key)
        .header("x-api-key", config_key)
        .send()
        .await
        .expect("two keys");
    problem(&r.text().await.expect("body"), 401, "invalid_credentials");
    assert_eq!(up.hits(), hits, "no rejected request reached the upstream");

    // Groups and scopes: 403 for a known caller that is not allowed.
    let (s, _) = admin(&gw, "POST", "/consumers", Some(json!({"id": "outsider"}))).await;
    assert_eq!(s, 201);
    let (_, v) = admin(&gw, "POST", "/consumers/outsider/keys", None).await;
    let outsider = v["key"].as_str().expect("key").to_string();
    let (_, body, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &outsider)]).await;
    problem(&body, 403, "forbidden");
    let (_, body, _) = call(&gw, "/orders/v1/admin-only", &[("x-api-key", &key)]).await;
    problem(&body, 403, "forbidden");
    let (s, v) = admin(
        &gw,
        "PATCH",
        "/consumers/acme",
        Some(json!({"scopes": ["orders:admin"]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, _) = call(&gw, "/orders/v1/admin-only", &[("x-api-key", &key)]).await;
    assert_eq!(
        s, 200,
        "a scope granted through the admin API applies at once"
    );

    // One consumer can be read back with its metadata; a deleted consumer's keys stop at once.
    let (s, v) = admin(&gw, "GET", "/consumers/acme", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["metadata"], json!({"team": "erp", "tier": 2}));
    assert_eq!(v["source"], "store");
    let (s, v) = admin(&gw, "GET", "/consumers/from-config", None).await;
    assert_eq!((s, v["source"].as_str()), (200, Some("config")));
    let (s, _) = admin(
        &gw,
        "POST",
        "/consumers",
        Some(json!({"id": "leaving", "groups": ["partners"]})),
    )
    .await;
    assert_eq!(s, 201);
    let (_, v) = admin(&gw, "POST", "/consumers/leaving/keys", None).await;
    let leaving = v["key"].as_str().expect("key").to_string();
    assert_eq!(
        call(&gw, "/orders/v1/items", &[("x-api-key", &leaving)])
            .await
            .0,
        200
    );
    let (s, _) = admin(&gw, "DELETE", "/consumers/leaving", None).await;
    assert_eq!(s, 204);
    let (_, body, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &leaving)]).await;
    problem(&body, 401, "invalid_credentials");
    let (s, _) = admin(&gw, "GET", "/consumers/leaving", None).await;
    assert_eq!(s, 404);
    let (s, _) = admin(&gw, "DELETE", "/consumers/from-config", None).await;
    assert_eq!(s, 409, "config consumers are read-only");

    // Public APIs still drop forged identity headers.
    let (s, _, _) = call(&gw, "/public/x", &[("x-consumer-id", "admin")]).await;
    assert_eq!(s, 200);
    assert!(up
        .last()
        .expect("upstream")
        .header("x-consumer-id")
        .is_none());

    // Rotation: both keys work during the grace period, only the new one after it.
    let (s, v) = admin(
        &gw,
        "POST",
        &format!("/consumers/acme/keys/{key_id}/rotate"),
        Some(json!({"grace": "5s"})),
    )
    .await;
    let rotated = Instant::now();
    assert_eq!(s, 201, "{v}");
    let new_key = v["key"].as_str().expect("new key").to_string();
    let new_id = v["id"].as_str().expect("new id").to_string();
    for k in [&key, &new_key] {
        let (s, _, _) = call(&gw, "/orders/v1/items", &[("x-api-key", k)]).await;
        assert_eq!(s, 200, "within the grace period");
    }
    // The old key ends with the grace period (kept in whole seconds: between 4 and 5 s).
    let body = loop {
        let (s, body, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &key)]).await;
        if s == 401 {
            break body;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(15),
            "the old key outlived its grace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        rotated.elapsed() >= Duration::from_secs(3),
        "the old key was refused {:?} into a 5 s grace",
        rotated.elapsed()
    );
    problem(&body, 401, "invalid_credentials");
    let (s, _, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &new_key)]).await;
    assert_eq!(s, 200);

    // Revocation takes effect by the time the DELETE returns.
    let (s, _) = admin(
        &gw,
        "DELETE",
        &format!("/consumers/acme/keys/{new_id}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (_, body, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &new_key)]).await;
    problem(&body, 401, "invalid_credentials");

    // Listing shows prefixes and states, never keys or digests.
    let (s, v) = admin(&gw, "GET", "/consumers/acme/keys", None).await;
    assert_eq!(s, 200);
    let listing = v.to_string();
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{listing}");
    assert!(
        listing.contains("\"revoked\"") && listing.contains("\"expired\""),
        "{listing}"
    );
    let (s, v) = admin(&gw, "GET", "/consumers?limit=2", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2));
    let next = v["next"].as_str().expect("a next cursor").to_string();
    let (_, v2) = admin(
        &gw,
        "GET",
        &format!("/consumers?limit=2&after={next}"),
        None,
    )
    .await;
    assert_eq!(
        v2["items"].as_array().map(Vec::len),
        Some(1),
        "3 consumers in all: {v2}"
    );

    // A key made offline by the CLI works without a reload (designed: within the 500 ms sync;
    // the test fails only far beyond it and prints what it measured).
    let config = gw.config.display().to_string();
    let (code, out, err) = run_cli(
        &["keys", "create", "--consumer", "acme", "-c", &config],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let cli_key = out.trim().to_string();
    let started = Instant::now();
    loop {
        let (s, _, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &cli_key)]).await;
        if s == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the CLI key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("CLI key usable after {:?}", started.elapsed());

    // Revocation by another process (here: a direct write to the store, as another node or the
    // other process during an upgrade would make) reaches the running gateway (designed: within
    // the 500 ms sync).
    let db = rusqlite::Connection::open(gw.dir.path().join("turnpike.db")).expect("open store");
    db.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let digest = turnpike::identity::key::digest(cli_key.as_bytes());
    let changed = db
        .execute(
            "UPDATE api_keys SET revoked_at = strftime('%s','now') WHERE digest = ?1",
            [&digest[..]],
        )
        .expect("revoke from outside");
    assert_eq!(changed, 1);
    let revoked_at = Instant::now();
    loop {
        let (s, _, _) = call(&gw, "/orders/v1/items", &[("x-api-key", &cli_key)]).await;
        if s == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "a revocation by another process took over 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "revocation by another process effective after {:?}",
        revoked_at.elapsed()
    );
    drop(db);

    // The audit log recorded every change, chained, with a token fingerprint as the actor.
    let (s, v) = admin(&gw, "GET", "/audit?limit=100", None).await;
    assert_eq!(s, 200);
    for k in [&key, &new_key, &outsider, &cli_key, &leaving] {
        assert!(
            !v.to_string().contains(k.as_str()),
            "a key in the audit log"
        );
        assert!(!listing.contains(k.as_str()), "a key in a listing");
    }
    let entries = v["items"].as_array().expect("entries").clone();
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "consumer.create",
        "key.create",
        "consumer.update",
        "key.rotate",
        "key.revoke",
        "consumer.delete",
    ] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
    assert!(entries[0]["actor"]
        .as_str()
        .unwrap_or("")
        .starts_with("admin-token:"));
    assert!(!v.to_string().contains(ADMIN_TOKEN));
    let (code, out, err) = run_cli(&["audit", "verify", "-c", &config], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("audit log ok"), "{out}");

    // One id names one consumer: a config consumer may not shadow a store consumer (reload
    // refused, old config kept), and the CLI makes no store keys for config consumers.
    gw.rewrite(&format!("{config_body}\n[[consumers]]\nid = \"acme\"\n"));
    let (s, v) = admin(&gw, "POST", "/reload", None).await;
    assert_eq!(s, 422, "{v}");
    assert!(v.to_string().contains("also exists in the store"), "{v}");
    let (code, _, err) = run_cli(
        &["keys", "create", "--consumer", "from-config", "-c", &config],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("defined in the config file"), "{err}");
    gw.rewrite(&config_body);

    // No key ever appears in the store files or the gateway's log.
    assert!(
        gw.log().contains("Fail to proxy"),
        "the failing request was not logged"
    );
    let mut files = vec![gw.log()];
    for entry in std::fs::read_dir(gw.dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains("turnpike.db") {
            files.push(String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned());
        }
    }
    for text in &files {
        for k in [&key, &new_key, &outsider, &cli_key, &leaving] {
            assert!(!text.contains(k.as_str()), "a key leaked into a file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_survives_kill_9_during_a_burst_of_admin_writes() {
    let mut gw = Gateway::start("[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\n");
    let started = Instant::now();
    while admin(&gw, "GET", "/consumers", None).await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "admin never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let created = created.clone();
        let url = gw.admin_url("");
        writers.push(tokio::spawn(async move {
            let c = client();
            for i in 0..10_000 {
                let id = format!("w{w}-{i}");
                let post = |path: String, body: Value| {
                    c.post(format!("{url}{path}"))
                        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                        .json(&body)
                        .send()
                };
                let Ok(r) = post("/consumers".into(), json!({"id": id})).await else {
                    return;
                };
                if r.status() != 201 {
                    return;
                }
                let Ok(r) = post(format!("/consumers/{id}/keys"), json!({})).await else {
                    return;
                };
                if r.status() != 201 {
                    return;
                }
                let Ok(v) = r.json::<Value>().await else {
                    return;
                };
                if let (Some(k), Ok(mut list)) = (v["key"].as_str(), created.lock()) {
                    list.push((id, k.to_string()));
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    gw.signal("KILL");
    assert!(
        gw.wait_exit(Duration::from_secs(5)).is_some(),
        "the gateway did not die"
    );
    for w in writers {
        let _ = w.await;
    }
    let created = created.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(
        created.len() >= 5,
        "too few writes before the kill: {}",
        created.len()
    );

    // The file is intact, every acknowledged key is there with its consumer, every key row has
    // its consumer and its audit entry, and the audit chain verifies.
    let db = rusqlite::Connection::open(gw.dir.path().join("turnpike.db")).expect("open store");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    for (consumer, key) in &created {
        let digest = turnpike::identity::key::digest(key.as_bytes());
        let owner: String = db
            .query_row(
                "SELECT consumer_id FROM api_keys WHERE digest = ?1",
                [&digest[..]],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("acknowledged key of {consumer} lost: {e}"));
        assert_eq!(&owner, consumer);
    }
    let orphans: i64 = db
        .query_row(
            "SELECT count(*) FROM api_keys k WHERE NOT EXISTS (SELECT 1 FROM consumers c WHERE c.id = k.consumer_id)
             OR NOT EXISTS (SELECT 1 FROM audit a WHERE a.action = 'key.create' AND a.target = 'consumer/' || k.consumer_id || '/keys/' || k.id)",
            [],
            |r| r.get(0),
        )
        .expect("orphan query");
    assert_eq!(orphans, 0, "a key without its consumer or audit entry");
    let keys: i64 = db
        .query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))
        .expect("count");
    eprintln!(
        "{} keys acknowledged, {keys} in the store after kill -9",
        created.len()
    );
    drop(db);
    let config = gw.config.display().to_string();
    let (code, out, err) = run_cli(&["audit", "verify", "-c", &config], None);
    assert_eq!(code, 0, "{out}{err}");
}
