//! Request and instance identifiers.
//!
//! Unique without a syscall or a lock per request: a random per-process
//! prefix (from std's randomly keyed hasher) and an atomic counter.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct IdGen {
    prefix: u64,
    next: AtomicU64,
}

impl IdGen {
    pub fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        Self {
            prefix: h.finish(),
            next: AtomicU64::new(1),
        }
    }

    fn bump(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// `1-<prefix>-<counter>`, shaped like FC request ids (37 characters).
    pub fn request_id(&self) -> http::HeaderValue {
        // Once per request: written by hand into one exact allocation.
        let mut b = [0u8; 37];
        b[..2].copy_from_slice(b"1-");
        hex(self.prefix, &mut b[2..18]);
        b[18] = b'-';
        hex(self.bump(), &mut b[19..37]);
        http::HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&b))
            .expect("hex is a valid header value")
    }

    /// `c-<prefix8>-<counter>`, shaped like FC instance ids.
    pub fn instance_id(&self) -> String {
        format!("c-{:08x}-{:012x}", self.prefix as u32, self.bump())
    }
}

/// `v` in lowercase hex, zero-padded to fill `out` (high digits dropped).
fn hex(mut v: u64, out: &mut [u8]) {
    for d in out.iter_mut().rev() {
        *d = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_have_the_fc_shape_and_differ() {
        let g = IdGen::new();
        let (a, b) = (g.request_id(), g.request_id());
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 37);
        assert_eq!(a, format!("1-{:016x}-{:018x}", g.prefix, 1));
        assert_ne!(a, b.to_str().unwrap());
    }
}
