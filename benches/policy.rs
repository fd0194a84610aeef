//! What the policy pipeline costs per request: the request stages of a chain with no policy,
//! with Edge and CORS policies (body_size, ip_filter, bot, cors), the Transform stage (header
//! edits with templates and a rewrite), the client-address resolution behind trusted proxies,
//! and a json_fields edit of a 2 KiB answer. Run with `cargo bench --bench policy`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use std::path::Path;
use turnpike::config::{compile::compile, parse};
use turnpike::policy::run::{Inbound, Services};
use turnpike::policy::{Flow, Stage};

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:18080"]
trusted_proxies = ["10.0.0.0/8"]

[policies.cors]
kind = "cors"
allow_origins = ["https://app.example.com", "https://*.partner.example"]

[policies.office]
kind = "ip_filter"
allow = ["192.0.2.0/24", "2001:db8::/32"]

[policies.bots]
kind = "bot"
deny_user_agents = ["(?i)curl/", "(?i)python-requests", "(?i)scrapy"]

[policies.small]
kind = "body_size"
max = "1MiB"

[policies.edits]
kind = "headers"
request = { remove = ["x-debug"], set = { "x-request" = "{request.id}", "x-item" = "{route.param.id}" } }

[policies.paths]
kind = "rewrite"
path = "/legacy/items/{id}"
query = { remove = ["debug"] }

[upstreams.app]
targets = [ { addr = "127.0.0.1:9" } ]

[[apis]]
name = "bare"
base_path = "/bare"
upstream = "app"
[[apis.routes]]
path = "/items/{id}"

[[apis]]
name = "guarded"
base_path = "/guarded"
upstream = "app"
policies = ["cors", "office", "bots", "small", "edits", "paths"]
[[apis.routes]]
path = "/items/{id}"
"#;

fn request(path: &str) -> RequestHeader {
    let mut r =
        RequestHeader::build("GET", path.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
    for (n, v) in [
        ("host", "api.example.com"),
        ("origin", "https://eu.partner.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("x-forwarded-for", "192.0.2.7"),
        ("x-debug", "1"),
    ] {
        r.insert_header(n, v).unwrap_or_else(|e| panic!("{e}"));
    }
    r
}

fn bench_pipeline(c: &mut Criterion) {
    let cfg = parse(CONFIG, Path::new("bench.toml")).unwrap_or_else(|e| panic!("{e}"));
    let snapshot = compile(&cfg, None, 1).unwrap_or_else(|e| panic!("{e:?}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let identity = turnpike::identity::Identity::open(&dir.path().join("t.db"), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let limiter = turnpike::limits::limiter::Limiter::new();
    let services = Services {
        identity: &identity,
        limiter: &limiter,
        cluster: None,
    };
    let ip = Some("192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}")));
    let mut g = c.benchmark_group("policy");
    for (name, path) in [
        ("request_stages_no_policy", "/bare/items/42"),
        ("request_stages_edge_and_cors", "/guarded/items/42"),
    ] {
        let head = request(path);
        let id = match snapshot.route(None, path.as_bytes(), &http::Method::GET) {
            turnpike::route::Match::Found(id) => id,
            _ => panic!("no route for {path}"),
        };
        let ep = &snapshot.endpoints[id];
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut flow = Flow::new(ep.max_body);
                let inbound = Inbound {
                    head: black_box(&head),
                    client_ip: ip,
                    content_length: None,
                    background: false,
                };
                let out = futures::executor::block_on(turnpike::policy::run::request(
                    &snapshot,
                    &services,
                    ep,
                    &inbound,
                    &mut flow,
                    Stage::Limit,
                ));
                black_box((out.is_ok(), flow.answer.len()))
            })
        });
    }
    let head = request("/guarded/items/42?debug=1&x=2");
    let ep = match snapshot.route(None, b"/guarded/items/42", &http::Method::GET) {
        turnpike::route::Match::Found(id) => &snapshot.endpoints[id],
        _ => panic!("no route"),
    };
    g.bench_function("transform_headers_and_rewrite", |b| {
        b.iter(|| {
            let mut flow = Flow::new(ep.max_body);
            let mut upstream = head.clone();
            turnpike::policy::run::upstream(
                &ep.chain,
                &mut flow,
                "req-1",
                ip,
                b"/guarded/items/42",
                &mut upstream,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            black_box(upstream)
        })
    });
    let trusted = &snapshot.policies.trusted;
    let peer = Some("10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}")));
    let xff: [&[u8]; 1] = [b"198.51.100.4, 10.9.9.9"];
    g.bench_function("client_address_behind_trusted_proxy", |b| {
        b.iter(|| {
            turnpike::policy::ip::client_address(black_box(peer), trusted, xff.iter().copied())
        })
    });
    let fields = turnpike::policy::json::JsonFields::compile(
        &["/customer/email".into(), "/items/*/owner".into()],
        &[],
        turnpike::policy::json::DEFAULT_MAX_BODY,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let items: Vec<String> = (0..20)
        .map(|i| {
            format!(r#"{{"id":{i},"name":"widget {i}","owner":"o{i}@example.com","price":9.99}}"#)
        })
        .collect();
    let body = format!(
        r#"{{"customer":{{"id":7,"email":"a@example.com","name":"Acme"}},"items":[{}]}}"#,
        items.join(",")
    );
    g.bench_function("json_fields_edit_2kib", |b| {
        b.iter(|| turnpike::policy::json::edit_body(black_box(body.as_bytes()), &[&fields]))
    });
    g.finish();
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
