//! Which upstream responses are stored, and for how long (RFC 9111 for a shared cache, with
//! the API's cache block filling in what the upstream leaves out).
//!
//! - Only statuses that are cacheable by default (200, 203, 204, 300, 301, 308, 404, 405, 410,
//!   414, 501) are stored; anything else (206, 302, 5xx...) passes through.
//! - `Cache-Control: no-store` or `private` (and `Vary: *`) are never stored; `no-cache` is
//!   stored but revalidated before every use; `s-maxage` wins over `max-age`, which wins over
//!   `Expires`; without any of them the block's `ttl` applies.
//! - The upstream's `Age` is subtracted from the freshness and counted in the `Age` served.
//! - `Set-Cookie` responses are stored only with `store_set_cookie = true`.
//! - `stale-while-revalidate` / `stale-if-error` in Cache-Control win over the block's values.
//! - Requests with credentials are stored despite RFC 9111's `Authorization` rule: the key
//!   holds the consumer (or the operator declared the API `shared`).
//! - A request that carried a body is never stored (a copy may still answer it).

use super::Policy;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

const STORABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The decision for one upstream response.
pub fn decide(policy: &Policy, resp: &ResponseHeader, request_had_body: bool) -> RespCacheable {
    decide_at(policy, resp, request_had_body, SystemTime::now())
}

fn uncacheable(why: &'static str) -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::Custom(why))
}

pub fn decide_at(
    policy: &Policy,
    resp: &ResponseHeader,
    request_had_body: bool,
    now: SystemTime,
) -> RespCacheable {
    if request_had_body {
        return uncacheable("request-body");
    }
    if !STORABLE.contains(&resp.status.as_u16()) {
        return uncacheable("status");
    }
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return uncacheable("set-cookie");
    }
    let vary_star = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim() == "*");
    if vary_star {
        return uncacheable("vary-star");
    }
    let cc = CacheControl::from_resp_headers(resp);
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let age = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let created = now.checked_sub(age).unwrap_or(now);
    let lifetime = cc.as_ref().and_then(|c| c.fresh_duration());
    let fresh_until = match lifetime {
        Some(d) => created + d,
        None => match calculate_expires_header_time(resp) {
            Some(t) => t,
            None => created + policy.ttl,
        },
    };
    // Always stale (no-cache, max-age=0, an Expires in the past): stored, revalidated each use.
    let fresh_until = if fresh_until <= now {
        now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
    } else {
        fresh_until
    };
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let swr = cc
        .as_ref()
        .and_then(|c| c.serve_stale_while_revalidate_duration())
        .map_or(policy.stale_while_revalidate, secs);
    let sie = cc
        .as_ref()
        .and_then(|c| c.serve_stale_if_error_duration())
        .map_or(policy.stale_if_error, secs);
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("header");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("append");
        }
        r
    }

    fn fresh_secs(policy: &Policy, r: &ResponseHeader) -> Option<i64> {
        let now = SystemTime::now();
        match decide_at(policy, r, false, now) {
            RespCacheable::Cacheable(m) => Some(match m.fresh_until().duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(_) => -1,
            }),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn cache_control_variants() {
        let p = Policy::test_default();
        assert_eq!(fresh_secs(&p, &resp(200, &[])), Some(60), "the block's ttl");
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("cache-control", "max-age=10")])),
            Some(10)
        );
        assert_eq!(
            fresh_secs(
                &p,
                &resp(200, &[("cache-control", "max-age=10, s-maxage=30")])
            ),
            Some(30)
        );
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("cache-control", "no-store")])),
            None
        );
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("cache-control", "private")])),
            None
        );
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("cache-control", "no-cache")])),
            Some(-1),
            "stored, always revalidated"
        );
        assert_eq!(
            fresh_secs(
                &p,
                &resp(200, &[("cache-control", "max-age=100"), ("age", "40")])
            ),
            Some(60)
        );
        assert_eq!(
            fresh_secs(
                &p,
                &resp(200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")])
            ),
            Some(-1)
        );
        assert_eq!(fresh_secs(&p, &resp(302, &[])), None);
        assert_eq!(fresh_secs(&p, &resp(500, &[])), None);
        assert_eq!(fresh_secs(&p, &resp(404, &[])), Some(60));
        assert_eq!(fresh_secs(&p, &resp(200, &[("vary", "accept, *")])), None);
        assert_eq!(fresh_secs(&p, &resp(200, &[("set-cookie", "s=1")])), None);
        let cookies = Policy {
            store_set_cookie: true,
            ..Policy::test_default()
        };
        assert_eq!(
            fresh_secs(&cookies, &resp(200, &[("set-cookie", "s=1")])),
            Some(60)
        );
        assert!(matches!(
            decide(&p, &resp(200, &[]), true),
            RespCacheable::Uncacheable(_)
        ));
    }

    #[test]
    fn stale_windows_come_from_the_upstream_or_the_block() {
        let p = Policy {
            stale_while_revalidate: 30,
            stale_if_error: 300,
            ..Policy::test_default()
        };
        let RespCacheable::Cacheable(m) = decide(&p, &resp(200, &[]), false) else {
            panic!("cacheable");
        };
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (30, 300)
        );
        let r = resp(
            200,
            &[("cache-control", "max-age=5, stale-while-revalidate=7")],
        );
        let RespCacheable::Cacheable(m) = decide(&p, &r, false) else {
            panic!("cacheable");
        };
        assert_eq!(m.stale_while_revalidate_sec(), 7);
        let r = resp(200, &[("cache-control", "max-age=5, must-revalidate")]);
        let RespCacheable::Cacheable(m) = decide(&p, &r, false) else {
            panic!("cacheable");
        };
        assert_eq!(
            m.stale_if_error_sec(),
            0,
            "must-revalidate forbids stale copies"
        );
    }
}
