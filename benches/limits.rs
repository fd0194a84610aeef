//! The plan limiter: one check (GCRA rate + two quotas) single-threaded, the same key checked
//! from 4 threads at once (contended), and a check spent from a Redis lease (batched mode).
//! Run with `cargo bench --bench limits`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::Instant;
use turnpike::config::file::OnStoreError;
use turnpike::limits::limiter::{Check, Limiter, Mode, Plan, SyncOutcome};
use turnpike::limits::spec::parse_quota;

fn plan() -> Plan {
    Plan {
        name: "bench".into(),
        // A rate and quotas high enough that every check is accepted and counted.
        rate: Some((1, u64::MAX / 4)),
        quotas: ["1000000000/hour", "1000000000/month"]
            .iter()
            .map(|q| parse_quota(q).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        strict: false,
        on_error: OnStoreError::Local,
    }
}

fn bench(c: &mut Criterion) {
    let limiter = Arc::new(Limiter::new());
    let plan = Arc::new(plan());
    let now = turnpike::clock::now_ns();
    let mut g = c.benchmark_group("limiter");
    g.bench_function("check_single_thread", |b| {
        b.iter(|| {
            limiter
                .check(black_box("acme"), &plan, now)
                .denied
                .is_none()
        })
    });
    // 1,000 consumers: the shard map lookup with many keys.
    for i in 0..1000 {
        limiter.check(&format!("c{i}"), &plan, now);
    }
    g.bench_function("check_1000_keys", |b| {
        let mut i = 0usize;
        let keys: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        b.iter(|| {
            i = (i + 1) % keys.len();
            limiter.check(&keys[i], &plan, now).denied.is_none()
        })
    });
    // Four threads on the same key: the time per check seen by each thread.
    g.bench_function("check_contended_4_threads_same_key", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (l, p) = (limiter.clone(), plan.clone());
                    std::thread::spawn(move || {
                        for _ in 0..iters {
                            black_box(l.check("hot", &p, now));
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
            started.elapsed()
        })
    });
    // With Redis (batched): a check spent from this node's lease, no round trip.
    let cluster = Limiter::new();
    let mode = Mode::Cluster { nodes: 2, up: true };
    let _ = cluster.decide("acme", &plan, now, mode);
    let items = cluster.take_sync(now as i64 / 1_000_000_000, false);
    let grants: Vec<(u64, u64)> = items.iter().map(|_| (u64::MAX / 8, u64::MAX / 8)).collect();
    cluster.finish_sync(&items, SyncOutcome::Applied(&grants));
    g.bench_function("check_leased_redis_batched", |b| {
        b.iter(|| {
            matches!(
                cluster.decide(black_box("acme"), &plan, now, mode),
                Check::Done(_)
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
