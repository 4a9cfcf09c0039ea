//! Destroying one TCP socket from outside its process: the SOCK_DESTROY request over
//! sock_diag that `ss -K` sends. This module encodes the request and reads the
//! kernel's answer. Which sockets to destroy is decided by `cmd::kill`, never here.
//!
//! The kernel finds the socket from the id in the request (`inet_diag_find_one_icsk()`,
//! net/ipv4/inet_diag.c). The 4-tuple and the interface pick it from the hash tables,
//! then the cookie must match or the answer is ENOENT (6.1 and 6.12 source). The
//! cookie is what makes the request exact. When the connection is already gone,
//! `inet_lookup()` goes on to the listening hash and finds the listener on the local
//! port. Without a cookie that listener would be destroyed. So every request here
//! repeats the id the dump reported, cookie and interface included, and a listener or
//! a socket without a cookie never becomes a [`DestroyTarget`].
//!
//! Permission and support are checked per request: CAP_NET_ADMIN in the socket's
//! network namespace (`sock_diag_destroy()`, EPERM without it), and a kernel built with
//! CONFIG_INET_DIAG_DESTROY (`tcp_diag_destroy()` exists only then, EOPNOTSUPP
//! otherwise). TIME_WAIT sockets can be destroyed since 6.0 (`af9784d007d8`).

use std::io;

use zerocopy::byteorder::{NativeEndian, U16, U32};
use zerocopy::{FromBytes, IntoBytes};

use super::wire::{self, InetDiagReqV2, InetDiagSockId, NlMsgHdr};
use super::{DumpError, DumpRequest, DumpStats, SockDiag};
use crate::model::{Family, KillOutcome, Socket, StateSet, TcpState};

/// A socket that may be destroyed: not a listener, with the id the dump gave for it.
#[derive(Debug, Clone, Copy)]
pub struct DestroyTarget {
    pub socket: Socket,
    /// Exactly as the kernel reported it: 4-tuple, interface, cookie.
    id: InetDiagSockId,
}

/// `INET_DIAG_NOCOOKIE` in both halves: "whatever socket has this 4-tuple".
const NO_COOKIE: u64 = u64::MAX;

impl DestroyTarget {
    /// `None` for a listener (destroying one stops a server accepting connections;
    /// `tcp_abort()` would do it) and for a socket without a cookie (the request
    /// would hit whatever socket holds the 4-tuple, or a listener: see the module
    /// comment).
    pub fn new(socket: &Socket, id: &InetDiagSockId) -> Option<DestroyTarget> {
        let cookie = u64::from(id.cookie[0].get()) | (u64::from(id.cookie[1].get()) << 32);
        if socket.state == TcpState::Listen || cookie == NO_COOKIE || socket.cookie != Some(cookie)
        {
            return None;
        }
        Some(DestroyTarget {
            socket: *socket,
            id: *id,
        })
    }
}

/// Bytes of the request for one socket: nlmsghdr (SOCK_DESTROY, NLM_F_REQUEST |
/// NLM_F_ACK) + inet_diag_req_v2 with the socket's family, TCP, its state's bit and
/// its id. The ACK flag makes the kernel answer success too (an NLMSG_ERROR with 0).
pub fn encode_request(target: &DestroyTarget, seq: u32) -> Vec<u8> {
    let body = InetDiagReqV2 {
        family: match target.socket.family {
            Family::V4 => wire::AF_INET,
            Family::V6 => wire::AF_INET6,
        },
        protocol: wire::IPPROTO_TCP,
        ext: 0,
        pad: 0,
        // The kernel's lookup ignores the states; they say what was seen, for anyone
        // reading the request (strace, a netlink monitor).
        states: U32::new(target.socket.state.diag_bits()),
        id: target.id,
    };
    let total = std::mem::size_of::<NlMsgHdr>() + std::mem::size_of::<InetDiagReqV2>();
    let hdr = NlMsgHdr {
        len: U32::new(total as u32),
        kind: U16::<NativeEndian>::new(wire::SOCK_DESTROY),
        flags: U16::new(wire::NLM_F_REQUEST | wire::NLM_F_ACK),
        seq: U32::new(seq),
        pid: U32::new(0),
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to request `seq` in one datagram: `Some(errno)` (0: done) when the
/// datagram holds its NLMSG_ERROR, `None` when it holds only other messages. A message
/// that claims more bytes than there are is an error.
pub fn parse_ack(buf: &[u8], seq: u32) -> Result<Option<i32>, io::Error> {
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("netlink answer truncated at byte {offset} of {}", buf.len()),
            )
        };
        let (hdr, _) = NlMsgHdr::ref_from_prefix(rest).map_err(|_| bad())?;
        let len = hdr.len.get() as usize;
        if len < std::mem::size_of::<NlMsgHdr>() || len > rest.len() {
            return Err(bad());
        }
        if hdr.kind.get() == wire::NLMSG_ERROR && hdr.seq.get() == seq {
            // struct nlmsgerr starts with the negative errno (0 is the ACK).
            let errno = rest[std::mem::size_of::<NlMsgHdr>()..len]
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes)
                .ok_or_else(bad)?;
            return Ok(Some(errno.saturating_neg()));
        }
        offset += wire::align4(len);
    }
    Ok(None)
}

/// What the kernel's answer means for the socket.
pub fn outcome(errno: i32) -> KillOutcome {
    match errno {
        0 => KillOutcome::Destroyed,
        // ENOENT: no socket with this id, or one whose cookie differs (the connection
        // ended and the 4-tuple was reused, or the lookup fell through to a listener);
        // `tcp_abort()` also says ENOENT for a socket already closed. ESTALE is what
        // `sock_diag_check_cookie()` itself returns, should a kernel pass it on.
        libc::ENOENT | libc::ESTALE => KillOutcome::AlreadyGone,
        libc::EPERM => KillOutcome::NotPermitted,
        libc::EOPNOTSUPP => KillOutcome::Unsupported,
        e => KillOutcome::Failed { errno: e },
    }
}

/// Dumps the sockets in `states` of both families in the namespace `diag` was opened
/// in, and passes on each one that may be destroyed, with its exact id.
pub fn list<F: FnMut(DestroyTarget)>(
    diag: &mut SockDiag,
    states: StateSet,
    mut visit: F,
) -> Result<DumpStats, DumpError> {
    let mut stats = DumpStats::default();
    for family in [Family::V4, Family::V6] {
        let req = DumpRequest {
            family: Some(family),
            states,
            tcp_info: false,
        };
        diag.dump_with_ids(
            &req,
            &mut stats,
            &mut |sock: &Socket, id: &InetDiagSockId| {
                if let Some(t) = DestroyTarget::new(sock, id) {
                    visit(t);
                }
            },
        )?;
    }
    Ok(stats)
}

impl SockDiag {
    /// Asks the kernel to destroy one socket, and says what happened. Failures to
    /// talk to the kernel at all are the socket's outcome too (`Failed` with the errno).
    pub fn destroy(&mut self, target: &DestroyTarget) -> KillOutcome {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = encode_request(target, seq);
        let failed = |e: io::Error| KillOutcome::Failed {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        };
        loop {
            match self.sock.send(&msg, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return failed(e),
            }
        }
        // The kernel handles the request inside send() and queues its answer before
        // send() returns, so this reads at once. Bounded: a kernel that kept sending
        // other messages would not be answering this request.
        for _ in 0..16 {
            self.buf.clear();
            let n = match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return failed(e),
            };
            if n > self.buf.len() || n == 0 {
                return KillOutcome::Failed {
                    errno: libc::EBADMSG,
                };
            }
            match parse_ack(&self.buf[..n], seq) {
                Ok(Some(errno)) => return outcome(errno),
                Ok(None) => continue,
                Err(_) => {
                    return KillOutcome::Failed {
                        errno: libc::EBADMSG,
                    }
                }
            }
        }
        KillOutcome::Failed {
            errno: libc::EBADMSG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;
    use zerocopy::byteorder::NetworkEndian;

    /// An id as the kernel sends it for 127.0.0.1:8080 -> 127.0.0.1:40000 (or the v6
    /// pair), bound to interface 1, with the given cookie.
    fn id(family: Family, cookie: u64) -> InetDiagSockId {
        let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
        match family {
            Family::V4 => {
                src[..4].copy_from_slice(&[127, 0, 0, 1]);
                dst[..4].copy_from_slice(&[127, 0, 0, 2]);
            }
            Family::V6 => {
                src = "2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("ip")
                    .octets();
                dst = "2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("ip")
                    .octets();
            }
        }
        InetDiagSockId {
            sport: U16::<NetworkEndian>::new(8080),
            dport: U16::<NetworkEndian>::new(40000),
            src,
            dst,
            interface: U32::new(1),
            cookie: [U32::new(cookie as u32), U32::new((cookie >> 32) as u32)],
        }
    }

    fn socket(family: Family, state: TcpState, cookie: Option<u64>) -> Socket {
        let (l, r) = match family {
            Family::V4 => ("127.0.0.1", "127.0.0.2"),
            Family::V6 => ("2001:db8::1", "2001:db8::2"),
        };
        Socket {
            family,
            state,
            local: Endpoint::new(l.parse().expect("ip"), 8080),
            remote: Endpoint::new(r.parse().expect("ip"), 40000),
            inode: 77,
            uid: 0,
            recv_q: 1,
            send_q: 0,
            timer: None,
            cookie,
            tcp_info: None,
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// The request against `struct nlmsghdr` + `struct inet_diag_req_v2`
    /// (linux/netlink.h, linux/inet_diag.h): every field at the kernel's offset.
    #[test]
    fn request_matches_the_kernel_layout() {
        let cookie = 0x1122_3344_5566_7788u64;
        let s = socket(Family::V6, TcpState::CloseWait, Some(cookie));
        let t = DestroyTarget::new(&s, &id(Family::V6, cookie)).expect("target");
        let b = encode_request(&t, 42);
        assert_eq!(b.len(), 16 + 56);
        // nlmsghdr: len, type SOCK_DESTROY (21), flags REQUEST|ACK (0x5), seq, pid.
        assert_eq!(u32_at(&b, 0), 72);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 21);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 0x05);
        assert_eq!(u32_at(&b, 8), 42);
        assert_eq!(u32_at(&b, 12), 0);
        // inet_diag_req_v2: sdiag_family, sdiag_protocol, idiag_ext, pad, idiag_states.
        assert_eq!(b[16], 10, "AF_INET6");
        assert_eq!(b[17], 6, "IPPROTO_TCP");
        assert_eq!(b[18], 0, "no extensions");
        assert_eq!(b[19], 0);
        assert_eq!(u32_at(&b, 20), 1 << 8, "TCPF_CLOSE_WAIT");
        // inet_diag_sockid at 24: ports in network order, then src, dst, if, cookie.
        assert_eq!(&b[24..26], &8080u16.to_be_bytes());
        assert_eq!(&b[26..28], &40000u16.to_be_bytes());
        let octets = |e: &Endpoint| match e.address {
            std::net::IpAddr::V6(a) => a.octets(),
            std::net::IpAddr::V4(a) => panic!("v4 {a}"),
        };
        assert_eq!(&b[28..44], &octets(&s.local));
        assert_eq!(&b[44..60], &octets(&s.remote));
        assert_eq!(u32_at(&b, 60), 1, "idiag_if");
        assert_eq!(u32_at(&b, 64), 0x5566_7788, "cookie, low half first");
        assert_eq!(u32_at(&b, 68), 0x1122_3344);
    }

    #[test]
    fn ipv4_addresses_sit_in_the_first_word() {
        let s = socket(Family::V4, TcpState::Established, Some(5));
        let t = DestroyTarget::new(&s, &id(Family::V4, 5)).expect("target");
        let b = encode_request(&t, 1);
        assert_eq!(b[16], 2, "AF_INET");
        assert_eq!(u32_at(&b, 20), 1 << 1, "TCPF_ESTABLISHED");
        assert_eq!(&b[28..32], &[127, 0, 0, 1]);
        assert!(b[32..44].iter().all(|x| *x == 0));
        assert_eq!(&b[44..48], &[127, 0, 0, 2]);
        assert_eq!(u32_at(&b, 64), 5);
        assert_eq!(u32_at(&b, 68), 0);
    }

    #[test]
    fn listeners_and_sockets_without_their_cookie_are_never_targets() {
        let c = 9;
        let ok = socket(Family::V4, TcpState::CloseWait, Some(c));
        assert!(DestroyTarget::new(&ok, &id(Family::V4, c)).is_some());
        let listener = socket(Family::V4, TcpState::Listen, Some(c));
        assert!(DestroyTarget::new(&listener, &id(Family::V4, c)).is_none());
        // "Any socket with this 4-tuple": could hit a listener once the connection is gone.
        let any = socket(Family::V4, TcpState::CloseWait, Some(NO_COOKIE));
        assert!(DestroyTarget::new(&any, &id(Family::V4, NO_COOKIE)).is_none());
        // An id that is not this socket's.
        assert!(DestroyTarget::new(&ok, &id(Family::V4, c + 1)).is_none());
        let unknown = socket(Family::V4, TcpState::CloseWait, None);
        assert!(DestroyTarget::new(&unknown, &id(Family::V4, c)).is_none());
    }

    /// An NLMSG_ERROR message for `seq` carrying `-errno`, then the echoed request
    /// header, as `netlink_ack()` builds it.
    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut b = Vec::new();
        let len = 16 + 4 + 16;
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&wire::NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-errno).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b
    }

    #[test]
    fn acks_give_the_errno_of_their_own_request() {
        assert_eq!(parse_ack(&ack(7, 0), 7).expect("ack"), Some(0));
        assert_eq!(
            parse_ack(&ack(7, libc::ENOENT), 7).expect("ack"),
            Some(libc::ENOENT)
        );
        // An answer to another request is skipped, the one asked for found after it.
        let mut two = ack(6, libc::EPERM);
        two.extend(ack(7, libc::EOPNOTSUPP));
        assert_eq!(parse_ack(&two, 7).expect("ack"), Some(libc::EOPNOTSUPP));
        assert_eq!(parse_ack(&ack(6, 0), 7).expect("other"), None);
        // Truncated: an error, never a panic or a made-up answer.
        let whole = ack(7, 0);
        for cut in [3, 16, 19, whole.len() - 1] {
            assert!(parse_ack(&whole[..cut], 7).is_err(), "cut at {cut}");
        }
        let mut lying = ack(7, 0);
        lying[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(parse_ack(&lying, 7).is_err());
    }

    #[test]
    fn errnos_map_to_outcomes() {
        assert_eq!(outcome(0), KillOutcome::Destroyed);
        assert_eq!(outcome(libc::ENOENT), KillOutcome::AlreadyGone);
        assert_eq!(outcome(libc::ESTALE), KillOutcome::AlreadyGone);
        assert_eq!(outcome(libc::EPERM), KillOutcome::NotPermitted);
        assert_eq!(outcome(libc::EOPNOTSUPP), KillOutcome::Unsupported);
        assert_eq!(
            outcome(libc::EINVAL),
            KillOutcome::Failed {
                errno: libc::EINVAL
            }
        );
    }
}
