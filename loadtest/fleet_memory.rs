//! Redis memory of the fleet's usage rollups (`[analytics.fleet]`), measured: fills a Redis with
//! `MINUTES` minutes of rows for `CONSUMERS` consumers x `APIS` APIs (one 2xx row each, every
//! row with a latency sketch of 20 requests spread over 1 ms to 2 s), written exactly as the
//! gateway writes them (`cluster::usage::write`), then reads `MEMORY USAGE` of one minute
//! bucket, its row set, the hour bucket and the day bucket, and the server's `used_memory`
//! before and after. Prints the measured sizes and what 48 hours (2,880 minute buckets, 48
//! hour buckets, 2 day buckets) and the default retentions come to.
//!
//! Usage: cargo run --release --example fleet-memory -- redis://127.0.0.1:PORT [MINUTES] [CONSUMERS] [APIS]
//! Use a Redis of its own on loopback: it writes keys under `fleet-memory:`.

use turnpike::cluster::usage::{write, Limits, Pending};
use turnpike::store::usage::{UsageKey, UsageTotals, MINUTE};

fn arg(n: usize, default: i64) -> i64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn info_used(c: &turnpike::cluster::Cluster) -> i64 {
    let text: String = c
        .with_conn("info", |conn| redis::cmd("INFO").arg("memory").query(conn))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn usage_of(c: &turnpike::cluster::Cluster, key: &str) -> i64 {
    c.with_conn("memory usage", |conn| {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query::<Option<i64>>(conn)
    })
    .ok()
    .flatten()
    .unwrap_or(0)
}

fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: fleet-memory redis://127.0.0.1:PORT [MINUTES] [CONSUMERS] [APIS]");
        std::process::exit(2);
    };
    let (minutes, consumers, apis) = (arg(2, 60), arg(3, 1_000), arg(4, 10));
    let cfg: turnpike::config::file::FileConfig = match toml::from_str(&format!(
        "[store]\nredis_url = \"{url}\"\nredis_prefix = \"fleet-memory:\"\nredis_timeout = \"10s\""
    )) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bad url: {e}");
            std::process::exit(2);
        }
    };
    let cluster = match turnpike::cluster::Cluster::from_config(&cfg.store) {
        Ok(Some(c)) => c,
        _ => {
            eprintln!("cannot use {url}");
            std::process::exit(2);
        }
    };
    let limits = Limits {
        minutes: 48 * 3_600,
        hours: 90 * 86_400,
        days: 400 * 86_400,
        max_series: 1_000_000,
    };
    let now = turnpike::clock::now();
    // From the top of this hour, so the hour bucket holds every minute and nothing written has
    // expired yet (a row set lives an hour after its minute).
    let first = now - now.rem_euclid(3_600);
    let before = info_used(&cluster);
    let mut pending = Pending::default();
    for m in 0..minutes {
        let minute = first + m * MINUTE;
        let mut deltas = Vec::with_capacity((consumers * apis) as usize);
        for a in 0..apis {
            for c in 0..consumers {
                let mut t = UsageTotals {
                    requests: 20,
                    bytes_in: 2_000,
                    bytes_out: 40_000,
                    ..Default::default()
                };
                for i in 0..20u64 {
                    t.latency
                        .add(1_000 + (i * i * 5_000 + (c as u64) * 13) % 2_000_000);
                }
                let key = UsageKey {
                    api: format!("api-{a:02}"),
                    version: "v1".into(),
                    consumer: format!("consumer-{c:04}"),
                    status_class: 2,
                };
                deltas.push((minute, key, t));
            }
        }
        pending.push(deltas);
        if let Err(e) = write(&cluster, &mut pending, limits) {
            eprintln!("write failed: {e}");
            std::process::exit(1);
        }
    }
    let after = info_used(&cluster);
    let prefix = "fleet-memory:usage:";
    let minute_bucket = usage_of(&cluster, &format!("{prefix}60:{first}"));
    let rows_set = usage_of(&cluster, &format!("{prefix}rows:{first}"));
    let hour_bucket = usage_of(&cluster, &format!("{prefix}3600:{first}"));
    let day_start = first - first.rem_euclid(86_400);
    let day_bucket = usage_of(&cluster, &format!("{prefix}86400:{day_start}"));
    let rows = consumers * apis;
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    println!(
        "rows per minute: {rows} ({consumers} consumers x {apis} APIs), {minutes} minutes written"
    );
    let buckets = minutes + 2;
    println!(
        "used_memory grew by {:.1} MiB: {:.2} MiB for each of the {buckets} buckets with its row set (allocator overhead included)",
        mib(after - before),
        mib(after - before) / buckets as f64
    );
    println!(
        "one minute bucket: {:.2} MiB ({:.0} bytes a row); its row set: {:.2} MiB ({:.0} bytes a row)",
        mib(minute_bucket),
        minute_bucket as f64 / rows as f64,
        mib(rows_set),
        rows_set as f64 / rows as f64
    );
    println!(
        "hour bucket: {:.2} MiB; day bucket: {:.2} MiB",
        mib(hour_bucket),
        mib(day_bucket)
    );
    // Row sets live an hour at most.
    let over_48h = 2_880 * minute_bucket + 60 * rows_set + 48 * hour_bucket + 2 * day_bucket;
    println!(
        "48 hours: 2880 x minute bucket + 60 x row set + 48 x hour + 2 x day = {:.0} MiB",
        mib(over_48h)
    );
    let steady = 2_880 * minute_bucket + 60 * rows_set + 2_160 * hour_bucket + 400 * day_bucket;
    println!(
        "default retentions (48 h minutes, 90 d hours, 400 d days), every row busy every minute: {:.0} MiB",
        mib(steady)
    );
}
