//! Load tests: a binary of their own because they saturate the machine, and
//! cargo runs test binaries one after another, so they never share it with
//! the timing-sensitive tests of `tests/it` (which would then miss their
//! bounds for no fault of the gateway).

#[path = "../it/harness.rs"]
#[allow(dead_code)] // the load tests use part of it
mod harness;
mod overload;
