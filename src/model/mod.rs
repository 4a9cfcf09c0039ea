//! Plain data that flows from `collect` to `analyze` and `render`.
//!
//! Nothing here touches the OS. Types are small, `Copy` where possible, and serialise
//! to the JSON schema documented in `docs/json.md`. Kernel facts and the numbers
//! derived from them live here too ([`kernel`]), so that every consumer computes them
//! the same way.

mod container;
pub mod diff;
mod digest;
mod filter;
mod finding;
pub mod flow;
pub mod kernel;
mod kill;
mod netns;
pub mod nginx;
mod notice;
pub mod persisted;
mod process;
pub mod provenance;
pub mod rank;
mod report;
mod snapshot;
mod socket;
mod state;
mod summary;
pub mod text;
pub mod units;

pub use notice::{Notice, NoticeCode, Source};
pub use process::{Owner, Owners, Process, ProcessFds, SocketOwnerMap};

pub use container::{Container, Pod, Runtime};
pub use digest::{DigestBuilder, SERVED_MIN_PEERS, SERVED_MIN_REMOTE_PORTS};
pub use filter::{AddrFilter, BadAddrFilter, SocketFilter};
pub use finding::{Evidence, Finding, FixStep, Nature, Severity, SysctlChange};
pub use flow::{
    Closer, ConnectFailures, Direction, FlowCounts, FlowEvent, FlowEventKind, FlowFilter,
    FlowInterval, FlowKey, FlowPeer, FlowRow, Lifetimes, NamespaceFlows, TraceLosses, TraceSummary,
};
pub use kernel::{EphemeralPorts, PortRange, TimeWaitPolicy};
pub use kill::{Confirmation, KillOutcome, KillReport, KillRow, KillStop};
pub use netns::{name_namespace, NetnsInfo, NetnsKind, NetnsRef};
pub use report::{
    CheckReport, GroupRow, Groups, LintReport, NamespaceCounts, SocketsReport, StatesReport,
};
pub use snapshot::{
    sort_port_use, CloseWaitRecheck, CloseWaitSocket, ClosingRate, CounterSample,
    DescriptorRecheck, DetachedFds, DetachedProcess, FileTable, HostSnapshot, KernelLogEntry,
    Limit, ListenerSocket, PortUse, ProcessFacts, Snapshot, SocketDigest, Sockstat, TimeWaitAges,
    TimeWaitDigest, AGE_BUCKETS, HOST_WIDE_SYSCTLS, PER_NETNS_SYSCTLS,
};
pub use socket::{Endpoint, Family, Socket, TcpInfo, Timer, TimerKind};
pub use state::{StateCounts, StateSet, TcpState};
pub use summary::{GroupBy, GroupKey, GroupedCounts, StateSummary};
