//! The answer to a proxied or cached request on its way to the client: the request id, the
//! cache's status, the policies' answer headers (RateLimit fields, CORS) and the Response
//! stage (header edits, `json_fields` body edits).

use super::ctx::RequestCtx;
use super::{caching, Gateway};
use crate::reply::Code;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

impl Gateway {
    /// The whole `response_filter`.
    pub(super) fn on_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header("X-Request-Id", ctx.request_id.header())?;
        caching::mark_response(session, resp, ctx)?;
        crate::policy::run::answer_headers(&ctx.flow, resp)?;
        let snapshot = ctx.snapshot.clone();
        let Some(ep) = ctx.endpoint.and_then(|i| snapshot.endpoints.get(i)) else {
            return Ok(());
        };
        let req = session.req_header();
        // Bodies are edited only where one follows: not for HEAD, an upgrade, or 1xx.
        let body_follows = req.method != http::Method::HEAD && resp.status.as_u16() >= 200;
        // (Informational answers come before the one that is checked.)
        if ctx.flow.contract.response.is_some() && resp.status.as_u16() >= 200 {
            // A sampled answer is checked against the contract as the upstream gave it (an
            // encoded body by its status and type only).
            let header = |n: http::HeaderName| {
                resp.headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let encoded = header(http::header::CONTENT_ENCODING)
                .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
            ctx.answer_head = Some((resp.status.as_u16(), header(http::header::CONTENT_TYPE)));
            ctx.answer_body = (body_follows && !encoded).then(bytes::BytesMut::new);
            if !body_follows {
                let (status, ct) = ctx.answer_head.take().unwrap_or_default();
                super::contract::check_answer(ctx, ep, &None, true, status, ct.as_deref(), 0);
            }
        }
        let raw = req.raw_path();
        let path = &raw[..raw.iter().position(|&b| b == b'?').unwrap_or(raw.len())];
        let edited = crate::policy::run::response(
            &ep.chain,
            &mut ctx.flow,
            &ctx.request_id,
            ctx.client_ip,
            path,
            resp,
            body_follows,
        );
        if let Err(mut refusal) = edited {
            ctx.fail = Some(Code::UneditableResponse);
            ctx.refused_by = refusal.by.take();
            return Error::e_explain(ErrorType::HTTPStatus(502), refusal.detail);
        }
        // (An HTTP/1.0 client cannot read chunks: its answer ends with the connection.)
        let chunked = session.req_header().version >= http::Version::HTTP_11;
        if ctx.flow.json.is_some() && !session.is_http2() && chunked {
            // The edited body has a new length: chunked, so the connection stays open (Pingora
            // chose the framing before this hook).
            resp.set_version(http::Version::HTTP_11);
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    /// The whole `response_body_filter`.
    pub(super) fn on_response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.answer_head.is_some() {
            let snapshot = ctx.snapshot.clone();
            if let Some((ep, v)) = ctx
                .endpoint
                .and_then(|i| snapshot.endpoints.get(i))
                .and_then(|ep| Some((ep, ep.chain.validation()?)))
            {
                let (status, ct) = ctx.answer_head.clone().unwrap_or_default();
                if end_of_stream {
                    ctx.answer_head = None;
                }
                super::contract::check_answer(
                    ctx,
                    ep,
                    body,
                    end_of_stream,
                    status,
                    ct.as_deref(),
                    v.max_body,
                );
            }
        }
        if ctx.flow.json.is_none() {
            return Ok(());
        }
        crate::policy::run::response_body(&mut ctx.flow, body, end_of_stream).map_err(|why| {
            // The head is sent: the answer is cut off rather than sent unedited.
            Error::explain(ErrorType::InternalError, why)
        })
    }
}
