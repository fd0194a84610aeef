//! Zero-downtime binary upgrade through Pingora's socket handoff, under continuous load from
//! keep-alive and connection-per-request clients, with 5-second requests in flight.

mod support;

use std::time::{Duration, Instant};
use support::load::Load;
use support::upstream::Upstream;
use support::{client, Gateway, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_under_load_fails_no_request() {
    let up = Upstream::start("app").await;
    let body = format!(
        "[upstreams.app]\ntargets = [ {{ addr = \"{}\" }} ]\n\n[[apis]]\nname = \"app\"\nbase_path = \"/app\"\nupstream = \"app\"\n",
        up.addr
    );
    let mut old = Gateway::start_with("grace_period = \"15s\"\nkeepalive_drain = \"3s\"", &body);
    let c = client();
    let old_pid = old.pid();
    let load = Load::start(&old, "/app");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Requests that are in flight across the handoff.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let c = client();
            let url = old.url("/app/slow?delay_ms=5000");
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The order of systemd/turnpike.service: (config checked,) SIGQUIT the old process, which
    // offers its sockets for 5 s, then start the new binary with -u to take them.
    let started = Instant::now();
    old.signal("QUIT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut new = old.spawn_upgrade();

    // The new process serves (the admin listener moved too) while the old one drains.
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_pid = new.id();
    loop {
        let pid = match c
            .get(old.admin_url("/status"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["pid"].as_u64()),
            Err(_) => None,
        };
        if pid == Some(u64::from(new_pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new process never answered /status: {}",
            old.new_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for s in slow {
        let status = s.await.expect("task").expect("in-flight request completed");
        assert_eq!(status, 200, "in-flight requests finish on the old process");
    }
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(25)));
    assert!(
        exited.is_some(),
        "the old process exits after draining; log:\n{}",
        old.log()
    );
    let took = started.elapsed();
    // Keep the load on the new process for a moment after the old one is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = load.finish().await;
    let _ = new.kill();
    let _ = new.wait();

    let ka = &results.keep_alive;
    let pc = &results.per_connection;
    let idle = &results.idle_keep_alive;
    eprintln!(
        "upgrade took {took:?}: keep-alive clients {} ok / {} failed, connection-per-request clients {} ok / {} failed, idle keep-alive clients without retries {} ok / {} failed",
        ka.ok,
        ka.failures.len(),
        pc.ok,
        pc.failures.len(),
        idle.ok,
        idle.failures.len()
    );
    assert!(
        idle.failures.is_empty(),
        "idle keep-alive failures: {:?}",
        &idle.failures[..idle.failures.len().min(5)]
    );
    assert!(
        pc.failures.is_empty(),
        "connection-per-request failures: {:?}",
        &pc.failures[..pc.failures.len().min(5)]
    );
    assert!(
        ka.failures.is_empty(),
        "keep-alive failures: {:?}",
        &ka.failures[..ka.failures.len().min(5)]
    );
    assert!(
        ka.ok > 100 && pc.ok > 100,
        "both kinds of clients ran: {} / {}",
        ka.ok,
        pc.ok
    );
    assert_ne!(old_pid, new_pid);
}
