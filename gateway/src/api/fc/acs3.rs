//! ACS3-HMAC-SHA256, Alibaba Cloud's V3 request signature, verified as the
//! FC 3.0 SDK signs (`alibabacloud_tea_openapi.utils.get_authorization`):
//!
//! ```text
//! Authorization: ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=<a;b;...>,Signature=<hex>
//! canonical request = METHOD \n path \n query \n headers \n signed headers \n hex(sha256(body))
//! signature         = hex(HMAC-SHA256(secret, "ACS3-HMAC-SHA256\n" + hex(sha256(canonical request))))
//! ```
//!
//! - path: as sent (the SDK signs the percent-encoded path it sends);
//! - query: parameters sorted by name, each value percent-encoded (RFC 3986);
//! - headers: each signed header `name:value\n`, values trimmed, repeated
//!   values sorted and joined with `,`; `host` and `x-acs-date` must be signed;
//! - `x-acs-date` (ISO 8601, UTC) within the allowed skew of the gateway's clock.
//!
//! The SDK also sends the body's hash in `x-acs-content-sha256`, signed: the
//! signature is then checked from the head, and the body only has to match
//! that hash (checked as it is read, no second pass).

use crate::api::query_pairs;
use crate::auth::{
    AuthError, AuthPolicy, Authn, Secret, digits, hex, percent_encode_into, sha256, unix_time,
    verify_hmac_sha256, within,
};

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";
const DATE: &str = "x-acs-date";
const CONTENT_SHA256: &str = "x-acs-content-sha256";

struct Authorization<'a> {
    key_id: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse(h: &str) -> Result<Authorization<'_>, AuthError> {
    let rest = h
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(AuthError::Malformed(
            "the algorithm is not ACS3-HMAC-SHA256",
        ))?;
    let (mut key_id, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            key_id = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    match (key_id, signed_headers, signature) {
        (Some(key_id), Some(signed_headers), Some(signature)) if !key_id.is_empty() => {
            Ok(Authorization {
                key_id,
                signed_headers,
                signature,
            })
        }
        _ => Err(AuthError::Malformed(
            "Credential, SignedHeaders and Signature are required",
        )),
    }
}

/// `2026-12-02T03:04:05Z` as Unix time.
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits(&s[r]);
    unix_time(
        n(0..4)? as i32,
        n(5..7)? as u8,
        n(8..10)? as u8,
        n(11..13)? as u8,
        n(14..16)? as u8,
        n(17..19)? as u8,
    )
}

/// A header value as ACS3 canonicalizes it: trimmed.
fn text(v: &http::HeaderValue) -> &str {
    std::str::from_utf8(v.as_bytes()).unwrap_or("").trim()
}

/// Checks the head of a request signed with ACS3-HMAC-SHA256.
pub fn verify(parts: &http::request::Parts, policy: &AuthPolicy<'_>) -> Result<Authn, AuthError> {
    let Some(h) = parts.headers.get(http::header::AUTHORIZATION) else {
        return Err(AuthError::Missing);
    };
    let a = parse(
        h.to_str()
            .map_err(|_| AuthError::Malformed("Authorization is not text"))?,
    )?;
    let key = policy
        .credentials
        .get(a.key_id)
        .ok_or_else(|| AuthError::UnknownKey(a.key_id.into()))?;
    let signed: Vec<&str> = a.signed_headers.split(';').collect();
    if !signed.contains(&"host") || !signed.contains(&DATE) {
        return Err(AuthError::Malformed("host and x-acs-date must be signed"));
    }
    let date = parts
        .headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Malformed("x-acs-date is missing"))?;
    let when = parse_date(date).ok_or(AuthError::Malformed(
        "x-acs-date is not an ISO 8601 UTC time",
    ))?;
    if !within(when, policy.now, policy.max_skew) {
        return Err(AuthError::Expired { date: date.into() });
    }

    let mut canonical = String::with_capacity(1024);
    canonical.push_str(parts.method.as_str());
    canonical.push('\n');
    canonical.push_str(parts.uri.path());
    canonical.push('\n');
    let mut pairs = query_pairs(parts.uri.query()).ok_or(AuthError::Malformed(
        "the query string is not valid percent-encoding",
    ))?;
    pairs.sort();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            canonical.push('&');
        }
        canonical.push_str(k);
        canonical.push('=');
        percent_encode_into(&mut canonical, v, b"");
    }
    canonical.push('\n');
    for name in &signed {
        canonical.push_str(name);
        canonical.push(':');
        if *name == "host" && !parts.headers.contains_key(http::header::HOST) {
            // HTTP/2 carries it as :authority.
            canonical.push_str(parts.uri.authority().map(|a| a.as_str()).unwrap_or(""));
        } else {
            let all = parts.headers.get_all(*name);
            let mut values = all.iter();
            match (values.next(), values.next()) {
                (None, _) => {}
                // The usual case: one value, no list to sort.
                (Some(v), None) => canonical.push_str(text(v)),
                (Some(_), Some(_)) => {
                    let mut sorted: Vec<&str> = all.iter().map(text).collect();
                    sorted.sort_unstable();
                    canonical.push_str(&sorted.join(","));
                }
            }
        }
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(a.signed_headers);
    canonical.push('\n');

    let secret = policy.credentials.secret(key).clone();
    let claimed = signed
        .contains(&CONTENT_SHA256)
        .then(|| parts.headers.get(CONTENT_SHA256))
        .flatten()
        .and_then(|v| v.to_str().ok());
    match claimed {
        Some(claimed) => {
            canonical.push_str(claimed);
            if !signature_ok(&secret, &canonical, a.signature) {
                return Err(AuthError::BadSignature);
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
                    if signature_ok(&secret, &canonical, &signature) {
                        Ok(())
                    } else {
                        Err(AuthError::BadSignature)
                    }
                }),
            })
        }
    }
}

fn signature_ok(secret: &Secret, canonical: &str, signature: &str) -> bool {
    let mut sts = String::with_capacity(ALGORITHM.len() + 65);
    sts.push_str(ALGORITHM);
    sts.push('\n');
    sts.push_str(&hex(&sha256(canonical.as_bytes())));
    verify_hmac_sha256(secret.expose(), sts.as_bytes(), signature)
}

#[cfg(test)]
mod tests;
