//! The worker's DNS forwarder for isolated instances.
//!
//! An instance's `/etc/resolv.conf` names the host's end of its veth pair
//! (`.1` of its /30), where the worker answers on port 53, UDP and TCP, by
//! passing each query on to the upstream resolvers (`--dns`, else the
//! host's own from `/etc/resolv.conf`, loopback ones included: the worker
//! reaches them where an instance could not). The upstreams an instance's
//! queries may go to are those its egress policy would let it reach
//! itself ([`crate::network`] decides, per instance): a function with
//! egress `none`, or whose mode reaches no upstream, gets no resolver at
//! all (its queries are refused at once by its own rules), so DNS is never
//! a way around the policy.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] queries per instance wait for an
//! upstream (more are dropped, and the client retries), each waits
//! [`UPSTREAM_TIMEOUT`] per upstream, and a TCP connection is served one
//! query at a time within [`TCP_IDLE`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

pub const MAX_IN_FLIGHT: usize = 64;
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest DNS message (TCP's length prefix is 16 bits).
const MAX_MESSAGE: usize = 65_535;

/// The host's resolvers, from `/etc/resolv.conf` (IPv4 only: instances
/// have no IPv6 route).
pub fn host_resolvers() -> Vec<SocketAddr> {
    parse_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let ip: Ipv4Addr = w.next()?.parse().ok()?;
            Some(SocketAddr::new(ip.into(), 53))
        })
        .collect()
}

/// Serves DNS for one instance on `bind:53` until `stop`: its queries go
/// to `upstreams`, tried in order.
pub fn serve(
    bind: Ipv4Addr,
    upstreams: Vec<SocketAddr>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let at = SocketAddr::new(bind.into(), 53);
    let udp = std::net::UdpSocket::bind(at)?;
    udp.set_nonblocking(true)?;
    let tcp = std::net::TcpListener::bind(at)?;
    tcp.set_nonblocking(true)?;
    let (udp, tcp) = (UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?);
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let udp = Arc::new(udp);
    let (ups, sl, st) = (upstreams.clone(), slots.clone(), stop.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (n, from) = tokio::select! {
                _ = st.cancelled() => return,
                got = udp.recv_from(&mut buf) => match got {
                    Ok(g) => g,
                    Err(_) => continue,
                },
            };
            let Ok(permit) = sl.clone().try_acquire_owned() else {
                continue;
            };
            let (query, udp, ups) = (buf[..n].to_vec(), udp.clone(), ups.clone());
            tokio::spawn(async move {
                if let Some(answer) = ask_udp(&ups, &query).await {
                    let _ = udp.send_to(&answer, from).await;
                }
                drop(permit);
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let (conn, _) = tokio::select! {
                _ = stop.cancelled() => return,
                got = tcp.accept() => match got {
                    Ok(g) => g,
                    Err(_) => continue,
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (ups, stop) = (upstreams.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = serve_tcp(conn, &ups) => {}
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn ask_udp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let Ok(sock) = UdpSocket::bind(("0.0.0.0", 0)).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; MAX_MESSAGE];
        // An answer to another query (same id) cannot arrive: the socket is
        // this query's own, connected to this upstream.
        if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

async fn read_message(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let len = conn.read_u16().await.ok()? as usize;
    let mut msg = vec![0u8; len];
    conn.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

async fn write_message(conn: &mut TcpStream, msg: &[u8]) -> Option<()> {
    let mut framed = Vec::with_capacity(2 + msg.len());
    framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    framed.extend_from_slice(msg);
    conn.write_all(&framed).await.ok()
}

async fn ask_tcp(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let asked = async {
            let mut c = TcpStream::connect(up).await.ok()?;
            write_message(&mut c, query).await?;
            read_message(&mut c).await
        };
        if let Ok(Some(answer)) = tokio::time::timeout(UPSTREAM_TIMEOUT, asked).await {
            return Some(answer);
        }
    }
    None
}

async fn serve_tcp(mut conn: TcpStream, upstreams: &[SocketAddr]) {
    loop {
        let Ok(Some(query)) = tokio::time::timeout(TCP_IDLE, read_message(&mut conn)).await else {
            return;
        };
        let Some(answer) = ask_tcp(upstreams, &query).await else {
            return;
        };
        if write_message(&mut conn, &answer).await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_gives_ipv4_nameservers() {
        let text = "# x\nsearch example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2 # y\noptions edns0\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ]
        );
    }

    /// A query reaches an upstream and its answer comes back, over UDP and
    /// TCP (a stand-in upstream on loopback answers with the query reversed).
    #[tokio::test]
    async fn queries_are_forwarded_and_answered() {
        // One port for both protocols: a free UDP port may be taken for TCP.
        let (up, up_tcp) = loop {
            let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(t) = TcpListener::bind(up.local_addr().unwrap()).await {
                break (up, t);
            }
        };
        let upstream = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 512];
            loop {
                let (n, from) = up.recv_from(&mut b).await.unwrap();
                let mut r = b[..n].to_vec();
                r.reverse();
                up.send_to(&r, from).await.unwrap();
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut c, _) = up_tcp.accept().await.unwrap();
                let mut q = read_message(&mut c).await.unwrap();
                q.reverse();
                write_message(&mut c, &q).await.unwrap();
            }
        });
        // A dead upstream first: the next one answers.
        let dead = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            ask_udp(&[dead, upstream], b"abc").await.as_deref(),
            Some(&b"cba"[..])
        );
        assert_eq!(
            ask_tcp(&[upstream], b"hello").await.as_deref(),
            Some(&b"olleh"[..])
        );
    }
}
