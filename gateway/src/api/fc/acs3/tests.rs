//! Vectors signed by the real FC 3.0 SDK (alibabacloud-fc20230330 4.8.3,
//! alibabacloud-tea-openapi 0.4.6), captured before sending.

use super::*;
use crate::auth::{Credentials, Secret};

const AUTH: &str = "ACS3-HMAC-SHA256 Credential=LTAItest,SignedHeaders=accept;content-type;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;x-acs-version;x-fc-invocation-type;x-fc-log-type,Signature=11b811ccc38483d19d3b261ba3d284310921dfa6001b85cdc3d95b1c675cc460";
const BODY: &[u8] = br#"{"a":1}"#;
/// 2026-12-02T03:18:06Z, the request's x-acs-date.
const SIGNED_AT: u64 = 1796181486;

fn request(auth: &str, tweak: impl FnOnce(&mut http::HeaderMap)) -> http::request::Parts {
    let mut req = http::Request::post("/2023-03-30/functions/echo/invocations?qualifier=LATEST")
        .body(())
        .unwrap();
    let h = req.headers_mut();
    for (k, v) in [
        ("host", "127.0.0.1:8443"),
        ("x-acs-version", "2023-03-30"),
        ("x-acs-action", "InvokeFunction"),
        (
            "user-agent",
            "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
        ),
        ("x-acs-date", "2026-12-02T03:18:06Z"),
        ("x-acs-signature-nonce", "38e200ee9d13dd2490c1e05e4c0d16b2"),
        ("accept", "application/json"),
        ("x-fc-invocation-type", "Sync"),
        ("x-fc-log-type", "None"),
        ("content-type", "application/octet-stream"),
        (
            "x-acs-content-sha256",
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862",
        ),
        ("x-acs-credentials-provider", "static_ak"),
        ("authorization", auth),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    tweak(h);
    req.into_parts().0
}

fn check(
    parts: &http::request::Parts,
    secret: &str,
    at: u64,
    body: &[u8],
) -> Result<(), AuthError> {
    let mut creds = Credentials::default();
    creds.insert("LTAItest", Secret::new(secret.as_bytes().to_vec()));
    let policy = crate::api::tests::signature_policy(&creds, at);
    match verify(parts, &policy)? {
        Authn::Payload {
            key,
            key_proven,
            check,
        } => {
            assert_eq!(&**creds.id(key), "LTAItest");
            // The SDK signs the hash it declares: the head proves the key.
            assert_eq!(
                key_proven,
                parts.headers.contains_key("x-acs-content-sha256")
            );
            check(&sha256(body))
        }
        Authn::Done(_) => panic!("a signed body must be checked"),
    }
}

#[test]
fn the_sdk_signature_verifies() {
    assert_eq!(
        check(&request(AUTH, |_| {}), "fc-secret", SIGNED_AT, BODY),
        Ok(())
    );
    // Within the window on either side.
    assert_eq!(
        check(&request(AUTH, |_| {}), "fc-secret", SIGNED_AT + 899, BODY),
        Ok(())
    );
    assert_eq!(
        check(&request(AUTH, |_| {}), "fc-secret", SIGNED_AT - 899, BODY),
        Ok(())
    );
}

#[test]
fn failures_say_why() {
    let ok = || request(AUTH, |_| {});
    assert_eq!(
        check(&ok(), "wrong", SIGNED_AT, BODY),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        check(&ok(), "fc-secret", SIGNED_AT, br#"{"a":2}"#),
        Err(AuthError::PayloadMismatch)
    );
    assert!(matches!(
        check(&ok(), "fc-secret", SIGNED_AT + 901, BODY),
        Err(AuthError::Expired { .. })
    ));
    let tampered = request(AUTH, |h| {
        h.insert("x-fc-invocation-type", "Async".parse().unwrap());
    });
    assert_eq!(
        check(&tampered, "fc-secret", SIGNED_AT, BODY),
        Err(AuthError::BadSignature)
    );
    let other_key = request(&AUTH.replace("LTAItest", "LTAIother"), |_| {});
    assert_eq!(
        check(&other_key, "fc-secret", SIGNED_AT, BODY),
        Err(AuthError::UnknownKey("LTAIother".into()))
    );
    let unsigned = request(AUTH, |h| {
        h.remove("authorization");
    });
    assert_eq!(
        check(&unsigned, "fc-secret", SIGNED_AT, BODY),
        Err(AuthError::Missing)
    );
    for bad in [
        "ACS3-HMAC-SHA1 Credential=LTAItest,SignedHeaders=host,Signature=00",
        "ACS3-HMAC-SHA256 Credential=LTAItest",
        "ACS3-HMAC-SHA256 Credential=LTAItest,SignedHeaders=accept,Signature=00",
    ] {
        assert!(
            matches!(
                check(&request(bad, |_| {}), "fc-secret", SIGNED_AT, BODY),
                Err(AuthError::Malformed(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn without_a_signed_content_hash_the_body_is_part_of_the_signature() {
    // Drop the hash header from the signed set: the signature no longer
    // matches the SDK's, but the path through the payload check is taken.
    let parts = request(&AUTH.replace(";x-acs-content-sha256", ""), |h| {
        h.remove("x-acs-content-sha256");
    });
    assert_eq!(
        check(&parts, "fc-secret", SIGNED_AT, BODY),
        Err(AuthError::BadSignature)
    );
}
