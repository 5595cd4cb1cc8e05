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
    AuthError, AuthPolicy, Authn, Secret, digits, hex, hmac_sha256, percent_encode_into, sha256,
    trim_all, unix_time, verify_hmac_sha256, within,
};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const SERVICE: &str = "lambda";
const DATE: &str = "x-amz-date";
const CONTENT_SHA256: &str = "x-amz-content-sha256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

struct Authorization<'a> {
    key_id: &'a str,
    day: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse(h: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = h
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(AuthError::Malformed(
            "the algorithm is not AWS4-HMAC-SHA256",
        ))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(AuthError::Malformed(
            "Credential, SignedHeaders and Signature are required",
        ));
    };
    // The key id may itself contain '/': the scope is the last four parts.
    let mut scope = credential.rsplitn(5, '/');
    let (Some("aws4_request"), Some(service), Some(region), Some(day), Some(key_id)) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(AuthError::Malformed(
            "Credential must be <key>/<date>/<region>/<service>/aws4_request",
        ));
    };
    if key_id.is_empty() {
        return Err(AuthError::Malformed("the access key id is empty"));
    }
    Ok(Authorization {
        key_id,
        day,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// `20261202T031230Z` as Unix time.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits(&s[r]);
    unix_time(
        n(0..4)? as i32,
        n(4..6)? as u8,
        n(6..8)? as u8,
        n(9..11)? as u8,
        n(11..13)? as u8,
        n(13..15)? as u8,
    )
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
    let Some(h) = parts.headers.get(http::header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    let a = parse(
        h.to_str()
            .map_err(|_| AuthError::Malformed("Authorization is not text"))?,
    )?;
    if a.service != SERVICE {
        return Err(AuthError::Malformed(
            "the credential scope's service must be lambda",
        ));
    }
    let key = policy
        .credentials
        .get(a.key_id)
        .ok_or_else(|| AuthError::UnknownKey(a.key_id.into()))?;
    let signed: Vec<&str> = a.signed_headers.split(';').collect();
    if !signed.contains(&"host") || !signed.contains(&DATE) {
        return Err(AuthError::Malformed("host and x-amz-date must be signed"));
    }
    let date = parts
        .headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Malformed("X-Amz-Date is missing"))?;
    let when =
        parse_date(date).ok_or(AuthError::Malformed("X-Amz-Date is not yyyymmddThhmmssZ"))?;
    if date[..8] != *a.day {
        return Err(AuthError::Malformed(
            "the credential scope's date is not X-Amz-Date's",
        ));
    }
    if !within(when, policy.now, policy.max_skew) {
        return Err(AuthError::Expired { date: date.into() });
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
        if *name == "host" && !parts.headers.contains_key(http::header::HOST) {
            // HTTP/2 carries it as :authority.
            canonical.push_str(parts.uri.authority().map(|a| a.as_str()).unwrap_or(""));
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

    let secret = policy.credentials.secret(key);
    let signing_key = signing_key(secret, a.day, a.region);
    let scope = format!("{}/{}/{SERVICE}/aws4_request", a.day, a.region);
    let date = date.to_string();
    let claimed = parts
        .headers
        .get(CONTENT_SHA256)
        .and_then(|v| v.to_str().ok());
    match claimed {
        Some(claimed) => {
            canonical.push_str(claimed);
            if !signature_ok(&signing_key, &date, &scope, &canonical, a.signature) {
                return Err(AuthError::BadSignature);
            }
            if claimed == UNSIGNED_PAYLOAD {
                return Ok(Authn::Done(Some(key)));
            }
            let claimed = claimed.to_ascii_lowercase();
            Ok(Authn::Payload {
                key,
                key_proven: true,
                check: Box::new(move |hash| {
                    if hex(hash) == claimed {
                        Ok(())
                    } else {
                        Err(AuthError::PayloadMismatch)
                    }
                }),
            })
        }
        None => {
            let signature = a.signature.to_string();
            Ok(Authn::Payload {
                key,
                key_proven: false,
                check: Box::new(move |hash| {
                    let mut canonical = canonical;
                    canonical.push_str(&hex(hash));
                    if signature_ok(&signing_key, &date, &scope, &canonical, &signature) {
                        Ok(())
                    } else {
                        Err(AuthError::BadSignature)
                    }
                }),
            })
        }
    }
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
