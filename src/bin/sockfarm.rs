//! sockfarm: test and benchmark helper that builds real TCP sockets in known
//! states (LISTEN, ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, TIME_WAIT) on loopback,
//! prints one JSON "ready" line, and holds them. Not part of tcpdoctor's UI.
//!
//! Layout: `cli` (flags) -> `plan` (checks and who-makes-what arithmetic) ->
//! `parent` (listeners, fork, phases, ready line, hold) / `worker` (the
//! sockets); `host` reads and writes /proc, `sys` wraps libc.

// A binary's root resolves submodules next to itself, so point into the
// sockfarm/ folder explicitly.
#[path = "sockfarm/cli.rs"]
mod cli;
#[path = "sockfarm/host.rs"]
mod host;
#[path = "sockfarm/parent.rs"]
mod parent;
#[path = "sockfarm/plan.rs"]
mod plan;
#[path = "sockfarm/report.rs"]
mod report;
#[path = "sockfarm/sys.rs"]
mod sys;
#[path = "sockfarm/worker.rs"]
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match parent::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockfarm: {e}");
            ExitCode::FAILURE
        }
    }
}
