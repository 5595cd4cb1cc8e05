//! The configuration loader on arbitrary text: it never panics; what it
//! accepts is a configuration (every function named, every limit positive).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = fngate::config::Config::parse(text, std::path::Path::new("/nonexistent")) {
        assert!(cfg.functions.iter().all(|f| !f.name.is_empty()));
        assert!(cfg.gateway.limits.max_body_bytes > 0);
    }
});
