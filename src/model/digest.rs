//! Builds a [`SocketDigest`] from streamed sockets: the aggregates the rules need,
//! without keeping the socket list. Pure: owners are looked up through a closure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    kernel::EphemeralPorts, CloseWaitSocket, Endpoint, ListenerSocket, Owner, PortUse, Socket,
    SocketDigest, StateCounts, StateSummary, TcpState,
};

/// Feed listeners and CLOSE_WAIT sockets with [`add_first_pass`](Self::add_first_pass)
/// (they come from a dump that asks for tcp_info), then everything else with
/// [`add`](Self::add), then [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct DigestBuilder {
    ports: EphemeralPorts,
    listen_ports: FxHashSet<u16>,
    summary: StateSummary,
    close_wait: Vec<CloseWaitSocket>,
    listeners: Vec<ListenerSocket>,
    tw: super::TimeWaitDigest,
    /// Deferred: TIME_WAIT and port use are classified against the listening ports,
    /// which are only complete after the first pass.
    port_use: FxHashMap<(IpAddr, Endpoint), (StateCounts, u64)>,
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
        if s.state == TcpState::TimeWait {
            let peer = s.remote.canonical_ip();
            *self.tw.by_peer.entry(peer).or_default() += 1;
            if self.listen_ports.contains(&s.local.port) {
                self.tw.server_side += 1;
                *self.tw.by_listen_port.entry(s.local.port).or_default() += 1;
            } else {
                self.tw.client_side += 1;
                let dest = Endpoint::new(peer, s.remote.port);
                *self.tw.by_destination.entry(dest).or_default() += 1;
            }
        }
        self.count_port_use(s.state, s.local, s.remote, s.inode);
    }

    fn is_ephemeral(&self, port: u16) -> bool {
        self.ports.is_ephemeral(port) && !self.listen_ports.contains(&port)
    }

    fn count_port_use(&mut self, state: TcpState, local: Endpoint, remote: Endpoint, inode: u64) {
        if state == TcpState::Listen || remote.port == 0 || !self.is_ephemeral(local.port) {
            return;
        }
        let key = (
            local.canonical_ip(),
            Endpoint::new(remote.canonical_ip(), remote.port),
        );
        let e = self
            .port_use
            .entry(key)
            .or_insert((StateCounts::default(), 0));
        e.0.add(state);
        if e.1 == 0 && inode != 0 {
            e.1 = inode;
        }
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
        let mut port_use: Vec<PortUse> = self
            .port_use
            .into_iter()
            .map(|((local_ip, remote), (counts, inode))| PortUse {
                local_ip,
                remote,
                counts,
                sample_owner: resolve(inode),
                usable,
            })
            .collect();
        port_use.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then((a.local_ip, a.remote).cmp(&(b.local_ip, b.remote)))
        });
        port_use.truncate(super::snapshot::PORT_USE_KEPT);
        self.listeners
            .sort_by_key(|l| (l.local.port, l.local.address));
        (
            self.summary,
            SocketDigest {
                close_wait: self.close_wait,
                listeners: self.listeners,
                time_wait: self.tw,
                port_use,
                by_process,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
