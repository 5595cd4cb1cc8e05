//! Connections from the gateway to one instance: plain HTTP/1.1 ([`h1`]),
//! kept alive and pooled per instance, so no lock is shared across
//! instances and a call costs no pool-wide bookkeeping.
//!
//! Within an instance's pool, idle connections are kept per runtime shard
//! ([`crate::shards`]): a connection's socket belongs to the shard that
//! opened it, so a call never waits on another thread. A connection is
//! driven only by the request using it; idle, nothing polls it, and it is
//! checked for a close by the instance when taken ([`h1::Conn::is_usable`]).

pub mod h1;

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Idle connections kept per instance and shard (more may be open while
/// busy).
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct UpstreamPool {
    addr: OnceLock<SocketAddr>,
    // One list per shard; a lock is held only to push or pop, never across
    // an await, and only the shard's own thread takes it.
    idle: Box<[Mutex<Vec<h1::Conn>>]>,
}

impl Default for UpstreamPool {
    fn default() -> Self {
        UpstreamPool {
            addr: OnceLock::new(),
            idle: (0..crate::shards::count())
                .map(|_| Mutex::default())
                .collect(),
        }
    }
}

/// A connection to use for one call.
pub struct Pooled {
    pub conn: h1::Conn,
    /// It served an earlier call (the instance may have closed it since
    /// without the gateway seeing it yet).
    pub reused: bool,
}

impl UpstreamPool {
    pub fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    fn idle(&self) -> &Mutex<Vec<h1::Conn>> {
        &self.idle[crate::shards::current() % self.idle.len()]
    }

    /// An idle connection, or a new one. `Err` means nothing could be sent.
    pub async fn get(&self) -> std::io::Result<Pooled> {
        loop {
            let idle = self.idle().lock().unwrap().pop();
            match idle {
                Some(conn) if conn.is_usable() => {
                    return Ok(Pooled { conn, reused: true });
                }
                Some(_) => continue,
                None => break,
            }
        }
        let addr = *self
            .addr
            .get()
            .ok_or_else(|| std::io::Error::other("instance has no address"))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        tcp.set_nodelay(true)?;
        Ok(Pooled {
            conn: h1::Conn::new(tcp),
            reused: false,
        })
    }

    /// Returns a connection after a call; kept only if its last answer
    /// left it fit for another.
    pub fn put(&self, conn: h1::Conn) {
        if !conn.keep_alive() {
            return;
        }
        let mut idle = self.idle().lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}
