//! Connection-level abuse against the real binary (shared/design/hostile-inputs.md, "HTTP/2"
//! and "Slow and greedy clients"): HTTP/2 rapid reset written as raw frames, silent and
//! one-byte clients on a listener that also speaks h2c, and a flood of idle connections
//! against the connection cap.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(up: &Upstream) -> String {
    format!(
        r#"
[upstreams.app]
targets = [ {{ addr = "{}" }} ]

[[apis]]
name = "app"
base_path = "/app"
upstream = "app"

[[apis.routes]]
path = "/echo"
methods = ["GET"]
"#,
        up.addr
    )
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS (END_STREAM | END_HEADERS) for `GET http://x/app/echo`, HPACK without Huffman:
/// indexed :method GET and :scheme http, literal :path and :authority with indexed names.
fn get_headers(stream: u32) -> Vec<u8> {
    let path = b"/app/echo";
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 1, b'x']);
    frame(0x1, 0x5, stream, &block)
}

/// RST_STREAM(CANCEL).
fn cancel(stream: u32) -> Vec<u8> {
    frame(0x3, 0, stream, &8u32.to_be_bytes())
}

/// The client preface, SETTINGS with large windows, and a connection WINDOW_UPDATE, so that
/// answers never wait on flow control (this client reads but never acknowledges).
fn hello() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    let mut settings = vec![0, 4];
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(frame(0x4, 0, 0, &settings));
    out.extend(frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    out
}

/// Reads frames until the connection closes, noting the GOAWAY error code, if one came, and
/// counting the answers that ended (END_STREAM on HEADERS or DATA).
async fn read_until_closed(
    mut r: tokio::net::tcp::OwnedReadHalf,
    goaway: Arc<AtomicU32>,
    answered: Arc<AtomicU32>,
) {
    let mut head = [0u8; 9];
    loop {
        if r.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            return;
        }
        if head[3] <= 0x1 && head[4] & 0x1 != 0 {
            answered.fetch_add(1, Ordering::SeqCst);
        }
        if head[3] == 0x7 && len >= 8 {
            let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
            goaway.store(code, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_in_goaway_and_cancelled_streams_never_reach_the_upstream() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with("h2c = true", &config(&up));
    let conn = TcpStream::connect(gw.addr).await.expect("connect");
    let (r, mut w) = conn.into_split();
    let goaway = Arc::new(AtomicU32::new(u32::MAX));
    let answered = Arc::new(AtomicU32::new(0));
    let reader = tokio::spawn(read_until_closed(r, goaway.clone(), answered.clone()));
    w.write_all(&hello()).await.expect("preface");

    // 100 opened-and-cancelled streams per write, as the attack does, up to 10,000.
    let mut next = 1u32;
    let mut sent = 0;
    let started = Instant::now();
    while sent < 10_000 && started.elapsed() < Duration::from_secs(10) {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(get_headers(next));
            batch.extend(cancel(next));
            next += 2;
        }
        if w.write_all(&batch).await.is_err() || reader.is_finished() {
            break;
        }
        sent += 100;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the gateway closes the connection")
        .expect("reader");
    let code = goaway.load(Ordering::SeqCst);
    println!(
        "streams sent before the close: {sent}; upstream requests {}, connections {}; GOAWAY {code:#x}",
        up.hits(),
        up.connections()
    );
    assert_eq!(code, 0xb, "GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(
        sent < 5_000,
        "the connection was closed early: {sent} streams"
    );
    assert!(
        up.hits() < 20,
        "cancelled streams reached the upstream: {}",
        up.hits()
    );
    assert!(
        up.connections() <= 2,
        "{} upstream connections",
        up.connections()
    );
    // The GOAWAY comes from the reset budget, or under load (when the accept loop lags) from
    // the h2 library's own bound on streams reset before they were accepted: both are 0xb.

    // Other clients are served, over HTTP/2 and HTTP/1.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = h2
        .get(gw.url("/app/echo"))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let r = support::client()
        .get(gw.url("/app/echo"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_cancels_now_and_then_keeps_its_connection() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with("h2c = true", &config(&up));
    let conn = TcpStream::connect(gw.addr).await.expect("connect");
    let (r, mut w) = conn.into_split();
    let goaway = Arc::new(AtomicU32::new(u32::MAX));
    let answered = Arc::new(AtomicU32::new(0));
    let reader = tokio::spawn(read_until_closed(r, goaway.clone(), answered.clone()));
    w.write_all(&hello()).await.expect("preface");
    // 600 requests, one in four cancelled at once: 150 resets, a quarter of the streams.
    let mut next = 1u32;
    for round in 0..6 {
        let mut batch = Vec::new();
        for i in 0..100 {
            batch.extend(get_headers(next));
            if i % 4 == 0 {
                batch.extend(cancel(next));
            }
            next += 2;
        }
        w.write_all(&batch).await.expect("write");
        // Let the answers come back (at most 100 streams at once).
        let deadline = Instant::now() + Duration::from_secs(10);
        while answered.load(Ordering::SeqCst) < (round + 1) * 75 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        up.hits(),
        450,
        "every stream that was not cancelled was forwarded"
    );
    assert!(!reader.is_finished(), "the connection is still open");
    assert_eq!(goaway.load(Ordering::SeqCst), u32::MAX, "no GOAWAY");
}

/// Opens a connection that sends `bytes` (perhaps nothing) and then waits; how long until the
/// gateway closed it, and what it answered.
async fn silent_client(addr: SocketAddr, bytes: &'static [u8]) -> (Duration, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if !bytes.is_empty() {
        s.write_all(bytes).await.expect("write");
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still open after 20 s ({bytes:?})");
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_one_byte_clients_on_an_h2c_listener_are_closed_in_time() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "h2c = true\n[server.limits]\nidle_before_request = \"2s\"\nhead_timeout = \"3s\"",
        &config(&up),
    );
    let kinds: [&'static [u8]; 4] = [b"", b"G", b"GET /app/echo HT", b"PRI * HTTP/2.0\r\n"];
    let mut tasks = Vec::new();
    for i in 0..200 {
        let kind = kinds[i % kinds.len()];
        tasks.push((kind, tokio::spawn(silent_client(gw.addr, kind))));
    }
    for (kind, t) in tasks {
        let (took, answer) = t.await.expect("client");
        let label = String::from_utf8_lossy(kind);
        match kind {
            b"" => {
                assert!(
                    took >= Duration::from_millis(1900),
                    "{label:?} closed at {took:?}"
                );
                assert!(
                    took < Duration::from_secs(6),
                    "{label:?} closed at {took:?}"
                );
                assert_eq!(answer, "", "nothing asked, nothing answered");
            }
            b"G" | b"GET /app/echo HT" => {
                assert!(
                    took >= Duration::from_millis(2900),
                    "{label:?} closed at {took:?}"
                );
                assert!(
                    took < Duration::from_secs(7),
                    "{label:?} closed at {took:?}"
                );
                assert!(answer.starts_with("HTTP/1.1 408"), "{label:?}: {answer}");
                assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
            }
            _ => {
                assert!(
                    took >= Duration::from_millis(2900),
                    "{label:?} closed at {took:?}"
                );
                assert!(
                    took < Duration::from_secs(7),
                    "{label:?} closed at {took:?}"
                );
            }
        }
    }
    assert_eq!(up.hits(), 0);
    let r = support::client()
        .get(gw.url("/app/echo"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_cap_are_closed_and_health_still_answers() {
    let up = Upstream::start("app").await;
    // An open-file limit of 1,400: the automatic cap is 1,050 client connections.
    let gw = Gateway::start_with_nofile(
        1400,
        "[server.limits]\nidle_before_request = \"60s\"",
        &config(&up),
    );
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = support::client();
    let r = client
        .get(gw.url("/app/echo"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "a request next to 1,000 idle connections");
    let health = client
        .get(gw.admin_url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);

    // 450 more: without a cap the process would run out of descriptors (and /health with it).
    let mut more = Vec::new();
    for _ in 0..450 {
        if let Ok(s) = TcpStream::connect(gw.addr).await {
            more.push(s);
        }
    }
    let mut closed = 0;
    for s in &mut more {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed += 1;
        }
    }
    let health = client
        .get(gw.admin_url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200, "the admin listener still answers");
    let (status, _) = support::admin(&gw, "GET", "/status", None).await;
    assert_eq!(status, 200);
    let text = client
        .get(gw.admin_url("/metrics"))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let refused = metric(&text, "turnpike_connections_refused_total");
    let open = metric(&text, "turnpike_connections_open");
    println!("closed at once: {closed}, refused: {refused}, open: {open}");
    assert!(
        closed >= 350,
        "connections over the cap closed at once: {closed}"
    );
    assert!(refused >= 350.0, "{refused}");
    assert!(open <= 1050.0, "{open}");
    assert!(gw.log().contains("max_connections (1050)"));
    drop(idle);
    drop(more);
}
