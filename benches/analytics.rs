//! The cost of analytics per request: handing a record to the channel (the only part on the
//! request path), and the aggregator's work per record (metrics, rollup, anomaly counts; the
//! access log line on its own). Run with `cargo bench --bench analytics`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use turnpike::analytics::access_log::{AccessLog, Target};
use turnpike::analytics::anomaly::Detector;
use turnpike::analytics::metrics::HistogramCache;
use turnpike::analytics::names::Names;
use turnpike::analytics::record::Record;
use turnpike::analytics::rollup::Rollups;
use turnpike::analytics::Analytics;
use turnpike::config::analytics::AnalyticsSection;
use turnpike::identity::Consumer;
use turnpike::state::ApiInfo;

fn record(api: &Arc<ApiInfo>, consumer: &Arc<Consumer>, i: u64) -> Record {
    Record {
        time_ms: 1_795_000_000_000 + i,
        request_id: turnpike::headers::request_id(None),
        api: Some(api.clone()),
        route: Some(Arc::from("/orders/v1/items/{id}")),
        consumer: Some(consumer.clone()),
        method: http::Method::GET,
        status: 200,
        code: None,
        limited: None,
        policy: None,
        deprecated: false,
        violations: 0,
        duration_us: 800 + i % 400,
        upstream_us: Some(600),
        bytes_in: 0,
        bytes_out: 512,
        cache: None,
        upstream: Some((Arc::from("orders"), "127.0.0.1:9000".parse().expect("addr"))),
        client_ip: Some("127.0.0.1".parse().expect("ip")),
        user_agent: Some("bench/1.0".into()),
        shadow: None,
        trace: None,
    }
}

fn bench(c: &mut Criterion) {
    let api = Arc::new(ApiInfo {
        name: "orders".into(),
        version: Some("v1".into()),
    });
    let consumers: Vec<Arc<Consumer>> = (0..1000)
        .map(|i| {
            Arc::new(Consumer::new(
                &format!("c{i}"),
                Some("gold".into()),
                vec![],
                vec![],
                true,
            ))
        })
        .collect();

    // The request path: build the record and try_send it while a thread drains the channel
    // every 10 ms, as the aggregator does (it polls, so sends never wake it).
    let analytics = Arc::new(Analytics::new(&AnalyticsSection::default(), None, None));
    let mut rx = analytics.take_receiver().expect("receiver");
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(10));
        while rx.try_recv().is_ok() {}
    });
    let mut i = 0u64;
    c.bench_function("analytics: build and send a record", |b| {
        b.iter(|| {
            i += 1;
            analytics.send(black_box(record(&api, &consumers[(i % 1000) as usize], i)));
        })
    });

    // The aggregator's work per record, 1,000 consumers.
    let metrics = &analytics.metrics;
    let mut hists = HistogramCache::default();
    let mut rollups = Rollups::default();
    let mut detector = Detector::new(AnalyticsSection::default().alerts);
    let mut names = Names::default();
    let records: Vec<Record> = (0..1000)
        .map(|i| record(&api, &consumers[i], i as u64))
        .collect();
    let mut k = 0usize;
    c.bench_function(
        "analytics: aggregate a record (metrics, rollup, alerts)",
        |b| {
            b.iter(|| {
                k = (k + 1) % 1000;
                let r = &records[k];
                let labels = names.labels(r);
                metrics.observe(r, &labels, &mut hists);
                rollups.add(r, &labels);
                detector.add(r, &labels);
                metrics.records.inc();
            })
        },
    );

    let dir = tempfile::tempdir().expect("tmp");
    let mut log = AccessLog::new(Target::File(dir.path().join("access.log")), 1.0);
    let mut n = 0u64;
    c.bench_function(
        "analytics: access log line (buffered, flushed per 1,000)",
        |b| {
            b.iter(|| {
                n += 1;
                log.add(&records[(n % 1000) as usize]);
                if n.is_multiple_of(1000) {
                    let _ = log.flush();
                }
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
