use super::*;
use crate::api::LOG_TAIL_BYTES;
use crate::api::tests::{body_of, every_error, parts, reply};
use crate::ingress::policy::Denial;
use base64::Engine;
use std::time::Duration;

fn decode(p: &http::request::Parts) -> Result<Invocation<'_>, InvokeError> {
    Fc.decode(p)
}

#[test]
fn decode_routes() {
    let p = parts(
        "POST",
        "/2023-03-30/functions/echo/invocations?qualifier=LATEST",
        &[],
    );
    let inv = decode(&p).unwrap();
    assert_eq!(
        (&*inv.function, inv.qualifier.as_deref()),
        ("echo", Some("LATEST"))
    );
    assert_eq!(inv.kind, Kind::Sync);
    assert!(!inv.log_tail);
    let p = parts("POST", "/2023-03-30/functions/echo/invocations", &[]);
    assert_eq!(decode(&p).unwrap().qualifier, None);
    for bad in [
        "/",
        "/2023-03-30/functions//invocations",
        "/2023-03-30/functions/a/b/invocations",
        "/2016-08-15/services/s/functions/f/invocations",
    ] {
        let p = parts("POST", bad, &[]);
        assert!(
            matches!(decode(&p), Err(InvokeError::RouteNotFound { .. })),
            "{bad}"
        );
    }
    let p = parts("GET", "/2023-03-30/functions/echo/invocations", &[]);
    assert!(matches!(
        decode(&p),
        Err(InvokeError::MethodNotAllowed { .. })
    ));
}

#[test]
fn decode_headers() {
    let path = "/2023-03-30/functions/echo/invocations";
    let p = parts(
        "POST",
        path,
        &[("x-fc-invocation-type", "async"), ("x-fc-log-type", "Tail")],
    );
    let inv = decode(&p).unwrap();
    assert_eq!(inv.kind, Kind::Async);
    assert!(inv.log_tail);
    for (h, v) in [("x-fc-invocation-type", "Later"), ("x-fc-log-type", "All")] {
        let p = parts("POST", path, &[(h, v)]);
        assert!(
            matches!(decode(&p), Err(InvokeError::InvalidArgument { .. })),
            "{h}"
        );
    }
}

/// Every cause renders to the exact FC status and code; gateway errors carry
/// `{"Code","Message","RequestId"}`, function errors are 200 with the header.
#[test]
fn error_rendering_table() {
    let id = HeaderValue::from_static("req-1");
    let codes = [
        (404, Some("PathNotSupported")),
        (405, Some("MethodNotAllowed")),
        (404, Some("FunctionNotFound")),
        (400, Some("InvalidArgument")),
        (400, Some("EntityTooLarge")),
        (408, Some("RequestTimeout")),
        (400, Some("InvalidArgument")),
        (400, Some("InvalidArgument")),
        (400, Some("MissingRequiredHeader")),
        (403, Some("SignatureNotMatch")),
        (403, Some("InvalidAccessKeyID")),
        (403, Some("SignatureNotMatch")),
        (403, Some("SignatureNotMatch")),
        (403, Some("SignatureNotMatch")),
        (403, Some("SignatureNotMatch")),
        (403, Some("AccessDenied")),
        (429, Some("ResourceThrottled")),
        (429, Some("ResourceExhausted")),
        (412, Some("CAExited")),
        (503, Some("ServiceUnavailable")),
        (503, Some("ServiceUnavailable")),
        (503, Some("ServiceUnavailable")),
        (500, Some("InternalServerError")),
        (200, None),
        (200, None),
        (200, None),
        (200, None),
        (502, Some("BadResponse")),
        (504, Some("GatewayTimeout")),
        (429, Some("ResourceThrottled")),
    ];
    let errors = every_error();
    assert_eq!(errors.len(), codes.len());
    for (err, (status, code)) in errors.iter().zip(codes) {
        let mut r = Fc.error(err, &reply(&id));
        assert_eq!(r.status().as_u16(), status, "{err:?}");
        assert_eq!(r.headers()[REQUEST_ID], "req-1");
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body_of(&mut r)).unwrap();
        match code {
            Some(code) => {
                assert!(!r.headers().contains_key(ERROR_TYPE));
                assert_eq!(v["Code"], code, "{err:?}");
                assert_eq!(v["RequestId"], "req-1");
                assert!(v["Message"].as_str().is_some_and(|m| !m.is_empty()));
                assert_eq!(v.as_object().unwrap().len(), 3);
            }
            None => {
                assert_eq!(r.headers()[ERROR_TYPE], "UnhandledInvocationError");
                assert!(v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()));
            }
        }
    }
    // Throttling says when to retry, in both of FC's forms.
    let t = &errors[16];
    let r = Fc.error(t, &reply(&id));
    assert_eq!(r.headers()[RETRY_AFTER_MS], "1500");
    assert_eq!(r.headers()["retry-after"], "2");
    // The stderr tail reaches the caller of a failed start.
    let mut r = Fc.error(&errors[18], &reply(&id));
    assert!(String::from_utf8_lossy(&body_of(&mut r)).contains("boom"));
}

#[test]
fn denial_messages() {
    let id = HeaderValue::from_static("r");
    let msg = |d: Denial| {
        let mut r = Fc.error(&InvokeError::AccessDenied(d), &reply(&id));
        serde_json::from_slice::<serde_json::Value>(&body_of(&mut r)).unwrap()["Message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let m = msg(Denial::VpcBinding {
        from: "vpc-c".into(),
    });
    assert!(m.starts_with("Resource access is bound by VPC"), "{m}");
    assert!(m.contains("vpc-c"), "{m}");
    assert!(
        msg(Denial::Rule {
            name: Some("quarantine".into()),
            priority: 100
        })
        .contains("'quarantine'")
    );
    assert!(msg(Denial::ImplicitDeny).contains("implicit deny"));
}

#[test]
fn function_errors_are_200_with_error_type() {
    let id = HeaderValue::from_static("r");
    let cases = [
        (
            InvokeError::FunctionTimeout(Duration::from_secs(3)),
            "timed out after 3 seconds",
        ),
        (
            InvokeError::InstanceCrashed {
                detail: "exited with code 3".into(),
            },
            "exited with code 3",
        ),
        (
            InvokeError::BadFunctionResponse {
                detail: "garbage".into(),
            },
            "invalid response",
        ),
    ];
    for (err, text) in cases {
        let mut r = Fc.error(&err, &reply(&id));
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()[ERROR_TYPE], "UnhandledInvocationError");
        let v: serde_json::Value = serde_json::from_slice(&body_of(&mut r)).unwrap();
        let msg = v["errorMessage"].as_str().unwrap();
        assert!(msg.contains(text), "{msg}");
    }
}

#[test]
fn success_carries_the_answer_and_the_log_tail() {
    let id = HeaderValue::from_static("req-9");
    let ran = crate::api::Ran {
        instance_id: HeaderValue::from_static("c-1"),
        cold: false,
        log: Some(Bytes::from_static(b"hello from the function\n")),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "text/plain".parse().unwrap());
    headers.insert("x-private", "no".parse().unwrap());
    let answer = FunctionAnswer {
        status: StatusCode::CREATED,
        headers,
        body: Bytes::from_static(b"ok"),
        failed: false,
    };
    let rep = Reply {
        ran: Some(&ran),
        ..reply(&id)
    };
    let mut r = Fc.success(answer, &rep);
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(!r.headers().contains_key("x-private"));
    assert_eq!(r.headers()[INSTANCE_ID], "c-1");
    assert_eq!(body_of(&mut r), "ok");
    let log = base64::engine::general_purpose::STANDARD
        .decode(r.headers()[LOG_RESULT].as_bytes())
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    assert_eq!(
        log,
        "FC Invoke Start RequestId: req-9\nhello from the function\nFC Invoke End RequestId: req-9"
    );
    // The tail is bounded.
    let big = crate::api::Ran {
        log: Some(Bytes::from(vec![b'x'; 10_000])),
        ..ran
    };
    let rep = Reply {
        ran: Some(&big),
        ..reply(&id)
    };
    let answer = FunctionAnswer {
        status: StatusCode::OK,
        headers: http::HeaderMap::new(),
        body: Bytes::new(),
        failed: false,
    };
    let r = Fc.success(answer, &rep);
    let log = base64::engine::general_purpose::STANDARD
        .decode(r.headers()[LOG_RESULT].as_bytes())
        .unwrap();
    assert_eq!(log.len(), LOG_TAIL_BYTES);
}
