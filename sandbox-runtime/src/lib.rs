//! sandbox-runtime: the worker daemon that starts, hosts, times out and
//! releases function instances for one or more fngate gateways.
//!
//! - [`api`]: the gateway ↔ worker wire contract (shared with the gateway).
//! - [`server`]: the HTTP API and [`run`].
//! - [`instance`]: one instance process: spawn, readiness, exit.
//! - [`output`]: an instance's stdout and stderr: the worker log, the stderr
//!   tail, and the recent output invocations' log tails are cut from.
//! - [`memory`]: how an instance's memory size is enforced (cgroup v1/v2, rlimit).
//! - [`isolation`]: instances in their own namespaces (`--isolation namespaces`).
//! - [`rootfs`]: an isolated instance's root file system (what it sees).
//! - [`identity`]: the unprivileged uid an isolated instance runs as.
//! - [`network`]: an isolated instance's network namespace and egress policy.
//! - [`dns`]: the worker's DNS forwarder for isolated instances.
//! - [`bounds`]: an instance's process count and CPU share (cgroup v1 pids, cpu).
//! - [`metrics`]: the worker's Prometheus metrics.
//! - [`fleet`]: fleet membership on NATS key-value buckets (shared with the
//!   gateway), and the worker's leases: instances of dead gateways are released.
//! - [`cli`]: logging and signal handling shared by the fngate binaries.

pub mod api;
pub mod bounds;
pub mod cli;
pub mod dns;
pub mod fleet;
pub mod identity;
pub mod instance;
pub mod isolation;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod output;
pub mod rootfs;
pub mod server;

pub use server::{Config, Worker, run};
