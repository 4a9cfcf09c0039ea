//! Commands: each turns settings into a report. Policy only: which namespaces, in what
//! order, and when to read again; the reading itself is in `collect`. No printing
//! here: `main` renders the report.

pub mod check;
pub mod diff;
pub mod from;
pub mod kill;
pub mod leaks;
pub mod lint;
pub mod netns;
pub mod snapshot;
pub mod sockets;
pub mod states;
pub mod trace;

use crate::collect::netns::NamespaceError;
use crate::collect::replay::ReplayError;
use crate::collect::sockets::CollectError;

/// A command that could not produce a report at all.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// `--proc-root` is not a capture that can be replayed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// `--netns` named a namespace that cannot be read.
    #[error("{0}")]
    Netns(String),
    /// The connection tracer cannot run (no BPF, not root, no BTF).
    #[error(transparent)]
    Trace(#[from] crate::collect::trace::TraceError),
    /// `--from` (or a `diff` side) cannot be read.
    #[error(transparent)]
    From(#[from] crate::collect::snapshot::FromError),
    /// A file tcpdoctor was asked to write cannot be written.
    #[error("cannot write '{}': {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
