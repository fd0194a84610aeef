//! A webhook receiver on an ephemeral loopback port: reads each POST (head, then
//! Content-Length bytes of body), answers 503 to the first `fail_first` of them and 204 to the
//! rest, and keeps the JSON body and the headers of every POST it answered 204.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One delivered POST.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    /// When it arrived.
    pub at: std::time::Instant,
}

pub struct Hook {
    pub addr: SocketAddr,
    delivered: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    pub async fn start(fail_first: usize) -> Hook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let kept = delivered.clone();
        let task = tokio::spawn(async move {
            let mut posts = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let got = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let headers: BTreeMap<String, String> = text[..end]
                            .lines()
                            .skip(1)
                            .filter_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            })
                            .collect();
                        let len = headers
                            .get("content-length")
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break Some((headers, buf[end + 4..end + 4 + len].to_vec()));
                        }
                    }
                };
                let Some((headers, body)) = got else { continue };
                posts += 1;
                let answer: &[u8] = if posts <= fail_first {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
                if posts > fail_first {
                    let json = serde_json::from_slice(&body).unwrap_or_default();
                    kept.lock().expect("lock").push(Delivery {
                        headers,
                        body,
                        json,
                        at: std::time::Instant::now(),
                    });
                }
            }
        });
        Hook {
            addr,
            delivered,
            task,
        }
    }

    /// The POSTs answered 204 so far.
    pub fn delivered(&self) -> Vec<Delivery> {
        self.delivered.lock().expect("lock").clone()
    }

    /// Their JSON bodies.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.delivered().into_iter().map(|d| d.json).collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
