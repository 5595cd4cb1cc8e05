//! The PROXY protocol v1/v2 parser on arbitrary bytes: it never panics, a
//! header it accepts lies within the bytes and parses the same alone, and it
//! asks for more bytes only below the bound it enforces.
#![no_main]

use fngate::connection::proxy::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some((info, len))) => {
            assert!(len > 0 && len <= data.len());
            assert_eq!(parse(&data[..len]), Ok(Some((info, len))));
        }
        Ok(None) => assert!(data.len() < 16 + 4096, "needs more past the bound"),
        Err(_) => {}
    }
});
