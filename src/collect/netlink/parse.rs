//! Parsing of sock_diag dump replies, in place: each `inet_diag_msg` is read through a
//! zerocopy view of the receive buffer and decoded into a stack `Socket`, so a dump of a
//! million sockets makes no allocation per socket.
//!
//! Pure functions on bytes; no I/O. Hostile input gives an error or a skipped, counted
//! record, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zerocopy::FromBytes;

use super::wire::{self, InetDiagMsg, InetDiagSockId, NlMsgHdr, RtAttr};
use crate::model::{Endpoint, Family, Socket, TcpInfo, TcpState, Timer, TimerKind};

/// What went wrong reading a reply. Truncation and kernel errors end the dump; odd
/// records inside a well-formed message are skipped and counted in [`DumpStats`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("netlink reply truncated: message at byte {offset} claims {claimed} bytes but {available} remain")]
    Truncated {
        offset: usize,
        claimed: usize,
        available: usize,
    },
    #[error("the kernel refused the sock_diag request: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32 },
}

/// Counters kept while parsing, reported to the user when non-zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Sockets decoded and passed on.
    pub sockets: u64,
    /// `inet_diag_msg` records skipped: too short, unknown family or unknown state.
    pub skipped: u64,
    /// Attributes with an impossible length (the socket is kept, its tcp_info dropped).
    pub bad_attributes: u64,
    /// The kernel flagged the dump as interrupted (`NLM_F_DUMP_INTR`): the socket table
    /// changed while it was walked, so a socket may be missing or counted twice.
    pub interrupted: bool,
}

/// Parses one datagram of a dump reply, calling `visit` for every socket. Returns `true`
/// when the datagram ends the dump (NLMSG_DONE).
pub fn parse_datagram<F: FnMut(&Socket)>(
    buf: &[u8],
    stats: &mut DumpStats,
    visit: &mut F,
) -> Result<bool, ParseError> {
    parse_datagram_with_ids(buf, stats, &mut |sock: &Socket, _: &InetDiagSockId| {
        visit(sock)
    })
}

/// [`parse_datagram`], also passing each socket's id exactly as the kernel sent it (the
/// interface and cookie a request about that one socket must repeat).
pub fn parse_datagram_with_ids<F: FnMut(&Socket, &InetDiagSockId)>(
    buf: &[u8],
    stats: &mut DumpStats,
    visit: &mut F,
) -> Result<bool, ParseError> {
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let Ok((hdr, _)) = NlMsgHdr::ref_from_prefix(rest) else {
            return Err(ParseError::Truncated {
                offset,
                claimed: std::mem::size_of::<NlMsgHdr>(),
                available: rest.len(),
            });
        };
        let len = hdr.len.get() as usize;
        if len < std::mem::size_of::<NlMsgHdr>() || len > rest.len() {
            return Err(ParseError::Truncated {
                offset,
                claimed: len,
                available: rest.len(),
            });
        }
        let payload = &rest[std::mem::size_of::<NlMsgHdr>()..len];
        if hdr.flags.get() & wire::NLM_F_DUMP_INTR != 0 {
            stats.interrupted = true;
        }
        match hdr.kind.get() {
            wire::NLMSG_DONE => return Ok(true),
            wire::NLMSG_ERROR => {
                // struct nlmsgerr starts with a negative errno (0 is an ACK).
                let errno = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .unwrap_or(-libc::EBADMSG);
                if errno != 0 {
                    return Err(ParseError::Kernel { errno: -errno });
                }
            }
            // Replies carry the request's type: SOCK_DIAG_BY_FAMILY, or TCPDIAG_GETSOCK
            // for the both-families request.
            wire::SOCK_DIAG_BY_FAMILY | wire::TCPDIAG_GETSOCK => match decode(payload, stats) {
                Some((sock, id)) => {
                    stats.sockets += 1;
                    visit(&sock, id);
                }
                None => stats.skipped += 1,
            },
            // NLMSG_NOOP, NLMSG_OVERRUN and anything newer carry no socket.
            _ => {}
        }
        offset += wire::align4(len);
    }
    Ok(false)
}

/// Decodes one `inet_diag_msg` payload (fixed part plus attributes), with the socket's
/// id as the kernel sent it.
fn decode<'a>(payload: &'a [u8], stats: &mut DumpStats) -> Option<(Socket, &'a InetDiagSockId)> {
    let (msg, attrs) = InetDiagMsg::ref_from_prefix(payload).ok()?;
    let family = match msg.family {
        wire::AF_INET => Family::V4,
        wire::AF_INET6 => Family::V6,
        _ => return None,
    };
    let state = TcpState::from_kernel(msg.state)?;
    let local = Endpoint::new(address(family, &msg.id.src), msg.id.sport.get());
    let remote = Endpoint::new(address(family, &msg.id.dst), msg.id.dport.get());
    let timer = TimerKind::from_kernel(msg.timer).map(|kind| Timer {
        kind,
        remaining_ms: u64::from(msg.expires.get()),
        retransmits: msg.retrans,
    });
    let cookie = u64::from(msg.id.cookie[0].get()) | (u64::from(msg.id.cookie[1].get()) << 32);
    // The attribute area starts at the aligned end of the fixed part (72, already aligned).
    let tcp_info = find_attr(attrs, wire::INET_DIAG_INFO, stats).map(decode_tcp_info);
    let sock = Socket {
        family,
        state,
        local,
        remote,
        inode: u64::from(msg.inode.get()),
        uid: msg.uid.get(),
        recv_q: msg.rqueue.get(),
        send_q: msg.wqueue.get(),
        timer,
        cookie: Some(cookie),
        tcp_info,
    };
    Some((sock, &msg.id))
}

fn address(family: Family, raw: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*raw)),
    }
}

/// Walks `rtattr`s and returns the payload of the first one of `kind`. A malformed
/// length stops the walk and is counted.
fn find_attr<'a>(mut attrs: &'a [u8], kind: u16, stats: &mut DumpStats) -> Option<&'a [u8]> {
    const HDR: usize = std::mem::size_of::<RtAttr>();
    while attrs.len() >= HDR {
        let (attr, _) = RtAttr::ref_from_prefix(attrs).ok()?;
        let len = usize::from(attr.len.get());
        if len < HDR || len > attrs.len() {
            stats.bad_attributes += 1;
            return None;
        }
        if attr.kind.get() == kind {
            return Some(&attrs[HDR..len]);
        }
        let next = wire::align4(len).min(attrs.len());
        attrs = &attrs[next..];
    }
    None
}

/// Reads the fields we use from a `struct tcp_info` of any length; fields beyond the
/// end of what the kernel sent are `None`.
pub fn decode_tcp_info(raw: &[u8]) -> TcpInfo {
    use wire::tcp_info_offsets as off;
    let u32_at = |o: usize| {
        raw.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let u64_at = |o: usize| {
        raw.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
    };
    TcpInfo {
        last_data_sent_ms: u32_at(off::LAST_DATA_SENT),
        last_data_recv_ms: u32_at(off::LAST_DATA_RECV),
        last_ack_recv_ms: u32_at(off::LAST_ACK_RECV),
        rtt_us: u32_at(off::RTT),
        rtt_var_us: u32_at(off::RTTVAR),
        total_retrans: u32_at(off::TOTAL_RETRANS),
        bytes_acked: u64_at(off::BYTES_ACKED),
        bytes_received: u64_at(off::BYTES_RECEIVED),
        min_rtt_us: u32_at(off::MIN_RTT),
    }
}
