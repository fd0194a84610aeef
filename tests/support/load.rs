//! Bounded load from real clients while something changes under them: keep-alive clients
//! and clients that open a new connection per request, each kind counted on its own.

use super::Gateway;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Tally {
    pub ok: AtomicUsize,
    pub failures: Mutex<Vec<String>>,
}

/// What one kind of client saw.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: usize,
    pub failures: Vec<String>,
}

pub struct Results {
    pub keep_alive: Outcome,
    pub per_connection: Outcome,
    /// Raw keep-alive clients that pause between requests and never retry.
    pub idle_keep_alive: Outcome,
}

impl Results {
    /// Requests that succeeded and every failure, both kinds together.
    fn totals(&self) -> (usize, Vec<String>) {
        let mut failures = self.keep_alive.failures.clone();
        failures.extend(self.per_connection.failures.iter().cloned());
        failures.extend(self.idle_keep_alive.failures.iter().cloned());
        (
            self.keep_alive.ok + self.per_connection.ok + self.idle_keep_alive.ok,
            failures,
        )
    }

    /// Fails the test with the first failures if any request failed; returns the successes.
    pub fn assert_no_failures(&self) -> usize {
        let (ok, failures) = self.totals();
        assert!(
            failures.is_empty(),
            "{} failed requests, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        ok
    }
}

/// Two keep-alive and two connection-per-request clients looping on `path`, and sixteen raw
/// keep-alive clients that pause 100-600 ms between requests and never retry, until `finish`
/// (60 s at most). Every non-200 answer or transport error is a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    keep_alive: Arc<Tally>,
    per_connection: Arc<Tally>,
    idle_keep_alive: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(gw: &Gateway, path: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let keep_alive_tally = Arc::new(Tally::default());
        let per_connection_tally = Arc::new(Tally::default());
        let keep_alive = super::client();
        let per_connection = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client");
        let clients = [
            (keep_alive.clone(), keep_alive_tally.clone()),
            (keep_alive, keep_alive_tally.clone()),
            (per_connection.clone(), per_connection_tally.clone()),
            (per_connection, per_connection_tally.clone()),
        ];
        let mut tasks = Vec::new();
        for (i, (c, tally)) in clients.into_iter().enumerate() {
            let stop = stop.clone();
            let url = gw.url(&format!("{path}/load{i}"));
            tasks.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    let failure = match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => None,
                            Err(e) => Some(format!("client {i}: body: {e}")),
                        },
                        Ok(r) => Some(format!("client {i}: status {}", r.status())),
                        Err(e) => Some(format!("client {i}: {e:?}")),
                    };
                    match failure {
                        None => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(f) => tally.failures.lock().expect("lock").push(f),
                    }
                }
            }));
        }
        let idle_tally = Arc::new(Tally::default());
        for i in 0..16u64 {
            let (stop, tally, addr) = (stop.clone(), idle_tally.clone(), gw.addr);
            let path = format!("{path}/idle{i}");
            tasks.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                let mut conn: Option<tokio::net::TcpStream> = None;
                let mut n = i;
                while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    tokio::time::sleep(Duration::from_millis(100 + (n >> 33) % 500)).await;
                    match strict_request(&mut conn, addr, &path).await {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            conn = None;
                            tally
                                .failures
                                .lock()
                                .expect("lock")
                                .push(format!("idle client {i}: {e}"));
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            keep_alive: keep_alive_tally,
            per_connection: per_connection_tally,
            idle_keep_alive: idle_tally,
            tasks,
        }
    }

    pub async fn finish(self) -> Results {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let outcome = |t: &Tally| Outcome {
            ok: t.ok.load(Ordering::Relaxed),
            failures: t.failures.lock().expect("lock").clone(),
        };
        Results {
            keep_alive: outcome(&self.keep_alive),
            per_connection: outcome(&self.per_connection),
            idle_keep_alive: outcome(&self.idle_keep_alive),
        }
    }
}

/// One GET on a kept connection (opened if there is none), like a client without retries: a
/// connection closed under the request is a failure. Honours `Connection: close`.
async fn strict_request(
    conn: &mut Option<tokio::net::TcpStream>,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if conn.is_none() {
        *conn = Some(
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
    }
    let Some(stream) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: load\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {} bytes of the answer",
                    buf.len()
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let lower = head.to_ascii_lowercase();
                let len = lower
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return Ok((
                        head.starts_with("HTTP/1.1 200"),
                        lower.contains("connection: close"),
                    ));
                }
            }
        }
    };
    let (ok, close) = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .map_err(|_| "timed out".to_string())??;
    if close {
        *conn = None;
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "answer: {}",
            String::from_utf8_lossy(&buf).lines().next().unwrap_or("")
        ))
    }
}
