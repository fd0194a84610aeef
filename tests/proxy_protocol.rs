//! PROXY protocol listeners: the client address comes from the v1 or v2 header a trusted load
//! balancer sends first, on plaintext and TLS listeners, and drives IP filters and the
//! X-Forwarded-For the upstream gets; connections without a header, or from an untrusted
//! peer, are closed.

mod support;

use std::sync::Arc;
use support::upstream::Upstream;
use support::{free_port, raw_exchange, run_cli, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn body(up: &Upstream, extra: &str) -> String {
    format!(
        r#"{extra}
[policies.office-only]
kind = "ip_filter"
allow = ["192.0.2.0/24", "2001:db8::/32"]

[upstreams.app]
targets = [ {{ addr = "{up}" }} ]

[[apis]]
name = "app"
base_path = "/app"
upstream = "app"
policies = ["office-only"]
"#,
        up = up.addr
    )
}

fn v2(source: std::net::SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match source {
        std::net::SocketAddr::V4(a) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&a.ip().octets());
            h.extend_from_slice(&[10, 0, 0, 1]);
            h.extend_from_slice(&a.port().to_be_bytes());
            h.extend_from_slice(&80u16.to_be_bytes());
        }
        std::net::SocketAddr::V6(a) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&a.ip().octets());
            h.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            h.extend_from_slice(&a.port().to_be_bytes());
            h.extend_from_slice(&80u16.to_be_bytes());
        }
    }
    h
}

const GET: &[u8] = b"GET /app/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn forwarded_for(answer: &str) -> Option<String> {
    let body = answer.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["headers"]["x-forwarded-for"][0]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_listeners_take_the_client_from_v1_and_v2_headers() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
        &body(&up, ""),
    );
    let addr = gw.addr;
    let run = move |bytes: Vec<u8>| tokio::task::spawn_blocking(move || raw_exchange(addr, &bytes));

    let mut v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(GET);
    let a = run(v1).await.expect("v1");
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_eq!(forwarded_for(&a).as_deref(), Some("192.0.2.7"));

    let mut h = v2("[2001:db8::9]:4000".parse().expect("addr"));
    h.extend_from_slice(GET);
    let a = run(h).await.expect("v2");
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    assert_eq!(forwarded_for(&a).as_deref(), Some("2001:db8::9"));

    // The named client outside the allowed ranges is refused by the IP filter.
    let mut h = v2("203.0.113.5:4000".parse().expect("addr"));
    h.extend_from_slice(GET);
    let a = run(h).await.expect("v2");
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");

    // Two requests on one connection: both from the header's client.
    let mut two = b"PROXY TCP4 192.0.2.8 10.0.0.1 5555 80\r\n".to_vec();
    two.extend_from_slice(b"GET /app/1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    two.extend_from_slice(GET);
    let a = run(two).await.expect("two");
    assert_eq!(a.matches("HTTP/1.1 200").count(), 2, "{a}");
    assert_eq!(a.matches("192.0.2.8").count(), 2, "{a}");

    // A LOCAL header (a load balancer's own health check): the client is unknown, so the
    // allow list refuses it, and its X-Forwarded-For is not believed.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.extend_from_slice(
        b"GET /app/x HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 192.0.2.1\r\nConnection: close\r\n\r\n",
    );
    let a = run(local).await.expect("local");
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");

    // No header, or a broken one: closed without an answer.
    for bad in [GET.to_vec(), b"PROXY TCP4 nonsense\r\n".to_vec()] {
        let a = run(bad).await.expect("bad");
        assert_eq!(a, "", "closed without an answer");
    }
    assert_eq!(up.hits(), 4, "v1, v2 and the two on one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_send_a_header() {
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        &body(&up, ""),
    );
    let mut v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(GET);
    let addr = gw.addr;
    let a = tokio::task::spawn_blocking(move || raw_exchange(addr, &v1))
        .await
        .expect("exchange");
    assert_eq!(a, "", "closed: loopback is not a trusted proxy");
    assert_eq!(up.hits(), 0);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:1\"]\nproxy_protocol = true\n\n[[apis]]\nname = \"a\"\nbase_path = \"/a\"\n[apis.respond]\nbody = \"x\"\n",
    )
    .expect("write");
    let (code, _, err) = run_cli(&["check", "-c", &path.to_string_lossy()], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.proxy_protocol: needs server.trusted_proxies"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_read_the_header_before_the_handshake() {
    let up = Upstream::start("app").await;
    let certs = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("key");
    let tls_port = free_port();
    let tls = format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{}\"\nkey = \"{}\"\nproxy_protocol = true\n",
        cert_path.display(),
        key_path.display()
    );
    let _gw = Gateway::start_with("trusted_proxies = [\"127.0.0.1\"]\n", &body(&up, &tls));

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .expect("connect");
    tcp.write_all(b"PROXY TCP4 192.0.2.9 10.0.0.1 5555 443\r\n")
        .await
        .expect("header");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("handshake after the header");
    tls.write_all(GET).await.expect("request");
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(forwarded_for(&answer).as_deref(), Some("192.0.2.9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_after_the_header() {
    use http_body_util::{BodyExt, Empty};
    let up = Upstream::start("app").await;
    let gw = Gateway::start_with(
        "h2c = true\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
        &body(&up, ""),
    );
    let mut tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    tcp.write_all(b"PROXY TCP6 2001:db8::77 ::1 5555 80\r\n")
        .await
        .expect("header");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake after the PROXY header");
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = hyper::Request::get(format!("http://{}/app/x", gw.addr))
            .header("x-forwarded-for", "6.6.6.6")
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("answer");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v["headers"]["x-forwarded-for"][0], "2001:db8::77",
            "every stream"
        );
    }
}
