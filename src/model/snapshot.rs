//! What `check` knows about a host at one moment: socket aggregates (never the full
//! socket list), processes with their descriptor use, sysctls, counters sampled twice,
//! and the kernel's own log. Rules in `analyze` read only this.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::{Endpoint, Notice, Owner, Source, StateCounts, StateSummary};

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

/// Sockets that hold a local port from ip_local_port_range towards one destination.
/// Ephemeral ports are unique per (source ip, destination ip, destination port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortUse {
    pub local_ip: IpAddr,
    pub remote: Endpoint,
    pub counts: StateCounts,
    /// One owning process of these connections, to say who makes them.
    pub sample_owner: Option<Owner>,
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
    pub file_table: Option<FileTable>,
    pub sockstat: Option<Sockstat>,
    /// `None`: the kernel log could not be read (see `missing`).
    pub kernel_log: Option<Vec<KernelLogEntry>>,
    /// Evidence that could not be gathered, and why.
    pub missing: Vec<Notice>,
    /// Whether processes could be attributed at all (false with --no-owners or when
    /// /proc was unreadable).
    pub owners_known: bool,
}

impl Snapshot {
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }

    /// A sysctl that holds one integer.
    pub fn sysctl_i64(&self, key: &str) -> Option<i64> {
        self.sysctl(key)?.trim().parse().ok()
    }

    /// `ip_local_port_range` as (low, high).
    pub fn port_range(&self) -> Option<(u16, u16)> {
        let v = self.sysctl("net.ipv4.ip_local_port_range")?;
        let mut it = v.split_whitespace().map(|p| p.parse::<u16>());
        match (it.next(), it.next()) {
            (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
            _ => None,
        }
    }

    pub fn process(&self, pid: u32) -> Option<&ProcessFacts> {
        self.processes.get(&pid)
    }
}

/// Parses `ip_local_reserved_ports` ("8080,9000-9010", possibly empty) into inclusive
/// ranges. Malformed parts are ignored.
pub fn parse_port_list(s: &str) -> Vec<(u16, u16)> {
    s.split(',')
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                    (a <= b).then_some((a, b))
                }
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_port_lists() {
        assert_eq!(parse_port_list(""), vec![]);
        assert_eq!(
            parse_port_list("8080,9000-9010"),
            vec![(8080, 8080), (9000, 9010)]
        );
        assert_eq!(parse_port_list("x,5-3,70000,7"), vec![(7, 7)]);
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

    #[test]
    fn port_range_parses_and_rejects() {
        let mut s = Snapshot::default();
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "32768 60999".into());
        assert_eq!(s.port_range(), Some((32768, 60999)));
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "9 1".into());
        assert_eq!(s.port_range(), None);
    }
}
