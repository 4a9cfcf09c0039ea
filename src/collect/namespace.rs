//! Everything read inside one network namespace: its sockets (digested while they
//! stream), per-namespace sysctls, counters and sockstat; and, for `check`, the second
//! look at its counters and CLOSE_WAIT sockets.
//!
//! The readers here run on a worker thread that has joined the namespace and receive
//! only that namespace's roots ([`NsRoots`]): no path of the host is in scope, so
//! nothing read here can come from the wrong namespace.

use std::collections::BTreeMap;
use std::time::Instant;

use rustc_hash::FxHashSet;

use super::netns::NsRoots;
use super::procfs::{counters, sockstat};
use super::sockets::{self, CollectError, SocketQuery, SourcePref};
use super::sysctl;
use crate::model::{
    CloseWaitSocket, DigestBuilder, Endpoint, EphemeralPorts, Notice, NoticeCode, Socket, Sockstat,
    Source, StateSet, TcpState, TimeWaitPolicy, HOST_WIDE_SYSCTLS, PER_NETNS_SYSCTLS,
};

/// Above this many sockets (sockstat inuse + tw) a namespace is dumped in two passes
/// on two threads: CLOSE_WAIT with tcp_info (for their age) and the rest without it,
/// because tcp_info costs kernel time on every socket it is asked for. Below it one
/// pass with tcp_info is cheaper: each pass walks the whole TCP hash table, which the
/// namespaces of a host usually share.
const SPLIT_ABOVE: u64 = 50_000;

/// Receives every socket a namespace's dumps yield, as they stream, with the
/// namespace's inode (`tcpdoctor snapshot` writes them down). Called from the worker
/// thread reading that namespace: a namespace's listeners come before its other sockets.
pub trait SocketTap: Send + Sync + std::fmt::Debug {
    fn socket(&self, netns: u64, s: &Socket);
}

/// What to read in each namespace.
#[derive(Debug, Clone, Copy)]
pub struct NsOptions<'a> {
    pub source: SourcePref,
    /// Fill `SocketDigest::by_process` (TCP sockets per owning process).
    pub by_process: bool,
    /// Keep the inode of every socket the dumps saw, to find descriptors of sockets
    /// that are in no table (`check`).
    pub record_inodes: bool,
    /// A replayed capture: files it lacks are listed once by its inventory
    /// (`collect::replay`), not one notice per reader.
    pub replay: bool,
    /// Every socket read also goes here, with the namespace's inode.
    pub tap: Option<&'a dyn SocketTap>,
    /// The inode of the namespace being read (for the tap).
    pub inode: u64,
}

/// The digest builder of a namespace with these sysctls: its ephemeral ports and
/// TIME_WAIT policy. One place, so a live read and a recorded one digest alike.
pub fn digest_builder(sysctls: &BTreeMap<String, String>, by_process: bool) -> DigestBuilder {
    let ports = EphemeralPorts::from_sysctls(
        sysctls
            .get("net.ipv4.ip_local_port_range")
            .map(String::as_str),
        sysctls
            .get("net.ipv4.ip_local_reserved_ports")
            .map(String::as_str),
    );
    let builder = DigestBuilder::new(ports).time_wait_policy(TimeWaitPolicy::from_sysctls(|k| {
        sysctls.get(k).map(String::as_str)
    }));
    if by_process {
        builder.count_by_process()
    } else {
        builder
    }
}

/// The counters of one namespace at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterReading {
    pub at: Instant,
    pub values: BTreeMap<String, i64>,
}

/// What one namespace yields before owners are known.
#[derive(Debug)]
pub struct NsReading {
    pub builder: DigestBuilder,
    pub source: Source,
    /// Per-namespace sysctls, plus the host-wide ones when asked for.
    pub sysctls: BTreeMap<String, String>,
    pub counters: Option<CounterReading>,
    pub sockstat: Option<Sockstat>,
    pub notices: Vec<Notice>,
    /// Inodes of the sockets the dumps saw (with `record_inodes`; unsorted).
    pub inodes: Vec<u64>,
    /// When the CLOSE_WAIT sockets were dumped.
    pub close_wait_at: Instant,
}

/// Reads one namespace. `host_wide`: also read the host-wide sysctls here (the
/// namespace that carries host-wide evidence: the initial one when it is read, since
/// some of them exist only there).
pub fn read(
    roots: &NsRoots,
    opts: &NsOptions<'_>,
    host_wide: bool,
) -> Result<NsReading, CollectError> {
    let mut notices = Vec::new();
    let counters =
        counters::read(&roots.net, !opts.replay, &mut notices).map(|values| CounterReading {
            at: Instant::now(),
            values,
        });
    let mut sysctls = sysctl::read(&roots.sys, PER_NETNS_SYSCTLS);
    if host_wide {
        sysctls.extend(sysctl::read(&roots.sys, HOST_WIDE_SYSCTLS));
    }
    let sockstat =
        super::bounded::read_to_string(&roots.net.join("net/sockstat"), super::bounded::SMALL)
            .ok()
            .and_then(|t| sockstat::parse_tcp(&t));

    let mut builder = digest_builder(&sysctls, opts.by_process);
    let record = opts.record_inodes;
    let tap = |s: &Socket| {
        if let Some(t) = opts.tap {
            t.socket(opts.inode, s);
        }
    };
    let mut inodes: Vec<u64> = Vec::new();
    let query = |states: StateSet, tcp_info: bool| SocketQuery {
        states,
        ipv4: true,
        ipv6: true,
        tcp_info,
        source: opts.source,
    };
    let listen: StateSet = [TcpState::Listen].into_iter().collect();
    let close_wait: StateSet = [TcpState::CloseWait].into_iter().collect();
    // Every state the kernel reports as a socket. The request never sets bit 13
    // (TCPF_BOUND_INACTIVE): since 6.8 (91051f003948) that bit also walks the bind
    // table and returns closed sockets that still hold a bound port, with state
    // CLOSE. Without it, a socket in CLOSE is in no dump, which is what makes a
    // descriptor of one "detached" (see `procfs::detached`).
    let others: StateSet = TcpState::ALL
        .into_iter()
        .filter(|s| *s != TcpState::Listen)
        .collect();
    let rest: StateSet = TcpState::ALL
        .into_iter()
        .filter(|s| *s != TcpState::Listen && *s != TcpState::CloseWait)
        .collect();

    // Listeners first: TIME_WAIT and port use are classified against their ports. A
    // LISTEN-only dump never walks the connection hash, so it is cheap.
    let first = sockets::stream(&query(listen, false), &roots.net, |s| {
        tap(s);
        builder.add_first_pass(s);
        if record && s.inode != 0 {
            inodes.push(s.inode);
        }
    })?;
    let big = sockstat.is_none_or(|s| s.inuse + s.tw > SPLIT_ABOVE);
    let mut reports = vec![first];
    let close_wait_at = Instant::now();
    if big {
        let (cw, main) = std::thread::scope(|scope| {
            // A thread started here is in this thread's namespace too.
            let cw = scope.spawn(|| {
                let mut v: Vec<Socket> = Vec::new();
                sockets::stream(&query(close_wait, true), &roots.net, |s| v.push(*s))
                    .map(|r| (r, v))
            });
            let main = sockets::stream(&query(rest, false), &roots.net, |s| {
                tap(s);
                builder.add(s);
                if record && s.inode != 0 {
                    inodes.push(s.inode);
                }
            });
            (cw.join(), main)
        });
        reports.push(main?);
        match cw {
            Ok(r) => {
                let (r, v) = r?;
                for s in &v {
                    tap(s);
                    builder.add_first_pass(s);
                    if record && s.inode != 0 {
                        inodes.push(s.inode);
                    }
                }
                reports.push(r);
            }
            Err(_) => notices.push(Notice::new(
                NoticeCode::CloseWaitUnavailable,
                "reading CLOSE_WAIT sockets failed (internal error); they are not in this report",
            )),
        }
    } else {
        reports.push(sockets::stream(&query(others, true), &roots.net, |s| {
            tap(s);
            builder.add_first_pass(s);
            if record && s.inode != 0 {
                inodes.push(s.inode);
            }
        })?);
    }
    let source = reports[0].source;
    if source == Source::Proc {
        builder.backlogs_unknown();
    }
    for (i, r) in reports.into_iter().enumerate() {
        // The fallback notice once, not once per pass.
        notices.extend(
            r.notices
                .into_iter()
                .filter(|n| i == 0 || n.code != NoticeCode::NetlinkUnavailable),
        );
    }
    Ok(NsReading {
        builder,
        source,
        sysctls,
        counters,
        sockstat,
        notices,
        inodes,
        close_wait_at,
    })
}

/// The CLOSE_WAIT sockets seen at a second look, by the identity the source gives.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CloseWaitSeen {
    /// Socket cookies (sock_diag): the kernel's id of a socket for its whole life.
    cookies: FxHashSet<u64>,
    /// (local, remote, inode) where there is no cookie (/proc/net/tcp).
    tuples: FxHashSet<(Endpoint, Endpoint, u64)>,
}

impl CloseWaitSeen {
    fn add(&mut self, s: &Socket) {
        match s.cookie {
            Some(c) => {
                self.cookies.insert(c);
            }
            None => {
                self.tuples.insert((s.local, s.remote, s.inode));
            }
        }
    }

    /// Whether the socket seen in the first dump is still in CLOSE_WAIT.
    pub fn still_there(&self, c: &CloseWaitSocket) -> bool {
        match c.cookie {
            Some(cookie) => self.cookies.contains(&cookie),
            None => self.tuples.contains(&(c.local, c.remote, c.inode)),
        }
    }
}

/// The second look at a namespace (`check`, `--interval` after the first).
#[derive(Debug)]
pub struct SecondReading {
    pub counters: Option<CounterReading>,
    /// `None` when the CLOSE_WAIT dump failed (its notice is in `notices`).
    pub close_wait: Option<CloseWaitSeen>,
    pub close_wait_at: Instant,
    pub notices: Vec<Notice>,
}

/// Reads the counters again and dumps the CLOSE_WAIT sockets again (state filter, no
/// tcp_info: only their identity is needed), from `source`, the source the first
/// reading used, so the identities compare.
pub fn read_again(roots: &NsRoots, source: Source) -> SecondReading {
    let mut notices = Vec::new();
    let counters =
        counters::read(&roots.net, false, &mut Vec::new()).map(|values| CounterReading {
            at: Instant::now(),
            values,
        });
    let query = SocketQuery {
        states: [TcpState::CloseWait].into_iter().collect(),
        ipv4: true,
        ipv6: true,
        tcp_info: false,
        source: match source {
            Source::Netlink => SourcePref::Netlink,
            Source::Proc => SourcePref::Proc,
        },
    };
    let close_wait_at = Instant::now();
    let mut seen = CloseWaitSeen::default();
    let close_wait = match sockets::stream(&query, &roots.net, |s| seen.add(s)) {
        Ok(_) => Some(seen),
        Err(e) => {
            notices.push(Notice::new(
                NoticeCode::CloseWaitUnavailable,
                format!("the second look at CLOSE_WAIT sockets failed ({e}); whether they are still there is unknown"),
            ));
            None
        }
    };
    SecondReading {
        counters,
        close_wait,
        close_wait_at,
        notices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    fn cw(local: &str, remote: &str, inode: u64, cookie: Option<u64>) -> Socket {
        let l: std::net::SocketAddr = local.parse().expect("local");
        let r: std::net::SocketAddr = remote.parse().expect("remote");
        Socket {
            family: Family::V4,
            state: TcpState::CloseWait,
            local: Endpoint::new(l.ip(), l.port()),
            remote: Endpoint::new(r.ip(), r.port()),
            inode,
            uid: 0,
            recv_q: 1,
            send_q: 0,
            timer: None,
            cookie,
            tcp_info: None,
        }
    }

    fn record(s: &Socket) -> CloseWaitSocket {
        CloseWaitSocket {
            local: s.local,
            remote: s.remote,
            inode: s.inode,
            recv_q: s.recv_q,
            owner: None,
            idle_ms: None,
            cookie: s.cookie,
            still_there: None,
        }
    }

    #[test]
    fn close_wait_sockets_are_matched_by_cookie_else_by_tuple_and_inode() {
        let a = cw("127.0.0.1:80", "127.0.0.1:4000", 11, Some(900));
        let b = cw("127.0.0.1:80", "127.0.0.1:4001", 12, None);
        let mut seen = CloseWaitSeen::default();
        seen.add(&a);
        seen.add(&b);
        assert!(seen.still_there(&record(&a)));
        assert!(seen.still_there(&record(&b)));
        // Same tuple, another socket (the inode differs): not the one seen before.
        assert!(!seen.still_there(&record(&cw("127.0.0.1:80", "127.0.0.1:4001", 13, None))));
        // Same tuple and inode but another cookie: the cookie decides.
        assert!(!seen.still_there(&record(&cw(
            "127.0.0.1:80",
            "127.0.0.1:4000",
            11,
            Some(901)
        ))));
    }

    #[test]
    fn a_captured_namespace_is_read_from_its_folder_only() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/proc/netns_mixed");
        let opts = NsOptions {
            source: SourcePref::Proc,
            by_process: false,
            record_inodes: true,
            replay: true,
            tap: None,
            inode: 0,
        };
        let r = read(&NsRoots::here(&root), &opts, true).expect("fixture readable");
        assert_eq!(r.source, Source::Proc);
        let (summary, digest) = r.builder.finish(|_| None);
        assert_eq!(summary.total().total(), 48);
        assert_eq!(digest.close_wait.len(), 4);
        assert_eq!(
            r.sysctls
                .get("net.ipv4.ip_local_port_range")
                .map(String::as_str),
            Some("32768 60999")
        );
        let c = r.counters.expect("netstat and snmp captured");
        assert!(c.values.contains_key("TcpExt.ListenOverflows"));
        assert_eq!(r.sockstat.map(|s| s.tw), Some(4));
        // Every socket with a descriptor: listeners, full connections, CLOSE_WAIT.
        assert!(r.inodes.iter().all(|i| *i != 0));
        assert!(!r.inodes.is_empty());
    }
}
