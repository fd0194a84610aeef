//! Route matching at 10, 1,000 and 10,000 routes, request-target checking, and compiling a
//! large config. Run with `cargo bench --bench routing`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::Path;
use turnpike::config::{compile::compile, parse};
use turnpike::path::check_target;
use turnpike::route::{template_segments, Match, Methods, Router};

/// `n` APIs of two routes each (a static and a templated one), like a real catalogue.
fn router(n: usize) -> Router {
    let mut r = Router::new();
    let get = Methods::from_names(&["GET"]).unwrap_or(Methods::ANY);
    for i in 0..n / 2 {
        r.insert(
            &[],
            &template_segments(&format!("/svc{i}/v1/items")),
            false,
            get,
            2 * i,
        );
        r.insert(
            &[],
            &template_segments(&format!("/svc{i}/v1/items/{{id}}/detail")),
            false,
            get,
            2 * i + 1,
        );
    }
    r
}

fn bench_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let r = router(n);
        let last = format!("/svc{}/v1/items/12345/detail", n / 2 - 1);
        assert!(matches!(
            r.find(None, last.as_bytes(), b"GET"),
            Match::Found(_)
        ));
        g.bench_with_input(BenchmarkId::new("templated_hit", n), &last, |b, p| {
            b.iter(|| {
                r.find(
                    black_box(Some(b"api.example.com")),
                    black_box(p.as_bytes()),
                    black_box(b"GET"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                r.find(
                    black_box(None),
                    black_box(b"/nope/v1/items"),
                    black_box(b"GET"),
                )
            })
        });
    }
    g.finish();
}

fn bench_target(c: &mut Criterion) {
    c.bench_function("check_target", |b| {
        b.iter(|| {
            check_target(black_box(
                b"/catalog/v1/items/42?fields=name%2Cprice&lang=en",
            ))
        })
    });
}

fn large_config(routes: usize) -> String {
    let mut s = String::from("[upstreams.backend]\ntargets = [ { addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9002\" } ]\n");
    for i in 0..routes / 2 {
        s.push_str(&format!(
            "\n[[apis]]\nname = \"svc{i}\"\nversion = \"v1\"\nbase_path = \"/svc{i}/v1\"\nupstream = \"backend\"\nstrip_base_path = true\n[[apis.routes]]\npath = \"/items\"\nmethods = [\"GET\", \"POST\"]\n[[apis.routes]]\npath = \"/items/{{id}}\"\nmethods = [\"GET\"]\n"
        ));
    }
    s
}

fn bench_compile(c: &mut Criterion) {
    let text = large_config(10_000);
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    g.bench_function("parse_validate_compile_10k_routes", |b| {
        b.iter(|| {
            let cfg =
                parse(black_box(&text), Path::new("bench.toml")).unwrap_or_else(|e| panic!("{e}"));
            compile(&cfg, None, 1)
                .map(|s| s.endpoints.len())
                .unwrap_or(0)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_match, bench_target, bench_compile);
criterion_main!(benches);
