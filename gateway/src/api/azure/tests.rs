use super::*;
use crate::api::tests::{body_of, every_error, parts, reply};
use crate::auth::{AuthMode, Credentials, NamedKey, Secret};
use http::HeaderValue;
use std::time::{Duration, SystemTime};

#[test]
fn routes_keep_the_rest_of_the_path_and_drop_the_key() {
    for (uri, name, path, query) in [
        ("/api/echo", "echo", "/", None),
        ("/api/echo/", "echo", "/", None),
        ("/api/echo/a/b", "echo", "/a/b", None),
        ("/api/echo/a?x=1&y=2", "echo", "/a", Some("x=1&y=2")),
        ("/api/echo?code=k1&x=1", "echo", "/", Some("x=1")),
        (
            "/api/echo?x=1&code=k1&code=k2&y",
            "echo",
            "/",
            Some("x=1&y"),
        ),
        ("/api/echo?code=k1", "echo", "/", None),
    ] {
        let p = parts("DELETE", uri, &[]);
        let inv = Azure.decode(&p).unwrap();
        assert_eq!(&*inv.function, name, "{uri}");
        assert_eq!(inv.kind, Kind::Sync);
        match inv.trigger {
            Trigger::Http {
                path: p,
                query: q,
                consumed_headers,
            } => {
                assert_eq!(p, path, "{uri}");
                assert_eq!(q.as_deref(), query, "{uri}");
                assert_eq!(consumed_headers, [KEY_HEADER]);
            }
            Trigger::Event => panic!("{uri}"),
        }
    }
    assert!(Azure.decode(&parts("GET", "/api/", &[])).is_err());
}

#[test]
fn keys_from_the_header_or_the_query() {
    let creds = Credentials::default();
    let function_keys = [NamedKey {
        name: "default".into(),
        value: Secret::new(b"fk-1".to_vec()),
    }];
    let host_keys = [NamedKey {
        name: "master".into(),
        value: Secret::new(b"hk/+1".to_vec()),
    }];
    let policy = |level| AuthPolicy {
        mode: AuthMode::None,
        level,
        credentials: &creds,
        function_keys: &function_keys,
        host_keys: &host_keys,
        max_skew: Duration::from_secs(900),
        now: SystemTime::now(),
    };
    let check = |uri: &str, headers: &[(&str, &str)]| {
        Azure
            .authenticate(&parts("GET", uri, headers), &policy(AuthLevel::Function))
            .map(|_| ())
    };
    assert!(check("/api/f", &[(KEY_HEADER, "fk-1")]).is_ok());
    assert!(check("/api/f?code=fk-1", &[]).is_ok());
    assert!(check("/api/f?code=hk%2F%2B1", &[]).is_ok());
    assert!(matches!(
        check("/api/f", &[]),
        Err(InvokeError::Unauthenticated(AuthError::Missing))
    ));
    assert!(matches!(
        check("/api/f?code=nope", &[]),
        Err(InvokeError::Unauthenticated(AuthError::BadKey))
    ));
    assert!(matches!(
        check("/api/f", &[(KEY_HEADER, "fk-2")]),
        Err(InvokeError::Unauthenticated(AuthError::BadKey))
    ));
    assert!(
        Azure
            .authenticate(&parts("GET", "/api/f", &[]), &policy(AuthLevel::Anonymous))
            .is_ok()
    );
}

#[test]
fn error_rendering_table() {
    let id = HeaderValue::from_static("req-1");
    let statuses = [
        404, 405, 404, 400, 413, 408, 400, 400, 401, 401, 401, 401, 401, 401, 401, 403, 429, 429,
        503, 503, 503, 503, 500, 500, 500, 500, 500, 502, 504, 429,
    ];
    let errors = every_error();
    assert_eq!(errors.len(), statuses.len());
    for (err, status) in errors.iter().zip(statuses) {
        let mut r = Azure.error(err, &reply(&id));
        assert_eq!(r.status().as_u16(), status, "{err:?}");
        assert_eq!(r.headers()[REQUEST_ID], "req-1");
        let body = body_of(&mut r);
        if matches!(status, 401 | 500) {
            // As Azure answers: a bare status, the cause stays in the logs.
            assert!(body.is_empty(), "{err:?}");
        } else {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()));
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
            );
        }
    }
    assert_eq!(
        Azure.error(&errors[16], &reply(&id)).headers()["retry-after"],
        "2"
    );
}

#[test]
fn the_answer_passes_through_without_hop_by_hop_headers() {
    let id = HeaderValue::from_static("req-3");
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "text/html".parse().unwrap());
    headers.insert("x-custom", "1".parse().unwrap());
    headers.insert("connection", "keep-alive".parse().unwrap());
    headers.insert("transfer-encoding", "chunked".parse().unwrap());
    let answer = FunctionAnswer {
        status: StatusCode::IM_A_TEAPOT,
        headers,
        body: Bytes::from_static(b"<p>tea</p>"),
        failed: false,
    };
    let mut r = Azure.success(answer, &reply(&id));
    assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.headers()["x-custom"], "1");
    assert_eq!(r.headers()[REQUEST_ID], "req-3");
    assert!(!r.headers().contains_key("connection"));
    assert!(!r.headers().contains_key("transfer-encoding"));
    assert_eq!(body_of(&mut r), "<p>tea</p>");
}
