//! External programs some tests call (groff, man, shells, dpkg tools, linters): found
//! on PATH, or, when missing, a failure under CI (where .ci/run installs them) and a
//! SKIP line elsewhere, like `prom::promtool`.

use std::process::{Command, Stdio};

use super::in_ci;

/// `program` when it runs (`program ARG` exits 0). Missing: under CI the test fails
/// naming the Debian package or installer that brings it (`from`); elsewhere this
/// prints a SKIP line for `what` and the caller leaves that check out.
pub fn tool(program: &'static str, arg: &str, from: &str, what: &str) -> Option<&'static str> {
    let ok = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(program);
    }
    assert!(
        !in_ci(),
        "{what}: {program} is not installed ({from}; .ci/run installs it)"
    );
    eprintln!("SKIP: {what}: {program} is not installed ({from}; .ci/run installs it)");
    None
}
