//! HTTP/2 client connections: the loop that accepts their streams, and the budget of streams a
//! client may reset before the connection is closed.
//!
//! Pingora's own loop hands every stream to the proxy, even one the client cancelled in the
//! same packet that opened it, and nothing counts cancellations: a client that opens and at
//! once resets streams (the "rapid reset" attack, CVE-2023-44487) makes the gateway start
//! upstream requests as fast as it can write frames, while the concurrent-stream limit never
//! applies. This loop differs in two ways:
//! - a stream that is already reset when it is accepted is dropped, never forwarded;
//! - the connection's read side counts the client's RST_STREAM frames ([`FrameCounter`]),
//!   whatever the stream and whenever they come (before or after the stream was forwarded);
//!   more than `[server.limits] h2_max_resets` of them within [`RESET_WINDOW`] (a token bucket
//!   that refills at that pace) end the connection with GOAWAY(ENHANCE_YOUR_CALM), as nginx,
//!   Envoy and the h2 crate bound resets. A rate, not a share of the streams: a client cannot
//!   buy resets by also sending cheap requests. A browser that cancels now and then stays far
//!   below it.

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Streams rejected as malformed by Pingora's checks before the connection is closed.
const MAX_MALFORMED_STREAMS: usize = 32;

/// The window over which `h2_max_resets` resets are allowed.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

/// The reset budget of one connection: counts for the log, and the signal to close.
#[derive(Debug)]
pub struct ResetBudget {
    /// Resets allowed within `RESET_WINDOW` (0: no budget).
    max: u32,
    opened: AtomicU32,
    resets: AtomicU32,
    tripped: AtomicBool,
    notify: Notify,
}

impl ResetBudget {
    pub fn new(max: u32) -> Arc<ResetBudget> {
        Arc::new(ResetBudget {
            max,
            opened: AtomicU32::new(0),
            resets: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Adds what one read of the connection carried.
    fn add(&self, opened: u32, resets: u32) {
        self.opened.fetch_add(opened, Ordering::Relaxed);
        self.resets.fetch_add(resets, Ordering::Relaxed);
    }

    /// The budget is spent: the connection is to be closed.
    fn trip(&self) {
        if !self.tripped.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    /// Resolves once the budget is spent.
    async fn spent(&self) {
        self.notify.notified().await
    }

    fn counts(&self) -> (u32, u32) {
        (
            self.opened.load(Ordering::Relaxed),
            self.resets.load(Ordering::Relaxed),
        )
    }
}

/// Follows the frames a client sends (after the 24-byte preface) across reads, counting
/// RST_STREAM frames and HEADERS frames that open a new stream. It only reads the 9-byte
/// frame headers; payloads are skipped.
#[derive(Debug)]
pub struct FrameCounter {
    budget: Arc<ResetBudget>,
    /// Resets still allowed now (a token bucket refilled at `max` per `RESET_WINDOW`), and
    /// when it was last refilled. Only the connection's reader touches it.
    tokens: f64,
    refilled: std::time::Instant,
    preface_left: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    head: [u8; 9],
    have: usize,
    highest_stream: u32,
}

impl FrameCounter {
    pub fn new(budget: Arc<ResetBudget>) -> FrameCounter {
        FrameCounter {
            tokens: f64::from(budget.max),
            refilled: std::time::Instant::now(),
            budget,
            preface_left: 24,
            skip: 0,
            head: [0; 9],
            have: 0,
            highest_stream: 0,
        }
    }

    /// Whether the client's preface has been received whole.
    pub fn past_preface(&self) -> bool {
        self.preface_left == 0
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        let (mut opened, mut resets) = (0, 0);
        let n = self.preface_left.min(bytes.len());
        self.preface_left -= n;
        bytes = &bytes[n..];
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = self.head;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            match h[3] {
                0x1 if stream > self.highest_stream => {
                    self.highest_stream = stream;
                    opened += 1;
                }
                0x3 => resets += 1,
                _ => {}
            }
        }
        if opened > 0 || resets > 0 {
            self.budget.add(opened, resets);
        }
        if resets > 0 && self.budget.max > 0 {
            self.spend(resets, std::time::Instant::now());
        }
    }

    /// Takes `resets` from the bucket at `now`; trips the budget when it runs dry.
    fn spend(&mut self, resets: u32, now: std::time::Instant) {
        let max = f64::from(self.budget.max);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * max / RESET_WINDOW.as_secs_f64()).min(max);
        self.tokens -= f64::from(resets);
        if self.tokens < 0.0 {
            self.budget.trip();
        }
    }
}

/// Streams being served, to tell a busy connection from an idle one.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> ActiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.clone())
    }

    /// Resolves once no stream has been served for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        while self.count.load(Ordering::Acquire) != 0 {
            self.idle.notified().await;
        }
        tokio::time::sleep(timeout).await;
    }
}

/// Serves an HTTP/2 connection: the handshake, then each stream the client opens through
/// `app`, until the client closes, the connection is idle for `h2_idle_timeout`, the process
/// shuts down (GOAWAY, streams in flight finish) or the reset budget is spent.
pub async fn serve<A>(
    app: Arc<A>,
    stream: Stream,
    budget: Arc<ResetBudget>,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let peer = digest
        .socket_digest
        .as_ref()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_default();
    let idle_timeout = app.server_options().and_then(|o| o.h2_idle_timeout);
    let mut conn = match handshake(stream, app.h2_options()).await {
        Ok(c) => c,
        Err(e) => {
            log::debug!("HTTP/2 handshake with {peer} failed: {e}");
            return;
        }
    };
    let active = Arc::new(Active::default());
    let mut shutdown = shutdown.clone();
    let mut closing = false;
    let mut malformed = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = budget.spent() => {
                let (opened, resets) = budget.counts();
                log::info!(
                    "HTTP/2 client {peer} reset {resets} of {opened} streams, over h2_max_resets ({}) in {:?}: connection closed with ENHANCE_YOUR_CALM",
                    budget.max,
                    RESET_WINDOW
                );
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                // Drive the connection until the GOAWAY is written and it closes.
                let drain = async {
                    while let Ok(Some(_)) = HttpSession::from_h2_conn(&mut conn, digest.clone()).await {}
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                return;
            }
            changed = shutdown.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    conn.graceful_shutdown();
                }
                continue;
            }
            s = HttpSession::from_h2_conn(&mut conn, digest.clone()) => s,
            _ = active.idle_for(idle_timeout.unwrap_or_default()), if idle_timeout.is_some() && !closing => return,
        };
        let mut session = match accepted {
            Ok(Some(H2Accept::Session(s))) => s,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MAX_MALFORMED_STREAMS {
                    log::debug!("HTTP/2 client {peer} sent {malformed} malformed requests: closed");
                    return;
                }
                continue;
            }
            Ok(None) => return,
            Err(e) => {
                log::debug!("HTTP/2 connection with {peer} ended: {e}");
                return;
            }
        };
        // Cancelled (or the connection failed) before anything was done for it: nothing to
        // forward, nothing to answer.
        if futures::FutureExt::now_or_never(session.idle()).is_some() {
            continue;
        }
        let guard = active.start();
        let app = app.clone();
        let shutdown = shutdown.clone();
        // Like Pingora's own loop: on the current runtime's handle, so that with
        // `work_stealing = false` streams spread over the worker threads.
        pingora_runtime::current_handle().spawn(async move {
            let _guard = guard;
            app.process_new_http(ServerSession::new_http2(session), &shutdown)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_counted_wherever_reads_split_them() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6]));
        for id in (1..=9).step_by(2) {
            bytes.extend(frame(0x1, id, &[0x82, 0x86, 0x84, 0x03]));
            bytes.extend(frame(0x3, id, &[0, 0, 0, 8]));
        }
        // A DATA frame whose payload looks like a RST_STREAM header, and a HEADERS frame on
        // an old stream (trailers) which opens nothing.
        bytes.extend(frame(0x0, 9, &frame(0x3, 9, &[0, 0, 0, 8])));
        bytes.extend(frame(0x1, 3, &[0x82]));
        for split in [1, 5, 9, 17, 24, 30, bytes.len()] {
            let budget = ResetBudget::new(0);
            let mut c = FrameCounter::new(budget.clone());
            for chunk in bytes.chunks(split) {
                c.feed(chunk);
            }
            assert!(c.past_preface());
            assert_eq!(budget.counts(), (5, 5), "reads of {split} bytes");
        }
    }

    #[test]
    fn the_budget_is_a_rate_of_resets() {
        let tripped = |b: &ResetBudget| b.tripped.load(Ordering::Acquire);
        let t0 = std::time::Instant::now();
        let b = ResetBudget::new(100);
        let mut c = FrameCounter::new(b.clone());
        c.refilled = t0;
        c.spend(100, t0);
        assert!(!tripped(&b), "100 at once is within the budget");
        // 10 per second is the pace the bucket refills at: sustainable for ever.
        for s in 1..=60 {
            c.spend(10, t0 + Duration::from_secs(s));
        }
        assert!(!tripped(&b));
        c.spend(11, t0 + Duration::from_secs(61));
        assert!(tripped(&b), "faster than 100 per 10 s");
        // However many cheap streams come with them.
        let b = ResetBudget::new(100);
        let mut c = FrameCounter::new(b.clone());
        b.add(1_000_000, 0);
        c.spend(101, std::time::Instant::now());
        assert!(tripped(&b));
        let off = ResetBudget::new(0);
        let mut c = FrameCounter::new(off.clone());
        let mut frames = Vec::new();
        for id in (1..2000).step_by(2) {
            frames.extend(frame(0x3, id, &[0, 0, 0, 8]));
        }
        c.feed(&[0u8; 24]);
        c.feed(&frames);
        assert!(!tripped(&off), "0 turns the budget off");
    }
}
