//! The floors of the framework, for the load tests: the smallest Pingora 0.9.1 `ProxyHttp`s.
//!
//! - Static: answers every request with the same small JSON body from `request_filter` (no
//!   routing, no cache, no upstream, no logging). Whatever an answer through Turnpike costs, an
//!   answer written through Pingora's HTTP/1 session cannot cost less than this (the floor of the
//!   `static-respond` and `cache-hit` scenarios).
//! - Proxy (`--proxy UPSTREAM`): forwards every request to one plaintext upstream, with only
//!   `upstream_peer` implemented (the peer's defaults, upstream keep-alive): the floor of the
//!   plain-proxy scenario, the bare framework any Pingora gateway stands on.
//!
//! `loadtest/run.py` measures both in the same run as nginx and Turnpike.
//!
//! Run: `cargo run --release --example pingora-floor -- 127.0.0.1:18091 [--proxy 127.0.0.1:18081]`
//! (one worker thread, as the Turnpike load-test configs use).

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

/// The body the load-test backend answers with, so both write the same bytes.
const BODY: &[u8] = br#"{"id":42,"name":"widget","price":9.99,"tags":["a","b"]}"#;

/// `None`: answer from `request_filter`; `Some(addr)`: proxy every request to `addr`.
struct Floor {
    upstream: Option<String>,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if self.upstream.is_some() {
            return Ok(false);
        }
        let mut head = ResponseHeader::build(200, Some(2))?;
        head.insert_header("content-type", "application/json")?;
        head.insert_header("content-length", BODY.len())?;
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(BODY)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        match &self.upstream {
            Some(addr) => Ok(Box::new(HttpPeer::new(addr.as_str(), false, String::new()))),
            // Never reached: without an upstream every request is answered in `request_filter`.
            None => Error::e_explain(InternalError, "the floor program has no upstream"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, upstream) = match args.as_slice() {
        [addr] => (addr.clone(), None),
        [addr, flag, upstream] if flag == "--proxy" => (addr.clone(), Some(upstream.clone())),
        _ => {
            eprintln!("usage: pingora-floor LISTEN_ADDR [--proxy UPSTREAM_ADDR]");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Floor { upstream });
    service.add_tcp(&addr);
    server.add_service(service);
    server.run_forever();
}
