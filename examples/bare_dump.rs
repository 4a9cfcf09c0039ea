//! The benchmark floor for `tcpdoctor states`: the cheapest possible sock_diag dump of
//! every TCP socket. It asks the kernel for all TCP sockets of both families in one walk
//! (`--per-family`: IPv4, then IPv6, two walks), reads every reply datagram and counts
//! the messages by walking only the `nlmsghdr` lengths; no socket is decoded. Prints the
//! count. Run with `cargo run --release --example bare_dump`.
//!
//! Deliberately self-contained (no tcpdoctor code), so it measures the kernel dump plus
//! the unavoidable copies to user space, and nothing that tcpdoctor could make cheaper.

use std::io;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

// Constants from linux/netlink.h, linux/sock_diag.h and linux/inet_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// Bits 1..=12: every TCP state, TCP_ESTABLISHED (1) to TCP_NEW_SYN_RECV (12).
const ALL_STATES: u32 = 0x1ffe;
/// The kernel caps a dump datagram at 32 KiB (netlink_recvmsg), so this always fits one.
const RECV_BUF: usize = 64 * 1024;

/// One request: `struct nlmsghdr` (16 bytes) + `struct inet_diag_req_v2` (56 bytes).
fn request(family: u8, seq: u32) -> [u8; 72] {
    let mut req = [0u8; 72];
    // nlmsghdr: len, type, flags, seq; pid 0 addresses the kernel.
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, idiag_ext = 0 (no attributes such as
    // tcp_info), pad, then the state mask. The 48-byte inet_diag_sockid that follows
    // stays zero: no address filter.
    req[16] = family;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&ALL_STATES.to_ne_bytes());
    req
}

/// Sends one dump request and returns how many socket messages arrived.
fn dump(sock: &Socket, buf: &mut Vec<u8>, req: &[u8]) -> io::Result<u64> {
    sock.send(req, 0)?;
    let mut count = 0;
    loop {
        buf.clear();
        // MSG_TRUNC returns the datagram's real length, so a cut one would be noticed.
        let n = sock.recv(buf, libc::MSG_TRUNC)?;
        if n > buf.len() {
            return Err(io::Error::other(format!("datagram of {n} bytes truncated")));
        }
        if n == 0 {
            return Err(io::Error::other("empty datagram before NLMSG_DONE"));
        }
        // Walk the messages packed in this datagram: only nlmsg_len and nlmsg_type.
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            match kind {
                NLMSG_DONE => return Ok(count),
                NLMSG_ERROR => return Err(io::Error::other("kernel answered NLMSG_ERROR")),
                _ => count += 1,
            }
            let len = len as usize;
            if len < NLMSG_HDRLEN {
                return Err(io::Error::other(format!("bad nlmsg_len {len}")));
            }
            off += (len + 3) & !3; // messages are 4-byte aligned (NLMSG_ALIGN)
        }
    }
}

/// The older `TCPDIAG_GETSOCK` request (nlmsghdr + 60-byte `struct inet_diag_req`): the
/// kernel dumps IPv4 and IPv6 in one walk of its hash table, where the family request
/// above walks it once per family.
fn request_both(seq: u32) -> [u8; 76] {
    let mut req = [0u8; 76];
    req[0..4].copy_from_slice(&76u32.to_ne_bytes());
    req[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // inet_diag_req: family (ignored for dumps), src_len, dst_len, idiag_ext = 0, the
    // 48-byte socket id (zero: no filter), then the state mask and idiag_dbs.
    req[16] = libc::AF_INET as u8;
    req[68..72].copy_from_slice(&ALL_STATES.to_ne_bytes());
    req
}

fn main() -> io::Result<()> {
    let sock = Socket::new(NETLINK_SOCK_DIAG)?;
    let mut buf = Vec::with_capacity(RECV_BUF);
    // `--per-family`: the two-walk floor (what `ss` does); default: one walk, the
    // request tcpdoctor uses for both families.
    if std::env::args().any(|a| a == "--per-family") {
        let v4 = dump(&sock, &mut buf, &request(libc::AF_INET as u8, 1))?;
        let v6 = dump(&sock, &mut buf, &request(libc::AF_INET6 as u8, 2))?;
        println!("{}", v4 + v6);
    } else {
        println!("{}", dump(&sock, &mut buf, &request_both(3))?);
    }
    Ok(())
}
