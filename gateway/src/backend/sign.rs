//! Signing the gateway's own calls to a cloud: SigV4 for Lambda, ACS3 for
//! Function Compute. The inverse of the doors' verifiers
//! ([`crate::api::lambda::sigv4`], [`crate::api::fc::acs3`]), and checked
//! against the vectors the SDKs produced for them (see the tests), so the
//! two sides cannot drift apart.
//!
//! The gateway builds every header it signs itself, so the canonical forms
//! here need no trimming or folding: names are lower-case and sorted by the
//! caller, values are plain.

use crate::auth::{hex, hmac_sha256, percent_encode_into, sha256};
use crate::config::backends::OutboundKey;

/// One signed header: lower-case name and value.
pub type Header<'a> = (&'static str, &'a str);

/// The canonical request shared by both schemes, up to (and including) the
/// payload hash: `METHOD \n path \n query \n headers \n signed \n hash`.
fn canonical(
    path: &str,
    query: &str,
    headers: &[Header<'_>],
    payload_hash: &str,
) -> (String, String) {
    let mut c = String::with_capacity(512);
    c.push_str("POST\n");
    c.push_str(path);
    c.push('\n');
    c.push_str(query);
    c.push('\n');
    let mut signed = String::with_capacity(128);
    for (i, (name, value)) in headers.iter().enumerate() {
        debug_assert!(i == 0 || headers[i - 1].0 < *name, "headers sorted");
        c.push_str(name);
        c.push(':');
        c.push_str(value);
        c.push('\n');
        if i > 0 {
            signed.push(';');
        }
        signed.push_str(name);
    }
    c.push('\n');
    c.push_str(&signed);
    c.push('\n');
    c.push_str(payload_hash);
    (c, signed)
}

/// `Authorization` for a Lambda call (`POST`, service `lambda`). `path` is
/// the path as sent (already percent-encoded once); `query` its canonical
/// form (the gateway sends at most `Qualifier`, encoded); `amz_date` the
/// signed `x-amz-date`.
pub fn sigv4(
    key: &OutboundKey,
    region: &str,
    path: &str,
    query: &str,
    headers: &[Header<'_>],
    payload_hash: &str,
    amz_date: &str,
) -> String {
    // Every service but S3 signs the path encoded once more.
    let mut encoded = String::with_capacity(path.len() + 16);
    percent_encode_into(&mut encoded, path, b"/");
    let (canonical, signed) = canonical(&encoded, query, headers, payload_hash);
    let day = &amz_date[..8];
    let scope = format!("{day}/{region}/lambda/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&sha256(canonical.as_bytes()))
    );
    let mut k = Vec::with_capacity(key.secret.expose().len() + 4);
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(key.secret.expose());
    let k = hmac_sha256(&k, day.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, b"lambda");
    let k = hmac_sha256(&k, b"aws4_request");
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={}",
        key.access_key_id,
        hex(&hmac_sha256(&k, sts.as_bytes()))
    )
}

/// `Authorization` for a Function Compute call (ACS3-HMAC-SHA256). `path`
/// is signed as sent; `query` in canonical form.
pub fn acs3(
    key: &OutboundKey,
    path: &str,
    query: &str,
    headers: &[Header<'_>],
    payload_hash: &str,
) -> String {
    let (canonical, signed) = canonical(path, query, headers, payload_hash);
    let sts = format!("ACS3-HMAC-SHA256\n{}", hex(&sha256(canonical.as_bytes())));
    format!(
        "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed},Signature={}",
        key.access_key_id,
        hex(&hmac_sha256(key.secret.expose(), sts.as_bytes()))
    )
}

/// A query of one parameter, in canonical form (both schemes encode as
/// RFC 3986); empty without a value.
pub fn one_param(name: &str, value: Option<&str>) -> String {
    let mut q = String::new();
    if let Some(v) = value {
        q.push_str(name);
        q.push('=');
        percent_encode_into(&mut q, v, b"");
    }
    q
}

/// `x-amz-date` (`20261202T031230Z`) and `x-acs-date`
/// (`2026-12-02T03:12:30Z`) of `now`.
pub fn dates(now: std::time::SystemTime) -> (String, String) {
    let t = time::OffsetDateTime::from(now);
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s) = (t.hour(), t.minute(), t.second());
    (
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn key(id: &str, secret: &str) -> OutboundKey {
        OutboundKey {
            access_key_id: id.into(),
            secret: Secret::new(secret.as_bytes().to_vec()),
        }
    }

    /// botocore 1.44.8's signature of this request (the vector the Lambda
    /// door's verifier is tested with).
    #[test]
    fn sigv4_matches_botocore() {
        let auth = sigv4(
            &key("AKIDTEST", "lambda-secret"),
            "us-east-1",
            "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho/invocations",
            "Qualifier=%24LATEST",
            &[
                ("host", "127.0.0.1:8443"),
                ("x-amz-client-context", "eyJ4IjoxfQ=="),
                ("x-amz-date", "20261202T031230Z"),
                ("x-amz-log-type", "Tail"),
            ],
            &hex(&sha256(br#"{"a":1}"#)),
            "20261202T031230Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/20261202/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-client-context;x-amz-date;x-amz-log-type, Signature=386dedc86af7069ab58ea2612f8a0c347a86b1101dd7b6d0d0bb1dcf1295c8fb"
        );
    }

    /// The FC 3.0 SDK's signature of this request (the vector the FC door's
    /// verifier is tested with).
    #[test]
    fn acs3_matches_the_fc_sdk() {
        let auth = acs3(
            &key("LTAItest", "fc-secret"),
            "/2023-03-30/functions/echo/invocations",
            &one_param("qualifier", Some("LATEST")),
            &[
                ("accept", "application/json"),
                ("content-type", "application/octet-stream"),
                ("host", "127.0.0.1:8443"),
                (
                    "user-agent",
                    "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
                ),
                ("x-acs-action", "InvokeFunction"),
                (
                    "x-acs-content-sha256",
                    "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862",
                ),
                ("x-acs-credentials-provider", "static_ak"),
                ("x-acs-date", "2026-12-02T03:18:06Z"),
                ("x-acs-signature-nonce", "38e200ee9d13dd2490c1e05e4c0d16b2"),
                ("x-acs-version", "2023-03-30"),
                ("x-fc-invocation-type", "Sync"),
                ("x-fc-log-type", "None"),
            ],
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862",
        );
        assert_eq!(
            auth,
            "ACS3-HMAC-SHA256 Credential=LTAItest,SignedHeaders=accept;content-type;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;x-acs-version;x-fc-invocation-type;x-fc-log-type,Signature=11b811ccc38483d19d3b261ba3d284310921dfa6001b85cdc3d95b1c675cc460"
        );
    }

    #[test]
    fn dates_in_both_formats() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1796181150);
        assert_eq!(
            dates(t),
            ("20261202T031230Z".into(), "2026-12-02T03:12:30Z".into())
        );
    }
}
