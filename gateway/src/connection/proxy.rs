//! PROXY protocol (v1 text, v2 binary) on listeners that require it.
//!
//! Only peers in `trusted_proxies` may send one; anything else about the
//! header (an untrusted peer, no header, a malformed or oversized one, a
//! timeout) closes the connection and is counted: a bad header is never
//! trusted and never falls back to the peer address.
//!
//! Parsing is [`ppp`]'s; this module bounds it (v1: 107 bytes, v2: 4 KiB of
//! addresses and TLVs) and extracts what fngate uses: the client address and
//! a VPC endpoint id from the TLVs (AWS PrivateLink: type 0xEA subtype 0x01,
//! the `vpce-...` id; Azure Private Link: type 0xEE subtype 0x01, the LINKID as
//! a little-endian u32, written in decimal in `endpoint_ids`).

use ppp::v2;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_MAX: usize = 16 + 4096;
const TLV_AWS: u8 = 0xEA;
const TLV_AZURE: u8 = 0xEE;

/// What a valid header says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyInfo {
    /// The original client; `None` for v1 `UNKNOWN`, v2 `LOCAL` or non-IP
    /// families, where the connection's own peer is the client.
    pub source: Option<SocketAddr>,
    pub endpoint_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    UntrustedPeer,
    /// The first bytes are a TLS record: the client skipped the header.
    Missing,
    Malformed,
    Timeout,
}

impl Reject {
    pub const ALL: [Reject; 4] = [
        Reject::UntrustedPeer,
        Reject::Missing,
        Reject::Malformed,
        Reject::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::UntrustedPeer => "untrusted_peer",
            Reject::Missing => "missing",
            Reject::Malformed => "malformed",
            Reject::Timeout => "timeout",
        }
    }
}

/// Parses a header at the start of `buf`. `Ok(None)`: need more bytes.
/// `Ok(Some((info, len)))`: the header is `buf[..len]`.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, Reject> {
    if buf.is_empty() {
        return Ok(None);
    }
    let n = buf.len().min(12);
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return parse_v1(buf);
    }
    Err(if buf[0] == 0x16 {
        Reject::Missing
    } else {
        Reject::Malformed
    })
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, Reject> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Reject::Malformed)
        } else {
            Ok(None)
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(Reject::Malformed);
    }
    let header = ppp::v1::Header::try_from(&buf[..len]).map_err(|_| Reject::Malformed)?;
    let source = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Unknown => None,
    };
    Ok(Some((
        ProxyInfo {
            source,
            endpoint_id: None,
        },
        len,
    )))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyInfo, usize)>, Reject> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(Reject::Malformed);
    }
    if buf.len() < len {
        return Ok(None);
    }
    let header = v2::Header::try_from(&buf[..len]).map_err(|_| Reject::Malformed)?;
    let mut info = ProxyInfo::default();
    if header.command == v2::Command::Proxy {
        info.source = match header.addresses {
            v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
        };
    }
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|_| Reject::Malformed)?;
        let v = &tlv.value;
        match tlv.kind {
            TLV_AWS if v.first() == Some(&0x01) => {
                let id = std::str::from_utf8(&v[1..]).map_err(|_| Reject::Malformed)?;
                info.endpoint_id = Some(id.to_string());
            }
            TLV_AZURE if v.first() == Some(&0x01) => {
                let id: [u8; 4] = v
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(Reject::Malformed)?;
                info.endpoint_id = Some(u32::from_le_bytes(id).to_string());
            }
            _ => {}
        }
    }
    Ok(Some((info, len)))
}

/// Reads a header from `stream`; returns it and the bytes read past it.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(ProxyInfo, Vec<u8>), Reject> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if let Some((info, len)) = parse(&buf)? {
            return Ok((info, buf.split_off(len)));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Reject::Malformed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Reject::Missing
            } else {
                Reject::Malformed
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A stream that first yields bytes already read from it (those after a
/// PROXY header), then reads from the stream itself.
pub struct Rewind<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, pre: Vec<u8>) -> Self {
        Rewind { pre, pos: 0, inner }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = (self.pre.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            if self.pos == self.pre.len() {
                self.pre = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
