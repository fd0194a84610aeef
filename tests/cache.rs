//! The edge cache end to end, with the real binary and a real upstream: hits, misses and
//! expiry; the upstream's Cache-Control, Expires, Age, Vary and Set-Cookie; 304s from the
//! cache; consumer-scoped and shared copies; one upstream request for 100 concurrent misses;
//! stale-while-revalidate and stale-if-error with a failing and a stopped upstream; purges by
//! URL, API and tag; memory bounded by `max_memory`; a hit while the client still sends a body.

mod support;

use reqwest::header::HeaderMap;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{admin, client, key_digest, raw_exchange, Gateway};

const ACME: &str = "tpk_cacheacmecacheacmecacheacme000000000";
const GLOBEX: &str = "tpk_cacheglobexcacheglobexcacheglobex000";

fn config(up: std::net::SocketAddr, cache_extra: &str) -> String {
    format!(
        r#"
{cache_extra}

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "pub"
base_path = "/pub"
upstream = "app"
[apis.cache]
ttl = "1s"
vary = ["x-tenant"]

[[apis]]
name = "stale"
base_path = "/stale"
upstream = "app"
[apis.cache]
ttl = "1s"
stale_while_revalidate = "30s"

[[apis]]
name = "sie"
base_path = "/sie"
upstream = "app"
[apis.cache]
ttl = "1s"
stale_if_error = "5m"

[[apis]]
name = "routes"
base_path = "/nc"
upstream = "app"
[apis.cache]
ttl = "60s"
[[apis.routes]]
path = "/cached"
[[apis.routes]]
path = "/x"
[apis.routes.cache]
enabled = false

[[apis]]
name = "private"
base_path = "/mine"
upstream = "app"
[apis.auth]
methods = ["api_key"]
[apis.auth.api_key]
query_param = "apikey"
[apis.cache]
ttl = "60s"

[[apis]]
name = "shared"
base_path = "/all"
upstream = "app"
[apis.auth]
methods = ["api_key"]
[apis.cache]
ttl = "60s"
scope = "shared"

[plans.small]
quotas = ["4/hour"]

[plans.open]
quotas = ["1000000/month"]

[[apis]]
name = "counted"
base_path = "/counted"
upstream = "app"
[apis.auth]
methods = ["api_key"]
[apis.cache]
ttl = "60s"

[[consumers]]
id = "acme"
plan = "open"
keys = [{{ sha256 = "{acme}" }}]

[[consumers]]
id = "globex"
plan = "small"
keys = [{{ sha256 = "{globex}" }}]
"#,
        acme = key_digest(ACME),
        globex = key_digest(GLOBEX),
    )
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn cache(&self) -> &str {
        self.headers
            .get("x-cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
    }
    /// The upstream's request count when it made this body.
    fn n(&self) -> u64 {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["n"].as_u64())
            .unwrap_or(0)
    }
    fn consumer(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["headers"]["x-consumer-id"][0].as_str().map(String::from))
            .unwrap_or_default()
    }
}

async fn call(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = client().request(method.parse().expect("method"), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    Answer {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Answer {
    call("GET", &gw.url(path), headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_misses_expiry_and_upstream_cache_control() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, ""));

    // Miss, then hit with the same body and an Age; HEAD is answered from the same copy.
    let first = get(&gw, "/pub/a?y=2&x=1", &[]).await;
    assert_eq!((first.status, first.cache()), (200, "MISS"));
    let hit = get(&gw, "/pub/a?x=1&y=2", &[]).await;
    assert_eq!(hit.cache(), "HIT", "the normalised query shares the copy");
    assert_eq!(hit.n(), first.n());
    assert!(hit.headers.contains_key("age"));
    assert!(hit.headers.contains_key("x-request-id"));
    let head = call("HEAD", &gw.url("/pub/a?x=1&y=2"), &[]).await;
    assert_eq!(
        (head.status, head.cache(), head.body.as_str()),
        (200, "HIT", "")
    );
    assert_eq!(up.hits(), 1);
    // The block's ttl (1 s) ends the copy's freshness.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = get(&gw, "/pub/a?x=1&y=2", &[]).await;
    assert_eq!(later.cache(), "EXPIRED");
    assert!(later.n() > first.n());

    // Upstream Cache-Control: max-age beats the ttl, s-maxage beats max-age.
    let long = [("x-test-respond", "Cache-Control=max-age=1, s-maxage=60")];
    assert_eq!(get(&gw, "/pub/smaxage", &long).await.cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(get(&gw, "/pub/smaxage", &long).await.cache(), "HIT");
    // no-store, private and Set-Cookie are never stored; a POST bypasses.
    for (path, h) in [
        ("/pub/nostore", "Cache-Control=no-store"),
        ("/pub/private", "Cache-Control=private, max-age=60"),
        ("/pub/cookie", "Set-Cookie=session=abc"),
    ] {
        let before = up.hits();
        let a = get(&gw, path, &[("x-test-respond", h)]).await;
        let b = get(&gw, path, &[("x-test-respond", h)]).await;
        assert_eq!((a.cache(), b.cache()), ("MISS", "MISS"), "{h}");
        assert_eq!(up.hits(), before + 2, "{h}: both went upstream");
    }
    let post = call("POST", &gw.url("/pub/a?x=1&y=2"), &[]).await;
    assert_eq!(post.cache(), "BYPASS");
    assert_eq!(get(&gw, "/nc/cached", &[]).await.cache(), "MISS");
    assert_eq!(get(&gw, "/nc/cached", &[]).await.cache(), "HIT");
    let off = get(&gw, "/nc/x", &[]).await;
    assert!(
        off.headers.get("x-cache-status").is_none(),
        "a route can turn the cache off"
    );

    // An Expires in the past: stored but stale; with an ETag, the upstream's 304 revalidates.
    let tagged = [(
        "x-test-respond",
        "ETag=\"v1\"|Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    )];
    assert_eq!(get(&gw, "/pub/etag", &tagged).await.cache(), "MISS");
    let again = get(&gw, "/pub/etag", &tagged).await;
    assert_eq!((again.status, again.cache()), (200, "REVALIDATED"));
    // no-cache: stored, revalidated every time.
    let nc = [("x-test-respond", "ETag=\"n1\"|Cache-Control=no-cache")];
    assert_eq!(get(&gw, "/pub/nc", &nc).await.cache(), "MISS");
    assert_eq!(get(&gw, "/pub/nc", &nc).await.cache(), "REVALIDATED");
    // The upstream's Age counts: max-age=100 with Age 98 is fresh for about 2 s, and the Age
    // served includes it.
    let aged = [("x-test-respond", "Cache-Control=max-age=100|Age=98")];
    assert_eq!(get(&gw, "/pub/aged", &aged).await.cache(), "MISS");
    let a = get(&gw, "/pub/aged", &aged).await;
    assert_eq!(a.cache(), "HIT");
    let age: u64 = a.headers["age"]
        .to_str()
        .expect("age")
        .parse()
        .expect("number");
    assert!(age >= 98, "Age {age}");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(get(&gw, "/pub/aged", &aged).await.cache(), "EXPIRED");

    // Conditional requests get 304 from the cache.
    let fresh = [("x-test-respond", "ETag=\"c1\"|Cache-Control=max-age=60")];
    get(&gw, "/pub/cond", &fresh).await;
    let before = up.hits();
    let c = get(&gw, "/pub/cond", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!((c.status, c.cache(), c.body.as_str()), (304, "HIT", ""));
    let m = get(&gw, "/pub/cond", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((m.status, m.cache()), (200, "HIT"));
    assert_eq!(up.hits(), before, "both answered from the cache");
    // The same with a date: If-Modified-Since against the stored Last-Modified.
    let stamp = "Wed, 21 Oct 2015 07:28:00 GMT";
    let dated = [(
        "x-test-respond",
        "Last-Modified=Wed, 21 Oct 2015 07:28:00 GMT|Cache-Control=max-age=60",
    )];
    get(&gw, "/pub/dated", &dated).await;
    let before = up.hits();
    let same = get(&gw, "/pub/dated", &[("if-modified-since", stamp)]).await;
    assert_eq!(
        (same.status, same.cache(), same.body.as_str()),
        (304, "HIT", "")
    );
    let earlier = [("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")];
    let changed = get(&gw, "/pub/dated", &earlier).await;
    assert_eq!((changed.status, changed.cache()), (200, "HIT"));
    assert!(!changed.body.is_empty());
    assert_eq!(up.hits(), before, "both answered from the cache");

    // Vary: the block's `vary` header and the upstream's Vary select copies.
    let v = [(
        "x-test-respond",
        "Vary=Accept-Language|Cache-Control=max-age=60",
    )];
    let de = get(&gw, "/pub/v", &[v[0], ("accept-language", "de")]).await;
    let en = get(&gw, "/pub/v", &[v[0], ("accept-language", "en")]).await;
    assert_eq!((de.cache(), en.cache()), ("MISS", "MISS"));
    let de2 = get(&gw, "/pub/v", &[v[0], ("accept-language", "de")]).await;
    assert_eq!((de2.cache(), de2.n()), ("HIT", de.n()));
    let fresh = ("x-test-respond", "Cache-Control=max-age=60");
    let t1 = get(&gw, "/pub/t", &[fresh, ("x-tenant", "1")]).await;
    let t2 = get(&gw, "/pub/t", &[fresh, ("x-tenant", "2")]).await;
    assert_eq!((t1.cache(), t2.cache()), ("MISS", "MISS"));
    let t1_again = get(&gw, "/pub/t", &[fresh, ("x-tenant", "1")]).await;
    assert_eq!((t1_again.cache(), t1_again.n()), ("HIT", t1.n()));
    // Vary: * is never stored.
    let star = [("x-test-respond", "Vary=*|Cache-Control=max-age=60")];
    get(&gw, "/pub/star", &star).await;
    assert_eq!(get(&gw, "/pub/star", &star).await.cache(), "MISS");
    // On a public API (shared copies), an answer to a request whose Authorization or Cookie
    // reached the upstream is stored only if the upstream says it may be.
    for (path, h) in [
        ("/pub/authz", ("authorization", "Bearer user-a")),
        ("/pub/cookie-req", ("cookie", "session=user-a")),
    ] {
        get(&gw, path, &[h]).await;
        assert_eq!(get(&gw, path, &[]).await.cache(), "MISS", "{path}");
    }
    let public = [
        ("authorization", "Bearer user-a"),
        ("x-test-respond", "Cache-Control=public, max-age=60"),
    ];
    get(&gw, "/pub/authz-public", &public).await;
    assert_eq!(get(&gw, "/pub/authz-public", &[]).await.cache(), "HIT");
    // Vary on a header the gateway sets for the upstream is never stored.
    let vc = [(
        "x-test-respond",
        "Vary=X-Consumer-Id|Cache-Control=max-age=60",
    )];
    get(&gw, "/pub/vary-consumer", &vc).await;
    assert_eq!(get(&gw, "/pub/vary-consumer", &vc).await.cache(), "MISS");
    // Repeated query names keep their order in the key.
    get(&gw, "/pub/rep?id=1&id=2", &[fresh]).await;
    assert_eq!(
        get(&gw, "/pub/rep?id=2&id=1", &[fresh]).await.cache(),
        "MISS"
    );
    assert_eq!(
        get(&gw, "/pub/rep?id=1&id=2", &[fresh]).await.cache(),
        "HIT"
    );
    // Tags are not passed on to clients.
    let tag = [("x-test-respond", "Surrogate-Key=a b")];
    assert!(!get(&gw, "/pub/tags", &tag)
        .await
        .headers
        .contains_key("surrogate-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_never_share_copies_unless_the_api_says_shared() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, ""));
    let acme = [("x-api-key", ACME)];
    let globex = [("x-api-key", GLOBEX)];

    let a = get(&gw, "/mine/orders", &acme).await;
    let g = get(&gw, "/mine/orders", &globex).await;
    assert_eq!((a.cache(), g.cache()), ("MISS", "MISS"));
    assert_eq!(
        (a.consumer(), g.consumer()),
        ("acme".into(), "globex".into())
    );
    let a2 = get(&gw, "/mine/orders", &acme).await;
    assert_eq!(
        (a2.cache(), a2.consumer(), a2.n()),
        ("HIT", "acme".into(), a.n())
    );
    // The key in the query string is not part of the key: the same consumer shares its copy.
    let q = get(&gw, &format!("/mine/orders?apikey={ACME}"), &[]).await;
    assert_eq!((q.cache(), q.consumer()), ("HIT", "acme".into()));
    // Without credentials: 401, never a cached body.
    let anon = get(&gw, "/mine/orders", &[]).await;
    assert_eq!((anon.status, anon.cache()), (401, "BYPASS"));
    assert!(!anon.body.contains("acme") && !anon.body.contains("\"n\""));
    let bad = get(&gw, "/mine/orders", &[("x-api-key", "tpk_wrong")]).await;
    assert_eq!(bad.status, 401);

    // Shared: one copy for everybody (still behind auth).
    let s1 = get(&gw, "/all/catalog", &acme).await;
    let s2 = get(&gw, "/all/catalog", &globex).await;
    assert_eq!((s1.cache(), s2.cache(), s2.n()), ("MISS", "HIT", s1.n()));
    assert_eq!(get(&gw, "/all/catalog", &[]).await.status, 401);

    // Hits are counted by the plan: globex's quota of 4 covers misses and hits alike.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = get(&gw, "/counted/x", &globex).await;
        statuses.push((r.status, r.cache().to_string()));
    }
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(
        ok, 2,
        "2 of the quota went to /mine and /all above: {statuses:?}"
    );
    assert_eq!(statuses[1], (200, "HIT".into()));
    assert_eq!(statuses[2].0, 429);
    assert_eq!(statuses[2].1, "BYPASS");
    // The upstream never saw a client's API key.
    let seen = up.last().expect("seen");
    assert!(!seen.uri.contains("tpk_") && seen.header("x-api-key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, ""));
    let url = gw.url("/pub/slow?delay_ms=400");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = url.clone();
        // A copy good for a minute: a task that starts late on a loaded machine still hits.
        let fresh = [("x-test-respond", "Cache-Control=max-age=60")];
        tasks.push(tokio::spawn(async move { call("GET", &url, &fresh).await }));
    }
    let mut labels = std::collections::BTreeMap::new();
    let mut bodies = std::collections::BTreeSet::new();
    for t in tasks {
        let a = t.await.expect("task");
        assert_eq!(a.status, 200);
        *labels.entry(a.cache().to_string()).or_insert(0) += 1;
        bodies.insert(a.n());
    }
    assert_eq!(up.hits(), 1, "labels {labels:?}");
    assert_eq!(labels.get("MISS"), Some(&1), "{labels:?}");
    assert_eq!(labels.get("HIT"), Some(&99), "{labels:?}");
    assert_eq!(bodies.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_while_revalidate_and_stale_if_error() {
    let mut up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, ""));

    // SWR: a stale copy is served at once while one background request refreshes it.
    let first = get(&gw, "/stale/x", &[]).await;
    assert_eq!(first.cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The refresh is slow (the background request carries the client's headers): the stale
    // copy must not wait for it.
    let started = Instant::now();
    let stale = get(&gw, "/stale/x", &[("x-test-delay-ms", "1500")]).await;
    assert_eq!((stale.cache(), stale.n()), ("UPDATING", first.n()));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the stale copy waited {:?} for the refresh",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let refreshed = loop {
        let a = get(&gw, "/stale/x", &[]).await;
        if a.cache() == "HIT" && a.n() > first.n() {
            break a;
        }
        assert!(Instant::now() < deadline, "no refresh: {}", a.cache());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(up.hits(), 2, "one background refresh, {}", refreshed.n());

    // SIE: a failing upstream (500) and then a stopped one get the stale copy.
    let copy = get(&gw, "/sie/y", &[]).await;
    assert_eq!(copy.cache(), "MISS");
    let plain = get(&gw, "/pub/no-sie", &[]).await;
    assert_eq!(plain.cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    up.set_failing(true);
    let on_500 = get(&gw, "/sie/y", &[]).await;
    assert_eq!(
        (on_500.status, on_500.cache(), on_500.n()),
        (200, "STALE", copy.n())
    );
    up.stop().await;
    let on_down = get(&gw, "/sie/y", &[]).await;
    assert_eq!(
        (on_down.status, on_down.cache(), on_down.n()),
        (200, "STALE", copy.n())
    );
    // Without stale-if-error, an expired copy is not served: the failure shows.
    let none = get(&gw, "/pub/no-sie", &[]).await;
    assert_eq!(
        (none.status, none.cache()),
        (502, "EXPIRED"),
        "{}",
        none.body
    );
    let never = get(&gw, "/pub/never-cached", &[]).await;
    assert_eq!((never.status, never.cache()), (502, "MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_by_url_api_and_tag() {
    let up = Upstream::start("app").await;
    let long = "Cache-Control=max-age=300";
    let gw = Gateway::start(&config(up.addr, ""));
    let t = |tags: &str| format!("{long}|Surrogate-Key={tags}");
    let (t1, t2) = (t("product-1 list"), t("product-2 list"));
    let acme = ("x-api-key", ACME);
    let globex = ("x-api-key", GLOBEX);
    // Two consumers' copies of one URL, and tagged copies.
    for who in [acme, globex] {
        get(&gw, "/mine/p?id=1", &[who, ("x-test-respond", &t1)]).await;
    }
    get(&gw, "/pub/p2", &[("x-test-respond", &t2)]).await;
    get(&gw, "/pub/p3", &[("x-test-respond", long)]).await;
    let all_hit = |a: &Answer| a.cache() == "HIT";
    assert!(all_hit(&get(&gw, "/mine/p?id=1", &[acme]).await));

    let host = gw
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (s, v) = admin(
        &gw,
        "POST",
        "/cache/purge",
        Some(serde_json::json!({"url": format!("http://{host}/mine/p?id=1")})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed_here"], 2, "both consumers' copies: {v}");
    assert_eq!(get(&gw, "/mine/p?id=1", &[acme]).await.cache(), "MISS");
    assert_eq!(get(&gw, "/mine/p?id=1", &[globex]).await.cache(), "MISS");

    let (_, v) = admin(
        &gw,
        "POST",
        "/cache/purge",
        Some(serde_json::json!({"tag": "product-2"})),
    )
    .await;
    assert_eq!(v["removed_here"], 1, "{v}");
    assert_eq!(get(&gw, "/pub/p2", &[]).await.cache(), "MISS");
    assert_eq!(get(&gw, "/pub/p3", &[]).await.cache(), "HIT");

    // `apikey` is the key parameter of API "private", an ordinary parameter of "pub": the pub
    // copy keeps it in its URL, and a purge of that URL still finds the copy.
    let with_param = "/pub/p4?id=2&apikey=v";
    get(&gw, with_param, &[("x-test-respond", long)]).await;
    assert_eq!(get(&gw, with_param, &[]).await.cache(), "HIT");
    let (_, v) = admin(
        &gw,
        "POST",
        "/cache/purge",
        Some(serde_json::json!({"url": format!("http://{host}{with_param}")})),
    )
    .await;
    assert_eq!(v["removed_here"], 1, "{v}");
    assert_eq!(get(&gw, with_param, &[]).await.cache(), "MISS");

    let (_, v) = admin(
        &gw,
        "POST",
        "/cache/purge",
        Some(serde_json::json!({"api": "pub"})),
    )
    .await;
    assert!(v["removed_here"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert_eq!(get(&gw, "/pub/p3", &[]).await.cache(), "MISS");
    assert_eq!(
        get(&gw, "/mine/p?id=1", &[acme]).await.cache(),
        "HIT",
        "another API is kept"
    );

    let (s, v) = admin(
        &gw,
        "POST",
        "/cache/purge",
        Some(serde_json::json!({"url": "/relative"})),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("invalid_request")),
        "{v}"
    );
    let (s, _) = admin(&gw, "GET", "/cache/purge", None).await;
    assert_eq!(s, 405);
    let r = client()
        .post(gw.admin_url("/cache/purge"))
        .json(&serde_json::json!({"api": "pub"}))
        .send()
        .await
        .expect("call");
    assert_eq!(r.status().as_u16(), 401, "purges need the admin token");
    let (_, audit) = admin(&gw, "GET", "/audit", None).await;
    let text = audit.to_string();
    assert!(
        text.contains("cache.purge") && text.contains("tag:product-2"),
        "{text}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_stays_within_max_memory() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, "[cache]\nmax_memory = \"2MiB\"\n"));
    let max = 2u64 << 20;
    // Warm the process up, then push 20 x max_memory through the cache in 200 KiB objects.
    for i in 0..20 {
        get(&gw, &format!("/pub/w{i}?size=204800"), &[]).await;
    }
    let rss_before = rss_kib(gw.pid());
    let fresh = [("x-test-respond", "Cache-Control=max-age=60")];
    for i in 0..200 {
        let a = get(&gw, &format!("/pub/big{i}?size=204800"), &fresh).await;
        assert_eq!((a.status, a.body.len()), (200, 204_800));
    }
    let (_, status) = admin(&gw, "GET", "/status", None).await;
    let cache = &status["cache"];
    let bytes = cache["bytes"].as_u64().expect("bytes");
    let objects = cache["objects"].as_u64().expect("objects");
    assert!(bytes <= max, "{cache}");
    assert!(objects >= 5 && objects * 204_800 <= max, "{cache}");
    assert!(cache["evicted"].as_u64().unwrap_or(0) >= 190, "{cache}");
    // The newest objects are served from the cache, the oldest were evicted.
    assert_eq!(
        get(&gw, "/pub/big199?size=204800", &fresh).await.cache(),
        "HIT"
    );
    assert_eq!(
        get(&gw, "/pub/big0?size=204800", &fresh).await.cache(),
        "MISS"
    );
    let grown = rss_kib(gw.pid()).saturating_sub(rss_before);
    assert!(
        grown < 16 * 1024,
        "resident memory grew by {grown} KiB after 40 MiB went through a 2 MiB cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hit_while_the_client_sends_a_body_never_reads_the_body_as_a_request() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, ""));
    let warm = [("x-test-respond", "Cache-Control=max-age=60")];
    assert_eq!(get(&gw, "/pub/early", &warm).await.cache(), "MISS");
    let addr: std::net::SocketAddr = gw
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("addr");
    let smuggled = "GET /pub/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // The whole body at once, and a body announced longer than what is sent.
    for extra in [0usize, 1000] {
        let head = format!(
            "GET /pub/early HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            smuggled.len() + extra
        );
        let out = raw_exchange(addr, format!("{head}{smuggled}").as_bytes());
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            out.to_ascii_lowercase().contains("x-cache-status: hit"),
            "{out}"
        );
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "one answer: {out}");
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{out}"
        );
    }
    // Refused at the edge (over the 10 MiB body limit) on a cached API: the answer says the
    // cache was not used, like every other gateway refusal there.
    let big =
        format!("GET /pub/early HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 20000000\r\n\r\n");
    let out = raw_exchange(addr, big.as_bytes());
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-cache-status: bypass"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.hits(), 1, "the body was never read as a request");
    assert!(up.last().is_some_and(|s| !s.uri.contains("smuggled")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_rewrite_a_request_never_shape_a_shared_copy() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, ""));
    let poison = [
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-host", "evil.example"),
        ("x-forwarded-server", "evil.example"),
        ("x-forwarded-scheme", "http"),
        ("x-http-method-override", "DELETE"),
    ];
    let first = get(&gw, "/nc/cached?p=1", &poison).await;
    assert_eq!((first.status, first.cache()), (200, "MISS"));
    let seen = up.last().expect("the upstream saw the request");
    for (name, _) in poison {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    // Another client gets the copy, made without the attacker's headers.
    let clean = get(&gw, "/nc/cached?p=1", &[]).await;
    assert_eq!((clean.cache(), clean.n()), ("HIT", first.n()));
    assert!(!clean.body.contains("evil.example") && !clean.body.contains("/admin"));

    // An operator who lets one through gets it in the key instead.
    let gw = Gateway::start(&config(
        up.addr,
        "[cache]\nstrip_unkeyed = [\"x-original-url\"]",
    ));
    let with = get(&gw, "/nc/cached?p=2", &[("x-forwarded-scheme", "http")]).await;
    assert_eq!(with.cache(), "MISS");
    assert_eq!(
        up.last()
            .and_then(|s| s.header("x-forwarded-scheme").map(String::from)),
        Some("http".into())
    );
    let without = get(&gw, "/nc/cached?p=2", &[]).await;
    assert_eq!(
        without.cache(),
        "MISS",
        "a copy made with the header is not served without it"
    );
    let again = get(&gw, "/nc/cached?p=2", &[("x-forwarded-scheme", "http")]).await;
    assert_eq!((again.cache(), again.n()), ("HIT", with.n()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_keeps_at_most_max_variants_copies() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(up.addr, "[cache]\nmax_variants = 4"));
    let ask = |v: usize| {
        let v = v.to_string();
        let gw = &gw;
        async move {
            get(
                gw,
                "/nc/cached?vary=1",
                &[("x-test-respond", "Vary=x-v"), ("x-v", &v)],
            )
            .await
        }
    };
    for v in 0..8 {
        let a = ask(v).await;
        assert_eq!((a.status, a.cache()), (200, "MISS"), "variant {v}");
    }
    let mut again = Vec::new();
    for v in 0..8 {
        let a = ask(v).await;
        assert_eq!(a.status, 200, "variant {v} is served either way");
        again.push(a.cache().to_string());
    }
    assert_eq!(
        again.iter().filter(|s| *s == "HIT").count(),
        4,
        "four variants kept, the others served uncached: {again:?}"
    );
}
