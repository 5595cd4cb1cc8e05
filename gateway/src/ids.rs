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

    /// `1-<prefix>-<counter>`, shaped like FC request ids (36 characters).
    pub fn request_id(&self) -> http::HeaderValue {
        let s = format!("1-{:016x}-{:018x}", self.prefix, self.bump());
        http::HeaderValue::try_from(s).expect("hex is a valid header value")
    }

    /// `c-<prefix8>-<counter>`, shaped like FC instance ids.
    pub fn instance_id(&self) -> String {
        format!("c-{:08x}-{:012x}", self.prefix as u32, self.bump())
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}
