use super::*;
use crate::ingress::policy::Denial;
use std::time::Duration;

fn uri(s: &str) -> http::Uri {
    s.parse().unwrap()
}

#[test]
fn decode_routes() {
    let u = uri("/2023-03-30/functions/echo/invocations?qualifier=LATEST");
    let inv = decode(&Method::POST, &u).unwrap();
    assert_eq!((inv.function, inv.qualifier), ("echo", Some("LATEST")));
    let u = uri("/2023-03-30/functions/echo/invocations");
    assert_eq!(decode(&Method::POST, &u).unwrap().qualifier, None);
    for bad in [
        "/",
        "/2023-03-30/functions//invocations",
        "/2023-03-30/functions/a/b/invocations",
        "/2016-08-15/services/s/functions/f/invocations",
    ] {
        let u = uri(bad);
        assert!(
            matches!(
                decode(&Method::POST, &u),
                Err(InvokeError::RouteNotFound { .. })
            ),
            "{bad}"
        );
    }
    let u = uri("/2023-03-30/functions/echo/invocations");
    assert!(matches!(
        decode(&Method::GET, &u),
        Err(InvokeError::MethodNotAllowed { .. })
    ));
}

/// Every cause renders to the exact FC status and code; gateway errors carry
/// `{"Code","Message","RequestId"}`, function errors are 200 with the header.
#[test]
fn error_rendering_table() {
    let cases: Vec<(InvokeError, u16, &str)> = vec![
        (
            InvokeError::RouteNotFound {
                method: Method::POST,
                path: "/x".into(),
            },
            404,
            "PathNotSupported",
        ),
        (
            InvokeError::MethodNotAllowed {
                method: Method::GET,
            },
            405,
            "MethodNotAllowed",
        ),
        (
            InvokeError::FunctionNotFound { name: "f".into() },
            404,
            "FunctionNotFound",
        ),
        (
            InvokeError::PayloadTooLarge {
                limit: 10,
                size: Some(11),
            },
            400,
            "EntityTooLarge",
        ),
        (
            InvokeError::PayloadTooLarge {
                limit: 10,
                size: None,
            },
            400,
            "EntityTooLarge",
        ),
        (
            InvokeError::BodyTimeout(Duration::from_secs(1)),
            408,
            "RequestTimeout",
        ),
        (InvokeError::BodyRead("x".into()), 400, "InvalidArgument"),
        (
            InvokeError::NoCapacity { memory_mb: 128 },
            429,
            "ResourceExhausted",
        ),
        (
            InvokeError::InstanceStartFailed {
                message: "exited with code 2".into(),
                stderr_tail: "boom\n".into(),
            },
            412,
            "CAExited",
        ),
        (InvokeError::ShuttingDown, 503, "ServiceUnavailable"),
        (
            InvokeError::internal("secret detail"),
            500,
            "InternalServerError",
        ),
    ];
    for (err, status, code) in cases {
        let r = render_error(&err, "req-1");
        assert_eq!(r.status.as_u16(), status, "{err:?}");
        assert!(r.error_type.is_none());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["Code"], code, "{err:?}");
        assert_eq!(v["RequestId"], "req-1");
        assert!(v["Message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(v.as_object().unwrap().len(), 3);
    }
    // Internals never leak to clients.
    let r = render_error(&InvokeError::internal("secret detail"), "r");
    assert!(!String::from_utf8_lossy(&r.body).contains("secret"));
    // The stderr tail reaches the caller of a failed start.
    let r = render_error(
        &InvokeError::InstanceStartFailed {
            message: "m".into(),
            stderr_tail: "boom\n".into(),
        },
        "r",
    );
    assert!(String::from_utf8_lossy(&r.body).contains("boom"));
}

#[test]
fn denial_messages() {
    let msg = |d: Denial| {
        let r = render_error(&InvokeError::AccessDenied(d), "r");
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["Message"]
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
        let r = render_error(&err, "r");
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.error_type.unwrap(), "UnhandledInvocationError");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let msg = v["errorMessage"].as_str().unwrap();
        assert!(msg.contains(text), "{msg}");
    }
}
