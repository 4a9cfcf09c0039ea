//! Processes and which of their file descriptors hold which socket.

use rustc_hash::FxHashMap;
use serde::Serialize;

/// One (process, descriptor) that refers to a socket inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub fd: u32,
}

/// What we show about a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    /// `/proc/PID/comm`: the short name (15 bytes at most).
    pub comm: String,
    /// Real uid of the process (owner of `/proc/PID`).
    pub uid: u32,
    /// `/proc/PID/cmdline` with NULs turned into spaces; empty for kernel threads. Shown
    /// in the CLI only; never exported as a metric label (it can carry secrets).
    pub cmdline: String,
    /// Open file descriptors counted during the scan.
    pub open_fds: u64,
}

/// Socket inode -> owners. Almost every socket has one owner, so the first is stored
/// inline and the rare extra ones (after fork, or SCM_RIGHTS) in a side table: one map
/// entry per socket, no vector per socket.
#[derive(Debug, Clone, Default)]
pub struct SocketOwnerMap {
    first: FxHashMap<u64, Owner>,
    more: FxHashMap<u64, Vec<Owner>>,
}

impl SocketOwnerMap {
    pub fn with_capacity(n: usize) -> SocketOwnerMap {
        SocketOwnerMap {
            first: FxHashMap::with_capacity_and_hasher(n, Default::default()),
            more: FxHashMap::default(),
        }
    }

    pub fn insert(&mut self, inode: u64, owner: Owner) {
        use std::collections::hash_map::Entry;
        match self.first.entry(inode) {
            Entry::Vacant(v) => {
                v.insert(owner);
            }
            Entry::Occupied(o) => {
                if *o.get() != owner {
                    self.more.entry(inode).or_default().push(owner);
                }
            }
        }
    }

    /// The first owner found (lowest-numbered process wins ties only by scan order).
    pub fn first(&self, inode: u64) -> Option<Owner> {
        self.first.get(&inode).copied()
    }

    /// Every owner of `inode`, the first one first.
    pub fn owners(&self, inode: u64) -> impl Iterator<Item = Owner> + '_ {
        self.first
            .get(&inode)
            .into_iter()
            .copied()
            .chain(self.more.get(&inode).into_iter().flatten().copied())
    }

    /// Every (inode, owner) pair: each socket's first owner, then its other owners.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Owner)> + '_ {
        self.first.iter().map(|(i, o)| (*i, *o)).chain(
            self.more
                .iter()
                .flat_map(|(i, v)| v.iter().map(move |o| (*i, *o))),
        )
    }

    /// Number of distinct socket inodes with an owner.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

/// How many descriptors a process has open, and which network namespace it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessFds {
    pub pid: u32,
    pub open_fds: u64,
    /// Inode of `/proc/PID/ns/net`; `None` when it could not be read.
    pub netns: Option<u64>,
}

/// Owners plus the processes they belong to.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    pub map: SocketOwnerMap,
    pub processes: FxHashMap<u32, Process>,
    /// Open descriptors of every process scanned, socket owner or not.
    pub fd_counts: Vec<ProcessFds>,
}

impl Owners {
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_socket_keeps_every_owner_once() {
        let mut m = SocketOwnerMap::default();
        m.insert(7, Owner { pid: 1, fd: 3 });
        m.insert(7, Owner { pid: 2, fd: 3 });
        m.insert(7, Owner { pid: 1, fd: 3 });
        m.insert(9, Owner { pid: 1, fd: 4 });
        let owners: Vec<_> = m.owners(7).collect();
        assert_eq!(
            owners,
            vec![Owner { pid: 1, fd: 3 }, Owner { pid: 2, fd: 3 }]
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.owners(8).count(), 0);
        let mut all: Vec<(u64, Owner)> = m.iter().collect();
        all.sort_by_key(|(i, o)| (*i, o.pid, o.fd));
        assert_eq!(
            all,
            vec![
                (7, Owner { pid: 1, fd: 3 }),
                (7, Owner { pid: 2, fd: 3 }),
                (9, Owner { pid: 1, fd: 4 })
            ]
        );
    }
}
