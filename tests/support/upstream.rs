//! A real HTTP upstream on an ephemeral loopback port (hyper, HTTP/1.1 and h2c). It counts
//! requests and accepted connections, records the last request, and can be made slow,
//! failing, unhealthy or stopped. Query parameters steer single requests:
//! `delay_ms=N` (or the header `x-test-delay-ms: N`) waits before answering, `status=N` answers
//! with that status, `filler_kib=N` adds N response headers of 1 KiB each. The request
//! header `x-test-respond: Name=value|Name2=value2` adds response headers (for cache tests);
//! with an `ETag` among them, a matching `If-None-Match` gets 304. JSON bodies carry `n`, the
//! upstream's request count when it answered.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: usize,
    /// The body, when it is at most 2 MiB.
    pub body: Option<Bytes>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Default)]
pub struct Counters {
    pub hits: AtomicUsize,
    pub health_hits: AtomicUsize,
    pub connections: AtomicUsize,
    pub healthy: AtomicBool,
    pub fail_5xx: AtomicBool,
    pub last: Mutex<Option<Seen>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(name, listener)
    }

    /// Starts on a given address (to bring a stopped upstream back).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("rebind upstream");
        Self::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let counters = Arc::new(Counters::default());
        counters.healthy.store(true, Ordering::SeqCst);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let c = counters.clone();
        let label = name.to_string();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        c.connections.fetch_add(1, Ordering::SeqCst);
                        let c = c.clone();
                        let label = label.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(req, c.clone(), label.clone()));
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
            conns.abort_all();
        });
        Upstream {
            addr,
            name: name.to_string(),
            counters,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn hits(&self) -> usize {
        self.counters.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Option<Seen> {
        self.counters.last.lock().ok().and_then(|l| l.clone())
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.counters.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Every non-health request answers 500 while set.
    pub fn set_failing(&self, failing: bool) {
        self.counters.fail_5xx.store(failing, Ordering::SeqCst);
    }

    /// Closes the listener and every connection.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn query_param(uri: &hyper::Uri, key: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

async fn handle(
    req: Request<Incoming>,
    c: Arc<Counters>,
    name: String,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/healthz" {
        c.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = if c.healthy.load(Ordering::SeqCst) {
            200
        } else {
            503
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap_or_default());
    }
    let n = c.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let uri = req.uri().clone();
    let extra: Vec<(String, String)> = req
        .headers()
        .get("x-test-respond")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split('|')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let etag = extra
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    let not_modified = etag.is_some()
        && req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            == etag.as_deref();
    let method = req.method().to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let body = req.into_body().collect().await?.to_bytes();
    let seen = Seen {
        method: method.clone(),
        uri: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body_len: body.len(),
        body: (body.len() <= 2 << 20).then(|| body.clone()),
    };
    if let Ok(mut last) = c.last.lock() {
        *last = Some(seen.clone());
    }
    let header_delay = seen
        .header("x-test-delay-ms")
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = query_param(&uri, "delay_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .or(header_delay)
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = if c.fail_5xx.load(Ordering::SeqCst) {
        500
    } else {
        query_param(&uri, "status")
            .and_then(|v| v.parse::<u16>().ok())
            .unwrap_or(200)
    };
    let size = query_param(&uri, "size").and_then(|v| v.parse::<usize>().ok());
    let body = match size {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(
            serde_json::json!({
                "n": n,
                "upstream": name,
                "method": method,
                "uri": seen.uri,
                "body_len": seen.body_len,
                "headers": seen.headers,
            })
            .to_string(),
        ),
    };
    let (status, body) = if not_modified && status == 200 {
        (304, Bytes::new())
    } else {
        (status, body)
    };
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name);
    for (k, v) in &extra {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let filler = query_param(&uri, "filler_kib").and_then(|v| v.parse::<usize>().ok());
    for i in 0..filler.unwrap_or(0) {
        resp = resp.header(format!("x-filler-{i}"), "f".repeat(1000));
    }
    Ok(resp.body(Full::new(body)).unwrap_or_default())
}
