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
        if ctx.flow.json.is_none() {
            return Ok(());
        }
        crate::policy::run::response_body(&mut ctx.flow, body, end_of_stream).map_err(|why| {
            // The head is sent: the answer is cut off rather than sent unedited.
            Error::explain(ErrorType::InternalError, why)
        })
    }
}
