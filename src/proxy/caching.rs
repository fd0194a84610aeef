//! The proxy's side of the edge cache: which requests use it, their keys, what is stored,
//! when stale copies may be served and the `X-Cache-Status` of every response of a cached
//! endpoint. Auth and plans run in `request_filter`, before any lookup: a hit is still
//! identified and counted.

use super::ctx::RequestCtx;
use super::Gateway;
use crate::cache::{key, rules};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// The response header naming the cache's part in an answer.
pub const STATUS_HEADER: &str = "X-Cache-Status";

impl Gateway {
    /// `request_cache_filter`: GET and HEAD requests to a cached endpoint use the cache; other
    /// requests to it are `BYPASS`.
    pub(super) fn enable_cache(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let Some(policy) = self.endpoint(ctx).and_then(|e| e.cache.clone()) else {
            return;
        };
        let method = &session.req_header().method;
        let usable = (method == http::Method::GET || method == http::Method::HEAD)
            && !session.is_upgrade_req();
        let max_object = policy.max_object;
        ctx.cache = Some(policy);
        if !usable {
            return;
        }
        let c = &self.shared.cache;
        session.cache.enable(
            c.storage,
            Some(crate::cache::eviction_ref(c.eviction)),
            None,
            Some(c.lock),
            Some(c.overrides()),
        );
        session.cache.set_max_file_size_bytes(max_object);
    }

    /// `cache_key_callback`.
    pub(super) fn cache_key(&self, session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
        let (Some(ep), Some(policy)) = (self.endpoint(ctx), ctx.cache.as_deref()) else {
            return Error::e_explain(ErrorType::InternalError, "no cache policy for this request");
        };
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
            .unwrap_or_default();
        let parts = key::Request {
            https: super::is_tls(session),
            host,
            target: req.raw_path(),
            headers: &req.headers,
            credential_param: ep.auth.as_ref().and_then(|a| a.query_param.as_deref()),
        };
        let consumer = ctx.flow.consumer.as_ref().map(|c| key::Who {
            id: &c.id,
            groups: c.groups_header.as_ref().map_or(&b""[..], |g| g.as_bytes()),
        });
        Ok(key::build(&parts, &ep.api, policy, consumer))
    }

    /// `response_cache_filter`.
    pub(super) fn cacheable(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &RequestCtx,
    ) -> RespCacheable {
        let Some(policy) = ctx.cache.as_deref() else {
            return RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled);
        };
        let headers = &session.req_header().headers;
        // Authorization reaches the upstream unless the API's JWT auth removes it.
        let auth = self.endpoint(ctx).and_then(|e| e.auth.as_deref());
        let authorization_forwarded = headers.contains_key(http::header::AUTHORIZATION)
            && auth.is_none_or(|a| a.forward_credentials || a.jwt.is_none());
        let fetched = rules::Fetched {
            body: ctx.had_body,
            credentials: authorization_forwarded || headers.contains_key(http::header::COOKIE),
        };
        rules::decide(policy, resp, fetched)
    }
}

/// `cache_vary_filter`: the upstream's `Vary` selects among copies.
pub(super) fn vary(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    key::variance(meta, &req.headers)
}

/// `should_serve_stale`: while one request refreshes (`None`), when the copy's
/// stale-while-revalidate window allows it; after an upstream failure, when its stale-if-error
/// window does (pingora-cache checks the windows).
pub(super) fn serve_stale(ctx: &RequestCtx, error: Option<&Error>) -> bool {
    match error {
        None => ctx.cache.is_some(),
        Some(e) => ctx.cache.is_some() && !matches!(e.esource(), ErrorSource::Downstream),
    }
}

/// `response_filter` part: the status header; the upstream's `Surrogate-Key` (purge tags) is
/// not passed on.
pub(super) fn mark_response(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    if ctx.cache.is_none() {
        return Ok(());
    }
    let label = crate::cache::status_label(&session.cache.phase(), ctx.stale_found);
    ctx.cache_status = Some(label);
    resp.insert_header(STATUS_HEADER, label)?;
    resp.remove_header("surrogate-key");
    Ok(())
}
