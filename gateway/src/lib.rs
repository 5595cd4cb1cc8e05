//! fngate: an HTTPS function invocation gateway.
//!
//! The request path, in the order a request meets it (see ARCHITECTURE.md):
//!
//! 1. [`connection`]: accept, connection limits, TLS (rustls), HTTP/1.1 or HTTP/2.
//! 2. [`pipeline`]: the ordered stages of one invocation, in the dialect
//!    [`api`] decodes and renders (Function Compute 3.0, AWS Lambda, Azure
//!    Functions HTTP triggers); [`auth`], [`ingress`] and [`throttle`] hold
//!    what the stages decide with.
//! 3. [`execute`]: stage 9, where the call runs: the sandbox (a slot from
//!    the [`scheduler`], then the instance hop over [`upstream`]) or a
//!    function's cloud backends (clients in [`backend`]).
//!
//! Beside the path: [`dispatch`] (asynchronous attempts, through the same
//! pipeline), [`asynchronous`] (the task stores), [`fleet`], [`admin`],
//! [`metering`], [`metrics`]; below everything, [`config`], [`functions`]
//! (the registry) and the leaf types. `run` builds it all, bottom first.
//! The modules import only downward, in the order `layering.rs` checks.

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
pub mod reload;
mod run;
pub mod scheduler;
pub mod shards;
pub mod throttle;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod layering;

pub use run::{RunError, run};
