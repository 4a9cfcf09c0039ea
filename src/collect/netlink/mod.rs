//! TCP socket dumps over NETLINK_SOCK_DIAG (inet_diag), the way `ss` gets them.
//!
//! Owns the netlink socket, the request encoding and the receive loop; decoding lives in
//! [`parse`]. The kernel filters by state when asked, so a `--state close-wait` query
//! never carries the other sockets across the user boundary.

pub mod destroy;
pub mod parse;
pub mod wire;

use std::io;

use zerocopy::byteorder::{NativeEndian, U16, U32};
use zerocopy::IntoBytes;

pub use parse::{DumpStats, ParseError};

use crate::model::{Family, Socket, StateSet};

/// What to ask the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpRequest {
    /// `None`: IPv4 and IPv6 in one walk of the kernel's hash table (the
    /// `TCPDIAG_GETSOCK` request); each walk costs the same however few sockets match.
    pub family: Option<Family>,
    pub states: StateSet,
    /// Ask for `struct tcp_info` (INET_DIAG_INFO) with every full socket.
    pub tcp_info: bool,
}

/// A dump that could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] io::Error),
    #[error("cannot send the sock_diag request: {0}")]
    Send(#[source] io::Error),
    #[error("cannot read the sock_diag reply: {0}")]
    Recv(#[source] io::Error),
    #[error("a sock_diag reply datagram of {0} bytes did not fit the receive buffer")]
    Oversized(usize),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Bytes of one dump request: nlmsghdr + inet_diag_req_v2 (`SOCK_DIAG_BY_FAMILY`, one
/// family), or nlmsghdr + inet_diag_req (`TCPDIAG_GETSOCK`, both families).
pub fn encode_request(req: &DumpRequest, seq: u32) -> Vec<u8> {
    // Extension bit n asks for attribute n+1.
    let ext = if req.tcp_info {
        1 << (wire::INET_DIAG_INFO - 1)
    } else {
        0
    };
    let states = U32::new(req.states.diag_mask());
    let (kind, body): (u16, Vec<u8>) = match req.family {
        Some(f) => (
            wire::SOCK_DIAG_BY_FAMILY,
            wire::InetDiagReqV2 {
                family: match f {
                    Family::V4 => wire::AF_INET,
                    Family::V6 => wire::AF_INET6,
                },
                protocol: wire::IPPROTO_TCP,
                ext,
                pad: 0,
                states,
                id: zerocopy::FromZeros::new_zeroed(),
            }
            .as_bytes()
            .to_vec(),
        ),
        None => (
            wire::TCPDIAG_GETSOCK,
            wire::InetDiagReqCompat {
                family: wire::AF_INET,
                src_len: 0,
                dst_len: 0,
                ext,
                id: zerocopy::FromZeros::new_zeroed(),
                states,
                dbs: U32::new(0),
            }
            .as_bytes()
            .to_vec(),
        ),
    };
    let total = std::mem::size_of::<wire::NlMsgHdr>() + body.len();
    let hdr = wire::NlMsgHdr {
        len: U32::new(total as u32),
        kind: U16::<NativeEndian>::new(kind),
        flags: U16::new(wire::NLM_F_REQUEST | wire::NLM_F_DUMP),
        seq: U32::new(seq),
        pid: U32::new(0),
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Receive buffer size. The kernel sizes dump datagrams from the reader's buffer but caps
/// them at 32 KiB (`netlink_recvmsg()`), so 64 KiB always holds one; we still check.
const RECV_BUF: usize = 64 * 1024;

/// A sock_diag netlink socket, reusable for several dumps.
pub struct SockDiag {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> Result<SockDiag, DumpError> {
        let sock = netlink_sys::Socket::new(wire::NETLINK_SOCK_DIAG).map_err(DumpError::Open)?;
        Ok(SockDiag {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
            seq: 0,
        })
    }

    /// Runs one dump, calling `visit` for every socket as its datagram arrives.
    pub fn dump<F: FnMut(&Socket)>(
        &mut self,
        req: &DumpRequest,
        stats: &mut DumpStats,
        visit: &mut F,
    ) -> Result<(), DumpError> {
        self.dump_with_ids(
            req,
            stats,
            &mut |sock: &Socket, _: &wire::InetDiagSockId| visit(sock),
        )
    }

    /// [`SockDiag::dump`], also passing each socket's id as the kernel sent it.
    pub fn dump_with_ids<F: FnMut(&Socket, &wire::InetDiagSockId)>(
        &mut self,
        req: &DumpRequest,
        stats: &mut DumpStats,
        visit: &mut F,
    ) -> Result<(), DumpError> {
        if req.states.is_empty() {
            return Ok(());
        }
        self.seq = self.seq.wrapping_add(1);
        let msg = encode_request(req, self.seq);
        loop {
            match self.sock.send(&msg, 0) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DumpError::Send(e)),
            }
        }
        loop {
            self.buf.clear();
            // MSG_TRUNC makes recv return the datagram's real length, so an oversized one
            // is detected instead of silently cut.
            let n = match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DumpError::Recv(e)),
            };
            if n > self.buf.len() {
                return Err(DumpError::Oversized(n));
            }
            if parse::parse_datagram_with_ids(&self.buf[..n], stats, visit)? {
                return Ok(());
            }
            if n == 0 {
                return Err(DumpError::Recv(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink socket returned an empty datagram before NLMSG_DONE",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TcpState;

    #[test]
    fn request_carries_family_states_and_info_bit() {
        let req = DumpRequest {
            family: Some(Family::V6),
            states: [TcpState::CloseWait].into_iter().collect(),
            tcp_info: true,
        };
        let bytes = encode_request(&req, 7);
        assert_eq!(bytes.len(), 72);
        assert_eq!(
            u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            72
        );
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 20);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), 0x301);
        assert_eq!(
            u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            7
        );
        assert_eq!(bytes[16], 10); // AF_INET6
        assert_eq!(bytes[17], 6); // IPPROTO_TCP
        assert_eq!(bytes[18], 2); // 1 << (INET_DIAG_INFO - 1)
        assert_eq!(
            u32::from_ne_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
            1 << 8
        );
        assert!(bytes[24..].iter().all(|b| *b == 0));
    }

    #[test]
    fn both_families_use_the_older_request() {
        let req = DumpRequest {
            family: None,
            states: [TcpState::TimeWait].into_iter().collect(),
            tcp_info: false,
        };
        let bytes = encode_request(&req, 3);
        assert_eq!(bytes.len(), 76);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 18);
        assert_eq!(bytes[19], 0, "no extensions");
        // idiag_states after the 4 header bytes and the 48-byte socket id.
        assert_eq!(
            u32::from_ne_bytes([bytes[68], bytes[69], bytes[70], bytes[71]]),
            1 << 6
        );
    }
}
