//! What `check` knows about a host at one moment: socket aggregates (never the full
//! socket list), processes with their descriptor use, sysctls, counters sampled twice,
//! and the kernel's own log. Rules in `analyze` read only this.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::kernel::{self, EphemeralPorts, PortRange};
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
}

impl PortUse {
    /// Local ports this destination holds: every state counts, TIME_WAIT included.
    pub fn used(&self) -> u64 {
        self.counts.total()
    }

    /// Ports still free towards this destination.
    pub fn headroom(&self) -> u64 {
        self.usable.saturating_sub(self.used())
    }
}

/// TIME_WAIT sockets, split by who closed first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TimeWaitDigest {
    /// On a local listening port: this host served the connection and closed first.
    pub server_side: u64,
    /// On any other local port: this host was the client and closed first.
    pub client_side: u64,
    /// Per remote address (IPv4-mapped shown as IPv4).
    pub by_peer: BTreeMap<IpAddr, u64>,
    /// Server side, per local listening port.
    pub by_listen_port: BTreeMap<u16, u64>,
    /// Client side, per destination ip:port.
    pub by_destination: BTreeMap<Endpoint, u64>,
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

    /// Growth per second.
    pub fn rate(&self, key: &str) -> Option<f64> {
        if self.interval_ms == 0 {
            return None;
        }
        Some(self.delta(key)? as f64 * 1000.0 / self.interval_ms as f64)
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
            let tw = &mut m.sockets.time_wait;
            tw.server_side += d.time_wait.server_side;
            tw.client_side += d.time_wait.client_side;
            for (k, v) in &d.time_wait.by_peer {
                *tw.by_peer.entry(*k).or_default() += v;
            }
            for (k, v) in &d.time_wait.by_listen_port {
                *tw.by_listen_port.entry(*k).or_default() += v;
            }
            for (k, v) in &d.time_wait.by_destination {
                *tw.by_destination.entry(*k).or_default() += v;
            }
            for (pid, c) in &d.by_process {
                m.sockets.by_process.entry(*pid).or_default().merge(c);
            }
            for (pid, p) in &s.processes {
                m.processes.entry(*pid).or_insert_with(|| p.clone());
            }
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
        m.sockets.port_use = port_use.into_values().collect();
        m.sockets.port_use.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then((a.local_ip, a.remote).cmp(&(b.local_ip, b.remote)))
        });
        m.sockets.port_use.truncate(PORT_USE_KEPT);
        m.sockstat = sockstat;
        m.counters = counters;
        m
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

    /// How long TIME_WAIT lasts here, in seconds: the vendor `tcp_tw_timeout` where a
    /// kernel has one, else the fixed 60 s of upstream Linux.
    pub fn time_wait_len_s(&self) -> u64 {
        self.sysctl_i64(kernel::VENDOR_TIME_WAIT_SYSCTL)
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(kernel::TIME_WAIT_LEN_S)
    }

    /// The kernel default of `tcp_max_tw_buckets` for this namespace's hash table.
    pub fn tw_buckets_default(&self) -> Option<u64> {
        kernel::tw_buckets_default(self.sysctl_i64("net.ipv4.tcp_ehash_entries"))
    }

    /// Whether connect() may reuse a TIME_WAIT port from `local` towards `remote` here.
    pub fn tw_reuse_applies(&self, local: IpAddr, remote: IpAddr) -> bool {
        kernel::tw_reuse_applies(
            self.sysctl_i64("net.ipv4.tcp_tw_reuse"),
            self.sysctl_i64("net.ipv4.tcp_timestamps"),
            local,
            remote,
        )
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessFacts> {
        self.processes.get(&pid)
    }

    /// How many CLOSE_WAIT sockets there were and, when `check` looked again, how many
    /// were still there.
    pub fn close_wait_recheck(&self) -> CloseWaitRecheck {
        let cw = &self.sockets.close_wait;
        let checked: Vec<bool> = cw.iter().filter_map(|c| c.still_there).collect();
        let rechecked = self.close_wait_recheck_ms.is_some();
        CloseWaitRecheck {
            sockets: cw.len() as u64,
            rechecked_after_ms: self.close_wait_recheck_ms,
            still_there: rechecked.then(|| checked.iter().filter(|s| **s).count() as u64),
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
