//! What the CLOSE_WAIT rules share (not a rule): which end of its connection each
//! socket is, who holds it, and whether the evidence says it is being closed.
//! `close_wait_leak` reports the groups judged leaking, `close_wait_slow_close` the ones
//! that close late or that one look cannot judge. Both group and judge here, so one
//! group is never reported by both.
//!
//! Evidence that sockets are not being closed, strongest first:
//! - the second look of `check` (`CloseWaitSocket::still_there`): the same sockets, by
//!   cookie, still in CLOSE_WAIT after the counter interval, while the holder closed
//!   none of its others (or only younger ones) in between;
//! - a peer silent for `close_wait_age_s` or longer: no slow close takes that long;
//! - in `watch`, a count that keeps rising (`analyze::trend`), applied afterwards by
//!   [`super::close_wait_leak::confirmed_by_trend`].
//!
//! Sockets the holder closed between the two looks prove it closes them: that is a slow
//! closer, reported with the delay seen.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{json, Value};

use super::util::{pct, process_label};
use super::Thresholds;
use crate::model::rank::sorted_counts;
use crate::model::units::count;
use crate::model::{
    CloseWaitSocket, Endpoint, EphemeralPorts, Evidence, FixStep, NoticeCode, Snapshot,
    SERVED_MIN_PEERS, SERVED_MIN_REMOTE_PORTS,
};

/// A second look sooner than this after the first (`check --interval 0`) proves
/// nothing about young sockets: any close delay explains them still being there.
pub const MIN_RECHECK_MS: u64 = 50;

/// Groups (served ports, destinations) named in the evidence, each with its own
/// `ss -K` line.
pub const GROUPS_SHOWN: usize = 3;

/// Entries kept in a finding's data lists.
const DATA_KEPT: usize = 20;

/// Peers listed per served port in the data.
const PEERS_KEPT: usize = 5;

/// Which end of its connection a CLOSE_WAIT socket is, with the key it is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The server end: its local port is one this host serves. Grouped by that port;
    /// its peers are the clients.
    Server(u16),
    /// The client end: its local port is ephemeral. Grouped by the destination
    /// (IPv4-mapped addresses shown as IPv4).
    Client(Endpoint),
}

impl Side {
    /// `on port 8080`, `towards 10.0.0.7:5432`.
    pub fn place(&self) -> String {
        match self {
            Side::Server(p) => format!("on port {p}"),
            Side::Client(e) => format!("towards {e}"),
        }
    }

    /// The `ss` filter that selects this group.
    pub fn ss_filter(&self) -> String {
        match self {
            Side::Server(p) => format!("sport = :{p}"),
            // ss wants brackets around an IPv6 address; an IPv4 address also matches
            // IPv4-mapped IPv6 sockets.
            Side::Client(e) => match e.address {
                IpAddr::V4(a) => format!("dst {a} dport = :{}", e.port),
                IpAddr::V6(a) => format!("dst [{a}] dport = :{}", e.port),
            },
        }
    }

    /// The `tcpdoctor sockets` filter that selects this group.
    pub fn sockets_filter(&self) -> String {
        match self {
            Side::Server(p) => format!("--local :{p}"),
            Side::Client(e) => format!("--peer {e}"),
        }
    }
}

/// Tells the side of each CLOSE_WAIT socket of one namespace, the way TIME_WAIT is
/// sorted (`model::digest`): a local port is served when a listener has it, when
/// connect() never hands it out (outside the ephemeral range, or reserved), or when
/// many peers share it (a service whose listener is gone; clients meet on one local
/// port only by chance).
pub struct Sides {
    ports: EphemeralPorts,
    listening: FxHashSet<u16>,
    shared: FxHashSet<u16>,
}

impl Sides {
    pub fn of(s: &Snapshot) -> Sides {
        let ports = s.ephemeral_ports();
        let listening: FxHashSet<u16> = s.sockets.listeners.iter().map(|l| l.local.port).collect();
        // Per ephemeral local port: distinct peers and distinct peer ports, each
        // counted only up to the bar (a busy port does not grow a set per peer).
        let mut seen: FxHashMap<u16, (FxHashSet<Endpoint>, FxHashSet<u16>)> = FxHashMap::default();
        for c in &s.sockets.close_wait {
            let port = c.local.port;
            if listening.contains(&port) || !ports.is_ephemeral(port) {
                continue;
            }
            let (peers, peer_ports) = seen.entry(port).or_default();
            if peers.len() < SERVED_MIN_PEERS as usize {
                peers.insert(Endpoint::new(c.remote.canonical_ip(), c.remote.port));
            }
            if peer_ports.len() < SERVED_MIN_REMOTE_PORTS {
                peer_ports.insert(c.remote.port);
            }
        }
        let shared = seen
            .into_iter()
            .filter(|(_, (peers, peer_ports))| {
                peers.len() >= SERVED_MIN_PEERS as usize
                    && peer_ports.len() >= SERVED_MIN_REMOTE_PORTS
            })
            .map(|(port, _)| port)
            .collect();
        Sides {
            ports,
            listening,
            shared,
        }
    }

    pub fn side(&self, c: &CloseWaitSocket) -> Side {
        let port = c.local.port;
        if self.listening.contains(&port)
            || !self.ports.is_ephemeral(port)
            || self.shared.contains(&port)
        {
            Side::Server(port)
        } else {
            Side::Client(Endpoint::new(c.remote.canonical_ip(), c.remote.port))
        }
    }
}

/// Who holds a group of CLOSE_WAIT sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// A process tcpdoctor saw.
    Process(u32),
    /// No visible process: one group per served port or destination, never one
    /// pseudo-process for every socket whose owner is unknown.
    Unseen(Side),
}

/// The accepted CLOSE_WAIT sockets of one holder, each with its side.
pub struct Group<'a> {
    pub holder: Holder,
    pub sockets: Vec<(&'a CloseWaitSocket, Side)>,
}

/// The accepted CLOSE_WAIT sockets of `s` (sockets still in an accept queue, inode 0,
/// are `close_wait_unaccepted`'s), by holder.
pub fn groups(s: &Snapshot) -> Vec<Group<'_>> {
    let sides = Sides::of(s);
    let mut by: FxHashMap<Holder, Vec<(&CloseWaitSocket, Side)>> = FxHashMap::default();
    for c in s.sockets.close_wait.iter().filter(|c| c.inode != 0) {
        let side = sides.side(c);
        let holder = match c.owner {
            Some(o) => Holder::Process(o.pid),
            None => Holder::Unseen(side),
        };
        by.entry(holder).or_default().push((c, side));
    }
    let mut out: Vec<Group> = by
        .into_iter()
        .map(|(holder, sockets)| Group { holder, sockets })
        .collect();
    out.sort_unstable_by_key(|g| g.holder);
    out
}

/// What the evidence says about one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Evidence that sockets are not being closed.
    Leak,
    /// Sockets were closed between the two looks: the holder closes them, late.
    SlowClose,
    /// Many, young, and looked at once: a slow closer or a young leak.
    NotRechecked,
    /// A few young ones: an application between the peer's FIN and its close().
    Quiet,
}

/// One group judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub total: u64,
    /// Milliseconds between the two looks; `None` when not looked at twice.
    pub recheck_ms: Option<u64>,
    /// Closed between the two looks / still there at the second.
    pub closed: u64,
    pub kept: u64,
    /// Sockets judged not being closed (the leak's count).
    pub stuck: u64,
    /// Of them, still there at the second look while every socket the holder closed
    /// in between was younger (or it closed none).
    pub outlived: u64,
    /// Of them, peers silent for `close_wait_age_s` or longer.
    pub old: u64,
    /// Oldest idle of the whole group, and of the stuck sockets.
    pub oldest_ms: Option<u64>,
    pub oldest_stuck_ms: Option<u64>,
    /// Idle times (ms) the closed sockets had reached at the first look, sorted: each
    /// was closed at most `recheck_ms` later, so the largest is about the close delay.
    pub closed_idle_ms: Vec<u64>,
    /// Positions of the stuck sockets in the group.
    stuck_at: Vec<usize>,
}

impl Judgement {
    /// About how long the holder takes to close after the peer's FIN: the longest
    /// wait among the sockets it closed between the two looks.
    pub fn close_delay_ms(&self) -> Option<u64> {
        self.closed_idle_ms.last().copied()
    }

    /// The stuck sockets of `g` (the group this judges) as a group of their own.
    pub fn stuck_group<'a>(&self, g: &Group<'a>) -> Group<'a> {
        Group {
            holder: g.holder,
            sockets: self
                .stuck_at
                .iter()
                .filter_map(|i| g.sockets.get(*i).copied())
                .collect(),
        }
    }

    /// The median wait of the sockets closed between the two looks.
    pub fn median_closed_ms(&self) -> Option<u64> {
        let v = &self.closed_idle_ms;
        (!v.is_empty()).then(|| v[v.len() / 2])
    }
}

fn idle(c: &CloseWaitSocket) -> Option<u64> {
    c.idle_ms.map(u64::from)
}

/// Judges one group against the thresholds (see the module text).
pub fn judge(s: &Snapshot, t: &Thresholds, g: &Group) -> Judgement {
    let age_ms = t.close_wait_age_s.saturating_mul(1000);
    let is_old = |c: &CloseWaitSocket| idle(c).is_some_and(|i| i >= age_ms);
    let recheck_ms = s
        .close_wait_recheck_ms
        .filter(|ms| *ms >= MIN_RECHECK_MS)
        .filter(|_| g.sockets.iter().any(|(c, _)| c.still_there.is_some()));
    let closed: Vec<&CloseWaitSocket> = g
        .sockets
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| c.still_there == Some(false))
        .collect();
    let kept = g
        .sockets
        .iter()
        .filter(|(c, _)| c.still_there == Some(true))
        .count() as u64;
    let mut closed_idle_ms: Vec<u64> = closed.iter().filter_map(|c| idle(c)).collect();
    closed_idle_ms.sort_unstable();
    let oldest_closed = closed_idle_ms.last().copied();
    // Still there, and older than every socket the holder closed meanwhile: a slow
    // close with the delay it showed does not explain them.
    let outlives = |c: &CloseWaitSocket| {
        closed.is_empty()
            || match (idle(c), oldest_closed) {
                (Some(i), Some(m)) => i > m,
                _ => false,
            }
    };
    let stuck_at: Vec<usize> = g
        .sockets
        .iter()
        .enumerate()
        .filter(|(_, (c, _))| match recheck_ms {
            Some(_) => c.still_there == Some(true) && (outlives(c) || is_old(c)),
            None => is_old(c),
        })
        .map(|(i, _)| i)
        .collect();
    let stuck: Vec<&CloseWaitSocket> = stuck_at.iter().map(|i| g.sockets[*i].0).collect();
    let outlived = match recheck_ms {
        Some(_) => stuck.iter().filter(|c| outlives(c)).count() as u64,
        None => 0,
    };
    let total = g.sockets.len() as u64;
    let old = stuck.iter().filter(|c| is_old(c)).count() as u64;
    let verdict = if stuck.len() as u64 >= t.close_wait_warn || old > 0 {
        Verdict::Leak
    } else if total < t.close_wait_warn {
        Verdict::Quiet
    } else if recheck_ms.is_some() && !closed.is_empty() {
        Verdict::SlowClose
    } else {
        Verdict::NotRechecked
    };
    Judgement {
        verdict,
        total,
        recheck_ms,
        closed: closed.len() as u64,
        kept,
        stuck: stuck.len() as u64,
        outlived,
        old,
        oldest_ms: g.sockets.iter().filter_map(|(c, _)| idle(c)).max(),
        oldest_stuck_ms: stuck.iter().filter_map(|c| idle(c)).max(),
        closed_idle_ms,
        stuck_at,
    }
}

/// The process label, or what stands for an unseen holder in a sentence.
pub fn who(s: &Snapshot, h: Holder) -> String {
    match h {
        Holder::Process(pid) => process_label(s, pid),
        Holder::Unseen(_) => "the process holding them (not visible to tcpdoctor)".to_string(),
    }
}

/// Why the owner of unseen sockets is not visible, from the collection's notices.
pub fn unseen_reason(s: &Snapshot) -> String {
    if let Some(n) = s
        .missing
        .iter()
        .find(|n| n.code == NoticeCode::OwnersPartial)
    {
        return n.message.clone();
    }
    if !s.owners_known {
        return "owners were not looked up (--no-owners, or /proc could not be read)".to_string();
    }
    "no process in /proc holds them: their process exited during the scan, or lives in another PID namespace".to_string()
}

/// What the Recv-Q of a CLOSE_WAIT socket says. The kernel counts the FIN as one byte
/// until the application reads the EOF (`rcv_nxt - copied_seq`), so 0 means the EOF
/// was read, 1 the FIN alone is unread, more means data is unread too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    /// Server end, Recv-Q > 1: accepted, the request never read.
    Unserved,
    /// Server end, Recv-Q 1: an idle connection the client closed, never read again.
    IdleKeepAlive,
    /// Client end, Recv-Q > 1: the server answered and closed; the answer was never
    /// read.
    UnreadResponse,
    /// Client end, Recv-Q 1: an idle pooled connection the server timed out.
    IdlePooled,
    /// Recv-Q 0: the EOF was read and the socket still not closed.
    EofRead,
}

impl Pattern {
    /// Every pattern, in the order ties are broken.
    const ALL: [Pattern; 5] = [
        Pattern::Unserved,
        Pattern::IdleKeepAlive,
        Pattern::UnreadResponse,
        Pattern::IdlePooled,
        Pattern::EofRead,
    ];

    pub fn of(c: &CloseWaitSocket, side: Side) -> Pattern {
        match (side, c.recv_q) {
            (_, 0) => Pattern::EofRead,
            (Side::Server(_), 1) => Pattern::IdleKeepAlive,
            (Side::Server(_), _) => Pattern::Unserved,
            (Side::Client(_), 1) => Pattern::IdlePooled,
            (Side::Client(_), _) => Pattern::UnreadResponse,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Unserved => "unserved_request",
            Pattern::IdleKeepAlive => "idle_keepalive",
            Pattern::UnreadResponse => "unread_response",
            Pattern::IdlePooled => "idle_pooled",
            Pattern::EofRead => "eof_read",
        }
    }

    /// What the pattern means, for the finding's why.
    pub fn why(self) -> &'static str {
        match self {
            Pattern::Unserved => "Most were accepted with the request still unread (Recv-Q above 1: request bytes plus the FIN): the application took the connection but no worker ever served it, and the client gave up. That is a starved worker pool: requests wait in the application's own queue while every worker is busy or blocked.",
            Pattern::IdleKeepAlive => "Most hold nothing but the unread FIN (Recv-Q 1) on a served port: idle keep-alive connections the clients closed, which the server keeps but never reads again, so it never sees the EOF.",
            Pattern::UnreadResponse => "Most hold an unread answer (Recv-Q above 1: response bytes plus the FIN): the server replied and closed, and the client abandoned the connection without reading or closing it, typically a response body never consumed after an error or an early return.",
            Pattern::IdlePooled => "Most are client connections holding nothing but the unread FIN (Recv-Q 1): idle pooled connections the server closed after its keep-alive timeout, which the pool keeps without noticing.",
            Pattern::EofRead => "Most read the EOF (Recv-Q 0) and were still not closed: a path that sees read() return 0 (or an error) and returns without close().",
        }
    }

    /// The code change that ends it.
    pub fn fix(self) -> Vec<FixStep> {
        match self {
            Pattern::Unserved => vec![
                FixStep::say("Give the work that holds a worker a deadline (backend and database calls), size the pool for the peak, or bound the queue of accepted connections and refuse quickly (503, or close) when it is full, so no accepted connection waits until its client gives up."),
                FixStep::say("Close a connection as soon as a read sees the client's EOF, also when it is still waiting in the queue."),
            ],
            Pattern::IdleKeepAlive => vec![
                FixStep::say("Watch idle keep-alive connections (keep them in the event loop, or give them a server-side idle timeout) and close each one whose read returns 0."),
            ],
            Pattern::UnreadResponse => vec![
                FixStep::say("Always consume or close response bodies, errors included (Go resp.Body.Close(), Python `with requests.get(...)`, Java EntityUtils.consume or try-with-resources)."),
                FixStep::say("Close in a finally/defer/with block on every path."),
            ],
            Pattern::IdlePooled => vec![
                FixStep::say("Evict idle pooled connections before the server's keep-alive timeout (Go http.Transport IdleConnTimeout, Apache HttpClient evictIdleConnections, Node.js agent freeSocketTimeout) and close the ones the server closed (check before reuse)."),
            ],
            Pattern::EofRead => vec![
                FixStep::say("Close on end-of-stream: every path where read() returns 0 or fails must reach close(); use finally/defer/with."),
            ],
        }
    }
}

/// What the evidence, the data and the `ss -K` lines say about a group of sockets,
/// counted in one pass over it.
pub struct Stats {
    /// Sockets per side, biggest first, ties by key.
    pub by_side: Vec<(Side, u64)>,
    /// Per served port among the first [`DATA_KEPT`]: its peers' addresses, most
    /// sockets first.
    peers: BTreeMap<u16, Vec<(IpAddr, u64)>>,
    /// Sockets with Recv-Q above 1, exactly 1, and 0.
    recv_q: [u64; 3],
    /// The most common pattern (ties: the order of [`Pattern`]).
    pub pattern: Pattern,
}

impl Stats {
    pub fn of(g: &Group) -> Stats {
        let mut sides: FxHashMap<Side, u64> = FxHashMap::default();
        let mut patterns = [0u64; 5];
        let mut recv_q = [0u64; 3];
        for (c, side) in &g.sockets {
            *sides.entry(*side).or_default() += 1;
            patterns[Pattern::of(c, *side) as usize] += 1;
            recv_q[match c.recv_q {
                0 => 2,
                1 => 1,
                _ => 0,
            }] += 1;
        }
        let by_side = sorted_counts(sides);
        let served: FxHashSet<u16> = by_side
            .iter()
            .filter_map(|(side, _)| match side {
                Side::Server(p) => Some(*p),
                Side::Client(_) => None,
            })
            .take(DATA_KEPT)
            .collect();
        let mut per_port: FxHashMap<u16, FxHashMap<IpAddr, u64>> = FxHashMap::default();
        if !served.is_empty() {
            for (c, side) in &g.sockets {
                if let Side::Server(p) = side {
                    if served.contains(p) {
                        *per_port
                            .entry(*p)
                            .or_default()
                            .entry(c.remote.canonical_ip())
                            .or_default() += 1;
                    }
                }
            }
        }
        let peers = per_port
            .into_iter()
            .map(|(port, m)| (port, sorted_counts(m)))
            .collect();
        let pattern = Pattern::ALL
            .into_iter()
            .max_by_key(|p| (patterns[*p as usize], Reverse(*p as usize)))
            .unwrap_or(Pattern::EofRead);
        Stats {
            by_side,
            peers,
            recv_q,
            pattern,
        }
    }

    /// `12 with unread data (Recv-Q > 1), 8 with the FIN alone (1)`: the non-zero parts.
    pub fn recv_q_evidence(&self) -> Evidence {
        let parts: Vec<String> = [
            "with unread data (Recv-Q > 1)",
            "with the FIN alone (1)",
            "read to EOF (0)",
        ]
        .iter()
        .zip(self.recv_q)
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
        Evidence::new("Recv-Q", parts.join(", "))
    }

    /// One line per served port or destination (the first [`GROUPS_SHOWN`]), then one
    /// for the rest.
    pub fn side_evidence(&self) -> Vec<Evidence> {
        let mut out: Vec<Evidence> = self
            .by_side
            .iter()
            .take(GROUPS_SHOWN)
            .map(|(side, n)| {
                let sockets = count(*n, "socket", "sockets");
                match side {
                    Side::Server(port) => {
                        let peers = self.peers.get(port).map_or(0, |p| p.len() as u64);
                        Evidence::new(
                            format!("served port {port}"),
                            format!(
                                "{sockets} from {}",
                                count(peers, "peer address", "peer addresses")
                            ),
                        )
                    }
                    Side::Client(dest) => Evidence::new(format!("to {dest}"), sockets),
                }
            })
            .collect();
        if self.by_side.len() > GROUPS_SHOWN {
            let rest: u64 = self.by_side[GROUPS_SHOWN..].iter().map(|(_, n)| n).sum();
            out.push(Evidence::new(
                "elsewhere",
                format!(
                    "{} on {} more ports and destinations",
                    count(rest, "socket", "sockets"),
                    self.by_side.len() - GROUPS_SHOWN
                ),
            ));
        }
        out
    }

    /// `served_ports` and `destinations` for a finding's data.
    pub fn sides_json(&self) -> (Value, Value) {
        let served: Vec<Value> = self
            .by_side
            .iter()
            .filter_map(|(side, n)| match side {
                Side::Server(port) => Some((*port, *n)),
                Side::Client(_) => None,
            })
            .take(DATA_KEPT)
            .map(|(port, n)| {
                let peers = self.peers.get(&port).map_or(&[][..], Vec::as_slice);
                json!({
                    "port": port,
                    "count": n,
                    "peers": peers.iter().take(PEERS_KEPT).map(|(ip, n)| json!({"address": ip.to_string(), "count": n})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let destinations: Vec<Value> = self
            .by_side
            .iter()
            .filter_map(|(side, n)| match side {
                Side::Client(e) => {
                    Some(json!({"address": e.address.to_string(), "port": e.port, "count": n}))
                }
                Side::Server(_) => None,
            })
            .take(DATA_KEPT)
            .collect();
        (Value::Array(served), Value::Array(destinations))
    }

    /// `{"unread_data": .., "fin_only": .., "eof_read": ..}`.
    pub fn recv_q_json(&self) -> Value {
        json!({
            "unread_data": self.recv_q[0],
            "fin_only": self.recv_q[1],
            "eof_read": self.recv_q[2],
        })
    }

    /// `ss -K` for the biggest groups: a stopgap that frees the connections, not the
    /// descriptors.
    pub fn kill_steps(&self) -> Vec<FixStep> {
        self.by_side
            .iter()
            .take(GROUPS_SHOWN)
            .enumerate()
            .map(|(i, (side, _))| {
                let text = if i == 0 {
                    format!("Stopgap only: destroy the CLOSE_WAIT sockets {} (needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN; it matches every CLOSE_WAIT socket there, whoever holds it). The process keeps their descriptors, now of closed sockets: restart it to get them back", side.place())
                } else {
                    format!("Stopgap, {}", side.place())
                };
                FixStep::run(text, format!("ss -K state close-wait {}", side.ss_filter()))
            })
            .collect()
    }
}

/// How to list the group's sockets, and, for an unseen holder, how to find it.
pub fn listing_steps(s: &Snapshot, h: Holder) -> Vec<FixStep> {
    match h {
        Holder::Process(pid) => vec![FixStep::run(
            "List them, with how long each peer has been silent",
            format!("tcpdoctor sockets --state close-wait --pid {pid} -i"),
        )],
        Holder::Unseen(side) => {
            let why = unseen_reason(s);
            vec![
                FixStep::run(
                    format!("Find the owner ({why}): as root, ss names it in users:((...))"),
                    format!("ss -tanp state close-wait {}", side.ss_filter()),
                ),
                FixStep::run(
                    "Or with tcpdoctor, as root",
                    format!(
                        "tcpdoctor sockets --state close-wait {} -i",
                        side.sockets_filter()
                    ),
                ),
            ]
        }
    }
}

/// What every CLOSE_WAIT pile means, whoever holds it, then what its Recv-Q says.
pub fn leak_body(p: Pattern) -> String {
    format!(
        "The kernel has no timer for CLOSE_WAIT: no sysctl, keepalive or timeout ends it; each socket keeps a descriptor until the process closes it or exits. {}",
        p.why()
    )
}

/// A stack dump of `pid` with the tool for its runtime, to see what its workers wait
/// on.
pub fn stack_dump_step(s: &Snapshot, pid: u32) -> FixStep {
    let comm = s.process(pid).map(|p| p.comm.as_str()).unwrap_or("");
    let command = if comm == "java" {
        format!("jstack {pid}")
    } else if comm.starts_with("python") {
        format!("py-spy dump --pid {pid}")
    } else {
        format!("gdb -p {pid} -batch -ex 'thread apply all bt'")
    };
    FixStep::run(
        "See what its workers are doing: threads blocked on a backend call, a lock or a full pool",
        command,
    )
}

/// The data every CLOSE_WAIT finding has about its group; `stats` describe the
/// sockets the finding is about (all of the group, or the leaked ones).
pub fn group_json(s: &Snapshot, g: &Group, j: &Judgement, stats: &Stats) -> Value {
    let (pid, facts) = match g.holder {
        Holder::Process(pid) => (Some(pid), s.process(pid)),
        Holder::Unseen(_) => (None, None),
    };
    let (served, destinations) = stats.sides_json();
    let rechecked = j.recheck_ms.is_some();
    json!({
        "pid": pid,
        "comm": facts.map(|p| p.comm.clone()),
        "owner_visible": pid.is_some(),
        "count": j.total,
        "oldest_idle_ms": j.oldest_ms,
        "rechecked_after_ms": j.recheck_ms,
        "still_there": rechecked.then_some(j.kept),
        "closed_meanwhile": rechecked.then_some(j.closed),
        "recv_q": stats.recv_q_json(),
        "pattern": stats.pattern.name(),
        "served_ports": served,
        "destinations": destinations,
        "nofile_soft": facts.and_then(|p| p.nofile_soft).and_then(|l| l.value()),
        "detached_tcp_fds": facts.and_then(|p| p.detached_tcp_fds),
    })
}

/// The holder's descriptors of closed sockets, for the evidence, when it has some.
pub fn detached_evidence(s: &Snapshot, h: Holder) -> Option<Evidence> {
    let Holder::Process(pid) = h else {
        return None;
    };
    let n = s.process(pid)?.detached_tcp_fds.filter(|n| *n > 0)?;
    Some(Evidence::new(
        "descriptors of closed sockets",
        format!(
            "{} more: TCP sockets the kernel already closed (reset, or ended by keepalive) that it still holds",
            count(n, "descriptor", "descriptors")
        ),
    ))
}

/// The holder's CLOSE_WAIT descriptors against its soft RLIMIT_NOFILE.
pub fn limit_evidence(s: &Snapshot, h: Holder, n: u64) -> Option<Evidence> {
    let Holder::Process(pid) = h else {
        return None;
    };
    let p = s.process(pid)?;
    let limit = p.nofile_soft.and_then(|l| l.value())?;
    Some(Evidence::new(
        "their share of RLIMIT_NOFILE",
        format!(
            "{:.1}% of the soft limit {limit}; {} open in all",
            pct(n, limit),
            count(p.open_fds, "descriptor", "descriptors")
        ),
    ))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::model::{Limit, ListenerSocket, Owner, ProcessFacts};

    /// A CLOSE_WAIT socket `local` -> `remote` held by `pid` (inode 100 + n).
    pub fn cw(
        pid: Option<u32>,
        local: &str,
        remote: &str,
        recv_q: u32,
        idle_ms: u32,
    ) -> CloseWaitSocket {
        let l: std::net::SocketAddr = local.parse().expect("local");
        let r: std::net::SocketAddr = remote.parse().expect("remote");
        CloseWaitSocket {
            local: Endpoint::new(l.ip(), l.port()),
            remote: Endpoint::new(r.ip(), r.port()),
            inode: 100,
            recv_q,
            owner: pid.map(|pid| Owner { pid, fd: 9 }),
            idle_ms: Some(idle_ms),
            cookie: None,
            still_there: None,
        }
    }

    /// A snapshot with java (pid 42, soft limit 1024) and a listener on 8080.
    pub fn snapshot(sockets: Vec<CloseWaitSocket>) -> Snapshot {
        let mut s = Snapshot {
            owners_known: true,
            ..Snapshot::default()
        };
        s.processes.insert(
            42,
            ProcessFacts {
                pid: 42,
                comm: "java".into(),
                uid: 1000,
                cmdline: "java -jar app.jar".into(),
                open_fds: 900,
                nofile_soft: Some(Limit::Value(1024)),
                nofile_hard: Some(Limit::Value(4096)),
                detached_tcp_fds: None,
            },
        );
        s.sockets.listeners.push(ListenerSocket {
            local: Endpoint::new("::".parse().expect("ip"), 8080),
            accept_queue: 0,
            backlog: 128,
            backlog_known: true,
            inode: 5,
            owner: Some(Owner { pid: 42, fd: 3 }),
        });
        s.sockets.close_wait = sockets;
        s
    }

    #[test]
    fn sides_follow_listeners_the_range_and_shared_ports() {
        let mut sockets = vec![
            // A listener's port.
            cw(Some(1), "10.0.0.1:8080", "10.0.0.9:40001", 1, 10),
            // Outside the ephemeral range.
            cw(Some(1), "10.0.0.1:5432", "10.0.0.9:40002", 1, 10),
            // Ephemeral, one peer: a client.
            cw(Some(1), "10.0.0.1:41000", "10.0.0.7:6379", 1, 10),
        ];
        // An ephemeral port many clients share (its listener gone): served.
        for i in 0..8u16 {
            sockets.push(cw(
                None,
                "10.0.0.1:45000",
                &format!("10.0.1.{i}:{}", 50_000 + i),
                1,
                10,
            ));
        }
        // Eight peers on one remote port only: clients of one service by chance, not
        // a served port.
        for i in 0..8u16 {
            sockets.push(cw(
                None,
                "10.0.0.1:46000",
                &format!("10.0.2.{i}:443"),
                1,
                10,
            ));
        }
        let s = snapshot(sockets);
        let sides = Sides::of(&s);
        let side = |i: usize| sides.side(&s.sockets.close_wait[i]);
        assert_eq!(side(0), Side::Server(8080));
        assert_eq!(side(1), Side::Server(5432));
        assert_eq!(
            side(2),
            Side::Client(Endpoint::new("10.0.0.7".parse().expect("ip"), 6379))
        );
        assert_eq!(side(3), Side::Server(45000));
        assert!(matches!(side(11), Side::Client(_)));
        // Reserved ports are never handed out by connect(): served.
        let mut reserved = s.clone();
        reserved
            .sysctls
            .insert("net.ipv4.ip_local_reserved_ports".into(), "41000".into());
        assert_eq!(
            Sides::of(&reserved).side(&reserved.sockets.close_wait[2]),
            Side::Server(41000)
        );
    }

    /// Every finding of the CLOSE_WAIT and detached-descriptor rules, each case once:
    /// commands only in `command`, and every sentence starting with a capital.
    #[test]
    fn advice_keeps_commands_apart_and_reads_as_sentences() {
        use crate::analyze::{close_wait_leak, close_wait_slow_close, detached_descriptors};
        let t = Thresholds::default();
        let mut found = Vec::new();
        let with = |pid: Option<u32>, still: Option<bool>, q: u32, idle: u32, local: &str| {
            (0..12u16)
                .map(|i| CloseWaitSocket {
                    // Re-checked: a process closed its 4 youngest (a slow closer), the
                    // unseen holder none (a leak).
                    still_there: still.map(|s| s && (pid.is_none() || i >= 4)),
                    inode: 100 + u64::from(i),
                    ..cw(
                        pid,
                        local,
                        &format!("10.0.1.{i}:{}", 40_000 + i),
                        q,
                        idle + u32::from(i),
                    )
                })
                .collect::<Vec<_>>()
        };
        for (pid, still, q, idle, local) in [
            (Some(42), Some(true), 1, 2_000, "10.0.0.1:8080"),
            (Some(42), Some(true), 300, 2_000, "10.0.0.1:8080"),
            (Some(42), Some(true), 0, 2_000, "10.0.0.1:41000"),
            (Some(42), None, 1, 400_000, "10.0.0.1:8080"),
            (Some(42), None, 2, 2_000, "10.0.0.1:41000"),
            (None, Some(true), 1, 2_000, "10.0.0.1:8080"),
        ] {
            let mut s = snapshot(with(pid, still, q, idle, local));
            s.close_wait_recheck_ms = still.map(|_| 1000);
            if let Some(p) = s.processes.get_mut(&42) {
                p.detached_tcp_fds = Some(20);
            }
            found.extend(close_wait_leak::check(&s, &t));
            found.extend(close_wait_slow_close::check(&s, &t));
            found.extend(detached_descriptors::check(&s, &t));
        }
        let rules: std::collections::BTreeSet<&str> = found.iter().map(|f| f.rule_id).collect();
        assert_eq!(rules.len(), 3, "{rules:?}");
        for f in &found {
            for st in &f.fix {
                assert!(
                    !crate::analyze::pointing::prose_has_command(&st.text),
                    "{}: {st:?}",
                    f.rule_id
                );
            }
            for sentence in std::iter::once(f.why.as_str())
                .chain(f.fix.iter().map(|st| st.text.as_str()))
                .flat_map(|t| t.split(". "))
            {
                let first = sentence.trim_start().chars().next();
                assert!(
                    first.is_some_and(|c| !c.is_lowercase()),
                    "{}: {sentence:?}",
                    f.rule_id
                );
            }
        }
    }

    #[test]
    fn filters_bracket_ipv6_and_map_ipv4() {
        let v6 = Side::Client(Endpoint::new("::1".parse().expect("ip"), 5432));
        assert_eq!(v6.ss_filter(), "dst [::1] dport = :5432");
        assert_eq!(v6.sockets_filter(), "--peer [::1]:5432");
        let mapped = cw(
            None,
            "[::ffff:10.0.0.1]:41000",
            "[::ffff:10.0.0.7]:5432",
            1,
            1,
        );
        let s = snapshot(vec![mapped]);
        let side = Sides::of(&s).side(&s.sockets.close_wait[0]);
        assert_eq!(side.ss_filter(), "dst 10.0.0.7 dport = :5432");
        assert_eq!(Side::Server(80).ss_filter(), "sport = :80");
        assert_eq!(Side::Server(80).sockets_filter(), "--local :80");
    }

    #[test]
    fn recv_q_patterns_depend_on_the_side() {
        let server = Side::Server(8080);
        let client = Side::Client(Endpoint::new("10.0.0.7".parse().expect("ip"), 80));
        let q = |n| cw(None, "10.0.0.1:8080", "10.0.0.9:1", n, 1);
        assert_eq!(Pattern::of(&q(0), server), Pattern::EofRead);
        assert_eq!(Pattern::of(&q(1), server), Pattern::IdleKeepAlive);
        assert_eq!(Pattern::of(&q(300), server), Pattern::Unserved);
        assert_eq!(Pattern::of(&q(0), client), Pattern::EofRead);
        assert_eq!(Pattern::of(&q(1), client), Pattern::IdlePooled);
        assert_eq!(Pattern::of(&q(2), client), Pattern::UnreadResponse);
    }

    fn judged(sockets: Vec<CloseWaitSocket>, recheck_ms: Option<u64>) -> Judgement {
        let mut s = snapshot(sockets);
        s.close_wait_recheck_ms = recheck_ms;
        let g = groups(&s);
        assert_eq!(g.len(), 1);
        judge(&s, &Thresholds::default(), &g[0])
    }

    fn rechecked(idle_ms: u32, still_there: bool) -> CloseWaitSocket {
        let mut c = cw(Some(42), "10.0.0.1:8080", "10.0.0.9:40000", 1, idle_ms);
        c.still_there = Some(still_there);
        c
    }

    #[test]
    fn judgements() {
        // All still there, none closed, young: a leak.
        let j = judged(
            (0..12).map(|i| rechecked(3_000 + i, true)).collect(),
            Some(1000),
        );
        assert_eq!(
            (j.verdict, j.stuck, j.outlived, j.old),
            (Verdict::Leak, 12, 12, 0)
        );
        // Some closed: a slow closer, delay = the oldest closed.
        let mut v: Vec<_> = (0..10).map(|i| rechecked(i * 50, false)).collect();
        v.extend((0..5).map(|i| rechecked(i * 10, true)));
        let j = judged(v, Some(1000));
        assert_eq!(j.verdict, Verdict::SlowClose);
        assert_eq!((j.closed, j.kept, j.stuck), (10, 5, 0));
        assert_eq!(j.close_delay_ms(), Some(450));
        assert_eq!(j.median_closed_ms(), Some(250));
        // Closes some, but twelve outlived every socket it closed: a leak beside them.
        let mut v: Vec<_> = (0..10).map(|i| rechecked(i * 50, false)).collect();
        v.extend((0..12).map(|i| rechecked(60_000 + i, true)));
        let j = judged(v, Some(1000));
        assert_eq!((j.verdict, j.stuck, j.outlived), (Verdict::Leak, 12, 12));
        // One old socket is a leak; without a second look too.
        let j = judged(vec![rechecked(400_000, true)], Some(1000));
        assert_eq!((j.verdict, j.old), (Verdict::Leak, 1));
        let mut old = rechecked(400_000, true);
        old.still_there = None;
        let j = judged(vec![old], None);
        assert_eq!((j.verdict, j.stuck, j.recheck_ms), (Verdict::Leak, 1, None));
        // Young, not re-checked: many cannot be judged, a few are nothing.
        let young = |n: u32| {
            (0..n)
                .map(|i| cw(Some(42), "10.0.0.1:8080", "10.0.0.9:1", 1, 2_000 + i))
                .collect::<Vec<_>>()
        };
        assert_eq!(judged(young(12), None).verdict, Verdict::NotRechecked);
        assert_eq!(judged(young(3), None).verdict, Verdict::Quiet);
        // A few young, all still there: nothing yet.
        let j = judged(
            (0..3).map(|i| rechecked(2_000 + i, true)).collect(),
            Some(1000),
        );
        assert_eq!(j.verdict, Verdict::Quiet);
    }
}
