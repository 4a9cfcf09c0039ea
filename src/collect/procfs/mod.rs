//! Readers of `/proc`: the `/proc/net/tcp` fallback, the socket owner scan, limits and
//! counters. Every reader takes the proc root as a path so fixtures can stand in for it.

pub mod bpf_owners;
pub mod counters;
pub mod limits;
pub mod net_tcp;
pub mod owners;
pub mod sockstat;
