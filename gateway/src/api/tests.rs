//! What all dialects share: helpers for their table tests, the seam
//! (`status` agrees with `error` for every cause at every door), and the
//! shared decoders.

use super::*;
use crate::auth::AuthError;
use crate::ingress::policy::Denial;
use crate::throttle::{LimitKind, Throttled};
use hyper::body::Body;
use std::time::Duration;

/// The body of a rendered answer (`Full` is always ready).
pub(crate) fn body_of(resp: &mut Response<ResponseBody>) -> Bytes {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(resp.body_mut()).poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(f))) => f.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

pub(crate) fn reply(request_id: &HeaderValue) -> Reply<'_> {
    Reply {
        request_id,
        ran: None,
        memory_mb: 128,
        started: tokio::time::Instant::now(),
        task_id: None,
    }
}

/// A request head.
pub(crate) fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// A policy that demands signatures from `creds`, at Unix time `at`, 15
/// minutes either way.
pub(crate) fn signature_policy(creds: &crate::auth::Credentials, at: u64) -> AuthPolicy<'_> {
    AuthPolicy {
        mode: crate::auth::AuthMode::Signature,
        level: crate::auth::AuthLevel::Anonymous,
        credentials: creds,
        function_keys: &[],
        host_keys: &[],
        max_skew: Duration::from_secs(900),
        now: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(at),
    }
}

/// One of every cause.
pub(crate) fn every_error() -> Vec<InvokeError> {
    vec![
        InvokeError::RouteNotFound {
            method: Method::POST,
            path: "/x".into(),
        },
        InvokeError::MethodNotAllowed {
            method: Method::GET,
        },
        InvokeError::FunctionNotFound { name: "f".into() },
        InvokeError::InvalidArgument {
            message: "bad".into(),
        },
        InvokeError::PayloadTooLarge {
            limit: 10,
            size: Some(11),
        },
        InvokeError::BodyTimeout(Duration::from_secs(1)),
        InvokeError::BodyRead("x".into()),
        InvokeError::InvalidContent {
            message: "bad".into(),
        },
        InvokeError::Unauthenticated(AuthError::Missing),
        InvokeError::Unauthenticated(AuthError::Malformed("m")),
        InvokeError::Unauthenticated(AuthError::UnknownKey("AK".into())),
        InvokeError::Unauthenticated(AuthError::BadSignature),
        InvokeError::Unauthenticated(AuthError::PayloadMismatch),
        InvokeError::Unauthenticated(AuthError::Expired {
            date: "20261202T000000Z".into(),
        }),
        InvokeError::Unauthenticated(AuthError::BadKey),
        InvokeError::AccessDenied(Denial::VpcBinding {
            from: "internet".into(),
        }),
        InvokeError::Throttled(Throttled {
            limit: LimitKind::FunctionConcurrency,
            retry_after: Duration::from_millis(1500),
        }),
        InvokeError::NoCapacity { memory_mb: 128 },
        InvokeError::InstanceStartFailed {
            message: "exited with code 2".into(),
            stderr_tail: "boom\n".into(),
        },
        InvokeError::ShuttingDown,
        InvokeError::WorkerUnavailable,
        InvokeError::QueueUnavailable {
            cause: "nats: timed out".into(),
        },
        InvokeError::internal("secret detail"),
        InvokeError::FunctionTimeout(Duration::from_secs(3)),
        InvokeError::InstanceCrashed {
            detail: "exited with code 3".into(),
        },
        InvokeError::BadFunctionResponse {
            detail: "garbage".into(),
        },
        InvokeError::FunctionFailed,
        InvokeError::BackendError {
            backend: "aws".into(),
            detail: "answered 403 InvalidSignatureException".into(),
            cause: None,
        },
        InvokeError::BackendTimeout {
            backend: "aws".into(),
            after: Duration::from_secs(2),
        },
        InvokeError::BackendThrottled {
            backend: "aws".into(),
            retry_after: Some(Duration::from_secs(1)),
        },
    ]
}

fn dialects() -> Dialects {
    Dialects {
        fc: fc::Fc,
        lambda: lambda::Lambda::default(),
        azure: azure::Azure,
    }
}

#[test]
fn status_agrees_with_error_and_internals_never_leak() {
    let d = dialects();
    let id = HeaderValue::from_static("1-abc");
    for api in Api::ALL {
        let dialect = d.get(api);
        assert_eq!(dialect.api(), api);
        for e in every_error() {
            let mut resp = dialect.error(&e, &reply(&id));
            assert_eq!(resp.status(), dialect.status(&e), "{api:?} {e:?}");
            let body = body_of(&mut resp);
            assert!(
                !String::from_utf8_lossy(&body).contains("secret detail"),
                "{api:?} {e:?}"
            );
            // Every answer names its request, in the dialect's own header.
            let header = match api {
                Api::Fc => fc::REQUEST_ID,
                Api::Lambda => lambda::REQUEST_ID,
                Api::Azure => azure::REQUEST_ID,
            };
            assert_eq!(resp.headers()[header], "1-abc", "{api:?} {e:?}");
        }
    }
}

#[test]
fn dialect_by_prefix() {
    let d = dialects();
    for (path, api) in [
        ("/2023-03-30/functions/f/invocations", Api::Fc),
        ("/2015-03-31/functions/f/invocations", Api::Lambda),
        ("/api/f", Api::Azure),
        ("/api/f/x/y", Api::Azure),
        ("/", Api::Fc),
        ("/apis", Api::Fc),
    ] {
        assert_eq!(d.select(path).api(), api, "{path}");
    }
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%3Ab", false).unwrap(), "a:b");
    assert!(matches!(
        percent_decode("plain", false).unwrap(),
        Cow::Borrowed(_)
    ));
    assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
    assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
    assert!(percent_decode("%zz", false).is_none());
    assert!(percent_decode("%4", false).is_none());
    assert!(percent_decode("%ff", false).is_none());
    assert_eq!(
        query_pairs(Some("b=2&a=%24x&c")).unwrap(),
        vec![
            (Cow::Borrowed("b"), Cow::Borrowed("2")),
            (Cow::Borrowed("a"), Cow::Owned("$x".into())),
            (Cow::Borrowed("c"), Cow::Borrowed("")),
        ]
    );
    assert_eq!(query_param(Some("x=1&Qualifier=q"), "Qualifier"), Some("q"));
    assert_eq!(query_param(Some("x=1"), "Qualifier"), None);
}

#[test]
fn hop_by_hop_headers_are_not_passed_through() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "close, x-private"),
        ("x-private", "1"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("content-length", "3"),
        ("x-kept", "yes"),
        ("set-cookie", "a=1"),
    ] {
        h.append(k, v.parse().unwrap());
    }
    let out = passthrough_headers(h);
    let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept", "set-cookie"]);
}
