use super::*;
use crate::api::tests::{body_of, every_error, parts, reply};
use std::time::Duration;

fn path(name: &str) -> String {
    format!("/2015-03-31/functions/{name}/invocations")
}

#[test]
fn every_function_name_form() {
    let l = Lambda::default();
    for (encoded, name, qualifier) in [
        ("echo", "echo", None),
        ("echo%3Aprod", "echo", Some("prod")),
        ("echo:prod", "echo", Some("prod")),
        (
            "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho",
            "echo",
            None,
        ),
        (
            "arn%3Aaws%3Alambda%3Aeu-west-1%3A123456789012%3Afunction%3Aecho%3A%24LATEST",
            "echo",
            Some("$LATEST"),
        ),
        ("123456789012%3Afunction%3Aecho", "echo", None),
        ("123456789012%3Afunction%3Aecho%3A7", "echo", Some("7")),
    ] {
        let p = parts("POST", &path(encoded), &[]);
        let inv = l.decode(&p).unwrap_or_else(|e| panic!("{encoded}: {e}"));
        assert_eq!(&*inv.function, name, "{encoded}");
        assert_eq!(inv.qualifier.as_deref(), qualifier, "{encoded}");
        assert_eq!(inv.kind, Kind::Sync);
    }
    // A plain name borrows from the request: no allocation.
    let p = parts("POST", &path("echo"), &[]);
    assert!(matches!(l.decode(&p).unwrap().function, Cow::Borrowed(_)));
    for bad in [
        "",
        "a%2Fb",
        "arn%3Aaws%3As3%3A%3A%3Abucket",
        "arn%3Aaws%3Alambda%3Aus-east-1%3A123%3Afunction%3Aecho",
        "has%20space",
        "echo%3Aa%3Ab",
        // A full ARN with a qualifier and one part more than any form has.
        "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho%3A1%3Ax",
        "%zz",
    ] {
        let p = parts("POST", &path(bad), &[]);
        assert!(l.decode(&p).is_err(), "{bad}");
    }
    let p = parts("POST", "/2015-03-31/functions/echo/configuration", &[]);
    assert!(matches!(
        l.decode(&p),
        Err(InvokeError::RouteNotFound { .. })
    ));
    let p = parts("GET", &path("echo"), &[]);
    assert!(matches!(
        l.decode(&p),
        Err(InvokeError::MethodNotAllowed { .. })
    ));
}

#[test]
fn qualifiers_and_configured_account() {
    let l = Lambda::default();
    let p = parts("POST", &(path("echo") + "?Qualifier=%24LATEST"), &[]);
    assert_eq!(l.decode(&p).unwrap().qualifier.as_deref(), Some("$LATEST"));
    let p = parts("POST", &(path("echo%3Aa") + "?Qualifier=a"), &[]);
    assert_eq!(l.decode(&p).unwrap().qualifier.as_deref(), Some("a"));
    let p = parts("POST", &(path("echo%3Aa") + "?Qualifier=b"), &[]);
    assert!(matches!(
        l.decode(&p),
        Err(InvokeError::InvalidArgument { .. })
    ));

    let l = Lambda::new(Settings {
        account_id: Some("123456789012".into()),
        region: Some("us-east-1".into()),
    });
    let ok = path("arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho");
    assert!(l.decode(&parts("POST", &ok, &[])).is_ok());
    for other in [
        path("arn%3Aaws%3Alambda%3Aeu-west-1%3A123456789012%3Afunction%3Aecho"),
        path("arn%3Aaws%3Alambda%3Aus-east-1%3A999999999999%3Afunction%3Aecho"),
        path("999999999999%3Afunction%3Aecho"),
    ] {
        assert!(
            matches!(
                l.decode(&parts("POST", &other, &[])),
                Err(InvokeError::FunctionNotFound { .. })
            ),
            "{other}"
        );
    }
    // Bare names have no account to disagree with.
    assert!(l.decode(&parts("POST", &path("echo"), &[])).is_ok());
}

#[test]
fn invocation_headers() {
    let l = Lambda::default();
    let p = path("echo");
    let kind = |v| {
        l.decode(&parts("POST", &p, &[(INVOCATION_TYPE.as_str(), v)]))
            .map(|i| i.kind)
    };
    assert_eq!(kind("RequestResponse").unwrap(), Kind::Sync);
    assert_eq!(kind("Event").unwrap(), Kind::Async);
    assert_eq!(kind("DryRun").unwrap(), Kind::DryRun);
    assert!(matches!(
        kind("Later"),
        Err(InvokeError::InvalidArgument { .. })
    ));
    let tail = parts("POST", &p, &[(LOG_TYPE.as_str(), "Tail")]);
    assert!(l.decode(&tail).unwrap().log_tail);
    // Tail is for synchronous calls only.
    let tail = parts(
        "POST",
        &p,
        &[
            (LOG_TYPE.as_str(), "Tail"),
            (INVOCATION_TYPE.as_str(), "Event"),
        ],
    );
    assert!(!l.decode(&tail).unwrap().log_tail);
    assert!(
        l.decode(&parts("POST", &p, &[(LOG_TYPE.as_str(), "All")]))
            .is_err()
    );
    // {"x":1}
    let cc = parts("POST", &p, &[(CLIENT_CONTEXT.as_str(), "eyJ4IjoxfQ==")]);
    assert_eq!(
        l.decode(&cc).unwrap().client_context.unwrap(),
        "eyJ4IjoxfQ=="
    );
    for bad in ["not base64!", "WzFd" /* [1]: not an object */] {
        let cc = parts("POST", &p, &[(CLIENT_CONTEXT.as_str(), bad)]);
        assert!(
            matches!(l.decode(&cc), Err(InvokeError::InvalidContent { .. })),
            "{bad}"
        );
    }
    let big = "e30=".repeat(1000);
    let cc = parts("POST", &p, &[(CLIENT_CONTEXT.as_str(), &big)]);
    assert!(l.decode(&cc).is_err());
}

/// Every cause renders to the status and code botocore expects.
#[test]
fn error_rendering_table() {
    let l = Lambda::default();
    let id = HeaderValue::from_static("req-1");
    let codes = [
        (404, Some("UnknownOperationException")),
        (404, Some("UnknownOperationException")),
        (404, Some("ResourceNotFoundException")),
        (400, Some("InvalidParameterValueException")),
        (413, Some("RequestTooLargeException")),
        (408, Some("RequestTimeoutException")),
        (400, Some("InvalidRequestContentException")),
        (400, Some("InvalidRequestContentException")),
        (403, Some("MissingAuthenticationTokenException")),
        (400, Some("IncompleteSignatureException")),
        (403, Some("UnrecognizedClientException")),
        (403, Some("InvalidSignatureException")),
        (403, Some("InvalidSignatureException")),
        (403, Some("InvalidSignatureException")),
        (403, Some("InvalidSignatureException")),
        (403, Some("AccessDeniedException")),
        (429, Some("TooManyRequestsException")),
        (502, Some("EC2ThrottledException")),
        (200, None),
        (503, Some("ServiceException")),
        (503, Some("ServiceException")),
        (503, Some("ServiceException")),
        (500, Some("ServiceException")),
        (200, None),
        (200, None),
        (200, None),
        (200, None),
        (502, Some("BadGatewayException")),
        (504, Some("GatewayTimeoutException")),
        (429, Some("TooManyRequestsException")),
    ];
    let errors = every_error();
    assert_eq!(errors.len(), codes.len());
    for (err, (status, code)) in errors.iter().zip(codes) {
        let mut r = l.error(err, &reply(&id));
        assert_eq!(r.status().as_u16(), status, "{err:?}");
        assert_eq!(r.headers()[REQUEST_ID], "req-1");
        let v: serde_json::Value = serde_json::from_slice(&body_of(&mut r)).unwrap();
        match code {
            Some(code) => {
                assert_eq!(r.headers()[ERROR_TYPE], code, "{err:?}");
                assert!(!r.headers().contains_key(FUNCTION_ERROR));
                assert!(
                    v["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{err:?}"
                );
                assert!(matches!(v["Type"].as_str(), Some("User" | "Service")));
            }
            None => {
                assert_eq!(r.headers()[FUNCTION_ERROR], "Unhandled", "{err:?}");
                assert!(!r.headers().contains_key(ERROR_TYPE));
                assert_eq!(r.headers()[EXECUTED_VERSION], "$LATEST");
                assert!(v["errorType"].as_str().is_some_and(|m| !m.is_empty()));
                assert!(
                    v["errorMessage"]
                        .as_str()
                        .unwrap()
                        .starts_with("RequestId: req-1")
                );
            }
        }
    }
    let mut r = l.error(&errors[16], &reply(&id));
    assert_eq!(r.headers()[RETRY_AFTER_MS], "1500");
    assert_eq!(r.headers()["retry-after"], "2");
    let v: serde_json::Value = serde_json::from_slice(&body_of(&mut r)).unwrap();
    assert_eq!(
        v["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    let mut r = l.error(&errors[2], &reply(&id));
    let v: serde_json::Value = serde_json::from_slice(&body_of(&mut r)).unwrap();
    assert_eq!(
        v["message"],
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:f"
    );
}

#[test]
fn every_limit_has_a_reason() {
    for l in LimitKind::ALL {
        assert!(reason(l).ends_with("Exceeded"), "{l:?}");
    }
}

#[test]
fn answers_and_log_tail() {
    let l = Lambda::default();
    let id = HeaderValue::from_static("req-2");
    let ran = crate::api::Ran {
        instance_id: HeaderValue::from_static("c-1"),
        cold: true,
        log: Some(Bytes::from_static(b"printed\n")),
    };
    let rep = Reply {
        ran: Some(&ran),
        started: tokio::time::Instant::now() - Duration::from_micros(1500),
        ..reply(&id)
    };
    let answer = |status| FunctionAnswer {
        status,
        headers: http::HeaderMap::new(),
        body: Bytes::from_static(b"{}"),
        failed: false,
    };
    let r = l.success(answer(StatusCode::CREATED), &rep);
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key(FUNCTION_ERROR));
    assert_eq!(r.headers()[EXECUTED_VERSION], "$LATEST");
    let log = base64::engine::general_purpose::STANDARD
        .decode(r.headers()[LOG_RESULT].as_bytes())
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.starts_with("START RequestId: req-2 Version: $LATEST\nprinted\nEND RequestId: req-2\nREPORT RequestId: req-2\tDuration: "), "{log}");
    assert!(log.contains(" ms\tMemory Size: 128 MB\t\n"), "{log}");
    let r = l.success(answer(StatusCode::INTERNAL_SERVER_ERROR), &rep);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[FUNCTION_ERROR], "Handled");
    assert_eq!(l.accepted(Kind::Async, &rep).status(), 202);
    assert_eq!(l.accepted(Kind::DryRun, &rep).status(), 204);
    assert_eq!(l.success_status(StatusCode::IM_A_TEAPOT), 200);
}

#[test]
fn settings_are_validated() {
    assert!(
        Settings {
            account_id: Some("12".into()),
            region: None
        }
        .validate()
        .is_err()
    );
    assert!(
        Settings {
            account_id: None,
            region: Some("us east".into())
        }
        .validate()
        .is_err()
    );
    assert!(
        Settings {
            account_id: Some("123456789012".into()),
            region: Some("eu-west-1".into())
        }
        .validate()
        .is_ok()
    );
}
