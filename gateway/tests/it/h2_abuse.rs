//! HTTP/2 abuse over real TLS: rapid reset, a CONTINUATION flood, SETTINGS
//! and PING floods, a huge header table, and 10,000 streams on one
//! connection. Each time the gateway stays up, its memory stays bounded, and
//! other clients keep being served. The frames are written by hand (a client
//! library would refuse to misbehave); the bounds that hold them are stated
//! in `connection/mod.rs` (`Server::new`).

use crate::harness::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name" for each pair
/// (names and values under 127 bytes: one-byte lengths).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in headers {
        b.push(0x00);
        b.push(k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn request_headers(path: &str) -> Vec<u8> {
    hpack(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "localhost"),
    ])
}

/// A TLS connection speaking HTTP/2 (ALPN h2), preface and SETTINGS sent.
async fn connect(gw: &Gateway) -> Tls {
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let cfg = tls_config(&gw.ca, &ClientOpts::h2(true));
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tls
}

/// Reads frames until the connection ends (or `limit`); returns the kinds
/// seen and whether a GOAWAY came.
async fn drain_frames(mut rx: tokio::io::ReadHalf<Tls>, limit: Duration) -> (usize, bool) {
    let mut seen = 0;
    let mut goaway = false;
    let read = async {
        let mut head = [0u8; 9];
        loop {
            if rx.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if rx.read_exact(&mut payload).await.is_err() {
                return;
            }
            seen += 1;
            goaway |= head[3] == 7;
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
    (seen, goaway)
}

/// While `abuse` runs and after it, another client is served and the
/// gateway's memory grows by less than `max_growth_kb`.
async fn survives<F: std::future::Future<Output = ()>>(gw: &Gateway, max_growth_kb: u64, abuse: F) {
    let pid = gw.proc.child.id();
    let mut other = gw.h1().await;
    assert_eq!(other.invoke("echo", "before").await.status, 200);
    let rss0 = rss_kb(pid).expect("the gateway runs");
    let mut peak = rss0;
    tokio::pin!(abuse);
    loop {
        tokio::select! {
            _ = &mut abuse => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let r = tokio::time::timeout(Duration::from_secs(10), other.invoke("echo", "during"))
                    .await
                    .expect("another client is served during the abuse");
                assert_eq!(r.status, 200);
                peak = peak.max(rss_kb(pid).expect("the gateway runs"));
            }
        }
    }
    let mut fresh = gw.h1().await;
    assert_eq!(fresh.invoke("echo", "after").await.text(), "after");
    peak = peak.max(rss_kb(pid).expect("the gateway runs"));
    eprintln!("abuse: RSS {rss0} KiB before, peak {peak} KiB");
    assert!(
        peak - rss0 < max_growth_kb,
        "memory grew {} KiB (from {rss0} KiB)",
        peak - rss0
    );
}

fn gateway() -> Gateway {
    Gateway::start("", &echo_fn("echo", "instance_concurrency = 50"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    let gw = gateway();
    survives(&gw, 64 * 1024, async {
        let (rx, mut tx) = tokio::io::split(connect(&gw).await);
        let reader = tokio::spawn(drain_frames(rx, Duration::from_secs(30)));
        // Open a stream and reset it at once, over and over (CVE-2023-44487).
        let headers = request_headers("/2023-03-30/functions/echo/invocations");
        let mut sent = 0u32;
        for i in 0..10_000u32 {
            let id = 2 * i + 1;
            let mut burst = frame(HEADERS, END_HEADERS, id, &headers);
            burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
            if tx.write_all(&burst).await.is_err() {
                break;
            }
            sent += 1;
        }
        let (_, goaway) = reader.await.unwrap();
        eprintln!("rapid reset: {sent} streams opened and reset, GOAWAY {goaway}");
        // h2 allows 20 pending resets, then sends GOAWAY and closes.
        assert!(goaway || sent < 10_000, "sent {sent} resets, no GOAWAY");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off() {
    let gw = gateway();
    survives(&gw, 64 * 1024, async {
        let (rx, mut tx) = tokio::io::split(connect(&gw).await);
        let reader = tokio::spawn(drain_frames(rx, Duration::from_secs(30)));
        // A header block that never ends.
        let first = request_headers("/2023-03-30/functions/echo/invocations");
        let _ = tx.write_all(&frame(HEADERS, 0, 1, &first)).await;
        let more = hpack(&[("x-flood", &"y".repeat(100))]);
        let mut sent = 0;
        for _ in 0..100_000 {
            if tx
                .write_all(&frame(CONTINUATION, 0, 1, &more))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let (_, goaway) = reader.await.unwrap();
        eprintln!("CONTINUATION flood: {sent} frames written, GOAWAY {goaway}");
        assert!(
            goaway || sent < 100_000,
            "{sent} CONTINUATION frames accepted"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_stay_bounded() {
    let gw = gateway();
    survives(&gw, 64 * 1024, async {
        // A client that floods and never reads what the server answers.
        let mut tls = connect(&gw).await;
        let mut flood = Vec::new();
        for i in 0..1000u64 {
            flood.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])); // INITIAL_WINDOW_SIZE
            flood.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut rounds = 0;
        while tokio::time::Instant::now() < deadline && rounds < 200 {
            match tokio::time::timeout(Duration::from_secs(2), tls.write_all(&flood)).await {
                Ok(Ok(())) => rounds += 1,
                // The server stopped reading (its answers are unread) or closed.
                _ => break,
            }
        }
        eprintln!("SETTINGS/PING flood: {rounds} rounds of 1000 each written");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_header_table_is_harmless() {
    let gw = gateway();
    survives(&gw, 64 * 1024, async {
        let (rx, mut tx) = tokio::io::split(connect(&gw).await);
        let reader = tokio::spawn(drain_frames(rx, Duration::from_secs(10)));
        // SETTINGS_HEADER_TABLE_SIZE = 2^32 - 1 for the server's encoder...
        let _ = tx
            .write_all(&frame(SETTINGS, 0, 0, &[0, 1, 0xff, 0xff, 0xff, 0xff]))
            .await;
        // ... and, in our own header block, a table size update far past the
        // server's 4096 (a compression error: the connection ends).
        let mut block = vec![0x3f, 0xe1, 0xff, 0xff, 0x0f]; // size update: 2^25-ish
        block.extend(request_headers("/2023-03-30/functions/echo/invocations"));
        let _ = tx
            .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await;
        let (_, goaway) = reader.await.unwrap();
        assert!(
            goaway,
            "the bad header block ends the connection with GOAWAY"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_on_one_connection() {
    let gw = gateway();
    survives(&gw, 64 * 1024, async {
        let c = gw.h2().await;
        let mut ok = 0;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10_000 {
            let mut c = c.clone();
            tasks.spawn(async move { c.invoke("echo", format!("{i}")).await.status });
            // At most 200 in flight (the server allows 256 at once).
            while tasks.len() >= 200 {
                ok += usize::from(tasks.join_next().await.unwrap().unwrap() == 200);
            }
        }
        while let Some(s) = tasks.join_next().await {
            ok += usize::from(s.unwrap() == 200);
        }
        assert_eq!(ok, 10_000);
    })
    .await;
}
