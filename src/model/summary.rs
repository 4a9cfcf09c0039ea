//! Aggregates built while sockets stream past: per-family state counts and per-key
//! groups. Memory grows with the number of distinct keys, never with sockets.

use std::net::IpAddr;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{Family, Socket, StateCounts};

/// State counts for IPv4, IPv6 and both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateSummary {
    pub ipv4: StateCounts,
    pub ipv6: StateCounts,
}

impl StateSummary {
    pub fn add(&mut self, s: &Socket) {
        match s.family {
            Family::V4 => self.ipv4.add(s.state),
            Family::V6 => self.ipv6.add(s.state),
        }
    }

    pub fn total(&self) -> StateCounts {
        let mut t = self.ipv4;
        t.merge(&self.ipv6);
        t
    }
}

/// What `states --by` groups on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Process,
    Peer,
    LocalPort,
    RemotePort,
    Netns,
}

impl GroupBy {
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Process => "process",
            GroupBy::Peer => "peer",
            GroupBy::LocalPort => "local-port",
            GroupBy::RemotePort => "remote-port",
            GroupBy::Netns => "netns",
        }
    }
}

/// One group's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    /// Owned by this process (the first owner when a socket is shared).
    Process(u32),
    /// No file descriptor refers to the socket: TIME_WAIT, orphans, unaccepted.
    NoDescriptor,
    /// Has a descriptor, but its process was not found (permission, exit).
    OwnerUnknown,
    /// Remote address (IPv4-mapped shown as IPv4); unspecified for listeners.
    Peer(IpAddr),
    Port(u16),
    /// A network namespace, by inode.
    Netns(u64),
}

/// Counts per key.
#[derive(Debug, Clone, Default)]
pub struct GroupedCounts {
    groups: FxHashMap<GroupKey, StateCounts>,
}

impl GroupedCounts {
    pub fn add(&mut self, key: GroupKey, s: &Socket) {
        self.groups.entry(key).or_default().add(s.state);
    }

    /// Groups, biggest total first, ties by key.
    pub fn sorted(&self) -> Vec<(GroupKey, StateCounts)> {
        let mut v: Vec<_> = self.groups.iter().map(|(k, c)| (*k, *c)).collect();
        v.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(&b.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Adds another set of groups (of another namespace) into this one.
    pub fn merge(&mut self, other: &GroupedCounts) {
        for (k, c) in &other.groups {
            self.groups.entry(*k).or_default().merge(c);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, TcpState};

    fn sock(family: Family, state: TcpState) -> Socket {
        Socket {
            family,
            state,
            local: Endpoint::unspecified(family),
            remote: Endpoint::unspecified(family),
            inode: 0,
            uid: 0,
            recv_q: 0,
            send_q: 0,
            timer: None,
            cookie: None,
            tcp_info: None,
        }
    }

    #[test]
    fn summary_splits_families_and_totals() {
        let mut s = StateSummary::default();
        s.add(&sock(Family::V4, TcpState::TimeWait));
        s.add(&sock(Family::V6, TcpState::TimeWait));
        s.add(&sock(Family::V6, TcpState::Listen));
        assert_eq!(s.ipv4.get(TcpState::TimeWait), 1);
        assert_eq!(s.ipv6.total(), 2);
        assert_eq!(s.total().get(TcpState::TimeWait), 2);
    }

    #[test]
    fn groups_sort_biggest_first() {
        let mut g = GroupedCounts::default();
        let tw = sock(Family::V4, TcpState::TimeWait);
        g.add(GroupKey::Port(80), &tw);
        g.add(GroupKey::Port(443), &tw);
        g.add(GroupKey::Port(443), &tw);
        let sorted = g.sorted();
        assert_eq!(sorted[0].0, GroupKey::Port(443));
        assert_eq!(sorted[0].1.total(), 2);
        assert_eq!(sorted[1].0, GroupKey::Port(80));
    }
}
