//! Readers of `/proc`: the `/proc/net/tcp` fallback, counters, sockstat, limits, process
//! facts and status fields. Every reader takes its root as a path so fixtures and
//! captured hosts can stand in for it.

pub mod counters;
pub mod detached;
pub mod limits;
pub mod net_tcp;
pub mod process;
pub mod sockstat;
pub mod status;
