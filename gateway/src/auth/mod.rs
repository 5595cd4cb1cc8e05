//! Who the caller is: request signatures and function keys, in neutral terms.
//!
//! A function demands one of two things per door, as [`AuthPolicy`] says:
//! - `auth = "signature"` (FC and Lambda doors): a request signed with an
//!   access key from `[[credentials]]`, as the cloud's SDK signs it. Each
//!   dialect knows its algorithm (`api/fc/acs3.rs`, `api/lambda/sigv4.rs`);
//!   this module holds what they share: the key store, the HMAC and hash
//!   helpers, and the outcome ([`Authn`]).
//! - `auth_level = "function"` (Azure door): a function key or host key.
//!
//! A signature that covers the payload's hash cannot be checked from the
//! head alone: [`Authn::Payload`] carries the rest of the check, run on the
//! SHA-256 the body reader computes as the bytes arrive (no second pass, no
//! copy, and no hashing at all when nothing asks for it).
//!
//! Secrets are never logged: [`Secret`]'s `Debug` prints a placeholder.

use ring::{digest, hmac};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the FC and Lambda doors demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may call; a signature, if any, is not checked.
    #[default]
    None,
    /// Requests must be signed with a configured access key.
    Signature,
}

/// What the Azure door demands (Azure's `authLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthLevel {
    Anonymous,
    /// A function key or a host key.
    Function,
}

/// A secret from the configuration (a value, a file or an environment
/// variable, read once at load).
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Gateway-wide credentials and the default demand on callers.
#[derive(Debug, Clone, Default)]
pub struct GatewayAuth {
    /// `gateway.auth`: what functions without their own `auth` demand, and
    /// what a request for an unknown function must prove before it learns so.
    pub mode: AuthMode,
    pub credentials: Credentials,
    /// `[azure] host_keys`: accepted for every function with `auth_level = "function"`.
    pub host_keys: Vec<NamedKey>,
    /// How far a signed request's date may be from the gateway's clock.
    pub max_skew: Duration,
}

/// An access key, as an index into [`Credentials`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub u16);

/// The access keys from `[[credentials]]`: id → secret.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_id: HashMap<Arc<str>, KeyId>,
    keys: Vec<(Arc<str>, Secret)>,
}

impl Credentials {
    /// Adds a key; `false` if its id is already known.
    pub fn insert(&mut self, id: &str, secret: Secret) -> bool {
        if self.by_id.contains_key(id) {
            return false;
        }
        let k = KeyId(self.keys.len() as u16);
        let id: Arc<str> = id.into();
        self.by_id.insert(id.clone(), k);
        self.keys.push((id, secret));
        true
    }

    pub fn get(&self, id: &str) -> Option<KeyId> {
        self.by_id.get(id).copied()
    }

    pub fn secret(&self, k: KeyId) -> &Secret {
        &self.keys[k.0 as usize].1
    }

    pub fn id(&self, k: KeyId) -> &Arc<str> {
        &self.keys[k.0 as usize].0
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A named function key or host key.
#[derive(Debug, Clone)]
pub struct NamedKey {
    pub name: Arc<str>,
    pub value: Secret,
}

/// What a request must prove, and what to check it against.
pub struct AuthPolicy<'a> {
    pub mode: AuthMode,
    pub level: AuthLevel,
    pub credentials: &'a Credentials,
    /// The function's keys, then the gateway's host keys.
    pub function_keys: &'a [NamedKey],
    pub host_keys: &'a [NamedKey],
    /// How far a signed request's date may be from the gateway's clock.
    pub max_skew: Duration,
    pub now: SystemTime,
}

impl AuthPolicy<'_> {
    /// The key whose value is `presented`, compared in constant time.
    pub fn key_named(&self, presented: &[u8]) -> Option<&Arc<str>> {
        self.function_keys
            .iter()
            .chain(self.host_keys)
            .find(|k| ct_eq(k.value.expose(), presented))
            .map(|k| &k.name)
    }
}

/// The rest of a check that needs the payload's SHA-256.
pub type PayloadCheck = Box<dyn FnOnce(&[u8; 32]) -> Result<(), AuthError> + Send>;

/// The outcome of checking a request head.
pub enum Authn {
    /// Nothing more to check: anonymous (`None`) or verified.
    Done(Option<KeyId>),
    /// The head checks out; the payload's hash must too before the request
    /// is accepted. `key_proven`: the head's signature alone proves `key`
    /// (it covers a declared payload hash, so only the payload's match with
    /// it is left); otherwise the key is proven only once `check` passes.
    Payload {
        key: KeyId,
        key_proven: bool,
        check: PayloadCheck,
    },
}

impl Authn {
    pub fn needs_payload_hash(&self) -> bool {
        matches!(self, Authn::Payload { .. })
    }

    /// The caller's key, when the head alone proves it.
    pub fn proven_key(&self) -> Option<KeyId> {
        match self {
            Authn::Done(k) => *k,
            Authn::Payload {
                key,
                key_proven: true,
                ..
            } => Some(*key),
            Authn::Payload { .. } => None,
        }
    }
}

/// Why a caller's credentials were refused (each dialect renders its own code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials in the request")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("unknown access key {0:?}")]
    UnknownKey(Arc<str>),
    #[error("signature mismatch")]
    BadSignature,
    #[error("the payload does not match its signed hash")]
    PayloadMismatch,
    /// The signed date is outside the allowed window.
    #[error("request date {date} is outside the allowed window")]
    Expired { date: Arc<str> },
    #[error("wrong function key")]
    BadKey,
}

impl AuthError {
    pub const REASONS: [&'static str; 7] = [
        "missing",
        "malformed",
        "unknown_key",
        "bad_signature",
        "payload_mismatch",
        "expired",
        "bad_key",
    ];

    /// The bounded `reason` label of `fngate_auth_failures_total`.
    pub fn index(&self) -> usize {
        match self {
            AuthError::Missing => 0,
            AuthError::Malformed(_) => 1,
            AuthError::UnknownKey(_) => 2,
            AuthError::BadSignature => 3,
            AuthError::PayloadMismatch => 4,
            AuthError::Expired { .. } => 5,
            AuthError::BadKey => 6,
        }
    }
}

// ---- the parts of a request signature both clouds' schemes share ----

/// The fields of an `Authorization: <algorithm> Credential=...,
/// SignedHeaders=..., Signature=...` header (ACS3 and SigV4 share the form;
/// SigV4 separates the fields with ", ", ACS3 with ",").
pub struct SignedRequest<'a> {
    pub credential: &'a str,
    pub signed_headers: &'a str,
    pub signature: &'a str,
}

impl<'a> SignedRequest<'a> {
    /// The request's `Authorization` header, which must use `algorithm`.
    pub fn parse(
        headers: &'a http::HeaderMap,
        algorithm: &str,
    ) -> Result<SignedRequest<'a>, AuthError> {
        let h = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed("Authorization is not text"))?;
        let rest = h
            .strip_prefix(algorithm)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(AuthError::Malformed(
                "Authorization names another signature algorithm",
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
        match (credential, signed_headers, signature) {
            (Some(credential), Some(signed_headers), Some(signature)) if !credential.is_empty() => {
                Ok(SignedRequest {
                    credential,
                    signed_headers,
                    signature,
                })
            }
            _ => Err(AuthError::Malformed(
                "Credential, SignedHeaders and Signature are required",
            )),
        }
    }

    /// The signed header names; `host` and `date` must be among them.
    pub fn signed(&self, date: &str) -> Result<Vec<&'a str>, AuthError> {
        let signed: Vec<&str> = self.signed_headers.split(';').collect();
        if signed.contains(&"host") && signed.contains(&date) {
            Ok(signed)
        } else {
            Err(AuthError::Malformed(
                "the host and date headers must be signed",
            ))
        }
    }
}

/// The request's signed date header `name`: present, in the scheme's
/// `format` (see [`parse_utc`]), within the policy's skew of the clock.
pub fn signed_date<'a>(
    headers: &'a http::HeaderMap,
    name: &str,
    format: &str,
    policy: &AuthPolicy<'_>,
) -> Result<&'a str, AuthError> {
    let date = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Malformed("the signed date header is missing"))?;
    let when = parse_utc(date, format).ok_or(AuthError::Malformed(
        "the signed date header is not in the scheme's format",
    ))?;
    if within(when, policy.now, policy.max_skew) {
        Ok(date)
    } else {
        Err(AuthError::Expired { date: date.into() })
    }
}

/// The `host` value a client signed: the Host header, or HTTP/2's `:authority`.
pub fn signed_host(parts: &http::request::Parts) -> Option<&str> {
    match parts.headers.get(http::header::HOST) {
        Some(h) => h.to_str().ok(),
        None => parts.uri.authority().map(|a| a.as_str()),
    }
}

/// Ends a canonical request (everything but the payload hash, in
/// `canonical`) and checks it with `signature_ok`. With a `declared` payload
/// hash (signed), the signature is checked now and the payload need only
/// match the declaration, so the head proves the key; otherwise the check
/// waits for the payload's hash.
pub fn finish_canonical(
    key: KeyId,
    mut canonical: String,
    declared: Option<&str>,
    signature_ok: impl Fn(&str) -> bool + Send + 'static,
) -> Result<Authn, AuthError> {
    match declared {
        Some(claimed) => {
            canonical.push_str(claimed);
            if !signature_ok(&canonical) {
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
        None => Ok(Authn::Payload {
            key,
            key_proven: false,
            check: Box::new(move |hash| {
                let mut canonical = canonical;
                canonical.push_str(&hex(hash));
                if signature_ok(&canonical) {
                    Ok(())
                } else {
                    Err(AuthError::BadSignature)
                }
            }),
        }),
    }
}

// ---- crypto helpers shared by the signature dialects ----

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An incremental SHA-256, fed by the body reader frame by frame.
pub struct PayloadHasher(digest::Context);

impl Default for PayloadHasher {
    fn default() -> Self {
        PayloadHasher(digest::Context::new(&digest::SHA256))
    }
}

impl PayloadHasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `hex_signature` is the HMAC-SHA256 of `data` under `key`, in
/// constant time.
pub fn verify_hmac_sha256(key: &[u8], data: &[u8], hex_signature: &str) -> bool {
    match unhex32(hex_signature) {
        Some(tag) => hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), data, &tag).is_ok(),
        None => false,
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 0xf) as usize]));
    }
    s
}

/// 64 hex digits (either case) into 32 bytes.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Equal in constant time (for equal lengths; the length itself may leak).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 3986 percent-encoding: everything but `A-Za-z0-9-_.~` (and the bytes
/// in `keep`) as `%XX` with uppercase hex, appended to `out`.
pub fn percent_encode_into(out: &mut String, s: &str, keep: &[u8]) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || keep.contains(&b)
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 0xf) as usize]));
        }
    }
}

/// The Unix time of a UTC date-time, from its parts; `None` when invalid.
pub fn unix_time(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> Option<i64> {
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).ok()?, d).ok()?;
    let t = time::Time::from_hms(h, mi, s).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Whether `unix` is within `max_skew` of `now`.
pub fn within(unix: i64, now: SystemTime, max_skew: Duration) -> bool {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (unix - now).unsigned_abs() <= max_skew.as_secs()
}

/// A UTC date-time written in the fixed-width `format` (`YYYY`, `MM`, `DD`,
/// `hh`, `mm`, `ss` are its digits; any other character stands for itself),
/// as Unix time; `None` when it does not fit the format or is no valid date.
pub fn parse_utc(s: &str, format: &str) -> Option<i64> {
    if s.len() != format.len() {
        return None;
    }
    // Year, month, day, hour, minute, second.
    let mut f = [0u32; 6];
    for (c, p) in s.bytes().zip(format.bytes()) {
        let i = match p {
            b'Y' => 0,
            b'M' => 1,
            b'D' => 2,
            b'h' => 3,
            b'm' => 4,
            b's' => 5,
            _ if c == p => continue,
            _ => return None,
        };
        if !c.is_ascii_digit() {
            return None;
        }
        f[i] = f[i] * 10 + u32::from(c - b'0');
    }
    let [y, mo, d, h, mi, sec] = f;
    unix_time(y as i32, mo as u8, d as u8, h as u8, mi as u8, sec as u8)
}

/// A canonical header value: trimmed, inner runs of spaces and tabs as one
/// space (the SigV4 and ACS3 rule).
pub fn trim_all(v: &[u8], out: &mut String) {
    let s = String::from_utf8_lossy(v);
    let mut first = true;
    for word in s.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if !first {
            out.push(' ');
        }
        out.push_str(word);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let h = sha256(b"abc");
        assert_eq!(unhex32(&hex(&h)), Some(h));
        assert_eq!(unhex32(&hex(&h).to_uppercase()), Some(h));
        assert_eq!(unhex32("zz"), None);
        let mut inc = PayloadHasher::default();
        inc.update(b"a");
        inc.update(b"bc");
        assert_eq!(inc.finish(), h);
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
        let mut s = String::new();
        percent_encode_into(&mut s, "a b/c~%:$", b"/");
        assert_eq!(s, "a%20b/c~%25%3A%24");
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hmac_sha256(
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert_eq!(unix_time(1970, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(unix_time(2015, 8, 30, 12, 36, 0), Some(1440938160));
        assert_eq!(unix_time(2015, 2, 30, 0, 0, 0), None);
        const ISO: &str = "YYYY-MM-DDThh:mm:ssZ";
        const BASIC: &str = "YYYYMMDDThhmmssZ";
        assert_eq!(parse_utc("2015-08-30T12:36:00Z", ISO), Some(1440938160));
        assert_eq!(parse_utc("20150830T123600Z", BASIC), Some(1440938160));
        for (bad, format) in [
            ("2015-08-30 12:36:00Z", ISO),
            ("2015-08-30T12:36:00", ISO),
            ("2015-08-3xT12:36:00Z", ISO),
            ("2015-02-30T12:36:00Z", ISO),
            ("20150830T126000Z", BASIC),
            ("20150830T123600Z", ISO),
            ("+0150830T123600Z", BASIC),
        ] {
            assert_eq!(parse_utc(bad, format), None, "{bad}");
        }
        let mut t = String::new();
        trim_all(b"  a \t b   c ", &mut t);
        assert_eq!(t, "a b c");
        let secret = Secret::new(b"hunter2".to_vec());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
