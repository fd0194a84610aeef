//! TLS termination with HTTP/2 by ALPN, WebSocket pass-through, and gRPC (HTTP/2 with
//! trailers) pass-through to an h2c upstream.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use support::upstream::Upstream;
use support::{free_port, Gateway};

fn api(up: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.app]
targets = [ {{ addr = "{up}" }} ]
{extra}

[[apis]]
name = "app"
base_path = "/app"
upstream = "app"
strip_base_path = true
"#
    )
}

/// A gateway with a TLS listener (a self-signed certificate for localhost) in front of `up`;
/// the certificate and the TLS port.
fn tls_gateway(
    up: &Upstream,
    server_extra: &str,
) -> (Gateway, rcgen::Certificate, u16, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let cert_path = certs.path().join("cert.pem");
    let key_path = certs.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let tls_port = free_port();
    let body = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert_path.display(),
        key_path.display(),
        api(&up.addr.to_string(), "")
    );
    let gw = Gateway::start_with(server_extra, &body);
    (gw, cert, tls_port, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_tls_clients_are_closed_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("app").await;
    let (gw, _, tls_port, _certs) = tls_gateway(
        &up,
        "[server.limits]\nidle_before_request = \"2s\"\nhead_timeout = \"3s\"",
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    // Nothing at all; the first bytes of a ClientHello record and then nothing.
    let cases: [(&[u8], u64); 2] = [(b"", 2), (&[22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3], 3)];
    let mut tasks = Vec::new();
    for (bytes, secs) in cases {
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(bytes).await.expect("write");
            let mut sink = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut sink)).await;
            assert!(read.is_ok(), "still open after 20 s");
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(secs * 1000 - 100),
                "closed at {took:?}"
            );
            assert!(
                took < Duration::from_secs(secs + 4),
                "closed at {took:?} (Pingora's own bound is 60 s)"
            );
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_in_flight_count_against_the_connection_cap() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start("app").await;
    let (gw, _, tls_port, _certs) = tls_gateway(
        &up,
        "[server.limits]\nmax_connections = 5\nidle_before_request = \"30s\"",
    );
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], tls_port));
    // Five connections that never finish (here: never start) their handshake fill the cap.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(tls).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for addr in [tls, gw.addr] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{addr}: closed at once, got {read:?}"
        );
    }
    // Their slots come back as soon as they go.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = support::client()
        .get(gw.url("/app/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_termination_with_http2_by_alpn() {
    let up = Upstream::start("app").await;
    let (_gw, cert, tls_port, _certs) = tls_gateway(&up, "");
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("pem"))
        .resolve("localhost", ([127, 0, 0, 1], tls_port).into())
        .build()
        .expect("client");
    for _ in 0..3 {
        let r = client
            .get(format!("https://localhost:{tls_port}/app/x"))
            .send()
            .await
            .expect("https request");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.version(),
            reqwest::Version::HTTP_2,
            "h2 negotiated by ALPN"
        );
        assert!(r.headers().contains_key("x-request-id"));
    }
    let seen = up.last().expect("upstream saw it");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.uri, "/x");
    // Errors over h2 are problem+json too.
    let r = client
        .get(format!("https://localhost:{tls_port}/nope"))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 404);
    support::problem(&r.text().await.expect("body"), 404, "route_not_found");
}

async fn ws_echo_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let echo = ws_echo_server().await;
    // A small body limit: WebSocket frames are not a request body and are not counted.
    let gw = Gateway::start(&format!(
        "{}max_body = \"1KiB\"\n",
        api(&echo.to_string(), "read_timeout = \"30s\"")
    ));
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/app/chat", gw.addr))
        .await
        .expect("websocket upgrade through the gateway");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let text = format!("hello {i} {}", "w".repeat(600));
        ws.send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .expect("send");
        let back = ws.next().await.expect("a reply").expect("frame");
        assert_eq!(back.into_text().expect("text").as_str(), text);
    }
    // Quiet for longer than nothing at all: the head deadline does not apply to upgraded streams.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "after a pause",
    ))
    .await
    .expect("send");
    assert_eq!(
        ws.next()
            .await
            .expect("reply")
            .expect("frame")
            .into_text()
            .expect("text")
            .as_str(),
        "after a pause"
    );
}

/// An h2c server that answers like a gRPC service: a body, then `grpc-status` trailers.
async fn grpc_like_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut trailers = hyper::HeaderMap::new();
                        trailers
                            .insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                        trailers.insert(
                            "grpc-message",
                            hyper::header::HeaderValue::from_static("ok"),
                        );
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!(
                                "{path}:{}",
                                body.len()
                            )))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let mut resp = hyper::Response::new(StreamBody::new(
                            futures_util::stream::iter(frames),
                        ));
                        resp.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_to_an_h2c_upstream_with_trailers() {
    let grpc = grpc_like_server().await;
    let gw = Gateway::start_with("h2c = true", &api(&grpc.to_string(), "protocol = \"h2c\""));
    let stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/app/helloworld.Greeter/SayHello",
            gw.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200, "log:\n{}", gw.log());
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers passed through");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"/helloworld.Greeter/SayHello:10")
    );
}
