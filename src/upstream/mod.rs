//! Upstream pools: the targets of one `[upstreams.NAME]`, their load balancer
//! (pingora-load-balancing, weighted round robin or Ketama consistent hashing), their health as
//! seen by active checks (`health`) and by live traffic (`passive`), and the peer settings used
//! to connect to them. A pool outlives a config generation when its definition is unchanged.

pub mod health;
pub mod passive;

use crate::config::file::{Balance, HealthKind, UpstreamProtocol, UpstreamSection};
use foldhash::HashMap;
use futures::FutureExt;
use passive::TargetState;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

enum Lb {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

/// One upstream pool.
pub struct Pool {
    /// Shared cheaply by request records.
    pub name: Arc<str>,
    /// The definition this pool was built from; an identical one on reload reuses the pool.
    pub def: UpstreamSection,
    lb: Lb,
    /// One entry per resolved target address, in config order.
    pub targets: Vec<Arc<TargetState>>,
    by_addr: HashMap<SocketAddr, Arc<TargetState>>,
    /// Header hashed for consistent hashing, if configured that way.
    pub hash_header: Option<http::HeaderName>,
    next_check: Mutex<Instant>,
    checking: AtomicBool,
}

/// How many selector steps may be tried to find an acceptable target.
const MAX_SELECT_STEPS: usize = 256;

impl Pool {
    /// Builds a pool: resolves target names (the only DNS lookups Turnpike does) and sets up
    /// the balancer and the active health check.
    pub fn build(name: &str, def: &UpstreamSection) -> Result<Pool, String> {
        let mut backends = BTreeSet::new();
        let mut targets = Vec::new();
        let mut by_addr = HashMap::default();
        for t in &def.targets {
            let addrs: Vec<SocketAddr> = t
                .addr
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve target {}: {e}", t.addr))?
                .collect();
            if addrs.is_empty() {
                return Err(format!("target {} resolves to no address", t.addr));
            }
            for addr in addrs {
                if by_addr.contains_key(&addr) {
                    continue;
                }
                let state = Arc::new(TargetState::new(addr, t.addr.clone()));
                by_addr.insert(addr, state.clone());
                targets.push(state);
                backends.insert(Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                    weight: t.weight as usize,
                    ext: Default::default(),
                });
            }
        }
        let mut b = Backends::new(Static::new(backends));
        if let Some(hc) = health::build_check(def, &by_addr) {
            b.set_health_check(hc);
        }
        let lb = match def.balance {
            Balance::RoundRobin => Lb::RoundRobin(LoadBalancer::from_backends(b)),
            Balance::ConsistentHash => Lb::Consistent(LoadBalancer::from_backends(b)),
        };
        let updated = match &lb {
            Lb::RoundRobin(lb) => lb.update().now_or_never(),
            Lb::Consistent(lb) => lb.update().now_or_never(),
        };
        match updated {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("cannot set up the balancer: {e}")),
            None => return Err("cannot set up the balancer: discovery did not finish".into()),
        }
        let hash_header = match &def.hash_header {
            Some(h) => Some(
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("{h:?} is not a header name"))?,
            ),
            None => None,
        };
        Ok(Pool {
            name: Arc::from(name),
            def: def.clone(),
            lb,
            targets,
            by_addr,
            hash_header,
            next_check: Mutex::new(Instant::now()),
            checking: AtomicBool::new(false),
        })
    }

    pub fn uses_hash(&self) -> bool {
        self.def.balance == Balance::ConsistentHash
    }

    /// Picks a target that active checks consider healthy, that is not ejected by passive
    /// checks and that this request has not tried yet. When every healthy target is ejected,
    /// ejection is ignored rather than failing all traffic (Envoy's "panic" behaviour).
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<SocketAddr> {
        // Nothing to walk for when every target was tried (a retry in a one-target pool) or
        // fails its active checks: the balancer's walk costs a hash per step, up to
        // `MAX_SELECT_STEPS` steps. (The states mirror Pingora's health flips, set right
        // after them.)
        if self
            .targets
            .iter()
            .all(|t| tried.contains(&t.addr) || !t.active_healthy())
        {
            return None;
        }
        // One target, active-healthy and untried (checked above): the balancer could pick
        // nothing else, and ejection is ignored when every target is ejected.
        if let [only] = self.targets.as_slice() {
            return Some(only.addr);
        }
        let now = Instant::now();
        let pick = |ignore_ejection: bool| {
            let accept = |b: &Backend, healthy: bool| {
                let Some(addr) = b.addr.as_inet() else {
                    return false;
                };
                healthy
                    && !tried.contains(addr)
                    && (ignore_ejection
                        || self.by_addr.get(addr).is_none_or(|t| !t.is_ejected(now)))
            };
            let chosen = match &self.lb {
                Lb::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
                Lb::Consistent(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            };
            chosen.and_then(|b| b.addr.as_inet().copied())
        };
        pick(false).or_else(|| {
            // Ignoring ejection can only change the answer when an untried target is ejected.
            self.targets
                .iter()
                .any(|t| !tried.contains(&t.addr) && t.is_ejected(now))
                .then(|| pick(true))
                .flatten()
        })
    }

    pub fn target(&self, addr: &SocketAddr) -> Option<&Arc<TargetState>> {
        self.by_addr.get(addr)
    }

    /// A live-traffic failure of `addr` (connect error, timeout, or 5xx when configured).
    pub fn report_failure(&self, addr: &SocketAddr) {
        let p = &self.def.passive;
        if !p.enabled {
            return;
        }
        if let Some(t) = self.by_addr.get(addr) {
            if t.record_failure(p.failures, p.cooldown.0) {
                log::warn!(
                    "upstream {}: target {} ejected for {:?} after {} consecutive failures",
                    self.name,
                    t.label,
                    p.cooldown.0,
                    p.failures
                );
            }
        }
    }

    /// A live-traffic success of `addr`.
    pub fn report_success(&self, addr: &SocketAddr) {
        if let Some(t) = self.by_addr.get(addr) {
            t.record_success();
        }
    }

    /// The peer used to reach `addr`. Built the same way every time so that pooled
    /// connections are reused.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.def.connect_timeout.0);
        o.total_connection_timeout = Some(self.def.connect_timeout.0);
        o.read_timeout = Some(self.def.read_timeout.0);
        o.write_timeout = Some(self.def.write_timeout.0);
        o.idle_timeout = Some(self.def.idle_timeout.0);
        if self.def.protocol == UpstreamProtocol::H2c {
            o.alpn = ALPN::H2;
        }
        peer
    }

    /// Whether an active check is due now; marks it running if so.
    fn claim_check(&self, now: Instant) -> Option<Duration> {
        let interval = self.def.health.as_ref()?.interval.0;
        let mut next = self.next_check.lock().unwrap_or_else(|e| e.into_inner());
        if now < *next || self.checking.swap(true, Ordering::AcqRel) {
            return None;
        }
        *next = now + interval;
        Some(interval)
    }

    /// When the next active check is due (None: this pool has none).
    fn next_check_due(&self) -> Option<Instant> {
        self.def.health.as_ref()?;
        Some(*self.next_check.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn run_check(&self) {
        match &self.lb {
            Lb::RoundRobin(lb) => lb.backends().run_health_check(true).await,
            Lb::Consistent(lb) => lb.backends().run_health_check(true).await,
        }
        self.checking.store(false, Ordering::Release);
    }

    pub fn health_kind(&self) -> Option<HealthKind> {
        self.def.health.as_ref().map(|h| h.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        let def: UpstreamSection = toml::from_str(
            r#"targets = [{ addr = "127.0.0.1:1" }, { addr = "127.0.0.1:2" }]
               passive = { failures = 1, cooldown = "1m" }"#,
        )
        .expect("section");
        Pool::build("p", &def).expect("pool")
    }

    #[test]
    fn selection_skips_tried_then_ejected_targets_and_stops_when_none_is_left() {
        let p = pool();
        let [a, b] = [p.targets[0].addr, p.targets[1].addr];
        let first = p.select(b"", &[]).expect("a target");
        let other = if first == a { b } else { a };
        assert_eq!(
            p.select(b"", &[first]),
            Some(other),
            "a retry goes elsewhere"
        );
        assert_eq!(p.select(b"", &[a, b]), None, "every target tried");
        // An ejected target is left out while another is there...
        p.report_failure(&a);
        for _ in 0..8 {
            assert_eq!(p.select(b"", &[]), Some(b));
        }
        // ...and used when every untried target is ejected (panic mode).
        assert_eq!(p.select(b"", &[b]), Some(a));
        p.report_failure(&b);
        assert!(
            p.select(b"", &[]).is_some(),
            "all ejected: traffic still flows"
        );
        assert_eq!(p.select(b"", &[a, b]), None);
        // Active checks failing: an untried target that fails them is not walked for.
        p.targets[1].set_active_health(false);
        assert_eq!(p.select(b"", &[a]), None);
        p.targets[1].set_active_health(true);
        assert_eq!(p.select(b"", &[a]), Some(b));
    }
}
