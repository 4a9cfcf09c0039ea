//! Descriptors of TCP sockets that are in no kernel socket table.
//!
//! A connection reset by the peer or aborted by keepalive, a failed connect(), a socket
//! never connected: each is in state CLOSE, unhashed, so no sock_diag dump,
//! `/proc/net/tcp` or `ss` shows it, yet the process still holds its descriptor. The
//! usual case is a CLOSE_WAIT socket the application never closed whose next write or
//! keepalive probe drew an RST (`tcp_reset()` -> `tcp_done()`): the leak moves out of
//! sight while the descriptor stays taken.
//!
//! Found by difference, cheaply at any size: the owner scan lists every socket
//! descriptor, the dumps list every socket they saw; only the few inodes the dumps did
//! not see are looked at one by one, with `getxattr(/proc/PID/fd/N,
//! "system.sockprotoname")`, which names the protocol the socket was created with
//! (`TCP`, `TCPv6`; `UNIX`, `UDP`, `NETLINK`... for the other sockets, also absent from
//! TCP dumps). That name is set at socket creation (`sock_alloc_file()`), so it holds
//! for a socket in any state.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::collect::owners::socket_inode;
use crate::model::{Owner, SocketOwnerMap};

/// Counts, per process that `keep` accepts, its descriptors of TCP sockets whose inode
/// is not in `dumped` (sorted, deduplicated: every inode any dump saw). Processes with
/// none are absent.
pub fn count(
    proc_root: &Path,
    owners: &SocketOwnerMap,
    dumped: &[u64],
    keep: impl Fn(u32) -> bool,
) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for (inode, o) in not_dumped(owners, dumped) {
        if !keep(o.pid) {
            continue;
        }
        let fd_path = proc_root
            .join(o.pid.to_string())
            .join("fd")
            .join(o.fd.to_string());
        if is_tcp(&fd_path) && still_refers_to(&fd_path, inode) {
            *out.entry(o.pid).or_insert(0) += 1;
        }
    }
    out
}

/// The (inode, owner) pairs whose inode is not in `dumped` (sorted). Both sides sorted
/// and walked once: at a million sockets this is a few tens of milliseconds, where a
/// binary search per owner costs several times that in cache misses.
fn not_dumped(owners: &SocketOwnerMap, dumped: &[u64]) -> Vec<(u64, Owner)> {
    let mut held: Vec<(u64, Owner)> = owners.iter().collect();
    held.sort_unstable_by_key(|(inode, _)| *inode);
    let mut out = Vec::new();
    let mut d = dumped.iter().peekable();
    for (inode, o) in held {
        while d.next_if(|x| **x < inode).is_some() {}
        if d.peek() != Some(&&inode) {
            out.push((inode, o));
        }
    }
    out
}

/// Whether the descriptor at `fd_path` is a TCP socket (IPv4 or IPv6). False when it
/// is gone or unreadable.
fn is_tcp(fd_path: &Path) -> bool {
    matches!(sockprotoname(fd_path).as_deref(), Some(b"TCP" | b"TCPv6"))
}

/// The protocol name of the socket behind a `/proc/PID/fd/N` link
/// (`net/socket.c:sockfs_xattr_get()`), without the trailing NUL.
pub fn sockprotoname(fd_path: &Path) -> Option<Vec<u8>> {
    let path = CString::new(fd_path.as_os_str().as_bytes()).ok()?;
    let name = c"system.sockprotoname";
    // Protocol names are short (struct proto's name is 32 bytes).
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated; buf is writable for buf.len() bytes and
    // getxattr writes at most that many.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    let v = buf.get(..n)?;
    Some(v.strip_suffix(&[0]).unwrap_or(v).to_vec())
}

/// Whether the descriptor still refers to socket `inode` (it may have been closed, and
/// its number reused, since the owner scan).
fn still_refers_to(fd_path: &Path, inode: u64) -> bool {
    std::fs::read_link(fd_path)
        .ok()
        .and_then(|t| socket_inode(t.as_os_str().as_bytes()))
        == Some(inode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn only_owners_of_inodes_no_dump_saw_are_candidates() {
        let mut owners = SocketOwnerMap::default();
        for (inode, pid) in [(5, 1), (9, 1), (9, 2), (12, 3), (30, 3), (2, 4)] {
            owners.insert(
                inode,
                Owner {
                    pid,
                    fd: inode as u32,
                },
            );
        }
        let mut c = not_dumped(&owners, &[1, 5, 9, 10, 29]);
        c.sort_by_key(|(i, o)| (*i, o.pid));
        let got: Vec<(u64, u32)> = c.iter().map(|(i, o)| (*i, o.pid)).collect();
        assert_eq!(got, vec![(2, 4), (12, 3), (30, 3)]);
        assert_eq!(not_dumped(&owners, &[]).len(), 6);
        assert!(not_dumped(&SocketOwnerMap::default(), &[1, 2]).is_empty());
    }

    fn inode_of(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink");
        socket_inode(link.as_os_str().as_bytes()).expect("socket")
    }

    #[test]
    fn protocol_names_tell_tcp_from_other_sockets() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let name = |fd: i32| sockprotoname(Path::new(&format!("/proc/self/fd/{fd}")));
        assert_eq!(name(tcp.as_raw_fd()).as_deref(), Some(&b"TCP"[..]));
        assert_eq!(name(udp.as_raw_fd()).as_deref(), Some(&b"UDP"[..]));
        assert_eq!(name(0x7fff_0000), None, "no such descriptor");
    }

    #[test]
    fn only_tcp_sockets_missing_from_the_dumps_are_counted() {
        let me = std::process::id();
        // A listener (in the dumps), a never-connected TCP socket (in none) and a UDP
        // socket (in no TCP dump, but not TCP).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        // SAFETY: plain socket(2); the descriptor is closed below.
        let bare = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(bare >= 0);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let mut owners = SocketOwnerMap::default();
        for fd in [listener.as_raw_fd(), bare, udp.as_raw_fd()] {
            owners.insert(
                inode_of(fd),
                Owner {
                    pid: me,
                    fd: fd as u32,
                },
            );
        }
        let dumped = vec![inode_of(listener.as_raw_fd())];
        let n = count(Path::new("/proc"), &owners, &dumped, |_| true);
        let none = count(Path::new("/proc"), &owners, &dumped, |_| false);
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(bare) };
        assert_eq!(n.get(&me), Some(&1));
        assert!(none.is_empty());
    }
}
