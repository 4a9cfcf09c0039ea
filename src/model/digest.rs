//! Builds a [`SocketDigest`] from streamed sockets: the aggregates the rules need,
//! without keeping the socket list. Pure: owners are looked up through a closure.
//!
//! TIME_WAIT sockets are sorted by the side that closed first. The server side is
//! grouped per local port served: a listener's port, a port outside the ephemeral range
//! or reserved (connect() never picks those), or an ephemeral-range port that many
//! peers' TIME_WAIT share after its listener is gone ([`served_in_range`]). The client
//! side is grouped per destination. Each group keeps a fixed-size spread of ages
//! ([`TimeWaitAges`]), never a record per socket.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    kernel::{EphemeralPorts, TimeWaitPolicy},
    snapshot::sort_port_use,
    CloseWaitSocket, Endpoint, ListenerSocket, Owner, PortUse, Socket, SocketDigest,
    SocketOwnerMap, StateCounts, StateSummary, TcpState, TimeWaitAges, TimeWaitDigest, TimerKind,
};

/// Peers with one socket each that an ephemeral-range local port needs before it is
/// taken for a port this host serves (its listener gone). A client's connections to
/// different destinations land on the same local port only by chance (connect() starts
/// its scan at a hash of the destination), and eight single-connection destinations
/// meeting on one port is rare even for a crawler with thousands.
pub const SERVED_MIN_PEERS: u32 = 8;

/// ...and distinct remote ports among them: a crawler's destinations share a few
/// service ports (80, 443), a server's peers come from their own ephemeral ports.
pub const SERVED_MIN_REMOTE_PORTS: usize = 4;

/// One destination (source ip, destination ip:port) while the dump streams.
#[derive(Debug, Default)]
struct PortAcc {
    counts: StateCounts,
    /// One socket inode with a descriptor, to name the owner.
    inode: u64,
    ages: TimeWaitAges,
    /// The local port of its first socket, and whether all its sockets share it. A
    /// "destination" with one local port may be a client of a port this host serves.
    local_port: u16,
    one_local_port: bool,
}

/// Feed listeners and CLOSE_WAIT sockets with [`add_first_pass`](Self::add_first_pass)
/// (they come from a dump that asks for tcp_info), then everything else with
/// [`add`](Self::add), then [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct DigestBuilder {
    ports: EphemeralPorts,
    policy: TimeWaitPolicy,
    listen_ports: FxHashSet<u16>,
    summary: StateSummary,
    close_wait: Vec<CloseWaitSocket>,
    listeners: Vec<ListenerSocket>,
    /// Server-side TIME_WAIT per local port, and per peer address.
    served: FxHashMap<u16, TimeWaitAges>,
    served_peers: FxHashMap<IpAddr, u64>,
    /// Sockets on ephemeral local ports per destination, TIME_WAIT included. Whether a
    /// local port is served is only known after the first pass (listeners) or at the
    /// end (ports many peers share), so the client side is sorted out in `finish`.
    port_use: FxHashMap<(IpAddr, Endpoint), PortAcc>,
    /// With [`count_by_process`](Self::count_by_process): every socket that holds a
    /// descriptor, resolved to its process in `finish` (owners are only known then).
    owned: Option<Vec<(u64, TcpState)>>,
}

impl DigestBuilder {
    /// `ports`: the namespace's ephemeral range and reserved ports.
    pub fn new(ports: EphemeralPorts) -> DigestBuilder {
        DigestBuilder {
            ports,
            ..DigestBuilder::default()
        }
    }

    /// The namespace's TIME_WAIT length, reuse delay and reuse sysctls
    /// ([`TimeWaitPolicy::from_sysctls`]); without it, upstream lengths and no reuse.
    pub fn time_wait_policy(mut self, policy: TimeWaitPolicy) -> DigestBuilder {
        self.policy = policy;
        self
    }

    /// Also count sockets per owning process ([`SocketDigest::by_process`]). Costs one
    /// (inode, state) pair per socket with a descriptor until `finish`, so only the
    /// commands that show it ask for it.
    pub fn count_by_process(mut self) -> DigestBuilder {
        self.owned = Some(Vec::new());
        self
    }

    fn note_owned(&mut self, s: &Socket) {
        if let (Some(v), true) = (&mut self.owned, s.inode != 0) {
            v.push((s.inode, s.state));
        }
    }

    /// LISTEN and CLOSE_WAIT sockets.
    pub fn add_first_pass(&mut self, s: &Socket) {
        self.summary.add(s);
        self.note_owned(s);
        match s.state {
            TcpState::Listen => {
                self.listen_ports.insert(s.local.port);
                self.listeners.push(ListenerSocket {
                    local: s.local,
                    accept_queue: s.recv_q,
                    backlog: s.send_q,
                    backlog_known: true,
                    inode: s.inode,
                    owner: None,
                });
            }
            TcpState::CloseWait => {
                let idle_ms =
                    s.tcp_info
                        .and_then(|i| match (i.last_data_recv_ms, i.last_ack_recv_ms) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        });
                self.close_wait.push(CloseWaitSocket {
                    local: s.local,
                    remote: s.remote,
                    inode: s.inode,
                    recv_q: s.recv_q,
                    owner: None,
                    idle_ms,
                    cookie: s.cookie,
                    still_there: None,
                });
            }
            _ => self.add_connection(s),
        }
    }

    /// The sockets came from /proc/net/tcp, which shows 0 where sock_diag shows a
    /// listener's backlog: stop judging accept queues against it.
    pub fn backlogs_unknown(&mut self) {
        for l in &mut self.listeners {
            l.backlog_known = false;
        }
    }

    /// Every other state.
    pub fn add(&mut self, s: &Socket) {
        self.summary.add(s);
        self.note_owned(s);
        self.add_connection(s);
    }

    fn add_connection(&mut self, s: &Socket) {
        if s.state != TcpState::TimeWait {
            self.count_port_use(s.state, s.local, s.remote, s.inode);
            return;
        }
        // sock_diag and /proc/net/tcp both report the TIME_WAIT timer's remaining time.
        let age = s
            .timer
            .filter(|t| t.kind == TimerKind::TimeWait)
            .map(|t| self.policy.age_ms(t.remaining_ms));
        let delay = self.policy.reuse_delay_ms;
        if self.is_ephemeral(s.local.port) && s.remote.port != 0 {
            let e = self.port_entry(s.local, s.remote);
            e.counts.add(TcpState::TimeWait);
            e.ages.add(age, delay);
        } else {
            self.served.entry(s.local.port).or_default().add(age, delay);
            *self
                .served_peers
                .entry(s.remote.canonical_ip())
                .or_default() += 1;
        }
    }

    fn is_ephemeral(&self, port: u16) -> bool {
        self.ports.is_ephemeral(port) && !self.listen_ports.contains(&port)
    }

    /// The destination's entry, noting the local port (before the socket is counted).
    fn port_entry(&mut self, local: Endpoint, remote: Endpoint) -> &mut PortAcc {
        let key = (
            local.canonical_ip(),
            Endpoint::new(remote.canonical_ip(), remote.port),
        );
        let e = self.port_use.entry(key).or_default();
        if e.counts.total() == 0 {
            e.local_port = local.port;
            e.one_local_port = true;
        } else if e.local_port != local.port {
            e.one_local_port = false;
        }
        e
    }

    fn count_port_use(&mut self, state: TcpState, local: Endpoint, remote: Endpoint, inode: u64) {
        if state == TcpState::Listen || remote.port == 0 || !self.is_ephemeral(local.port) {
            return;
        }
        let e = self.port_entry(local, remote);
        e.counts.add(state);
        if e.inode == 0 && inode != 0 {
            e.inode = inode;
        }
    }

    /// Resolves owners from the owner map (`None`: owners were not scanned) and
    /// returns the summary and the digest, with every holder of a shared listener.
    pub fn finish_owned(self, owners: Option<&SocketOwnerMap>) -> (StateSummary, SocketDigest) {
        let Some(map) = owners else {
            return self.finish(|_| None);
        };
        let inodes: Vec<u64> = self.listeners.iter().map(|l| l.inode).collect();
        let (summary, mut digest) = self.finish(|inode| map.first(inode));
        for inode in inodes.into_iter().filter(|i| *i != 0) {
            // One owner per process (a process may hold the listener on several
            // descriptors), lowest pid first: the parent of forked workers, usually.
            let mut by_pid: BTreeMap<u32, Owner> = BTreeMap::new();
            for o in map.owners(inode) {
                by_pid.entry(o.pid).or_insert(o);
            }
            if by_pid.len() > 1 {
                digest
                    .listener_holders
                    .insert(inode, by_pid.into_values().collect());
            }
        }
        (summary, digest)
    }

    /// Resolves owners and returns the summary and the digest.
    pub fn finish(
        mut self,
        owner_of: impl Fn(u64) -> Option<Owner>,
    ) -> (StateSummary, SocketDigest) {
        // CLOSE_WAIT sockets came before the listening-port set was complete.
        let cws: Vec<_> = self
            .close_wait
            .iter()
            .map(|c| (c.local, c.remote, c.inode))
            .collect();
        for (local, remote, inode) in cws {
            self.count_port_use(TcpState::CloseWait, local, remote, inode);
        }
        let resolve = |inode: u64| if inode == 0 { None } else { owner_of(inode) };
        // One owner-map lookup per socket with a descriptor: the cost of `by_process`
        // (about 0.1 s per million sockets, mostly cache misses in the owner map).
        let mut per_pid: FxHashMap<u32, StateCounts> = FxHashMap::default();
        for (inode, state) in self.owned.take().into_iter().flatten() {
            if let Some(o) = resolve(inode) {
                per_pid.entry(o.pid).or_default().add(state);
            }
        }
        let by_process: BTreeMap<u32, StateCounts> = per_pid.into_iter().collect();
        for c in &mut self.close_wait {
            c.owner = resolve(c.inode);
        }
        for l in &mut self.listeners {
            l.owner = resolve(l.inode);
        }
        let usable = self.ports.usable();
        let policy = self.policy;
        let mut tw = TimeWaitDigest {
            policy,
            ..TimeWaitDigest::default()
        };
        let served_ports = served_in_range(&self.port_use);
        let mut port_use: Vec<PortUse> = Vec::with_capacity(self.port_use.len().min(4096));
        for ((local_ip, remote), acc) in self.port_use {
            let time_wait = acc.ages.total();
            if acc.one_local_port && served_ports.contains(&acc.local_port) {
                // A peer of a port this host serves: server side, and no port use.
                if time_wait > 0 {
                    self.served
                        .entry(acc.local_port)
                        .or_default()
                        .merge(&acc.ages);
                    *self.served_peers.entry(remote.address).or_default() += time_wait;
                }
                continue;
            }
            if time_wait > 0 {
                tw.client_side += time_wait;
                tw.client_ages.merge(&acc.ages);
                *tw.by_destination.entry(remote).or_default() += time_wait;
                tw.ages_by_destination
                    .entry(remote)
                    .or_default()
                    .merge(&acc.ages);
                *tw.by_peer.entry(remote.address).or_default() += time_wait;
            }
            port_use.push(PortUse {
                local_ip,
                remote,
                counts: acc.counts,
                sample_owner: resolve(acc.inode),
                usable,
                time_wait_ages: acc.ages,
                tw_reuse: policy.reuse_applies(local_ip, remote.address),
            });
        }
        for (port, ages) in self.served {
            tw.server_side += ages.total();
            tw.server_ages.merge(&ages);
            tw.by_listen_port.insert(port, ages.total());
            tw.ages_by_served_port.insert(port, ages);
        }
        for (ip, n) in self.served_peers {
            *tw.by_peer.entry(ip).or_default() += n;
        }
        sort_port_use(&mut port_use);
        port_use.truncate(super::snapshot::PORT_USE_KEPT);
        self.listeners
            .sort_by_key(|l| (l.local.port, l.local.address));
        (
            self.summary,
            SocketDigest {
                close_wait: self.close_wait,
                listeners: self.listeners,
                time_wait: tw,
                port_use,
                by_process,
                listener_holders: BTreeMap::new(),
            },
        )
    }
}

/// Ephemeral-range local ports that carry one-socket "destinations" from at least
/// [`SERVED_MIN_PEERS`] peers on [`SERVED_MIN_REMOTE_PORTS`] remote ports or more: a
/// service's port whose listener has exited, its TIME_WAIT left behind. Without this,
/// each of its peers would look like a destination of its own.
fn served_in_range(port_use: &FxHashMap<(IpAddr, Endpoint), PortAcc>) -> FxHashSet<u16> {
    let mut peers: FxHashMap<u16, (u32, [u16; SERVED_MIN_REMOTE_PORTS], usize)> =
        FxHashMap::default();
    for ((_, remote), acc) in port_use {
        if !acc.one_local_port {
            continue;
        }
        let (n, seen, distinct) = peers.entry(acc.local_port).or_default();
        *n += 1;
        if *distinct < SERVED_MIN_REMOTE_PORTS && !seen[..*distinct].contains(&remote.port) {
            seen[*distinct] = remote.port;
            *distinct += 1;
        }
    }
    peers
        .into_iter()
        .filter(|(_, (n, _, distinct))| {
            *n >= SERVED_MIN_PEERS && *distinct >= SERVED_MIN_REMOTE_PORTS
        })
        .map(|(port, _)| port)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernel::TimeWaitPolicy;
    use crate::model::{Family, TcpInfo};

    fn sock(state: TcpState, local: &str, remote: &str, inode: u64) -> Socket {
        let l: std::net::SocketAddr = local.parse().expect("local");
        let r: std::net::SocketAddr = remote.parse().expect("remote");
        Socket {
            family: if l.is_ipv4() { Family::V4 } else { Family::V6 },
            state,
            local: Endpoint::new(l.ip(), l.port()),
            remote: Endpoint::new(r.ip(), r.port()),
            inode,
            uid: 0,
            recv_q: 1,
            send_q: 0,
            timer: None,
            cookie: None,
            tcp_info: None,
        }
    }

    #[test]
    fn every_holder_of_a_shared_listener_is_kept() {
        let listener = |inode: u64, port: u16| Socket {
            family: crate::model::Family::V4,
            state: TcpState::Listen,
            local: Endpoint::new("127.0.0.1".parse().expect("ip"), port),
            remote: Endpoint::unspecified(crate::model::Family::V4),
            inode,
            uid: 0,
            recv_q: 0,
            send_q: 128,
            timer: None,
            cookie: None,
            tcp_info: None,
        };
        let mut b = DigestBuilder::new(EphemeralPorts::default());
        b.add_first_pass(&listener(70, 80));
        b.add_first_pass(&listener(71, 81));
        let mut map = SocketOwnerMap::default();
        // A forked server: the workers (found first) and their parent hold socket 70,
        // the parent twice (after dup()); socket 71 has one owner.
        for (pid, fd) in [(12, 3), (11, 3), (10, 3), (10, 9)] {
            map.insert(70, Owner { pid, fd });
        }
        map.insert(71, Owner { pid: 10, fd: 4 });
        let (_, d) = b.finish_owned(Some(&map));
        let pids = |inode: u64| -> Vec<u32> {
            let l = d
                .listeners
                .iter()
                .find(|l| l.inode == inode)
                .expect("listener");
            d.holders(l).iter().map(|o| o.pid).collect()
        };
        assert_eq!(pids(70), vec![10, 11, 12]);
        assert_eq!(pids(71), vec![10]);
        assert_eq!(
            d.listener_holders.len(),
            1,
            "single owners stay out of the map"
        );
        let (_, none) = DigestBuilder::new(EphemeralPorts::default()).finish_owned(None);
        assert!(none.listener_holders.is_empty());
    }

    #[test]
    fn classifies_time_wait_and_counts_ports_per_destination() {
        let mut b = DigestBuilder::new(EphemeralPorts::from_sysctls(
            Some("32768 60999"),
            Some("40000"),
        ));
        b.add_first_pass(&sock(TcpState::Listen, "10.0.0.1:8080", "0.0.0.0:0", 5));
        // Server side TIME_WAIT (local port is the listener).
        b.add(&sock(
            TcpState::TimeWait,
            "10.0.0.1:8080",
            "10.0.0.9:50000",
            0,
        ));
        // Client side: two to the same backend, one reserved port (not counted as use).
        b.add(&sock(
            TcpState::TimeWait,
            "10.0.0.1:33000",
            "10.0.0.7:5432",
            0,
        ));
        b.add(&sock(
            TcpState::Established,
            "10.0.0.1:33002",
            "10.0.0.7:5432",
            77,
        ));
        b.add(&sock(
            TcpState::Established,
            "10.0.0.1:40000",
            "10.0.0.7:5432",
            78,
        ));
        // A port outside the range is not ephemeral.
        b.add(&sock(
            TcpState::Established,
            "10.0.0.1:1000",
            "10.0.0.7:5432",
            79,
        ));
        let (summary, d) = b.finish(|ino| (ino == 77).then_some(Owner { pid: 7, fd: 3 }));
        assert_eq!(summary.total().total(), 6);
        assert_eq!((d.time_wait.server_side, d.time_wait.client_side), (1, 1));
        assert_eq!(d.time_wait.by_listen_port.get(&8080), Some(&1));
        assert_eq!(d.port_use.len(), 1);
        let pu = &d.port_use[0];
        assert_eq!(pu.remote.to_string(), "10.0.0.7:5432");
        assert_eq!(pu.counts.total(), 2);
        assert_eq!(pu.counts.get(TcpState::TimeWait), 1);
        assert_eq!(pu.sample_owner, Some(Owner { pid: 7, fd: 3 }));
        assert_eq!(d.listeners.len(), 1);
    }

    fn time_wait(local: &str, remote: &str, remaining_ms: u64) -> Socket {
        let mut s = sock(TcpState::TimeWait, local, remote, 0);
        s.timer = Some(crate::model::Timer {
            kind: TimerKind::TimeWait,
            remaining_ms,
            retransmits: 0,
        });
        s
    }

    fn loopback_policy(tw_reuse: &str) -> TimeWaitPolicy {
        let sysctls = [
            ("net.ipv4.tcp_tw_reuse", tw_reuse),
            ("net.ipv4.tcp_timestamps", "1"),
            ("net.ipv4.tcp_tw_reuse_delay", "1000"),
        ];
        TimeWaitPolicy::from_sysctls(|k| sysctls.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
    }

    #[test]
    fn client_time_wait_ages_give_young_entries_and_unavailable_ports() {
        let ports = EphemeralPorts::from_sysctls(Some("40000 40199"), Some(""));
        let mut b = DigestBuilder::new(ports.clone()).time_wait_policy(loopback_policy("2"));
        // 300 TIME_WAIT towards 127.0.0.1:5001, one every 10 ms: 100 under 1 s old.
        for i in 0..300u64 {
            let local = format!("127.0.0.1:{}", 40000 + (i % 200));
            let remote = if i < 200 {
                "127.0.0.1:5001"
            } else {
                "127.0.0.2:5001"
            };
            b.add(&time_wait(&local, remote, 60_000 - i * 10));
        }
        // One without a timer (age unknown), and two open connections.
        let mut no_timer = time_wait("127.0.0.1:40150", "127.0.0.1:5001", 0);
        no_timer.timer = None;
        b.add(&no_timer);
        b.add(&sock(
            TcpState::Established,
            "127.0.0.1:40198",
            "127.0.0.1:5001",
            5,
        ));
        b.add(&sock(
            TcpState::FinWait2,
            "127.0.0.1:40199",
            "127.0.0.1:5001",
            0,
        ));
        let (_, d) = b.finish(|_| None);
        let tw = &d.time_wait;
        assert_eq!((tw.client_side, tw.server_side), (301, 0));
        assert_eq!(tw.policy.reuse_delay_ms, 1000);
        let dst: Endpoint = Endpoint::new("127.0.0.1".parse().expect("ip"), 5001);
        let ages = tw.ages_by_destination[&dst];
        // Ages 0, 10, ... 1990 ms: 100 in [0,1) s, 100 in [1,2) s; one unknown.
        assert_eq!(ages.buckets[..3], [100, 100, 0]);
        assert_eq!((ages.young, ages.unknown, ages.total()), (100, 1, 201));
        assert_eq!(tw.client_ages.total(), 301);
        let pu = d
            .port_use
            .iter()
            .find(|p| p.remote == dst)
            .expect("port use");
        assert!(pu.tw_reuse, "loopback with tcp_tw_reuse=2");
        assert_eq!((pu.used(), pu.time_wait(), pu.held_open()), (203, 201, 2));
        // 2 open + 100 young + 1 of unknown age.
        assert_eq!(pu.unavailable(), 103);
        assert_eq!(pu.headroom(), 97);
        // 198 ports not held open, each reused after 1 s.
        assert_eq!(pu.sustainable_per_s(&tw.policy), 198.0);
        // The same sockets with reuse off: every TIME_WAIT port is taken.
        let mut b = DigestBuilder::new(ports).time_wait_policy(loopback_policy("0"));
        for i in 0..200u64 {
            let local = format!("127.0.0.1:{}", 40000 + i);
            b.add(&time_wait(&local, "127.0.0.1:5001", 60_000 - i * 10));
        }
        let (_, d) = b.finish(|_| None);
        let pu = &d.port_use[0];
        assert!(!pu.tw_reuse);
        assert_eq!((pu.unavailable(), pu.headroom()), (200, 0));
        assert!((pu.sustainable_per_s(&d.time_wait.policy) - 200.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn server_side_time_wait_of_a_gone_listener_is_one_served_port() {
        let mut b = DigestBuilder::new(EphemeralPorts::from_sysctls(
            Some("32768 60999"),
            Some("45100"),
        ))
        .time_wait_policy(loopback_policy("2"));
        // No listener: a service on 45000 (inside the range) closed 300 connections
        // first, from 300 client ports; one on 8080 (outside) 20; one on the reserved
        // 45100 (inside, reserved) 3.
        for i in 0..300u16 {
            let remote = format!("127.0.0.1:{}", 50000 + i);
            b.add(&time_wait("127.0.0.1:45000", &remote, 50_000));
        }
        for i in 0..20u16 {
            let remote = format!("10.0.0.{}:{}", 1 + i % 3, 40000 + i);
            b.add(&time_wait("10.0.0.1:8080", &remote, 30_000));
        }
        for i in 0..3u16 {
            let remote = format!("10.0.0.9:{}", 33000 + i);
            b.add(&time_wait("10.0.0.1:45100", &remote, 30_000));
        }
        // A crawler: one connection each to 40 hosts on port 443 that all happened to
        // get local port 50123: stays client side (a few remote ports only).
        for i in 0..40u16 {
            let remote = format!("192.0.2.{}:443", 1 + i);
            b.add(&time_wait("10.0.0.1:50123", &remote, 59_000));
        }
        // A real client with two connections to one backend.
        b.add(&time_wait("10.0.0.1:33001", "10.0.0.7:5432", 59_000));
        b.add(&time_wait("10.0.0.1:33003", "10.0.0.7:5432", 58_000));
        let (summary, d) = b.finish(|_| None);
        let tw = &d.time_wait;
        assert_eq!(summary.total().get(TcpState::TimeWait), 365);
        assert_eq!(tw.server_side, 323);
        assert_eq!(tw.client_side, 42);
        let served: Vec<(u16, u64)> = tw.by_listen_port.iter().map(|(p, n)| (*p, *n)).collect();
        assert_eq!(served, vec![(8080, 20), (45000, 300), (45100, 3)]);
        assert_eq!(tw.ages_by_served_port[&45000].total(), 300);
        assert_eq!(tw.ages_by_served_port[&45000].buckets[4], 300, "10 s old");
        assert_eq!(
            tw.by_destination.len(),
            41,
            "40 crawled hosts and the backend"
        );
        assert_eq!(
            tw.by_peer.get(&"127.0.0.1".parse::<IpAddr>().expect("ip")),
            Some(&300)
        );
        // The served port's peers are no port use; the crawler's and the backend are.
        assert_eq!(d.port_use.len(), 41);
        assert!(d
            .port_use
            .iter()
            .all(|p| p.remote.port == 443 || p.remote.port == 5432));
    }

    #[test]
    fn close_wait_idle_is_the_smaller_of_lastrcv_and_lastack() {
        let mut b = DigestBuilder::new(EphemeralPorts::default());
        let mut s = sock(TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.9:50000", 9);
        s.tcp_info = Some(TcpInfo {
            last_data_recv_ms: Some(9000),
            last_ack_recv_ms: Some(7000),
            ..TcpInfo::default()
        });
        b.add_first_pass(&s);
        let (_, d) = b.finish(|_| Some(Owner { pid: 1, fd: 4 }));
        assert_eq!(d.close_wait[0].idle_ms, Some(7000));
        assert_eq!(d.close_wait[0].cookie, None);
        assert_eq!(d.close_wait[0].owner, Some(Owner { pid: 1, fd: 4 }));
        assert!(d.by_process.is_empty(), "not asked for");
    }

    #[test]
    fn close_wait_keeps_the_kernel_cookie_for_the_recheck() {
        let mut b = DigestBuilder::new(EphemeralPorts::default());
        let mut s = sock(TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.9:50000", 9);
        s.cookie = Some(0xfeed);
        b.add_first_pass(&s);
        let (_, d) = b.finish(|_| None);
        assert_eq!(d.close_wait[0].cookie, Some(0xfeed));
        assert_eq!(d.close_wait[0].still_there, None, "not re-checked yet");
    }

    #[test]
    fn counts_sockets_per_process_only_when_asked() {
        let mut b = DigestBuilder::new(EphemeralPorts::default()).count_by_process();
        b.add_first_pass(&sock(TcpState::CloseWait, "10.0.0.1:8080", "10.0.0.9:1", 9));
        b.add(&sock(
            TcpState::Established,
            "10.0.0.1:8080",
            "10.0.0.9:2",
            10,
        ));
        b.add(&sock(
            TcpState::Established,
            "10.0.0.1:8080",
            "10.0.0.9:3",
            11,
        ));
        b.add(&sock(TcpState::TimeWait, "10.0.0.1:8080", "10.0.0.9:4", 0));
        let (_, d) = b.finish(|ino| match ino {
            9 | 10 => Some(Owner { pid: 7, fd: 3 }),
            _ => None,
        });
        let seven = d.by_process.get(&7).copied().unwrap_or_default();
        assert_eq!(seven.get(TcpState::CloseWait), 1);
        assert_eq!(seven.get(TcpState::Established), 1);
        assert_eq!(
            d.by_process.len(),
            1,
            "unknown owners and no-fd sockets are left out"
        );
    }
}
