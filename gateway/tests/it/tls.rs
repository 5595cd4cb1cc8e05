//! TLS versions, ALPN, and refusal of legacy TLS.

use crate::harness::*;
use std::io::{Read, Write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invokes_over_tls12_and_tls13_with_h1_and_h2() {
    let gw = Gateway::start("", &echo_fn("echo", "instance_concurrency = 10"));
    let mut ids = std::collections::HashSet::new();
    for tls in [12u8, 13] {
        for h2 in [false, true] {
            let mut c = gw
                .client(ClientOpts {
                    h2,
                    tls: Some(tls),
                    ..Default::default()
                })
                .await;
            let want_version = if tls == 12 {
                rustls::ProtocolVersion::TLSv1_2
            } else {
                rustls::ProtocolVersion::TLSv1_3
            };
            assert_eq!(c.tls_version, want_version);
            let want_alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
            assert_eq!(c.alpn.as_deref(), Some(want_alpn));
            let payload = format!("hello tls{tls} h2={h2}");
            let r = c.invoke("echo", payload.clone()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.text(), payload);
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
            assert!(
                r.header("x-fc-instance-id")
                    .is_some_and(|i| i.starts_with("c-"))
            );
            let rid = r.header("x-fc-request-id").unwrap().to_string();
            assert!(ids.insert(rid), "request ids must be unique");
        }
    }
    // An unconstrained client negotiates TLS 1.3 (preferred).
    let c = gw.client(ClientOpts::default()).await;
    assert_eq!(c.tls_version, rustls::ProtocolVersion::TLSv1_3);
}

/// A ClientHello offering only `version` (0x0301 = TLS 1.0, 0x0302 = TLS 1.1),
/// with no supported_versions extension: what a TLS 1.0/1.1-only client sends.
fn legacy_client_hello(version: u16) -> Vec<u8> {
    let v = version.to_be_bytes();
    let mut body = Vec::new();
    body.extend_from_slice(&v); // client_version
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    // ECDHE-{ECDSA,RSA}-AES128-GCM and AES128-CBC-SHA: suites the server
    // has, so the version is the only thing it can object to.
    body.extend_from_slice(&[0, 6, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x2f]);
    body.extend_from_slice(&[1, 0]); // compression: null
    // extensions: server_name=localhost
    let host = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    // signature_algorithms (ecdsa_secp256r1_sha256, rsa_pkcs1_sha256): rustls
    // requires it before it looks at the version.
    ext.extend_from_slice(&[0, 13, 0, 6, 0, 4, 0x04, 0x03, 0x04, 0x01]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls10_and_tls11_clients_are_refused_at_the_handshake() {
    let gw = Gateway::start("", &echo_fn("echo", ""));
    for version in [0x0301u16, 0x0302] {
        let addr = gw.https;
        let reply = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            s.write_all(&legacy_client_hello(version)).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        })
        .await
        .unwrap();
        // The server answers with a fatal alert (record type 21), never a
        // ServerHello (handshake record type 22), and closes.
        assert!(!reply.is_empty(), "expected an alert for {version:#x}");
        assert_eq!(
            reply[0], 21,
            "expected an alert record for {version:#x}, got {reply:?}"
        );
        assert_eq!(reply[5], 2, "alert level must be fatal");
        assert_eq!(
            reply[6], 70,
            "alert must be protocol_version (70), got {}",
            reply[6]
        );
    }
    assert_eq!(gw.metric("fngate_tls_handshake_failures_total").await, 2.0);
}
