//! What the `kvmem` binary's end-to-end tests share: the command, argument lists written as one
//! line, and the checks on a finished run.

#![allow(dead_code)] // Each test binary uses its own part.

use std::process::{Command, Output};

/// `kvmem` with the UCX InfiniBand module left out: on machines without InfiniBand, the bundled
/// libnl-route crashes in its exit-time destructor once UCX's ib module has loaded it (the
/// process has finished its work by then, but exits with SIGSEGV). Nothing here uses InfiniBand.
pub fn kvmem() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmem"));
    c.env("UCX_MODULES", "^ib");
    c
}

/// An argument list written as one line, split at whitespace (no argument holds a space).
pub fn args(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Checks that the run succeeded (else fails with its status and output) and returns the JSON
/// it printed.
#[track_caller]
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kvmem failed ({}): {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Checks that the run succeeded and returns what it printed.
#[track_caller]
pub fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kvmem failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that the run failed and returns its error output.
#[track_caller]
pub fn stderr_of_failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "kvmem succeeded where it must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
