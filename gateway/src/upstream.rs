//! Connections from the gateway to one instance: plain HTTP/1.1, kept alive
//! and pooled per instance, so no lock is shared across instances and a call
//! costs no pool-wide bookkeeping (hyper-util's legacy client did: a client
//! clone, a connect future and a global pool checkout per call).
//!
//! Within an instance's pool, idle connections are kept per runtime shard
//! ([`crate::shards`]): a connection's socket and its driving task belong to
//! the shard that opened it, so a call never waits on another thread.

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept per instance (more may be open while busy).
const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct UpstreamPool {
    addr: OnceLock<SocketAddr>,
    // One list per shard; a lock is held only to push or pop, never across
    // an await, and only the shard's own thread takes it.
    idle: Box<[Mutex<Vec<Sender>>]>,
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
pub struct Conn {
    pub sender: Sender,
    /// It served an earlier call (it may have been closed since).
    pub reused: bool,
}

impl UpstreamPool {
    pub fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    fn idle(&self) -> &Mutex<Vec<Sender>> {
        &self.idle[crate::shards::current() % self.idle.len()]
    }

    /// An idle connection, or a new one. `Err` means nothing could be sent.
    pub async fn get(&self) -> std::io::Result<Conn> {
        loop {
            let idle = self.idle().lock().unwrap().pop();
            match idle {
                Some(s) if !s.is_closed() => {
                    return Ok(Conn {
                        sender: s,
                        reused: true,
                    });
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
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(std::io::Error::other)?;
        // Ends when the instance closes the socket or the sender is dropped.
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    /// Returns a connection whose last call completed in full.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle().lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}
