//! Vectors signed by botocore 1.44.8 itself (clock fixed at 2026-12-02T03:12:30Z),
//! captured before sending; and AWS's own `get-vanilla` suite vector for the
//! key derivation.

use super::*;
use crate::auth::{Credentials, Secret};

const SIGNED_AT: u64 = 1796181150;
const BODY: &[u8] = br#"{"a":1}"#;
const PLAIN: &str = "AWS4-HMAC-SHA256 Credential=AKIDTEST/20261202/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=d5524ec93ba2281e1afc1288705db6aedd0cae8be2ba725bdfcd41934db56c23";
const ARN: &str = "AWS4-HMAC-SHA256 Credential=AKIDTEST/20261202/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-client-context;x-amz-date;x-amz-log-type, Signature=386dedc86af7069ab58ea2612f8a0c347a86b1101dd7b6d0d0bb1dcf1295c8fb";

fn request(uri: &str, auth: &str, extra: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::post(uri).body(()).unwrap();
    let h = req.headers_mut();
    h.insert("host", "127.0.0.1:8443".parse().unwrap());
    h.insert("x-amz-date", "20261202T031230Z".parse().unwrap());
    h.insert(
        "user-agent",
        "Boto3/1.44.5 md/Botocore#1.44.8".parse().unwrap(),
    );
    h.insert("authorization", auth.parse().unwrap());
    for (k, v) in extra {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req.into_parts().0
}

fn plain() -> http::request::Parts {
    request("/2015-03-31/functions/echo/invocations", PLAIN, &[])
}

fn arn() -> http::request::Parts {
    request(
        "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho/invocations?Qualifier=%24LATEST",
        ARN,
        &[
            ("x-amz-log-type", "Tail"),
            ("x-amz-client-context", "eyJ4IjoxfQ=="),
        ],
    )
}

fn check(
    parts: &http::request::Parts,
    secret: &str,
    at: u64,
    body: &[u8],
) -> Result<(), AuthError> {
    let mut creds = Credentials::default();
    creds.insert("AKIDTEST", Secret::new(secret.as_bytes().to_vec()));
    let policy = crate::api::tests::signature_policy(&creds, at);
    match verify(parts, &policy)? {
        Authn::Payload {
            key_proven, check, ..
        } => {
            // botocore declares no hash: only the payload proves the key.
            assert!(!key_proven);
            check(&sha256(body))
        }
        Authn::Done(_) => panic!("botocore signs the payload"),
    }
}

#[test]
fn botocore_signatures_verify() {
    assert_eq!(check(&plain(), "lambda-secret", SIGNED_AT, BODY), Ok(()));
    // The ARN is percent-encoded in the path and signed encoded twice.
    assert_eq!(check(&arn(), "lambda-secret", SIGNED_AT, BODY), Ok(()));
}

#[test]
fn failures_say_why() {
    assert_eq!(
        check(&plain(), "wrong", SIGNED_AT, BODY),
        Err(AuthError::BadSignature)
    );
    // A tampered body changes the signed hash.
    assert_eq!(
        check(&plain(), "lambda-secret", SIGNED_AT, br#"{"a":2}"#),
        Err(AuthError::BadSignature)
    );
    assert!(matches!(
        check(&plain(), "lambda-secret", SIGNED_AT + 901, BODY),
        Err(AuthError::Expired { .. })
    ));
    let tampered = request(
        "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho/invocations?Qualifier=%24LATEST",
        ARN,
        &[
            ("x-amz-log-type", "None"),
            ("x-amz-client-context", "eyJ4IjoxfQ=="),
        ],
    );
    assert_eq!(
        check(&tampered, "lambda-secret", SIGNED_AT, BODY),
        Err(AuthError::BadSignature)
    );
    let other = request(
        "/2015-03-31/functions/echo/invocations",
        &PLAIN.replace("AKIDTEST", "AKIDOTHER"),
        &[],
    );
    assert_eq!(
        check(&other, "lambda-secret", SIGNED_AT, BODY),
        Err(AuthError::UnknownKey("AKIDOTHER".into()))
    );
    let mut unsigned = plain();
    unsigned.headers.remove("authorization");
    assert_eq!(
        check(&unsigned, "lambda-secret", SIGNED_AT, BODY),
        Err(AuthError::Missing)
    );
    for bad in [
        PLAIN.replace("/lambda/", "/s3/"),
        PLAIN.replace("20261202/", "20261201/"),
        PLAIN.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=host"),
        PLAIN.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
        "AWS4-HMAC-SHA256 Credential=AKIDTEST".to_string(),
    ] {
        let parts = request("/2015-03-31/functions/echo/invocations", &bad, &[]);
        assert!(
            matches!(
                check(&parts, "lambda-secret", SIGNED_AT, BODY),
                Err(AuthError::Malformed(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn a_declared_payload_hash_is_checked_from_the_head_and_against_the_body() {
    let mut creds = Credentials::default();
    creds.insert("AKIDTEST", Secret::new(b"lambda-secret".to_vec()));
    // Signed with the body hash declared: the signature does not match
    // botocore's (it did not sign one), so only the declared path's checks run.
    let parts = request(
        "/2015-03-31/functions/echo/invocations",
        PLAIN,
        &[("x-amz-content-sha256", &hex(&sha256(BODY)))],
    );
    let policy = crate::api::tests::signature_policy(&creds, SIGNED_AT);
    // The declared hash replaces the computed one in the canonical request,
    // which is exactly botocore's canonical request here: it verifies.
    match verify(&parts, &policy).unwrap() {
        Authn::Payload { check, .. } => {
            assert_eq!(check(&sha256(BODY)), Ok(()));
        }
        Authn::Done(_) => panic!(),
    }
    match verify(&parts, &policy).unwrap() {
        Authn::Payload { check, .. } => {
            assert_eq!(check(&sha256(b"other")), Err(AuthError::PayloadMismatch));
        }
        Authn::Done(_) => panic!(),
    }
}

#[test]
fn aws_suite_key_derivation() {
    // aws-sig-v4-test-suite get-vanilla: its service is "service", so the
    // derivation is checked here with that name.
    let secret = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let mut k = b"AWS4".to_vec();
    k.extend_from_slice(secret);
    let k = hmac_sha256(&k, b"20150830");
    let k = hmac_sha256(&k, b"us-east-1");
    let k = hmac_sha256(&k, b"service");
    let k = hmac_sha256(&k, b"aws4_request");
    let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let sts = format!(
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
        hex(&sha256(canonical.as_bytes()))
    );
    assert_eq!(
        hex(&hmac_sha256(&k, sts.as_bytes())),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

#[test]
fn dot_segments() {
    assert_eq!(remove_dot_segments("/a/./b/../c//d/"), "/a/c/d/");
    assert_eq!(remove_dot_segments("/"), "/");
    assert_eq!(remove_dot_segments("/a/.."), "/");
}
