//! Destinations: the outcome of a done task, sent as a JSON record to the
//! function's `on_success` / `on_failure` URL.
//!
//! The record is written to the store in the same commit as the task's
//! final state, so it is never lost between the two; the deliverer then
//! sends it (HTTP or HTTPS, POST, `content-type: application/json`) until
//! the destination answers 2xx, with binary exponential backoff from
//! `async_retry_base_ms` (at most [`super::policy::MAX_DELAY`] apart), for at most
//! `async_destination_max_age_s` after the task ended (then it is dropped,
//! counted and logged). A record is delivered at least once: a gateway that
//! dies after sending and before recording the answer sends it again.
//!
//! The record has the shape Lambda's destinations use (and FC's result
//! callbacks mirror): `version`, `timestamp`, `requestContext` (`requestId`,
//! `functionArn` (here the function's name, `name:qualifier` when called
//! with one), `condition`: `Success` | `RetriesExhausted` |
//! `EventAgeExceeded`, `approximateInvokeCount`), `requestPayload`,
//! `responseContext` (`statusCode`, `executedVersion`, `functionError` when
//! the function failed), `responsePayload`. A payload that is JSON is
//! embedded as JSON, any other as a string.

use super::store::Delivery;
use super::task::TaskRecord;
use crate::backend::client::TrustError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::time::Duration;

/// The `functionError` of a record whose function failed (Lambda's
/// destination records name every such failure so).
pub const UNHANDLED: &str = "Unhandled";

/// A function answer larger than this is not embedded (as Lambda's 256 KB).
pub const MAX_RESPONSE_PAYLOAD: usize = 256 * 1024;

/// How long one delivery attempt may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The outbound client for destinations: HTTP, or HTTPS verified against
/// the system's roots and `extra_roots` (PEM).
pub fn client(extra_roots: Option<&[u8]>) -> Result<Client, TrustError> {
    let tls =
        crate::backend::client::client_tls(extra_roots.map(|p| ("async_destination_ca_file", p)))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(https),
    )
}

/// The system's trust anchors. None found is not an error: a configured CA
/// file, or plain HTTP, may be all a user needs.
/// A payload as a JSON value: itself when it is JSON, else a string.
fn embed(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
}

/// What an attempt produced, as the record reports it.
pub struct Response<'a> {
    pub status: u16,
    /// `Unhandled` when the function failed.
    pub function_error: Option<&'a str>,
    pub body: &'a [u8],
}

/// The record for `task`, done, to `url`.
pub fn record(
    task: &TaskRecord,
    condition: &str,
    url: &str,
    payload: &[u8],
    response: &Response<'_>,
    now_ms: u64,
) -> Delivery {
    let function_arn = match &task.qualifier {
        Some(q) => format!("{}:{q}", task.function),
        None => task.function.clone(),
    };
    let mut response_context = json!({
        "statusCode": response.status,
        "executedVersion": "$LATEST",
    });
    if let Some(fe) = response.function_error {
        response_context["functionError"] = Value::String(fe.to_string());
    }
    let response_payload = if response.body.len() <= MAX_RESPONSE_PAYLOAD {
        embed(response.body)
    } else {
        Value::Null
    };
    let body = json!({
        "version": "1.0",
        "timestamp": rfc3339_ms(now_ms),
        "requestContext": {
            "requestId": task.request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": task.attempts,
        },
        "requestPayload": embed(payload),
        "responseContext": response_context,
        "responsePayload": response_payload,
    });
    Delivery {
        id: format!("{}/{condition}", task.key()),
        function: task.function.clone(),
        url: url.to_string(),
        body: body.to_string(),
        created_ms: now_ms,
        due_ms: now_ms,
        attempts: 0,
    }
}

fn rfc3339_ms(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Why a destination record was not delivered (it is tried again).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the destination URL cannot be requested: {0}")]
    Request(#[from] http::Error),
    #[error("the destination was not reached: {0}")]
    Unreached(#[source] hyper_util::client::legacy::Error),
    #[error("the destination answered {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One delivery attempt: `Ok` when the destination answered 2xx.
pub async fn send(client: &Client, d: &Delivery) -> Result<(), DeliveryError> {
    let req = http::Request::post(&d.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "fngate-destination")
        .body(Full::new(Bytes::from(d.body.clone())))?;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(DeliveryError::Unreached)?;
        let status = resp.status();
        // Read (bounded) and drop the answer so the connection is reused.
        let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await;
        match status.is_success() {
            true => Ok(()),
            false => Err(DeliveryError::Status(status)),
        }
    };
    match tokio::time::timeout(DELIVERY_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Timeout(DELIVERY_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_has_the_clouds_shape() {
        let task: TaskRecord = serde_json::from_str(
            r#"{"id":"t1","request_id":"r1","function":"f","qualifier":"LATEST","api":"fc",
                "caller":{"network":"internet"},"payload_bytes":9,"accepted_ms":0,"due_ms":0,
                "state":"Failed","attempts":3,"retries":2,"backoffs":0,"events":[]}"#,
        )
        .unwrap();
        let resp = Response {
            status: 200,
            function_error: Some("Unhandled"),
            body: br#"{"errorMessage":"boom"}"#,
        };
        let d = record(
            &task,
            "RetriesExhausted",
            "http://127.0.0.1:1/x",
            b"{\"a\":1}",
            &resp,
            1_700_000_000_123,
        );
        assert_eq!(d.id, "f/t1/RetriesExhausted");
        let v: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(v["version"], "1.0");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["requestContext"]["requestId"], "r1");
        assert_eq!(v["requestContext"]["functionArn"], "f:LATEST");
        assert_eq!(v["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(v["requestPayload"]["a"], 1);
        assert_eq!(v["responseContext"]["statusCode"], 200);
        assert_eq!(v["responseContext"]["functionError"], "Unhandled");
        assert_eq!(v["responsePayload"]["errorMessage"], "boom");
        // A payload that is not JSON travels as a string.
        let d = record(
            &task,
            "Success",
            "u",
            b"plain",
            &Response {
                status: 200,
                function_error: None,
                body: b"ok",
            },
            0,
        );
        let v: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(v["requestPayload"], "plain");
        assert_eq!(v["responsePayload"], "ok");
        assert!(v["responseContext"].get("functionError").is_none());
    }
}
