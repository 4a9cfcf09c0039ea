//! sockfarm: test and benchmark helper that builds real TCP sockets in known
//! states (LISTEN, ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, TIME_WAIT) on loopback,
//! prints one JSON "ready" line, and holds them. Not part of tcpdoctor's UI.
//!
//! Layout: `cli` (flags) -> `plan` (checks and who-makes-what arithmetic) ->
//! `parent` (listeners, fork, phases, ready line, hold) / `worker` (the
//! sockets); `host` reads and writes /proc, `sys` wraps libc.
//!
//! Built only with the `sockfarm` cargo feature (the tests and bench/ enable it), so
//! `cargo install` ships tcpdoctor alone.

mod churn;
mod cli;
mod forks;
mod host;
mod parent;
mod plan;
mod report;
mod sys;
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
