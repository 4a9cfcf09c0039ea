//! What `check` knows about a host at one moment: socket aggregates (never the full
//! socket list), processes with their descriptor use, sysctls, counters sampled twice,
//! and the kernel's own log. Rules in `analyze` read only this.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::kernel::{self, EphemeralPorts, PortRange, TimeWaitPolicy};
use super::{Endpoint, NetnsInfo, Notice, Owner, Source, StateCounts, StateSummary};

/// Destinations kept in [`SocketDigest::port_use`]: a handful of connections cannot be
/// near exhaustion, and the report and its JSON stay bounded.
pub const PORT_USE_KEPT: usize = 200;

/// Sysctls that live in each network namespace (6.12 `ipv4_net_table`,
/// `sysctl_net_core.c`, netfilter's per-netns conntrack table): a new namespace starts
/// from the kernel default for each, not from the host's value. Everything else
/// tcpdoctor reads (tcp_mem, tcp_max_orphans, netdev_max_backlog, fs.*) is host-wide.
pub const PER_NETNS_SYSCTLS: &[&str] = &[
    // Removed in 4.12; still read so the audit can flag a kernel that has it.
    "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rfc1337",
    "net.ipv4.tcp_ehash_entries",
    // Vendor kernels only (Alibaba Cloud Linux): the TIME_WAIT length.
    "net.ipv4.tcp_tw_timeout",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_autobind_reuse",
    "net.core.somaxconn",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
];

/// The host-wide sysctls tcpdoctor reads, once per run (the same in every namespace).
pub const HOST_WIDE_SYSCTLS: &[&str] = &[
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_mem",
    "net.core.netdev_max_backlog",
    "fs.file-max",
    "fs.file-nr",
    "fs.nr_open",
    "net.netfilter.nf_conntrack_max",
];

/// A resource limit: a number or unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    Value(u64),
    Unlimited,
}

impl Limit {
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Value(v) => Some(v),
            Limit::Unlimited => None,
        }
    }
}

/// A process as the doctor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessFacts {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub cmdline: String,
    pub open_fds: u64,
    /// Soft and hard RLIMIT_NOFILE from /proc/PID/limits; `None` if unreadable.
    pub nofile_soft: Option<Limit>,
    pub nofile_hard: Option<Limit>,
    /// TCP sockets the process holds as descriptors that are in no kernel socket table
    /// (state CLOSE: reset, aborted by keepalive, failed connect(), or never
    /// connected), so `ss` does not show them; `None` when not measured (only `check`
    /// counts them, and not on a replay). A socket of a namespace that was not read
    /// counts too: this is exact when every namespace its sockets live in was read.
    pub detached_tcp_fds: Option<u64>,
}

/// One CLOSE_WAIT socket: the peer has closed, the local application has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CloseWaitSocket {
    pub local: Endpoint,
    pub remote: Endpoint,
    /// 0: still in a listener's accept queue (nobody accepted it).
    pub inode: u64,
    /// 1 (or more): the EOF was never read; 0: read, but the socket was never closed.
    pub recv_q: u32,
    pub owner: Option<Owner>,
    /// Milliseconds since the peer was last heard from (min of tcp_info lastrcv and
    /// lastack): a lower bound of how long the socket has been in CLOSE_WAIT.
    pub idle_ms: Option<u32>,
    /// The kernel's socket cookie (sock_diag only): the socket's identity across dumps.
    pub cookie: Option<u64>,
    /// Looked at again after the counter interval ([`Snapshot::close_wait_recheck_ms`]):
    /// `Some(true)` still in CLOSE_WAIT, `Some(false)` closed since; `None` when not
    /// re-checked.
    pub still_there: Option<bool>,
}

/// A listening socket and its accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListenerSocket {
    pub local: Endpoint,
    /// Connections waiting to be accepted.
    pub accept_queue: u32,
    /// The backlog the application asked for, capped by somaxconn.
    pub backlog: u32,
    /// False when the source cannot tell the backlog (/proc/net/tcp shows 0 there);
    /// then `backlog` means nothing and the queue cannot be judged full.
    pub backlog_known: bool,
    pub inode: u64,
    pub owner: Option<Owner>,
}

impl ListenerSocket {
    /// Whether the accept queue is full. The kernel drops when it holds more than the
    /// backlog (sk_acceptq_is_full()); `ss` can show backlog + 1, and reaching the
    /// backlog is treated as full. Never full when the backlog is unknown.
    pub fn is_full(&self) -> bool {
        self.backlog_known && self.accept_queue > 0 && self.accept_queue >= self.backlog
    }

    /// The accept queue as a percentage of the backlog (100 for a full zero backlog);
    /// `None` when the backlog is unknown.
    pub fn fill_pct(&self) -> Option<f64> {
        if !self.backlog_known {
            return None;
        }
        Some(if self.backlog == 0 {
            if self.is_full() {
                100.0
            } else {
                0.0
            }
        } else {
            f64::from(self.accept_queue) * 100.0 / f64::from(self.backlog)
        })
    }
}

/// Age buckets of [`TimeWaitAges`]: [0,1) s, [1,2), [2,4), ... [128,256), [256 s, ...).
pub const AGE_BUCKETS: usize = 10;

/// A rate estimate starts from the shortest window holding at least this many entries
/// (or the whole TIME_WAIT length when none does).
const RATE_MIN_ENTRIES: u64 = 20;

/// A window is widened over the next bucket only when that bucket holds at least this
/// share of what the rate so far predicts (less two standard deviations of a Poisson
/// count, so that random traffic does not stop it early).
const RATE_BUCKET_FULL: f64 = 0.95;

/// How old a group of TIME_WAIT entries is, in fixed buckets: a few dozen bytes per
/// group, never one record per socket. An entry's age is the TIME_WAIT length minus its
/// timer ([`TimeWaitPolicy::age_ms`]), so one dump tells when each entry's connection
/// closed, and so the closing rate over the last seconds. Ages are estimates: the kernel
/// restarts the timer when the peer keeps sending, which makes such an entry look young.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimeWaitAges {
    /// Entries per age bucket (see [`AGE_BUCKETS`]).
    pub buckets: [u32; AGE_BUCKETS],
    /// Entries younger than the reuse delay: connect() cannot take their port yet even
    /// where tcp_tw_reuse applies.
    pub young: u32,
    /// Entries whose timer was not reported: no age (not in `buckets`).
    pub unknown: u32,
}

/// Closing rate read from TIME_WAIT ages: connections closed first per second over the
/// last `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClosingRate {
    pub per_s: f64,
    pub window_ms: u64,
}

impl TimeWaitAges {
    /// The bucket of an age: 0 below 1 s, then one per doubling.
    fn bucket(age_ms: u64) -> usize {
        match age_ms / 1000 {
            0 => 0,
            s => (s.ilog2() as usize + 1).min(AGE_BUCKETS - 1),
        }
    }

    /// Counts one entry of `age_ms` (`None`: timer not reported).
    pub fn add(&mut self, age_ms: Option<u64>, reuse_delay_ms: u64) {
        match age_ms {
            Some(age) => {
                let b = &mut self.buckets[Self::bucket(age)];
                *b = b.saturating_add(1);
                if age < reuse_delay_ms {
                    self.young = self.young.saturating_add(1);
                }
            }
            None => self.unknown = self.unknown.saturating_add(1),
        }
    }

    pub fn merge(&mut self, other: &TimeWaitAges) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a = a.saturating_add(b);
        }
        self.young = self.young.saturating_add(other.young);
        self.unknown = self.unknown.saturating_add(other.unknown);
    }

    /// Every entry, aged or not.
    pub fn total(&self) -> u64 {
        self.known() + u64::from(self.unknown)
    }

    /// Entries with an age.
    pub fn known(&self) -> u64 {
        self.buckets.iter().map(|b| u64::from(*b)).sum()
    }

    /// Entries whose port connect() cannot take over yet: younger than the reuse delay,
    /// or of unknown age.
    pub fn not_reusable_yet(&self) -> u64 {
        u64::from(self.young) + u64::from(self.unknown)
    }

    /// Connections closed per second, from the ages. It starts with the shortest recent
    /// window of 1, 2, 4, ... s holding 20 entries or more, and widens it bucket by
    /// bucket (up to the TIME_WAIT length `len_ms`) while the older bucket is as full as
    /// the rate so far predicts. Where tcp_tw_reuse took entries over early (never
    /// before the reuse delay) or traffic paused, the older buckets are thin and the
    /// window stops before them: the rate is that of the connections still counted,
    /// not the count spread over the whole length. `None` when no entry has an age.
    pub fn closing_rate(&self, len_ms: u64) -> Option<ClosingRate> {
        let known = self.known();
        if known == 0 || len_ms == 0 {
            return None;
        }
        // (window ms, entries younger than it), shortest first, the whole length last.
        let mut windows: Vec<(u64, u64)> = Vec::with_capacity(AGE_BUCKETS);
        let mut within = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            within += u64::from(*n);
            let end = 1000u64 << i;
            if end >= len_ms || i == AGE_BUCKETS - 1 {
                break;
            }
            windows.push((end, within));
        }
        windows.push((len_ms, known));
        let start = windows
            .iter()
            .position(|(_, n)| *n >= RATE_MIN_ENTRIES)
            .unwrap_or(windows.len() - 1);
        let per_s = |(w, n): (u64, u64)| n as f64 * 1000.0 / w as f64;
        let mut at = windows[start];
        for next in &windows[start + 1..] {
            let expected = per_s(at) * (next.0 - at.0) as f64 / 1000.0;
            let added = (next.1 - at.1) as f64;
            if added < RATE_BUCKET_FULL * expected - 2.0 * expected.sqrt() {
                break;
            }
            at = *next;
        }
        Some(ClosingRate {
            per_s: per_s(at),
            window_ms: at.0,
        })
    }
}

/// Sockets that hold a local port from ip_local_port_range towards one destination.
/// Ephemeral ports are unique per (source ip, destination ip, destination port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortUse {
    pub local_ip: IpAddr,
    pub remote: Endpoint,
    pub counts: StateCounts,
    /// One owning process of these connections, to say who makes them.
    pub sample_owner: Option<Owner>,
    /// Ports connect() may use towards this destination in its namespace
    /// ([`EphemeralPorts::usable`] of that namespace).
    pub usable: u64,
    /// Ages of this destination's TIME_WAIT sockets (as many as
    /// `counts.get(TimeWait)` when the digest built it).
    pub time_wait_ages: TimeWaitAges,
    /// Whether connect() may take over these TIME_WAIT ports once they are older than
    /// the reuse delay ([`TimeWaitPolicy::reuse_applies`] of the namespace).
    pub tw_reuse: bool,
}

impl PortUse {
    /// Local ports this destination holds: every state counts, TIME_WAIT included.
    pub fn used(&self) -> u64 {
        self.counts.total()
    }

    /// Ports held by sockets other than TIME_WAIT: never reusable.
    pub fn held_open(&self) -> u64 {
        self.used() - self.time_wait()
    }

    pub fn time_wait(&self) -> u64 {
        self.counts.get(super::TcpState::TimeWait)
    }

    /// Ports connect() cannot pick now: every socket other than TIME_WAIT, plus the
    /// TIME_WAIT ones it may not take over: all where reuse does not apply, else those
    /// younger than the reuse delay (or of unknown age).
    pub fn unavailable(&self) -> u64 {
        let tw = self.time_wait();
        let blocked = if self.tw_reuse {
            self.time_wait_ages.not_reusable_yet().min(tw)
        } else {
            tw
        };
        self.held_open() + blocked
    }

    /// Ports connect() can still pick towards this destination.
    pub fn headroom(&self) -> u64 {
        self.usable.saturating_sub(self.unavailable())
    }

    /// The most new connections per second this destination sustains while its open
    /// connections stay: each port not held open serves one connection per reuse delay
    /// where reuse applies, else one per TIME_WAIT length.
    pub fn sustainable_per_s(&self, policy: &TimeWaitPolicy) -> f64 {
        let free = self.usable.saturating_sub(self.held_open()) as f64;
        free * 1000.0 / self.hold_ms(policy) as f64
    }

    /// How long a closed connection's port stays unusable for connect(): the reuse
    /// delay where tcp_tw_reuse applies to this destination, else the TIME_WAIT length
    /// (at least 1 ms).
    pub fn hold_ms(&self, policy: &TimeWaitPolicy) -> u64 {
        if self.tw_reuse {
            policy.reuse_delay_ms
        } else {
            policy.len_ms
        }
        .max(1)
    }
}

/// Orders destinations as the digest keeps them: least headroom first (the ones the
/// rules judge), then most ports held.
pub fn sort_port_use(v: &mut [PortUse]) {
    v.sort_by(|a, b| {
        b.unavailable()
            .cmp(&a.unavailable())
            .then(b.used().cmp(&a.used()))
            .then((a.local_ip, a.remote).cmp(&(b.local_ip, b.remote)))
    });
}

/// TIME_WAIT sockets, split by who closed first. The server side is grouped per local
/// port served, the client side per destination ip:port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimeWaitDigest {
    /// On a port this host serves: a listener's, one outside the ephemeral range or
    /// reserved, or one many peers' TIME_WAIT share (a service whose listener is gone).
    /// This host served the connection and closed first.
    pub server_side: u64,
    /// On an ephemeral port: this host was the client and closed first.
    pub client_side: u64,
    /// Per remote address (IPv4-mapped shown as IPv4).
    pub by_peer: BTreeMap<IpAddr, u64>,
    /// Server side, per local port served (see `server_side`).
    pub by_listen_port: BTreeMap<u16, u64>,
    /// Client side, per destination ip:port.
    pub by_destination: BTreeMap<Endpoint, u64>,
    /// The length and reuse delay the ages were counted with.
    pub policy: TimeWaitPolicy,
    /// Ages of the server side and of the client side.
    pub server_ages: TimeWaitAges,
    pub client_ages: TimeWaitAges,
    /// Ages per entry of `by_listen_port`.
    pub ages_by_served_port: BTreeMap<u16, TimeWaitAges>,
    /// Ages per entry of `by_destination`.
    pub ages_by_destination: BTreeMap<Endpoint, TimeWaitAges>,
}

impl TimeWaitDigest {
    /// Folds another namespace's table into this one (counts and ages summed).
    pub fn merge(&mut self, other: &TimeWaitDigest) {
        self.server_side += other.server_side;
        self.client_side += other.client_side;
        for (k, v) in &other.by_peer {
            *self.by_peer.entry(*k).or_default() += v;
        }
        for (k, v) in &other.by_listen_port {
            *self.by_listen_port.entry(*k).or_default() += v;
        }
        for (k, v) in &other.by_destination {
            *self.by_destination.entry(*k).or_default() += v;
        }
        self.server_ages.merge(&other.server_ages);
        self.client_ages.merge(&other.client_ages);
        for (k, v) in &other.ages_by_served_port {
            self.ages_by_served_port.entry(*k).or_default().merge(v);
        }
        for (k, v) in &other.ages_by_destination {
            self.ages_by_destination.entry(*k).or_default().merge(v);
        }
    }
}

/// Socket aggregates built while the dump streams past.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SocketDigest {
    pub close_wait: Vec<CloseWaitSocket>,
    pub listeners: Vec<ListenerSocket>,
    pub time_wait: TimeWaitDigest,
    /// Destinations whose connections use ephemeral ports, biggest first.
    pub port_use: Vec<PortUse>,
    /// TCP sockets per owning process (first owner), when the command asked for it
    /// (`serve`); empty otherwise. Sockets without a descriptor or a visible owner are
    /// not in it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_process: BTreeMap<u32, StateCounts>,
    /// Every process that holds a listener, by the listener's inode, for listeners
    /// held by more than one (a server that forks its workers after listen(): they all
    /// share the socket, and any of them may be the one accepting). One owner per
    /// process, lowest pid first. A listener held by one process is not in it; its
    /// `owner` says it all.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listener_holders: BTreeMap<u64, Vec<Owner>>,
}

impl SocketDigest {
    /// Every process that holds listener `l` (see `listener_holders`): one owner per
    /// process, or just `l.owner`; empty when no owner is known.
    pub fn holders(&self, l: &ListenerSocket) -> Vec<Owner> {
        match self.listener_holders.get(&l.inode) {
            Some(all) if l.inode != 0 => all.clone(),
            _ => l.owner.into_iter().collect(),
        }
    }
}

/// Two readings of /proc/net/{netstat,snmp}, `interval_ms` apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CounterSample {
    pub before: BTreeMap<String, i64>,
    pub after: BTreeMap<String, i64>,
    pub interval_ms: u64,
}

impl CounterSample {
    /// The value at the second reading (`TcpExt.ListenOverflows`).
    pub fn total(&self, key: &str) -> Option<i64> {
        self.after.get(key).copied()
    }

    /// How much it grew between the readings.
    pub fn delta(&self, key: &str) -> Option<i64> {
        Some(self.after.get(key)? - self.before.get(key)?)
    }

    /// Growth per second; `None` for readings less than [`MIN_RATE_INTERVAL_MS`] apart.
    pub fn rate(&self, key: &str) -> Option<f64> {
        if !self.gives_rates() {
            return None;
        }
        Some(self.delta(key)? as f64 * 1000.0 / self.interval_ms as f64)
    }
}

/// Counter readings closer than this give no rates (`check --interval 0`, a capture):
/// one event in 10 ms would read as 100 per second.
pub const MIN_RATE_INTERVAL_MS: u64 = 100;

impl CounterSample {
    /// Whether the two readings are far enough apart for rates.
    pub fn gives_rates(&self) -> bool {
        self.interval_ms >= MIN_RATE_INTERVAL_MS
    }
}

/// What `check`'s second look found of one namespace's CLOSE_WAIT sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CloseWaitRecheck {
    /// CLOSE_WAIT sockets in the first dump.
    pub sockets: u64,
    /// Milliseconds between the two dumps; `None` when not re-checked.
    pub rechecked_after_ms: Option<u64>,
    /// How many of them were still in CLOSE_WAIT at the second dump; `None` when not
    /// re-checked.
    pub still_there: Option<u64>,
}

/// TCP descriptors held by processes of one namespace whose socket is in no kernel
/// table (closed under the process, never close()d).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DetachedFds {
    /// Summed over the processes.
    pub total: u64,
    /// Processes holding any, most first.
    pub processes: Vec<DetachedProcess>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetachedProcess {
    pub pid: u32,
    pub comm: String,
    pub count: u64,
}

/// A process's open descriptors looked at again at `check`'s second reading (only
/// processes holding CLOSE_WAIT sockets are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DescriptorRecheck {
    /// The first count ([`ProcessFacts::open_fds`], from the owner scan) plus what the
    /// process's descriptor table gained between the two readings.
    pub open_fds: u64,
    /// Milliseconds between the two readings of the descriptor table.
    pub after_ms: u64,
}

/// A kernel log line that one of the rules explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelLogEntry {
    pub message: String,
    /// How many times this exact message is still in the buffer.
    pub count: u64,
    /// Seconds since boot of the last occurrence.
    pub last_seen_s: u64,
}

/// The system-wide file table: `fs.file-nr` (allocated) against `fs.file-max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FileTable {
    pub allocated: u64,
    pub max: u64,
}

/// The `TCP:` line of /proc/net/sockstat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sockstat {
    /// Full TCP sockets in this network namespace.
    pub inuse: u64,
    /// Orphaned sockets, host-wide (compared with tcp_max_orphans).
    pub orphan: u64,
    /// TIME_WAIT plus FIN_WAIT2 minisockets in this namespace (against tcp_max_tw_buckets).
    pub tw: u64,
    pub alloc: u64,
    /// TCP memory in pages, host-wide (compared with tcp_mem).
    pub mem_pages: u64,
}

/// Everything `check` looked at.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub taken_at_unix_ms: u64,
    pub source: Option<Source>,
    pub summary: StateSummary,
    pub sockets: SocketDigest,
    /// Processes that own sockets in the digest, plus every process whose descriptor
    /// use was measured.
    pub processes: BTreeMap<u32, ProcessFacts>,
    /// Dotted sysctl name -> value with whitespace collapsed; absent keys do not exist
    /// (or could not be read) here.
    pub sysctls: BTreeMap<String, String>,
    pub counters: Option<CounterSample>,
    /// Milliseconds between the CLOSE_WAIT dump and its re-check (see
    /// [`CloseWaitSocket::still_there`]); `None` when not re-checked.
    pub close_wait_recheck_ms: Option<u64>,
    pub sockstat: Option<Sockstat>,
    /// `None`: the kernel log could not be read (see `missing`).
    pub kernel_log: Option<Vec<KernelLogEntry>>,
    /// Evidence that could not be gathered, and why.
    pub missing: Vec<Notice>,
    /// Whether processes could be attributed at all (false with --no-owners or when
    /// /proc was unreadable).
    pub owners_known: bool,
    /// The network namespace this snapshot is of (inode 0 for a replayed capture);
    /// `None` only in snapshots built by hand.
    pub netns: Option<NetnsInfo>,
    /// nginx masters running in this namespace, with their configuration
    /// (collect::nginx).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nginx: Vec<super::nginx::NginxInstance>,
    /// Connections the tracer saw opening, closing and failing in this namespace while
    /// the command looked (`check`: its counter interval); `None` when nothing was
    /// traced (not root, no BPF, a replay, `--no-trace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flows: Option<super::NamespaceFlows>,
    /// Descriptors of the processes holding CLOSE_WAIT sockets, counted again at
    /// `check`'s second reading, by pid; empty when not counted again.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub descriptor_recheck: BTreeMap<u32, DescriptorRecheck>,
    /// What the host's sysctl files apply at boot, each key with its file:line and live
    /// value (collect::sysctl_files; `check` only, in the primary snapshot only; `None`:
    /// not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persisted_sysctls: Option<super::persisted::PersistedSysctls>,
    /// Where each process's open-files limit is set, by pid (collect::limits_source;
    /// `check` only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nofile_origins: BTreeMap<u32, super::persisted::NofileOrigin>,
    /// Who opened this namespace's CLOSE_WAIT sockets (and its processes' detached
    /// descriptors), from a recorder running on the host (`serve`, `watch`, `trace
    /// --leaks`); `None` when none runs (or it could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<super::provenance::Provenance>,
}

/// Every namespace looked at in one run. The first is the primary: the initial (host)
/// namespace when it was included, else the current one; it carries the host-wide
/// evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSnapshot {
    pub namespaces: Vec<Snapshot>,
    /// Whether every namespace on the host was looked at (`--netns all`).
    pub all_namespaces: bool,
    /// Namespaces that could not be read, and other host-level gaps.
    pub missing: Vec<Notice>,
}

impl HostSnapshot {
    pub fn primary(&self) -> Option<&Snapshot> {
        self.namespaces.first()
    }

    /// State counts summed over every namespace.
    pub fn summary(&self) -> StateSummary {
        let mut t = StateSummary::default();
        for s in &self.namespaces {
            t.ipv4.merge(&s.summary.ipv4);
            t.ipv6.merge(&s.summary.ipv6);
        }
        t
    }

    /// All namespaces folded into one snapshot, for views that show the host as a whole
    /// (`watch`, the process and destination series of `serve`): counts, CLOSE_WAIT and
    /// listener records, TIME_WAIT tables and processes are combined; port use keeps,
    /// per destination, the namespace where it is tightest; counters are summed over the
    /// namespaces that have a rate; sysctls, the kernel log and the file table are the
    /// primary's.
    pub fn merged(&self) -> Snapshot {
        let Some(primary) = self.primary() else {
            return Snapshot::default();
        };
        if self.namespaces.len() == 1 {
            let mut s = primary.clone();
            s.missing = self.all_missing();
            return s;
        }
        let mut m = Snapshot {
            taken_at_unix_ms: primary.taken_at_unix_ms,
            source: primary.source,
            summary: self.summary(),
            sysctls: primary.sysctls.clone(),
            kernel_log: primary.kernel_log.clone(),
            missing: self.all_missing(),
            owners_known: primary.owners_known,
            ..Snapshot::default()
        };
        let mut sockstat: Option<Sockstat> = None;
        let mut counters: Option<CounterSample> = None;
        // A namespace sampled for the first time has no rate yet: leave it out of the
        // summed counters unless no namespace has one (the first sample).
        let rated = |c: &CounterSample| {
            c.interval_ms > 0
                || self
                    .namespaces
                    .iter()
                    .all(|s| s.counters.as_ref().is_none_or(|c| c.interval_ms == 0))
        };
        // Each namespace has its own ports: one row per destination, the namespace where
        // it is tightest (not a sum, which would count ports of different tables).
        let mut port_use: BTreeMap<(IpAddr, Endpoint), PortUse> = BTreeMap::new();
        let headroom = PortUse::headroom;
        for s in &self.namespaces {
            let d = &s.sockets;
            m.sockets.close_wait.extend_from_slice(&d.close_wait);
            m.sockets.listeners.extend_from_slice(&d.listeners);
            for p in &d.port_use {
                match port_use.get(&(p.local_ip, p.remote)) {
                    Some(old) if headroom(old) <= headroom(p) => {}
                    _ => {
                        port_use.insert((p.local_ip, p.remote), p.clone());
                    }
                }
            }
            m.sockets.time_wait.merge(&d.time_wait);
            for (pid, c) in &d.by_process {
                m.sockets.by_process.entry(*pid).or_default().merge(c);
            }
            for (pid, p) in &s.processes {
                m.processes.entry(*pid).or_insert_with(|| p.clone());
            }
            m.nginx.extend(s.nginx.iter().cloned());
            if let Some(st) = s.sockstat {
                // orphan, alloc and memory are host-wide: the first namespace's.
                let t = sockstat.get_or_insert(Sockstat {
                    inuse: 0,
                    tw: 0,
                    ..st
                });
                t.inuse += st.inuse;
                t.tw += st.tw;
            }
            if let Some(c) = s.counters.as_ref().filter(|c| rated(c)) {
                let t = counters.get_or_insert_with(|| CounterSample {
                    interval_ms: c.interval_ms,
                    ..CounterSample::default()
                });
                for (k, v) in &c.before {
                    *t.before.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &c.after {
                    *t.after.entry(k.clone()).or_default() += v;
                }
            }
        }
        // Ages were counted with each namespace's own length and delay; the merged view
        // is read with the primary's (its sysctls are the ones kept).
        m.sockets.time_wait.policy = primary.sockets.time_wait.policy;
        m.sockets.port_use = port_use.into_values().collect();
        sort_port_use(&mut m.sockets.port_use);
        m.sockets.port_use.truncate(PORT_USE_KEPT);
        m.sockstat = sockstat;
        m.counters = counters;
        m.flows = self.merged_flows();
        m
    }

    /// Every namespace's flows in one table (rows keep their namespace), the biggest
    /// kept; `None` when no namespace was traced.
    fn merged_flows(&self) -> Option<super::NamespaceFlows> {
        let mut out: Option<super::NamespaceFlows> = None;
        for f in self.namespaces.iter().filter_map(|s| s.flows.as_ref()) {
            let m = out.get_or_insert_with(|| super::NamespaceFlows {
                duration_ms: f.duration_ms,
                all_errnos: f.all_errnos,
                ..super::NamespaceFlows::default()
            });
            m.duration_ms = m.duration_ms.max(f.duration_ms);
            m.flows.extend(f.flows.iter().cloned());
            m.omitted += f.omitted;
            m.omitted_active.add(&f.omitted_active);
            m.omitted_passive.add(&f.omitted_passive);
            m.totals.add(&f.totals);
        }
        if let Some(m) = &mut out {
            m.keep_biggest();
        }
        out
    }

    /// Whether nothing that could hide a problem is missing: every namespace asked for
    /// was read, every process's descriptors were seen, every source answered. A
    /// report of an incomplete snapshot can say "no problems found" only about what
    /// it saw; [`gaps`](Self::gaps) says what it did not.
    pub fn complete(&self) -> bool {
        self.gaps().is_empty()
    }

    /// The notices of [`all_missing`](Self::all_missing) that may hide a problem
    /// ([`NoticeCode::hides_problems`](super::NoticeCode::hides_problems)).
    pub fn gaps(&self) -> Vec<Notice> {
        self.all_missing()
            .into_iter()
            .filter(|n| n.code.hides_problems())
            .collect()
    }

    /// Every gap: host-level ones first, then each namespace's (prefixed with its name
    /// when there are several).
    pub fn all_missing(&self) -> Vec<Notice> {
        let mut out = self.missing.clone();
        let several = self.namespaces.len() > 1;
        for s in &self.namespaces {
            for n in &s.missing {
                match (&s.netns, several) {
                    (Some(ns), true) => out.push(Notice::new(
                        n.code,
                        format!("netns {}: {}", ns.name, n.message),
                    )),
                    _ => out.push(n.clone()),
                }
            }
        }
        out
    }
}

impl Snapshot {
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }

    /// A sysctl that holds one integer.
    pub fn sysctl_i64(&self, key: &str) -> Option<i64> {
        self.sysctl(key)?.trim().parse().ok()
    }

    /// The system-wide file table from `fs.file-nr` ("allocated 0 max"); only the
    /// snapshot that carries host-wide evidence has it.
    pub fn file_table(&self) -> Option<FileTable> {
        let mut it = self.sysctl("fs.file-nr")?.split_whitespace();
        let allocated = it.next()?.parse().ok()?;
        let max = it.nth(1)?.parse().ok()?;
        Some(FileTable { allocated, max })
    }

    /// `ip_local_port_range` as this namespace has it; `None` when not visible.
    pub fn port_range(&self) -> Option<PortRange> {
        PortRange::parse(self.sysctl("net.ipv4.ip_local_port_range")?)
    }

    /// The ports connect() may use towards each destination in this namespace (the
    /// kernel default range when the namespace's is not visible). The one source of
    /// "usable ports" and headroom for rules, metrics and `watch`.
    pub fn ephemeral_ports(&self) -> EphemeralPorts {
        EphemeralPorts::from_sysctls(
            self.sysctl("net.ipv4.ip_local_port_range"),
            self.sysctl("net.ipv4.ip_local_reserved_ports"),
        )
    }

    /// How TIME_WAIT behaves here: length, reuse delay, whether reuse may apply.
    pub fn time_wait_policy(&self) -> TimeWaitPolicy {
        TimeWaitPolicy::from_sysctls(|k| self.sysctl(k))
    }

    /// How long TIME_WAIT lasts here, in seconds: the vendor `tcp_tw_timeout` where a
    /// kernel has one, else the fixed 60 s of upstream Linux.
    pub fn time_wait_len_s(&self) -> u64 {
        self.time_wait_policy().len_s()
    }

    /// The kernel default of `tcp_max_tw_buckets` for this namespace's hash table.
    pub fn tw_buckets_default(&self) -> Option<u64> {
        kernel::tw_buckets_default(self.sysctl_i64("net.ipv4.tcp_ehash_entries"))
    }

    /// Whether connect() may reuse a TIME_WAIT port from `local` towards `remote` here.
    pub fn tw_reuse_applies(&self, local: IpAddr, remote: IpAddr) -> bool {
        self.time_wait_policy().reuse_applies(local, remote)
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessFacts> {
        self.processes.get(&pid)
    }

    /// How the host's sysctl files leave `key` (dotted), when they were read and set it.
    pub fn persisted_sysctl(&self, key: &str) -> Option<&super::persisted::PersistedSysctl> {
        self.persisted_sysctls.as_ref()?.get(key)
    }

    /// Where process `pid`'s open-files limit is set, when that was looked up.
    pub fn nofile_origin(&self, pid: u32) -> Option<&super::persisted::NofileOrigin> {
        self.nofile_origins.get(&pid)
    }

    /// How many CLOSE_WAIT sockets there were and, when `check` looked again, how many
    /// were still there.
    pub fn close_wait_recheck(&self) -> CloseWaitRecheck {
        let cw = &self.sockets.close_wait;
        let rechecked = self.close_wait_recheck_ms.is_some();
        CloseWaitRecheck {
            sockets: cw.len() as u64,
            rechecked_after_ms: self.close_wait_recheck_ms,
            still_there: rechecked
                .then(|| cw.iter().filter(|c| c.still_there == Some(true)).count() as u64),
        }
    }

    /// Detached TCP descriptors of this namespace's processes; `None` when they were
    /// not counted (not `check`, a replay, or no process's descriptors could be read).
    pub fn detached_tcp_fds(&self) -> Option<DetachedFds> {
        let mut measured = false;
        let mut processes: Vec<DetachedProcess> = Vec::new();
        for p in self.processes.values() {
            let Some(n) = p.detached_tcp_fds else {
                continue;
            };
            measured = true;
            if n > 0 {
                processes.push(DetachedProcess {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    count: n,
                });
            }
        }
        processes.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
        measured.then(|| DetachedFds {
            total: processes.iter().map(|p| p.count).sum(),
            processes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_namespaces_keeps_one_row_per_destination_and_rated_counters() {
        let ns = |used: u64, usable: u64, overflows: (i64, i64), interval_ms: u64| {
            let mut s = Snapshot::default();
            let mut counts = StateCounts::default();
            for _ in 0..used {
                counts.add(crate::model::TcpState::Established);
            }
            s.sockets.port_use.push(PortUse {
                local_ip: "127.0.0.1".parse().expect("ip"),
                remote: Endpoint::new("127.0.0.1".parse().expect("ip"), 6379),
                counts,
                sample_owner: None,
                usable,
                time_wait_ages: TimeWaitAges::default(),
                tw_reuse: false,
            });
            s.sockstat = Some(Sockstat {
                inuse: used,
                orphan: 3,
                tw: 1,
                alloc: 50,
                mem_pages: 9,
            });
            let mut c = CounterSample {
                interval_ms,
                ..CounterSample::default()
            };
            c.before
                .insert("TcpExt.ListenOverflows".into(), overflows.0);
            c.after.insert("TcpExt.ListenOverflows".into(), overflows.1);
            s.counters = Some(c);
            s
        };
        let host = HostSnapshot {
            namespaces: vec![
                ns(10, 28_232, (0, 10), 2000),
                // Same destination, its own 100-port range: the tightest.
                ns(60, 100, (5, 25), 2000),
                // First seen in this sample: no rate yet.
                ns(1, 28_232, (900, 900), 0),
            ],
            all_namespaces: true,
            missing: Vec::new(),
        };
        let m = host.merged();
        assert_eq!(m.sockets.port_use.len(), 1);
        assert_eq!(m.sockets.port_use[0].counts.total(), 60);
        assert_eq!(m.sockets.port_use[0].usable, 100);
        let st = m.sockstat.expect("sockstat");
        assert_eq!((st.inuse, st.tw), (71, 3), "per namespace: summed");
        assert_eq!(
            (st.orphan, st.alloc, st.mem_pages),
            (3, 50, 9),
            "host-wide: once"
        );
        let c = m.counters.expect("counters");
        assert_eq!(c.delta("TcpExt.ListenOverflows"), Some(30));
        assert_eq!(c.rate("TcpExt.ListenOverflows"), Some(15.0));
    }

    /// `n` entries spread evenly over [`from_ms`, `to_ms`).
    fn spread(a: &mut TimeWaitAges, n: u64, from_ms: u64, to_ms: u64) {
        for i in 0..n {
            a.add(Some(from_ms + i * (to_ms - from_ms) / n), 1000);
        }
    }

    #[test]
    fn time_wait_ages_fall_into_doubling_buckets() {
        let mut a = TimeWaitAges::default();
        for age in [
            0, 999, 1000, 1999, 2000, 3999, 4000, 59_999, 60_000, 300_000,
        ] {
            a.add(Some(age), 1000);
        }
        a.add(None, 1000);
        assert_eq!(a.buckets, [2, 2, 2, 1, 0, 0, 2, 0, 0, 1]);
        assert_eq!((a.young, a.unknown, a.known(), a.total()), (2, 1, 10, 11));
        assert_eq!(a.not_reusable_yet(), 3);
        let mut b = a;
        b.merge(&a);
        assert_eq!((b.buckets[0], b.young, b.total()), (4, 4, 22));
        // Bounded whatever the count: a fixed array, no list of sockets.
        assert_eq!(std::mem::size_of::<TimeWaitAges>(), 4 * (AGE_BUCKETS + 2));
    }

    #[test]
    fn closing_rate_follows_the_ages() {
        let rate = |a: &TimeWaitAges| a.closing_rate(60_000).map(|r| (r.per_s, r.window_ms));
        // Steady 100/s for a whole minute: the count over 60 s.
        let mut steady = TimeWaitAges::default();
        spread(&mut steady, 6000, 0, 60_000);
        assert_eq!(rate(&steady), Some((100.0, 60_000)));
        // 400/s for the last 3.5 s only: 400/s over the last 2 s, not 1400/60.
        let mut burst = TimeWaitAges::default();
        spread(&mut burst, 1400, 0, 3500);
        assert_eq!(rate(&burst), Some((400.0, 2000)));
        // 405/s, with tcp_tw_reuse taking entries over from ~30 s on: the 16 s window.
        let mut reused = TimeWaitAges::default();
        spread(&mut reused, 12_150, 0, 30_000);
        assert_eq!(rate(&reused), Some((405.0, 16_000)));
        // Ports reused as soon as allowed: all under ~1 s.
        let mut starved = TimeWaitAges::default();
        spread(&mut starved, 200, 0, 1000);
        assert_eq!(rate(&starved), Some((200.0, 1000)));
        // Too few for a short window: the count over the length.
        let mut few = TimeWaitAges::default();
        spread(&mut few, 6, 0, 3000);
        assert_eq!(rate(&few), Some((0.1, 60_000)));
        // A vendor length of 20 s: its windows stop there.
        assert_eq!(
            steady.closing_rate(20_000).map(|r| r.window_ms),
            Some(20_000)
        );
        assert_eq!(TimeWaitAges::default().closing_rate(60_000), None);
    }

    #[test]
    fn close_wait_recheck_and_detached_descriptors_are_summed_per_namespace() {
        let cw = |still_there| CloseWaitSocket {
            local: Endpoint::new("127.0.0.1".parse().expect("ip"), 80),
            remote: Endpoint::new("127.0.0.1".parse().expect("ip"), 4000),
            inode: 1,
            recv_q: 1,
            owner: None,
            idle_ms: None,
            cookie: Some(1),
            still_there,
        };
        let mut s = Snapshot::default();
        s.sockets.close_wait = vec![cw(None), cw(None)];
        assert_eq!(
            s.close_wait_recheck(),
            CloseWaitRecheck {
                sockets: 2,
                rechecked_after_ms: None,
                still_there: None
            }
        );
        s.sockets.close_wait = vec![cw(Some(true)), cw(Some(false)), cw(Some(true))];
        s.close_wait_recheck_ms = Some(1000);
        assert_eq!(s.close_wait_recheck().still_there, Some(2));
        assert_eq!(s.detached_tcp_fds(), None, "not measured");
        let facts = |pid, comm: &str, detached| ProcessFacts {
            pid,
            comm: comm.into(),
            uid: 0,
            cmdline: String::new(),
            open_fds: 10,
            nofile_soft: None,
            nofile_hard: None,
            detached_tcp_fds: detached,
        };
        s.processes.insert(1, facts(1, "a", Some(0)));
        assert_eq!(
            s.detached_tcp_fds(),
            Some(DetachedFds::default()),
            "measured: none"
        );
        s.processes.insert(2, facts(2, "b", Some(3)));
        s.processes.insert(3, facts(3, "c", Some(5)));
        s.processes.insert(4, facts(4, "d", None));
        let d = s.detached_tcp_fds().expect("measured");
        assert_eq!(d.total, 8);
        assert_eq!(
            d.processes
                .iter()
                .map(|p| (p.pid, p.count))
                .collect::<Vec<_>>(),
            vec![(3, 5), (2, 3)]
        );
    }

    #[test]
    fn a_host_is_complete_only_without_notices_that_hide_problems() {
        use super::super::NoticeCode;
        let mut h = HostSnapshot {
            namespaces: vec![Snapshot::default()],
            all_namespaces: false,
            missing: vec![Notice::new(NoticeCode::Ipv6Unavailable, "no IPv6")],
        };
        assert!(h.complete());
        h.namespaces[0]
            .missing
            .push(Notice::new(NoticeCode::FdCountsPartial, "3 processes"));
        assert!(!h.complete());
        assert_eq!(h.gaps().len(), 1);
        assert_eq!(h.gaps()[0].code, NoticeCode::FdCountsPartial);
    }

    #[test]
    fn counter_deltas_and_rates() {
        let mut c = CounterSample {
            interval_ms: 500,
            ..Default::default()
        };
        c.before.insert("TcpExt.ListenOverflows".into(), 10);
        c.after.insert("TcpExt.ListenOverflows".into(), 15);
        assert_eq!(c.delta("TcpExt.ListenOverflows"), Some(5));
        assert_eq!(c.rate("TcpExt.ListenOverflows"), Some(10.0));
        assert_eq!(c.delta("TcpExt.Missing"), None);
    }
}
