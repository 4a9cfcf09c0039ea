//! Commands: each turns settings into a report by driving collectors and building the
//! model. No printing here: `main` renders the report.

pub mod check;
pub mod collect;
pub mod kill;
pub mod lint;
pub mod netns;
pub mod sockets;
pub mod states;
pub mod trace;

use crate::collect::sockets::CollectError;

/// A command that could not produce a report at all.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// `--netns` named a namespace that cannot be read.
    #[error("{0}")]
    Netns(String),
    /// The connection tracer cannot run (no BPF, not root, no BTF).
    #[error(transparent)]
    Trace(#[from] crate::collect::trace::TraceError),
}
