//! fngate: an HTTPS function invocation gateway.
//!
//! The request path, in the order a request meets it (see ARCHITECTURE.md):
//!
//! 1. [`connection`]: accept, connection limits, TLS (rustls), HTTP/1.1 or HTTP/2.
//! 2. [`pipeline`]: the ordered stages of one invocation.
//! 3. [`api`]: the cloud dialects (Function Compute 3.0, AWS Lambda, Azure
//!    Functions HTTP triggers) that decode requests and render answers and
//!    [`error::InvokeError`]s; [`auth`] holds what their request signatures
//!    and function keys share.
//! 4. [`scheduler`]: bin-pack routing, best-fit placement, instance lifecycle.
//! 5. [`workers`]: the sandbox worker API client; invocations then go straight
//!    to the instance over [`upstream`] connections.
//!
//! Beside the path: [`shards`] (the runtime threads), [`config`], [`metrics`],
//! [`admin`], [`ids`].

pub mod admin;
pub mod api;
pub mod asynchronous;
pub mod auth;
pub mod backend;
pub mod body;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod error;
pub mod execute;
pub mod families;
pub mod fleet;
pub mod functions;
pub mod ids;
pub mod ingress;
pub mod metering;
pub mod metrics;
pub mod pipeline;
mod run;
pub mod scheduler;
pub mod shards;
pub mod throttle;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod layering;

pub use run::{RunError, run};
