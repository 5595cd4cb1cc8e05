//! Every dialect's request-head decoding and credential parsing (FC's ACS3,
//! Lambda's SigV4 and function names and ARNs, Azure's routes and keys) on
//! arbitrary heads. Input: a method line, a request target line, then
//! `name: value` header lines. Nothing panics, and what decodes names a
//! function.
#![no_main]

use fngate::api::{Api, Dialects, azure::Azure, fc::Fc, lambda::Lambda};
use fngate::auth::{AuthLevel, AuthMode, AuthPolicy, Authn, Credentials, NamedKey, Secret};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let mut req = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            req = req.header(n, v);
        }
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    let (parts, ()) = req.into_parts();
    let dialects = Dialects {
        fc: Fc,
        lambda: Lambda::default(),
        azure: Azure,
    };
    let mut credentials = Credentials::default();
    credentials.insert("AKIDTEST", Secret::new(b"secret".to_vec()));
    let keys = [NamedKey {
        name: "default".into(),
        value: Secret::new(b"key".to_vec()),
    }];
    let policy = AuthPolicy {
        mode: AuthMode::Signature,
        level: AuthLevel::Function,
        credentials: &credentials,
        function_keys: &keys,
        host_keys: &[],
        max_skew: Duration::from_secs(900),
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_181_150),
    };
    // Every dialect on every head, not only the one its prefix selects.
    let _ = dialects.select(parts.uri.path());
    for api in Api::ALL {
        let d = dialects.get(api);
        if let Ok(inv) = d.decode(&parts) {
            assert!(!inv.function.is_empty());
        }
        if let Ok(Authn::Payload { check, .. }) = d.authenticate(&parts, &policy) {
            let _ = check(&[0u8; 32]);
        }
    }
});
