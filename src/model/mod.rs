//! Plain data that flows from `collect` to `analyze` and `render`.
//!
//! Nothing here touches the OS. Types are small, `Copy` where possible, and serialise
//! to the JSON schema documented in `docs/json.md`.

mod container;
mod digest;
mod filter;
mod finding;
mod netns;
mod notice;
mod process;
mod snapshot;
mod socket;
mod state;
mod summary;

pub use notice::{Notice, Source};
pub use process::{Owner, Owners, Process, ProcessFds, SocketOwnerMap};

pub use container::{Container, Pod, Runtime};
pub use digest::DigestBuilder;
pub use filter::{AddrFilter, BadAddrFilter, SocketFilter};
pub use finding::{Evidence, Finding, Severity};
pub use netns::{name_namespace, NetnsInfo, NetnsKind, NetnsRef};
pub use snapshot::{
    parse_port_list, parse_port_range, usable_ports, CloseWaitSocket, CounterSample, FileTable,
    HostSnapshot, KernelLogEntry, Limit, ListenerSocket, PortUse, ProcessFacts, Snapshot,
    SocketDigest, Sockstat, TimeWaitDigest, HOST_WIDE_SYSCTLS, PER_NETNS_SYSCTLS,
};
pub use socket::{Endpoint, Family, Socket, TcpInfo, Timer, TimerKind};
pub use state::{StateCounts, StateSet, TcpState};
pub use summary::{GroupBy, GroupKey, GroupedCounts, StateSummary};
