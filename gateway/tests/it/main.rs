//! Integration tests: real `gateway` and `sandbox-runtime` binaries, real
//! TLS, real function processes. One binary (see ../../ARCHITECTURE.md).

mod asynchronous;
mod backends;
mod docker;
mod doors;
mod egress;
mod fleet;
mod h2_abuse;
mod hardening;
mod harness;
mod ingress;
mod invoke;
mod isolation;
mod lifecycle;
mod loadtest;
mod metering;
mod observability;
mod reload;
mod scheduling;
mod sdk;
mod tasks;
mod throttle;
mod tls;
