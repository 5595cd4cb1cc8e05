//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`, service `lambda`), verified
//! as botocore signs (`botocore.auth.SigV4Auth`):
//!
//! ```text
//! Authorization: AWS4-HMAC-SHA256 Credential=<key>/<yyyymmdd>/<region>/lambda/aws4_request, SignedHeaders=<a;b>, Signature=<hex>
//! canonical request = METHOD \n path \n query \n headers \n \n signed headers \n hex(sha256(body))
//! string to sign    = AWS4-HMAC-SHA256 \n X-Amz-Date \n <yyyymmdd>/<region>/lambda/aws4_request \n hex(sha256(canonical request))
//! signing key       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, yyyymmdd), region), "lambda"), "aws4_request")
//! ```
//!
//! - path: the path as sent, dot segments and repeated slashes removed, then
//!   percent-encoded once more (`%3A` becomes `%253A`), as for every
//!   service but S3;
//! - query: parameters decoded, re-encoded (RFC 3986), sorted;
//! - headers: each signed header `name:value`, values trimmed with inner runs
//!   of spaces collapsed, repeated values joined with `,`; `host` and
//!   `x-amz-date` must be signed;
//! - `X-Amz-Date` (`yyyymmddThhmmssZ`) within the allowed skew, and on the
//!   credential scope's day.
//!
//! botocore sends no `X-Amz-Content-SHA256` for Invoke: the body's hash is
//! part of the signature, so the signature is checked once the body has been
//! read and hashed (as it arrived). When a client does send the header, the
//! signature is checked from the head and the body must match it.

use crate::api::query_pairs;
use crate::auth::{
    AuthError, AuthPolicy, Authn, Secret, SignedRequest, finish_canonical, hex, hmac_sha256,
    percent_encode_into, sha256, signed_date, signed_host, trim_all, verify_hmac_sha256,
};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const SERVICE: &str = "lambda";
const DATE: &str = "x-amz-date";
const CONTENT_SHA256: &str = "x-amz-content-sha256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `X-Amz-Date`: ISO 8601 basic format, as `20261202T031230Z`.
const DATE_FORMAT: &str = "YYYYMMDDThhmmssZ";

/// A SigV4 credential: `<key>/<yyyymmdd>/<region>/<service>/aws4_request`.
struct Scope<'a> {
    key_id: &'a str,
    day: &'a str,
    region: &'a str,
    service: &'a str,
}

fn scope(credential: &str) -> Result<Scope<'_>, AuthError> {
    // The key id may itself contain '/': the scope is the last four parts.
    let mut parts = credential.rsplitn(5, '/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("aws4_request"), Some(service), Some(region), Some(day), Some(key_id))
            if !key_id.is_empty() =>
        {
            Ok(Scope {
                key_id,
                day,
                region,
                service,
            })
        }
        _ => Err(AuthError::Malformed(
            "Credential must be <key>/<date>/<region>/<service>/aws4_request",
        )),
    }
}

/// RFC 3986 section 5.2.4, plus the removal of empty segments AWS applies.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len() + 1);
    s.push('/');
    s.push_str(&out.join("/"));
    if path.ends_with('/') && !out.is_empty() {
        s.push('/');
    }
    s
}

/// Checks the head of a request signed with SigV4.
pub fn verify(parts: &http::request::Parts, policy: &AuthPolicy<'_>) -> Result<Authn, AuthError> {
    let a = SignedRequest::parse(&parts.headers, ALGORITHM)?;
    let scope = scope(a.credential)?;
    if scope.service != SERVICE {
        return Err(AuthError::Malformed(
            "the credential scope's service must be lambda",
        ));
    }
    let key = policy
        .credentials
        .get(scope.key_id)
        .ok_or_else(|| AuthError::UnknownKey(scope.key_id.into()))?;
    let signed = a.signed(DATE)?;
    let date = signed_date(&parts.headers, DATE, DATE_FORMAT, policy)?;
    if date[..8] != *scope.day {
        return Err(AuthError::Malformed(
            "the credential scope's date is not X-Amz-Date's",
        ));
    }

    let mut canonical = String::with_capacity(1024);
    canonical.push_str(parts.method.as_str());
    canonical.push('\n');
    percent_encode_into(&mut canonical, &remove_dot_segments(parts.uri.path()), b"/");
    canonical.push('\n');
    let mut pairs: Vec<(String, String)> = query_pairs(parts.uri.query())
        .ok_or(AuthError::Malformed(
            "the query string is not valid percent-encoding",
        ))?
        .into_iter()
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            percent_encode_into(&mut ek, &k, b"");
            percent_encode_into(&mut ev, &v, b"");
            (ek, ev)
        })
        .collect();
    pairs.sort();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            canonical.push('&');
        }
        canonical.push_str(k);
        canonical.push('=');
        canonical.push_str(v);
    }
    canonical.push('\n');
    for name in &signed {
        canonical.push_str(name);
        canonical.push(':');
        if *name == "host" {
            trim_all(signed_host(parts).unwrap_or("").as_bytes(), &mut canonical);
        } else {
            for (i, v) in parts.headers.get_all(*name).iter().enumerate() {
                if i > 0 {
                    canonical.push(',');
                }
                trim_all(v.as_bytes(), &mut canonical);
            }
        }
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(a.signed_headers);
    canonical.push('\n');

    let signing_key = signing_key(policy.credentials.secret(key), scope.day, scope.region);
    let scope = format!("{}/{}/{SERVICE}/aws4_request", scope.day, scope.region);
    let (date, signature) = (date.to_string(), a.signature.to_string());
    let signature_ok = move |c: &str| signature_ok(&signing_key, &date, &scope, c, &signature);
    let declared = parts
        .headers
        .get(CONTENT_SHA256)
        .and_then(|v| v.to_str().ok());
    if declared == Some(UNSIGNED_PAYLOAD) {
        // The client chose not to sign the payload: the head is all there is.
        canonical.push_str(UNSIGNED_PAYLOAD);
        return match signature_ok(&canonical) {
            true => Ok(Authn::Done(Some(key))),
            false => Err(AuthError::BadSignature),
        };
    }
    finish_canonical(key, canonical, declared, signature_ok)
}

fn signing_key(secret: &Secret, day: &str, region: &str) -> [u8; 32] {
    let mut k = Vec::with_capacity(secret.expose().len() + 4);
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret.expose());
    let k = hmac_sha256(&k, day.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, SERVICE.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

fn signature_ok(key: &[u8; 32], date: &str, scope: &str, canonical: &str, signature: &str) -> bool {
    let mut sts = String::with_capacity(160);
    sts.push_str(ALGORITHM);
    sts.push('\n');
    sts.push_str(date);
    sts.push('\n');
    sts.push_str(scope);
    sts.push('\n');
    sts.push_str(&hex(&sha256(canonical.as_bytes())));
    verify_hmac_sha256(key, sts.as_bytes(), signature)
}

#[cfg(test)]
mod tests;
