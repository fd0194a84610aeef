//! The floor of the framework, for the load tests: the smallest Pingora 0.9.1 `ProxyHttp` that
//! answers every request with the same small JSON body from `request_filter` (no routing, no
//! cache, no upstream, no logging). Whatever an answer through Turnpike costs, an answer written
//! through Pingora's HTTP/1 session cannot cost less than this; `loadtest/run.py` measures it in
//! the same run as nginx and Turnpike for the `static-respond` and `cache-hit` scenarios.
//!
//! Run: `cargo run --release --example pingora-floor -- 127.0.0.1:18091` (one worker thread, as
//! the Turnpike load-test configs use).

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

/// The body the load-test backend answers with, so both write the same bytes.
const BODY: &[u8] = br#"{"id":42,"name":"widget","price":9.99,"tags":["a","b"]}"#;

struct Floor;

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
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
        // Never reached: every request is answered in `request_filter`.
        Error::e_explain(InternalError, "the floor program has no upstream")
    }
}

fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: pingora-floor LISTEN_ADDR (e.g. 127.0.0.1:18091)");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Floor);
    service.add_tcp(&addr);
    server.add_service(service);
    server.run_forever();
}
