//! Connection flows as the tracer sees them: who opens connections, to where, how long
//! they live, which side closes first, resets and failed connect()s. Plain data; the
//! tracer (`collect::trace`) fills it, `cmd::trace` cuts it into intervals, rules and
//! renderers read it.
//!
//! A flow is one (process, network namespace, direction, peer) combination: for
//! connections this host opened (active), the peer is the remote address and port; for
//! connections it accepted (passive), the local listening port, so a server with many
//! clients is one flow.

use std::fmt;

use serde::{Serialize, Serializer};

use super::{AddrFilter, Endpoint, TcpState};

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// This host called connect().
    Active,
    /// This host accepted it on a listening port.
    Passive,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Active => "active",
            Direction::Passive => "passive",
        }
    }

    /// Short form for tables: `out` (connect) or `in` (accept).
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::Active => "out",
            Direction::Passive => "in",
        }
    }
}

impl Serialize for Direction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The other end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowPeer {
    /// Active: the destination of connect().
    Remote(Endpoint),
    /// Passive: the local port the connections came in on.
    ListeningPort(u16),
}

impl fmt::Display for FlowPeer {
    /// `10.0.0.5:8080`, `[::1]:443`, or `:80` for a listening port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowPeer::Remote(e) => write!(f, "{e}"),
            FlowPeer::ListeningPort(p) => write!(f, ":{p}"),
        }
    }
}

/// What identifies a flow. `pid` 0: the owner is not known (a connection that started
/// before tracing, or one no process has accepted yet on a listener tracing did not see
/// open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Process id in the initial pid namespace (what the host's /proc shows).
    pub pid: u32,
    /// Inode of the network namespace (`net:[INODE]`).
    pub netns: u64,
    pub direction: Direction,
    pub peer: FlowPeer,
}

/// Failed connect() calls by errno. `aborted`: the socket was closed while connecting,
/// with no error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConnectFailures {
    #[serde(rename = "EADDRNOTAVAIL")]
    pub eaddrnotavail: u64,
    #[serde(rename = "ECONNREFUSED")]
    pub econnrefused: u64,
    #[serde(rename = "ETIMEDOUT")]
    pub etimedout: u64,
    #[serde(rename = "ENETUNREACH")]
    pub enetunreach: u64,
    #[serde(rename = "EHOSTUNREACH")]
    pub ehostunreach: u64,
    #[serde(rename = "EADDRINUSE")]
    pub eaddrinuse: u64,
    /// EPERM or EACCES: a firewall hook, cgroup BPF program or LSM refused it.
    #[serde(rename = "EPERM")]
    pub eperm: u64,
    pub aborted: u64,
    pub other: u64,
}

impl ConnectFailures {
    /// (name, count) in a fixed order, EADDRNOTAVAIL first.
    pub fn named(&self) -> [(&'static str, u64); 9] {
        [
            ("EADDRNOTAVAIL", self.eaddrnotavail),
            ("ECONNREFUSED", self.econnrefused),
            ("ETIMEDOUT", self.etimedout),
            ("ENETUNREACH", self.enetunreach),
            ("EHOSTUNREACH", self.ehostunreach),
            ("EADDRINUSE", self.eaddrinuse),
            ("EPERM", self.eperm),
            ("aborted", self.aborted),
            ("other", self.other),
        ]
    }

    pub fn total(&self) -> u64 {
        self.named().iter().map(|(_, n)| n).sum()
    }

    fn zip(&self, o: &ConnectFailures, f: impl Fn(u64, u64) -> u64) -> ConnectFailures {
        ConnectFailures {
            eaddrnotavail: f(self.eaddrnotavail, o.eaddrnotavail),
            econnrefused: f(self.econnrefused, o.econnrefused),
            etimedout: f(self.etimedout, o.etimedout),
            enetunreach: f(self.enetunreach, o.enetunreach),
            ehostunreach: f(self.ehostunreach, o.ehostunreach),
            eaddrinuse: f(self.eaddrinuse, o.eaddrinuse),
            eperm: f(self.eperm, o.eperm),
            aborted: f(self.aborted, o.aborted),
            other: f(self.other, o.other),
        }
    }
}

/// Number of lifetime buckets (see [`Lifetimes`]).
pub const LIFETIME_BUCKETS: usize = 32;

/// Connection lifetimes (first SYN to CLOSE) in log2 buckets of microseconds: bucket 0
/// holds lifetimes under 1 µs, bucket b ≥ 1 those in [2^(b-1), 2^b) µs, the last one
/// everything from 2^30 µs (about 18 minutes) on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Connections counted (those whose start tracing saw).
    pub count: u64,
    pub sum_us: u64,
    pub buckets: [u64; LIFETIME_BUCKETS],
}

impl Default for Lifetimes {
    fn default() -> Lifetimes {
        Lifetimes {
            count: 0,
            sum_us: 0,
            buckets: [0; LIFETIME_BUCKETS],
        }
    }
}

impl Lifetimes {
    /// Upper bound, in µs, of the bucket holding the q-quantile (0 < q ≤ 1): "at most
    /// this long". `None` without data.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n: u64 = self.buckets.iter().sum();
        if n == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest r with r >= q * n.
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper_us(b));
            }
        }
        Some(bucket_upper_us(LIFETIME_BUCKETS - 1))
    }

    pub fn mean_us(&self) -> Option<u64> {
        self.sum_us.checked_div(self.count)
    }

    fn zip(&self, o: &Lifetimes, f: impl Fn(u64, u64) -> u64) -> Lifetimes {
        let mut buckets = [0; LIFETIME_BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = f(self.buckets[i], o.buckets[i]);
        }
        Lifetimes {
            count: f(self.count, o.count),
            sum_us: f(self.sum_us, o.sum_us),
            buckets,
        }
    }
}

/// The exclusive upper end of bucket `b`, in µs (the last bucket is open: its lower end
/// times two).
pub fn bucket_upper_us(b: usize) -> u64 {
    1u64 << b.min(LIFETIME_BUCKETS - 1)
}

/// Which bucket a lifetime of `us` microseconds falls in (as the kernel side files it).
pub fn bucket_of_us(us: u64) -> usize {
    if us == 0 {
        return 0;
    }
    ((64 - us.leading_zeros()) as usize).min(LIFETIME_BUCKETS - 1)
}

impl Serialize for Lifetimes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Lifetimes", 5)?;
        st.serialize_field("count", &self.count)?;
        st.serialize_field("mean_us", &self.mean_us())?;
        st.serialize_field("p50_us", &self.quantile_us(0.5))?;
        st.serialize_field("p99_us", &self.quantile_us(0.99))?;
        st.serialize_field("log2_us_buckets", &self.buckets[..])?;
        st.end()
    }
}

/// What happened in a flow over some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlowCounts {
    /// Connections whose handshake completed. Accepted ones count when accept() returns
    /// them (or when they end unaccepted).
    pub opened: u64,
    /// Connections that ended, by who sent the first FIN (or RST): this host
    /// (ESTABLISHED → FIN_WAIT1, the side that ends in TIME_WAIT), the peer (ESTABLISHED
    /// → CLOSE_WAIT), or neither (connections already closing when tracing began, or
    /// ended by a retransmission timeout without a FIN or reset).
    pub closed_local: u64,
    pub closed_peer: u64,
    pub closed_unknown: u64,
    /// Resets sent by this host (SO_LINGER {1,0} close, close with unread data, aborts).
    pub resets_sent: u64,
    /// Resets received after the handshake (a reset answering a SYN is a refused
    /// connect(), in `connect_failures`).
    pub resets_received: u64,
    pub connect_failures: ConnectFailures,
    pub lifetimes: Lifetimes,
}

impl FlowCounts {
    pub fn closed(&self) -> u64 {
        self.closed_local + self.closed_peer + self.closed_unknown
    }

    pub fn is_empty(&self) -> bool {
        *self == FlowCounts::default()
    }

    /// What happened between `earlier` and `self` (cumulative counts; a counter that
    /// went down, a flow restarted, gives 0).
    pub fn since(&self, earlier: &FlowCounts) -> FlowCounts {
        self.zip(earlier, u64::saturating_sub)
    }

    pub fn add(&mut self, other: &FlowCounts) {
        *self = self.zip(other, u64::saturating_add);
    }

    fn zip(&self, o: &FlowCounts, f: impl Fn(u64, u64) -> u64 + Copy) -> FlowCounts {
        FlowCounts {
            opened: f(self.opened, o.opened),
            closed_local: f(self.closed_local, o.closed_local),
            closed_peer: f(self.closed_peer, o.closed_peer),
            closed_unknown: f(self.closed_unknown, o.closed_unknown),
            resets_sent: f(self.resets_sent, o.resets_sent),
            resets_received: f(self.resets_received, o.resets_received),
            connect_failures: self.connect_failures.zip(&o.connect_failures, f),
            lifetimes: self.lifetimes.zip(&o.lifetimes, f),
        }
    }

    /// Who closes first, when one side closed at least 90% of the connections that
    /// ended with a known first closer.
    pub fn closer(&self) -> Option<Closer> {
        let known = self.closed_local + self.closed_peer;
        if known == 0 {
            return None;
        }
        if self.closed_local * 10 >= known * 9 {
            Some(Closer::Local)
        } else if self.closed_peer * 10 >= known * 9 {
            Some(Closer::Peer)
        } else {
            Some(Closer::Both)
        }
    }
}

/// Which side usually closes first in a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Closer {
    /// This host: its sockets end in TIME_WAIT.
    Local,
    /// The peer: this host's sockets pass through CLOSE_WAIT.
    Peer,
    Both,
}

/// One flow over an interval or a whole run, as reports show it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRow {
    pub key: FlowKey,
    /// The process name (the group leader's comm when the owner was recorded); empty
    /// when the owner is not known.
    pub comm: String,
    /// Human name of the network namespace.
    pub netns_name: String,
    pub counts: FlowCounts,
}

/// A flow's counts as JSON shows them, with their rates over `duration_ms` (the same
/// shape in `trace --json` and in `check`'s namespaces).
#[derive(Debug, Clone, Serialize)]
pub struct RatedCounts<'a> {
    pub opened: u64,
    pub opened_per_s: f64,
    pub closed: ClosedBySide,
    pub closed_per_s: f64,
    pub closer: Option<Closer>,
    pub resets: ResetsBySide,
    pub connect_failures: &'a ConnectFailures,
    pub failed_per_s: f64,
    pub lifetimes: &'a Lifetimes,
}

/// Connections that ended, by who closed first.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClosedBySide {
    pub local: u64,
    pub peer: u64,
    pub unknown: u64,
}

/// Resets sent by this host and received from the peer.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResetsBySide {
    pub sent: u64,
    pub received: u64,
}

impl<'a> RatedCounts<'a> {
    pub fn new(c: &'a FlowCounts, duration_ms: u64) -> RatedCounts<'a> {
        let rate = |n: u64| round3(per_second(n, duration_ms));
        RatedCounts {
            opened: c.opened,
            opened_per_s: rate(c.opened),
            closed: ClosedBySide {
                local: c.closed_local,
                peer: c.closed_peer,
                unknown: c.closed_unknown,
            },
            closed_per_s: rate(c.closed()),
            closer: c.closer(),
            resets: ResetsBySide {
                sent: c.resets_sent,
                received: c.resets_received,
            },
            connect_failures: &c.connect_failures,
            failed_per_s: rate(c.connect_failures.total()),
            lifetimes: &c.lifetimes,
        }
    }
}

/// `n` per second over `duration_ms` (0 over no time).
pub fn per_second(n: u64, duration_ms: u64) -> f64 {
    if duration_ms == 0 {
        return 0.0;
    }
    n as f64 * 1000.0 / duration_ms as f64
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What the tracer could not count. Any non-zero field means some numbers are low.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TraceLosses {
    /// Counts with no room in the kernel's flow table (too many distinct flows).
    pub flows_full: u64,
    /// Listening sockets with no room in the listener table.
    pub listeners_full: u64,
    /// Connections first seen mid-life: open before tracing began (expected at the
    /// start), or pushed out of the per-connection table by newer ones.
    pub untracked_connections: u64,
    /// Program runs the kernel skipped (a program already running on that CPU was
    /// interrupted by the same event: bpf_prog_info.recursion_misses).
    pub missed_runs: u64,
    /// Events dropped by the --events rate limit.
    pub events_rate_limited: u64,
    /// Events dropped because user space did not empty the ring buffer in time.
    pub events_ring_full: u64,
    pub events_sent: u64,
}

impl TraceLosses {
    pub fn since(&self, earlier: &TraceLosses) -> TraceLosses {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        TraceLosses {
            flows_full: d(self.flows_full, earlier.flows_full),
            listeners_full: d(self.listeners_full, earlier.listeners_full),
            untracked_connections: d(self.untracked_connections, earlier.untracked_connections),
            missed_runs: d(self.missed_runs, earlier.missed_runs),
            events_rate_limited: d(self.events_rate_limited, earlier.events_rate_limited),
            events_ring_full: d(self.events_ring_full, earlier.events_ring_full),
            events_sent: d(self.events_sent, earlier.events_sent),
        }
    }

    /// Losses that make counts low (untracked connections at the start are expected
    /// and only make lifetimes and owners unknown).
    pub fn counts_low(&self) -> bool {
        self.flows_full > 0 || self.missed_runs > 0
    }
}

/// Time the kernel spent in the tracer's programs (kernel.bpf_stats_enabled=1 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramCost {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Flows over one stretch of time.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowInterval {
    /// Milliseconds from the start of tracing to the start of this interval.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// Flows with something in the interval, biggest (opened + failed + closed) first.
    pub flows: Vec<FlowRow>,
    /// Flows the filters left out are not in these either.
    pub totals: FlowCounts,
    pub losses: TraceLosses,
}

impl FlowInterval {
    /// Per second over the interval.
    pub fn rate(&self, n: u64) -> f64 {
        per_second(n, self.duration_ms)
    }
}

/// A whole trace run, for the final summary.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSummary {
    /// Every flow's counts over the run (`start_ms` 0, `duration_ms` the run).
    pub flows: FlowInterval,
    /// Time the kernel spent in the tracer's programs; zeros unless
    /// kernel.bpf_stats_enabled is 1.
    pub programs: Vec<ProgramCost>,
    pub bpf_stats_enabled: bool,
    pub notices: Vec<super::Notice>,
}

/// Flows kept per namespace in a snapshot, the biggest; the others are in the totals
/// only (`NamespaceFlows::omitted`).
pub const FLOWS_KEPT: usize = 200;

/// What the tracer counted in one network namespace while a command looked at it:
/// `check`'s counter interval, or the time since the previous sample of `watch` and
/// `serve`. Plain data for the rules and views; the tracer (`collect::flows`) fills it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceFlows {
    pub duration_ms: u64,
    /// Flows with something in that time, biggest first (opened + failed + closed),
    /// at most [`FLOWS_KEPT`].
    pub flows: Vec<FlowRow>,
    /// Flows left out of `flows` (their counts are in `totals`), and their counts by
    /// direction.
    pub omitted: u64,
    pub omitted_active: FlowCounts,
    pub omitted_passive: FlowCounts,
    pub totals: FlowCounts,
    /// Whether connect() failures are told apart by errno. Without the kernel's fexit
    /// hooks only EADDRNOTAVAIL is seen (and failures after the SYN: refused, timed
    /// out).
    pub all_errnos: bool,
}

impl NamespaceFlows {
    /// Per second over the time traced.
    pub fn rate(&self, n: u64) -> f64 {
        per_second(n, self.duration_ms)
    }

    /// Outgoing flows toward `remote` (IPv4-mapped addresses compared as IPv4).
    pub fn toward(&self, remote: Endpoint) -> impl Iterator<Item = &FlowRow> {
        let want = Endpoint::new(remote.canonical_ip(), remote.port);
        self.flows.iter().filter(move |f| {
            matches!(f.key.peer, FlowPeer::Remote(e) if Endpoint::new(e.canonical_ip(), e.port) == want)
        })
    }

    /// Incoming flows on the listening port `port`.
    pub fn on_port(&self, port: u16) -> impl Iterator<Item = &FlowRow> {
        self.flows
            .iter()
            .filter(move |f| f.key.peer == FlowPeer::ListeningPort(port))
    }

    /// Sorts flows biggest first (opened, failed and closed connections; then the key)
    /// and keeps [`FLOWS_KEPT`] of them; `totals` stays the sum of all.
    pub fn keep_biggest(&mut self) {
        let weight = |c: &FlowCounts| c.opened + c.connect_failures.total() + c.closed();
        self.flows.sort_by(|a, b| {
            weight(&b.counts)
                .cmp(&weight(&a.counts))
                .then_with(|| a.key.cmp(&b.key))
        });
        if self.flows.len() > FLOWS_KEPT {
            for r in self.flows.drain(FLOWS_KEPT..) {
                self.omitted += 1;
                match r.key.direction {
                    Direction::Active => self.omitted_active.add(&r.counts),
                    Direction::Passive => self.omitted_passive.add(&r.counts),
                }
            }
        }
    }
}

/// One flow as JSON shows it within its namespace.
#[derive(Serialize)]
struct JsonNsFlow<'a> {
    /// 0: not known.
    pid: u32,
    comm: &'a str,
    direction: Direction,
    remote: Option<String>,
    local_port: Option<u16>,
    #[serde(flatten)]
    counts: RatedCounts<'a>,
}

impl Serialize for NamespaceFlows {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let flows: Vec<JsonNsFlow> = self
            .flows
            .iter()
            .map(|r| JsonNsFlow {
                pid: r.key.pid,
                comm: &r.comm,
                direction: r.key.direction,
                remote: match r.key.peer {
                    FlowPeer::Remote(e) => Some(e.to_string()),
                    FlowPeer::ListeningPort(_) => None,
                },
                local_port: match r.key.peer {
                    FlowPeer::Remote(_) => None,
                    FlowPeer::ListeningPort(p) => Some(p),
                },
                counts: RatedCounts::new(&r.counts, self.duration_ms),
            })
            .collect();
        let mut st = s.serialize_struct("NamespaceFlows", 5)?;
        st.serialize_field("duration_ms", &self.duration_ms)?;
        st.serialize_field("flows", &flows)?;
        st.serialize_field("omitted_flows", &self.omitted)?;
        st.serialize_field("totals", &RatedCounts::new(&self.totals, self.duration_ms))?;
        st.serialize_field("all_errnos", &self.all_errnos)?;
        st.end()
    }
}

/// Kinds of raw events (`--events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowEventKind {
    State,
    ResetSent,
    ResetReceived,
    ConnectFailed,
    Accepted,
}

/// One raw event from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowEvent {
    /// Nanoseconds since boot (CLOCK_MONOTONIC).
    pub monotonic_ns: u64,
    pub kind: FlowEventKind,
    /// 0 when the owner is not known.
    pub pid: u32,
    pub comm: String,
    pub netns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Unspecified address and port 0 when the kernel did not give them.
    pub local: Endpoint,
    pub remote: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_state: Option<TcpState>,
    /// errno of a failed connect() (0: closed while connecting).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// At a close whose start tracing saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_us: Option<u64>,
}

/// `trace` filters. Within one kind values are alternatives (OR); kinds must all match
/// (AND). Empty: no filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    pub pids: Vec<u32>,
    /// Exact process names.
    pub comms: Vec<String>,
    /// The destination port of outgoing connections or the listening port of incoming
    /// ones (for events: the local or the remote port).
    pub ports: Vec<u16>,
    /// The destination of outgoing connections (incoming flows have no single peer and
    /// never match).
    pub peers: Vec<AddrFilter>,
    /// Network namespace inodes.
    pub netns: Vec<u64>,
}

impl FlowFilter {
    pub fn is_empty(&self) -> bool {
        *self == FlowFilter::default()
    }

    pub fn matches_flow(&self, key: &FlowKey, comm: &str) -> bool {
        let port = match key.peer {
            FlowPeer::Remote(e) => e.port,
            FlowPeer::ListeningPort(p) => p,
        };
        (self.pids.is_empty() || self.pids.contains(&key.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && (self.ports.is_empty() || self.ports.contains(&port))
            && (self.peers.is_empty()
                || matches!(key.peer, FlowPeer::Remote(e) if self.peers.iter().any(|f| f.matches(&e))))
            && (self.netns.is_empty() || self.netns.contains(&key.netns))
    }

    pub fn matches_event(&self, e: &FlowEvent) -> bool {
        (self.pids.is_empty() || self.pids.contains(&e.pid))
            && (self.comms.is_empty() || self.comms.contains(&e.comm))
            && (self.ports.is_empty()
                || self.ports.contains(&e.local.port)
                || self.ports.contains(&e.remote.port))
            && (self.peers.is_empty() || self.peers.iter().any(|f| f.matches(&e.remote)))
            && (self.netns.is_empty() || self.netns.contains(&e.netns))
    }
}

/// The conventional name of an errno a connect() failure carries (`EADDRNOTAVAIL`);
/// `errno N` for others.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        // The tracer saw the failure but not its errno (no fexit hook).
        e if e < 0 => "unknown errno",
        0 => "aborted",
        1 => "EPERM",
        13 => "EACCES",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut l = Lifetimes::default();
        assert_eq!(l.quantile_us(0.5), None);
        // 98 connections of ~100 µs (bucket 7: 64-127 µs), 2 of ~3 s.
        l.buckets[bucket_of_us(100)] = 98;
        l.buckets[bucket_of_us(3_000_000)] = 2;
        l.count = 100;
        l.sum_us = 98 * 100 + 2 * 3_000_000;
        assert_eq!(bucket_of_us(100), 7);
        assert_eq!(l.quantile_us(0.5), Some(128));
        assert_eq!(l.quantile_us(0.98), Some(128));
        assert_eq!(l.quantile_us(0.99), Some(1 << 22)); // 3 s < 4.19 s
        assert_eq!(l.mean_us(), Some(60_098));
    }

    #[test]
    fn buckets_match_the_kernel_side() {
        // bpf/trace.bpf.c: b = us ? log2(us) + 1 : 0, clamped to 31.
        assert_eq!(bucket_of_us(0), 0);
        assert_eq!(bucket_of_us(1), 1);
        assert_eq!(bucket_of_us(2), 2);
        assert_eq!(bucket_of_us(3), 2);
        assert_eq!(bucket_of_us(4), 3);
        assert_eq!(bucket_of_us(1 << 29), 30);
        assert_eq!(bucket_of_us(1 << 30), 31);
        assert_eq!(bucket_of_us(u64::MAX), 31);
        for us in [1u64, 5, 100, 65_535, 1 << 20] {
            assert!(us < bucket_upper_us(bucket_of_us(us)), "{us}");
            assert!(us >= bucket_upper_us(bucket_of_us(us)) / 2, "{us}");
        }
    }

    #[test]
    fn deltas_never_go_negative_and_sum_back() {
        let mut a = FlowCounts {
            opened: 10,
            closed_local: 7,
            ..FlowCounts::default()
        };
        a.connect_failures.eaddrnotavail = 3;
        a.lifetimes.buckets[4] = 7;
        let mut b = a;
        b.opened = 25;
        b.connect_failures.eaddrnotavail = 5;
        b.lifetimes.buckets[4] = 9;
        let d = b.since(&a);
        assert_eq!(
            (d.opened, d.closed_local, d.connect_failures.eaddrnotavail),
            (15, 0, 2)
        );
        assert_eq!(d.lifetimes.buckets[4], 2);
        let mut back = a;
        back.add(&d);
        assert_eq!(back, b);
        // A restarted flow (counts went down) gives nothing, not a wrap-around.
        assert!(a.since(&b).is_empty());
    }

    #[test]
    fn closer_needs_a_clear_majority() {
        let c = |local, peer| FlowCounts {
            closed_local: local,
            closed_peer: peer,
            ..FlowCounts::default()
        };
        assert_eq!(c(0, 0).closer(), None);
        assert_eq!(c(90, 10).closer(), Some(Closer::Local));
        assert_eq!(c(5, 95).closer(), Some(Closer::Peer));
        assert_eq!(c(50, 50).closer(), Some(Closer::Both));
    }

    #[test]
    fn failures_serialize_under_errno_names() {
        let f = ConnectFailures {
            eaddrnotavail: 4,
            ..ConnectFailures::default()
        };
        let v = serde_json::to_value(f).expect("json");
        assert_eq!(v["EADDRNOTAVAIL"], 4);
        assert_eq!(v["aborted"], 0);
        assert_eq!(f.total(), 4);
        assert_eq!(errno_name(99), "EADDRNOTAVAIL");
        assert_eq!(errno_name(7), "errno 7");
    }

    #[test]
    fn filters_match_flows_by_kind_and_value() {
        use std::net::{IpAddr, Ipv4Addr};
        let out = FlowKey {
            pid: 7,
            netns: 1,
            direction: Direction::Active,
            peer: FlowPeer::Remote(Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 443)),
        };
        let inc = FlowKey {
            direction: Direction::Passive,
            peer: FlowPeer::ListeningPort(80),
            ..out
        };
        let all = FlowFilter::default();
        assert!(all.is_empty() && all.matches_flow(&out, "curl"));
        let peer = FlowFilter {
            peers: vec!["10.0.0.0/8".parse().expect("cidr")],
            ..FlowFilter::default()
        };
        assert!(peer.matches_flow(&out, "curl"));
        assert!(
            !peer.matches_flow(&inc, "nginx"),
            "incoming flows have no peer"
        );
        let port = FlowFilter {
            ports: vec![80],
            ..FlowFilter::default()
        };
        assert!(port.matches_flow(&inc, "nginx") && !port.matches_flow(&out, "curl"));
        let both = FlowFilter {
            pids: vec![7],
            comms: vec!["curl".into()],
            ..FlowFilter::default()
        };
        assert!(both.matches_flow(&out, "curl"));
        assert!(!both.matches_flow(&out, "wget"));
        let ns = FlowFilter {
            netns: vec![2],
            ..FlowFilter::default()
        };
        assert!(!ns.matches_flow(&out, "curl"));
    }

    #[test]
    fn peers_print_as_address_or_listening_port() {
        use std::net::{IpAddr, Ipv4Addr};
        let r = FlowPeer::Remote(Endpoint::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 8080));
        assert_eq!(r.to_string(), "10.0.0.5:8080");
        assert_eq!(FlowPeer::ListeningPort(80).to_string(), ":80");
    }
}
