//! Flood guards per client address, on pingora-limits' count-min sketch (fixed memory,
//! over-estimates, never exact, reset by a restart): `[apis.limits] per_ip` for anonymous
//! traffic, and the failed-authentication guard of `[server.limits] auth_failures_per_ip`. The
//! windows are whole seconds, minutes or hours (pingora-limits misbehaves under 1 s).

use super::spec::RateSpec;
use pingora_limits::rate::Rate;
use std::net::IpAddr;
use std::time::Duration;

/// The unit counted: an IPv4 address, or the /64 an IPv6 address belongs to (one host
/// usually holds a whole /64, so counting /128s would be trivial to evade).
fn bucket(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => *ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

pub struct IpLimit {
    rate: Rate,
    pub spec: RateSpec,
}

impl std::fmt::Debug for IpLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpLimit").field("spec", &self.spec).finish()
    }
}

impl IpLimit {
    pub fn new(spec: RateSpec) -> IpLimit {
        IpLimit {
            rate: Rate::new(Duration::from_secs(spec.per_secs.max(1))),
            spec,
        }
    }

    /// Counts one request of `ip`; `Err(count)` when it is over the limit.
    pub fn hit(&self, ip: &IpAddr) -> Result<u64, u64> {
        let n = self.rate.observe(&bucket(ip), 1).max(0) as u64;
        if n > self.spec.count {
            Err(n)
        } else {
            Ok(n)
        }
    }

    /// Whether `ip` has already reached the limit (nothing counted).
    pub fn exhausted(&self, ip: &IpAddr) -> bool {
        self.rate.observe(&bucket(ip), 0).max(0) as u64 >= self.spec.count
    }

    /// Counts one event (a failed authentication) of `ip`.
    pub fn record(&self, ip: &IpAddr) {
        self.rate.observe(&bucket(ip), 1);
    }

    /// `RateLimit-Policy` and `RateLimit` items for this guard after `used` requests (`t` is the
    /// window length: the sketch does not know when the window started).
    pub fn headers(&self, name: &str, used: u64) -> (String, String) {
        (
            format!("\"{name}\";q={};w={}", self.spec.count, self.spec.per_secs),
            format!(
                "\"{name}\";r={};t={}",
                self.spec.count.saturating_sub(used),
                self.spec.per_secs
            ),
        )
    }
}
