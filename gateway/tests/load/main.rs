//! Load tests: a binary of their own because they saturate the machine, and
//! cargo runs test binaries one after another, so they never share it with
//! the timing-sensitive tests of `tests/it` (which would then miss their
//! bounds for no fault of the gateway).

mod durable;
mod fleet;
#[path = "../it/harness.rs"]
#[allow(dead_code)] // the load tests use part of it
mod harness;
mod overload;

/// One load test at a time: each saturates the machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
