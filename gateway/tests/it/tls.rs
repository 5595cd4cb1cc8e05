//! TLS versions, ALPN, and refusal of legacy TLS.

use crate::harness::*;
use std::io::{Read, Write};
use std::time::Duration;

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
    // The client sees the alert and the close before the handshake's task
    // counts its failure: wait for the count, then check that it is exact.
    let failures = "fngate_tls_handshake_failures_total";
    gw.until(
        "two handshake failures counted",
        Duration::from_secs(10),
        || async { gw.metric(failures).await >= 2.0 },
    )
    .await;
    assert_eq!(gw.metric(failures).await, 2.0);
}

/// A certificate for localhost and 127.0.0.1 (90 days), written as PEM:
/// returns (certificate, key) paths.
fn pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("fngate test {name}"));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(90);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a_crt, a_key) = pair(dir.path(), "a");
    let (b_crt, b_key) = pair(dir.path(), "b");
    let (live_crt, live_key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&a_crt, &live_crt).unwrap();
    std::fs::copy(&a_key, &live_key).unwrap();
    let gw = Gateway::start(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            live_crt.display(),
            live_key.display()
        ),
        &echo_fn("echo", ""),
    );
    let trusting = |ca: &std::path::Path| {
        let ca = ca.to_path_buf();
        async move {
            Client::try_connect(gw.https, &ca, ClientOpts::default())
                .await
                .is_ok()
        }
    };
    let mut before = Client::connect(gw.https, &a_crt, ClientOpts::default()).await;
    assert!(!trusting(&b_crt).await);

    // Rotate to b and say so.
    std::fs::copy(&b_crt, &live_crt).unwrap();
    std::fs::copy(&b_key, &live_key).unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.until("b presented", Duration::from_secs(20), || trusting(&b_crt))
        .await;
    assert!(!trusting(&a_crt).await, "a is gone for new handshakes");
    // A connection made before carries on.
    assert_eq!(before.invoke("echo", "still").await.text(), "still");

    // A broken pair is refused; b stays.
    std::fs::write(&live_key, b"not a key").unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.until(
        "the failed reload counted",
        Duration::from_secs(20),
        || async {
            gw.metric("fngate_tls_certificate_reloads_total{result=\"error\"}")
                .await
                == 1.0
        },
    )
    .await;
    assert!(trusting(&b_crt).await);

    // A change of the files alone is noticed too.
    std::fs::copy(&a_key, &live_key).unwrap();
    std::fs::copy(&a_crt, &live_crt).unwrap();
    gw.until("a presented again", Duration::from_secs(30), || {
        trusting(&a_crt)
    })
    .await;
    assert!(
        gw.metric("fngate_tls_certificate_reloads_total{result=\"ok\"}")
            .await
            >= 2.0
    );
}

/// A CA, and a leaf it signs for localhost and 127.0.0.1 that names a CRL
/// (as CA-issued certificates do): returns (CA, leaf, key) paths.
fn ca_and_leaf(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let now = time::OffsetDateTime::now_utc();
    let (ca_cert, issuer) = test_ca();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(90);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    // Never fetched: testssl checks revocation online only with --phone-out.
    leaf.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec!["http://127.0.0.1:9/fngate-test.crl".into()],
    }];
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf_cert.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_finds_nothing_above_low() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = ca_and_leaf(dir.path());
    let gw = Gateway::start(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            leaf.display(),
            key.display()
        ),
        &echo_fn("echo", ""),
    );
    let report = dir.path().join("testssl.json");
    let mut cmd = std::process::Command::new("testssl");
    // Loopback only: the gateway's address, no DNS, no revocation lookups.
    cmd.args([
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--nodns",
        "none",
        "--add-ca",
    ])
    .arg(&ca)
    .arg("--jsonfile")
    .arg(&report)
    .args(["--ip", "127.0.0.1"])
    .arg(format!("https://localhost:{}", gw.https.port()));
    let out = tokio::task::spawn_blocking(move || {
        cmd.output()
            .expect("testssl (Debian's testssl.sh; scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let findings: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stdout))
        }))
        .unwrap();
    assert!(
        findings.len() > 50,
        "a full scan: {} findings",
        findings.len()
    );
    let serious: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("MEDIUM" | "HIGH" | "CRITICAL")))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(
        serious.is_empty(),
        "testssl findings above LOW:\n{}",
        serious.join("\n")
    );
    // The protocols offered: TLS 1.2 and 1.3, nothing older.
    let offered = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["finding"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            offered(old).starts_with("not offered"),
            "{old}: {}",
            offered(old)
        );
    }
    assert!(
        offered("TLS1_2").starts_with("offered"),
        "{}",
        offered("TLS1_2")
    );
    assert!(
        offered("TLS1_3").starts_with("offered"),
        "{}",
        offered("TLS1_3")
    );
}
