//! Cloud API dialects: thin adapters that decode a request head into an
//! [`Invocation`] and render results and [`crate::error::InvokeError`]s in the
//! cloud's own shape. Nothing past decoding knows which cloud a caller speaks.
//!
//! - [`fc`]: Alibaba Function Compute 3.0 (`/2023-03-30/functions/{name}/invocations`).

pub mod fc;

/// Whether the caller waits for the function's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    Sync,
    /// Accepted at once (202); run later, with retries
    /// ([`crate::pipeline::asynchronous`]).
    Async,
}

/// What a caller asked for, independent of the API it used.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub function: &'a str,
    pub qualifier: Option<&'a str>,
}
