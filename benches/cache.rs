//! The edge cache's hot path outside the proxy: building a cache key (consumer-scoped, with a
//! query to normalise and a `vary` header), storing an answer, and a lookup that hits in a
//! store of 10,000 objects.
//! Run with `cargo bench --bench cache`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use pingora::cache::eviction::lru::Manager;
use pingora::cache::key::CacheHashKey;
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};
use turnpike::cache::key::{build, Request, Who};
use turnpike::cache::storage::MemoryStore;
use turnpike::cache::Policy;
use turnpike::state::ApiInfo;

fn policy() -> Policy {
    Policy {
        ttl: Duration::from_secs(60),
        shared: false,
        vary: vec![http::HeaderName::from_static("accept-language")],
        strip: Default::default(),
        stale_while_revalidate: 0,
        stale_if_error: 0,
        max_object: 1 << 20,
        store_set_cookie: false,
    }
}

fn key_for(target: &str, headers: &HeaderMap, p: &Policy, api: &ApiInfo) -> CacheKey {
    let req = Request {
        https: true,
        host: b"api.example.com",
        target: target.as_bytes(),
        headers,
        credential_param: Some("apikey"),
    };
    let who = Who {
        id: "acme",
        groups: b"gold,partners",
    };
    build(&req, api, p, Some(who))
}

fn bench(c: &mut Criterion) {
    let api = ApiInfo {
        name: "catalog".into(),
        version: Some("v1".into()),
    };
    let p = policy();
    let mut headers = HeaderMap::new();
    headers.insert("accept-language", "de-DE".parse().expect("value"));
    c.bench_function("cache_key_build", |b| {
        b.iter(|| {
            black_box(key_for(
                black_box("/catalog/v1/items/42?sort=price&page=2&apikey=x"),
                &headers,
                &p,
                &api,
            ))
            .combined_bin()
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let eviction: &'static Manager<16> =
        Box::leak(Box::new(Manager::with_capacity(256 << 20, 1024)));
    let store: &'static MemoryStore = Box::leak(Box::new(MemoryStore::new(256 << 20, eviction)));
    let span = Span::inactive().handle();
    rt.block_on(async {
        for i in 0..10_000 {
            let key = key_for(&format!("/catalog/v1/items/{i}"), &headers, &p, &api);
            let mut h = ResponseHeader::build(200, None).expect("header");
            h.insert_header("content-type", "application/json")
                .expect("header");
            let now = SystemTime::now();
            let meta = CacheMeta::new(now + Duration::from_secs(600), now, 0, 0, h);
            let mut w = store
                .get_miss_handler(&key, &meta, &span)
                .await
                .expect("writer");
            w.write_body(
                bytes::Bytes::from_static(b"{\"id\":42,\"name\":\"x\"}"),
                true,
            )
            .await
            .expect("write");
            w.finish().await.expect("finish");
        }
    });
    // Storing an answer (the miss path's storage part), over 1,000 keys, with the header an
    // API server typically sends.
    let keys: Vec<CacheKey> = (0..1000)
        .map(|i| key_for(&format!("/catalog/v1/stored/{i}"), &headers, &p, &api))
        .collect();
    let mut header = ResponseHeader::build(200, None).expect("header");
    for (name, value) in [
        ("content-type", "application/json; charset=utf-8"),
        ("cache-control", "public, max-age=600"),
        ("etag", "\"5d8c72a5edda8d6a\""),
        ("last-modified", "Tue, 17 Nov 2026 09:12:44 GMT"),
        ("date", "Sat, 21 Nov 2026 23:40:02 GMT"),
        ("server", "orders-api"),
        ("content-length", "512"),
    ] {
        header.insert_header(name, value).expect("header");
    }
    let body = bytes::Bytes::from(vec![b'x'; 512]);
    let mut n = 0usize;
    c.bench_function("cache_store_answer", |b| {
        b.iter(|| {
            n = (n + 1) % keys.len();
            rt.block_on(async {
                let now = SystemTime::now();
                let meta =
                    CacheMeta::new(now + Duration::from_secs(600), now, 0, 0, header.clone());
                let mut w = store
                    .get_miss_handler(&keys[n], &meta, &span)
                    .await
                    .expect("writer");
                w.write_body(body.clone(), true).await.expect("write");
                black_box(w.finish().await.expect("finish"))
            })
        })
    });

    let key = key_for("/catalog/v1/items/4242", &headers, &p, &api);
    c.bench_function("cache_lookup_hit_10k_objects", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (meta, mut hit) = store
                    .lookup(black_box(&key), &span)
                    .await
                    .expect("lookup")
                    .expect("hit");
                black_box(meta.is_fresh(SystemTime::now()));
                black_box(hit.read_body().await.expect("body"))
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
