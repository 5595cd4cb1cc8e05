//! Stage 9, where a call runs: the executors.
//!
//! - [`sandbox::Sandbox`]: fngate's own instances (a slot from the
//!   scheduler, then the instance hop over [`crate::upstream`]);
//! - [`routes`]: a function's `[[functions.backends]]`, by weight and
//!   fallback order, each a cloud ([`cloud`]) or the sandbox.
//!
//! [`Executor`] is the seam the pipeline calls: one per gateway, built by
//! `run`, a fake in the pipeline's unit tests.

pub mod cloud;
pub mod routes;
pub mod sandbox;

use crate::api::{FunctionAnswer, Ran, Trigger, is_hop_by_hop};
use crate::error::InvokeError;
use crate::metering::Leg;
use crate::scheduler::FunctionPool;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// Event contract headers (Function Compute's custom-runtime names).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-fc-request-id");
pub const FUNCTION_NAME: HeaderName = HeaderName::from_static("x-fc-function-name");
/// fngate's own context headers; a caller's headers of this prefix are
/// never forwarded.
pub const CONTEXT_PREFIX: &str = "x-fngate-";
pub const CLIENT_CONTEXT: HeaderName = HeaderName::from_static("x-fngate-client-context");
pub const TRIGGER: HeaderName = HeaderName::from_static("x-fngate-trigger");
pub const HTTP_REQUEST_ID: HeaderName = HeaderName::from_static("x-fngate-request-id");
pub const HTTP_FUNCTION_NAME: HeaderName = HeaderName::from_static("x-fngate-function-name");

/// Whether a caller's header of an HTTP-trigger call is passed on to the
/// function (an instance, or an HTTP backend): not hop-by-hop nor named by
/// `Connection` (`named`), not `Expect`, not the gateway's own
/// `x-fngate-*`, not one the dialect consumed (a function key).
pub fn passes_on(name: &HeaderName, named: &[HeaderName], consumed: &[&str]) -> bool {
    !is_hop_by_hop(name)
        && !named.contains(name)
        && *name != http::header::EXPECT
        && !name.as_str().starts_with(CONTEXT_PREFIX)
        && !consumed.contains(&name.as_str())
}

/// What to send to the instance, besides the payload.
pub struct Call<'a> {
    pub trigger: &'a Trigger<'a>,
    /// The caller's method and headers (HTTP trigger only).
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    pub content_type: Option<&'a HeaderValue>,
    pub client_context: Option<&'a HeaderValue>,
    /// The caller's address, for `X-Forwarded-For` (HTTP trigger only).
    pub caller_ip: Option<IpAddr>,
    pub log_tail: bool,
    /// Ends the call early (an asynchronous task stopped): the instance
    /// running it is reclaimed, as after a timeout.
    pub stop: Option<&'a tokio_util::sync::CancellationToken>,
}

impl Call<'_> {
    /// An event call with no caller headers (asynchronous attempts).
    pub fn event(content_type: Option<&HeaderValue>) -> Call<'_> {
        static NO_HEADERS: std::sync::LazyLock<HeaderMap> =
            std::sync::LazyLock::new(HeaderMap::new);
        static ROOT: std::sync::LazyLock<http::Uri> =
            std::sync::LazyLock::new(|| http::Uri::from_static("/"));
        Call {
            trigger: &Trigger::Event,
            method: &Method::POST,
            uri: &ROOT,
            headers: &NO_HEADERS,
            content_type,
            client_context: None,
            caller_ip: None,
            log_tail: false,
            stop: None,
        }
    }
}

/// Why a call produced no answer, and the instance (or backend) it ran on,
/// if it did.
pub type Failed = (InvokeError, Option<Ran>);

/// What stage 9 needs: run `call` of `pool`'s function somewhere.
pub trait Execute: Send + Sync + 'static {
    /// The call's outcome, and its attempts on cloud backends (for the
    /// usage record).
    fn execute(
        &self,
        pool: &Arc<FunctionPool>,
        call: &Call<'_>,
        payload: Bytes,
        request_id: &HeaderValue,
    ) -> impl Future<Output = (Result<(FunctionAnswer, Ran), Failed>, Vec<Leg>)> + Send;
}

/// The gateway's executor: the sandbox, or the function's backends.
pub struct Executor {
    pub sandbox: sandbox::Sandbox,
    /// The backends of functions that have them, swapped whole by a reload.
    pub routes: arc_swap::ArcSwap<std::collections::HashMap<Arc<str>, routes::Routes>>,
    /// Legs are kept only for the usage record, while there is one.
    pub usage: Arc<crate::metering::usage_log::LiveLog>,
}

impl Execute for Executor {
    async fn execute(
        &self,
        pool: &Arc<FunctionPool>,
        call: &Call<'_>,
        payload: Bytes,
        request_id: &HeaderValue,
    ) -> (Result<(FunctionAnswer, Ran), Failed>, Vec<Leg>) {
        if pool.cfg.backends.is_empty() {
            let r = self.sandbox.call(pool, call, payload, request_id).await;
            return (r, Vec::new());
        }
        let table = self.routes.load_full();
        let Some(routes) = table.get(&pool.cfg.name) else {
            let e = InvokeError::internal("the function's backends were not built");
            return (Err((e, None)), Vec::new());
        };
        // Boxed: its future is larger than the sandbox path needs.
        Box::pin(routes::call(self, pool, routes, call, payload, request_id)).await
    }
}
