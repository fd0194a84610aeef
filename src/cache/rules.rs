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
//! - On consumer-scoped copies, requests with credentials are stored despite RFC 9111's
//!   `Authorization` rule: the key holds the consumer. On shared copies, an answer to a request
//!   whose `Authorization` or `Cookie` reached the upstream is stored only when the upstream
//!   allows it (`public`, `s-maxage` or `must-revalidate`): it may be that caller's answer.
//! - `Vary` naming a header the gateway sets or strips (`X-Consumer-Id`, `X-Forwarded-For`...)
//!   is not stored: the client's copy of that header is not what the upstream saw.
//! - `no-cache` answers get no stale-while-revalidate or stale-if-error window unless the
//!   upstream gives one: they are revalidated before every use.
//! - A request that carried a body is never stored (a copy may still answer it).

use super::Policy;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

const STORABLE: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The decision for one upstream response.
/// What the request that fetched an answer carried.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fetched {
    /// The request announced a body.
    pub body: bool,
    /// `Authorization` or `Cookie` reached the upstream.
    pub credentials: bool,
}

pub fn decide(policy: &Policy, resp: &ResponseHeader, fetched: Fetched) -> RespCacheable {
    decide_at(policy, resp, fetched, SystemTime::now())
}

/// Whether a `Vary` names a header the gateway sets or strips for the upstream.
fn varies_on_gateway_header(name: &str) -> bool {
    crate::headers::is_gateway_owned(&name.trim().to_ascii_lowercase())
}

fn uncacheable(why: &'static str) -> RespCacheable {
    RespCacheable::Uncacheable(NoCacheReason::Custom(why))
}

pub fn decide_at(
    policy: &Policy,
    resp: &ResponseHeader,
    fetched: Fetched,
    now: SystemTime,
) -> RespCacheable {
    if fetched.body {
        return uncacheable("request-body");
    }
    if !STORABLE.contains(&resp.status.as_u16()) {
        return uncacheable("status");
    }
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return uncacheable("set-cookie");
    }
    let mut vary = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .map(|v| v.to_str().ok())
        .flat_map(|v| v.unwrap_or("*").split(','));
    if vary.any(|n| n.trim() == "*" || varies_on_gateway_header(n)) {
        return uncacheable("vary");
    }
    let cc = CacheControl::from_resp_headers(resp);
    if cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No)
    {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let allowed_with_credentials = cc
        .as_ref()
        .is_some_and(|c| c.allow_caching_authorized_req());
    if policy.shared && fetched.credentials && !allowed_with_credentials {
        return uncacheable("credentials");
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
    // The block's windows do not apply to answers that must be revalidated before each use.
    let no_cache = cc.as_ref().is_some_and(|c| c.no_cache());
    let (block_swr, block_sie) = match no_cache {
        true => (0, 0),
        false => (policy.stale_while_revalidate, policy.stale_if_error),
    };
    let swr = cc
        .as_ref()
        .and_then(|c| c.serve_stale_while_revalidate_duration())
        .map_or(block_swr, secs);
    let sie = cc
        .as_ref()
        .and_then(|c| c.serve_stale_if_error_duration())
        .map_or(block_sie, secs);
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
        match decide_at(policy, r, Fetched::default(), now) {
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
            decide(
                &p,
                &resp(200, &[]),
                Fetched {
                    body: true,
                    credentials: false
                }
            ),
            RespCacheable::Uncacheable(_)
        ));
    }

    #[test]
    fn shared_copies_of_answers_to_credentials_need_the_upstreams_consent() {
        let shared = Policy {
            shared: true,
            ..Policy::test_default()
        };
        let creds = Fetched {
            body: false,
            credentials: true,
        };
        let cacheable = |p: &Policy, r: &ResponseHeader| {
            matches!(decide(p, r, creds), RespCacheable::Cacheable(_))
        };
        assert!(!cacheable(&shared, &resp(200, &[])));
        assert!(!cacheable(
            &shared,
            &resp(200, &[("cache-control", "max-age=60")])
        ));
        assert!(cacheable(
            &shared,
            &resp(200, &[("cache-control", "public, max-age=60")])
        ));
        assert!(cacheable(
            &shared,
            &resp(200, &[("cache-control", "s-maxage=60")])
        ));
        // A consumer's own copy is keyed by the consumer.
        assert!(cacheable(&Policy::test_default(), &resp(200, &[])));
        // Vary on a header the gateway sets is never stored.
        let p = Policy::test_default();
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("vary", "X-Consumer-Id")])),
            None
        );
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("vary", "accept, x-forwarded-for")])),
            None
        );
        assert_eq!(
            fresh_secs(&p, &resp(200, &[("vary", "Accept-Language")])),
            Some(60)
        );
    }

    #[test]
    fn stale_windows_come_from_the_upstream_or_the_block() {
        let p = Policy {
            stale_while_revalidate: 30,
            stale_if_error: 300,
            ..Policy::test_default()
        };
        let RespCacheable::Cacheable(m) = decide(&p, &resp(200, &[]), Fetched::default()) else {
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
        let RespCacheable::Cacheable(m) = decide(&p, &r, Fetched::default()) else {
            panic!("cacheable");
        };
        assert_eq!(m.stale_while_revalidate_sec(), 7);
        let r = resp(200, &[("cache-control", "max-age=5, must-revalidate")]);
        let RespCacheable::Cacheable(m) = decide(&p, &r, Fetched::default()) else {
            panic!("cacheable");
        };
        assert_eq!(
            m.stale_if_error_sec(),
            0,
            "must-revalidate forbids stale copies"
        );
        let r = resp(200, &[("cache-control", "no-cache")]);
        let RespCacheable::Cacheable(m) = decide(&p, &r, Fetched::default()) else {
            panic!("cacheable");
        };
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (0, 0),
            "no-cache is revalidated before every use"
        );
    }
}
