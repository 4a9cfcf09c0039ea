//! Byte layouts of the sock_diag messages (`linux/netlink.h`, `linux/inet_diag.h`,
//! `linux/tcp.h`), as zerocopy views so replies are read in place.
//!
//! Every multi-byte field uses zerocopy's unaligned integer types: a netlink datagram
//! is only 4-byte aligned and our receive buffer promises nothing, so reading through
//! aligned references would be undefined behaviour.

use zerocopy::byteorder::{NativeEndian, NetworkEndian, U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const NETLINK_SOCK_DIAG: isize = 4;
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The older inet_diag request type (`TCPDIAG_GETSOCK` in linux/inet_diag.h). The kernel
/// still answers it, and dumps both address families in one walk of the hash table.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// Destroys the one socket whose id the request carries (`SOCK_DESTROY` in
/// linux/sock_diag.h, 4.5+): what `ss -K` sends.
pub const SOCK_DESTROY: u16 = 21;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
/// Ask for an acknowledgement: an NLMSG_ERROR message carrying 0 or the negative errno.
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
/// Set by the kernel when the table changed during a multi-part dump (`NLM_F_DUMP_INTR`).
pub const NLM_F_DUMP_INTR: u16 = 0x10;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// `enum { INET_DIAG_NONE, INET_DIAG_MEMINFO, INET_DIAG_INFO, ... }`.
pub const INET_DIAG_INFO: u16 = 2;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;

/// `struct nlmsghdr`, 16 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct NlMsgHdr {
    pub len: U32<NativeEndian>,
    pub kind: U16<NativeEndian>,
    pub flags: U16<NativeEndian>,
    pub seq: U32<NativeEndian>,
    pub pid: U32<NativeEndian>,
}

/// `struct inet_diag_sockid`, 48 bytes. Ports and addresses are in network order;
/// an IPv4 address sits in the first four bytes of `src`/`dst`. `interface` is the
/// device the socket is bound to (0: none); `cookie` the kernel's socket cookie, low
/// half first (both halves `INET_DIAG_NOCOOKIE`, all ones, mean "any socket").
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InetDiagSockId {
    pub sport: U16<NetworkEndian>,
    pub dport: U16<NetworkEndian>,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub interface: U32<NativeEndian>,
    pub cookie: [U32<NativeEndian>; 2],
}

/// `struct inet_diag_req_v2`, 56 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InetDiagReqV2 {
    pub family: u8,
    pub protocol: u8,
    pub ext: u8,
    pub pad: u8,
    pub states: U32<NativeEndian>,
    pub id: InetDiagSockId,
}

/// `struct inet_diag_req`, 60 bytes: the request of `TCPDIAG_GETSOCK`. The kernel ignores
/// its family for dumps (`inet_diag_dump_compat()` sets AF_UNSPEC).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InetDiagReqCompat {
    pub family: u8,
    pub src_len: u8,
    pub dst_len: u8,
    pub ext: u8,
    pub id: InetDiagSockId,
    pub states: U32<NativeEndian>,
    pub dbs: U32<NativeEndian>,
}

/// `struct inet_diag_msg`, 72 bytes: the fixed part of every reply.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct InetDiagMsg {
    pub family: u8,
    pub state: u8,
    pub timer: u8,
    pub retrans: u8,
    pub id: InetDiagSockId,
    pub expires: U32<NativeEndian>,
    pub rqueue: U32<NativeEndian>,
    pub wqueue: U32<NativeEndian>,
    pub uid: U32<NativeEndian>,
    pub inode: U32<NativeEndian>,
}

/// `struct rtattr`, 4 bytes, followed by its payload.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RtAttr {
    pub len: U16<NativeEndian>,
    pub kind: U16<NativeEndian>,
}

/// Netlink messages and attributes are padded to 4 bytes.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Byte offsets of the `struct tcp_info` fields we read (`include/uapi/linux/tcp.h`).
/// The struct only ever grows at the end, so a field exists when the attribute is long
/// enough to hold it.
pub mod tcp_info_offsets {
    /// The first 8 bytes are u8 fields: state, ca_state, retransmits, probes, backoff,
    /// options, wscales, rate flags. Then u32s from offset 8.
    pub const LAST_DATA_SENT: usize = 44;
    pub const LAST_DATA_RECV: usize = 52;
    pub const LAST_ACK_RECV: usize = 56;
    pub const RTT: usize = 68;
    pub const RTTVAR: usize = 72;
    pub const TOTAL_RETRANS: usize = 100;
    pub const BYTES_ACKED: usize = 120;
    pub const BYTES_RECEIVED: usize = 128;
    pub const MIN_RTT: usize = 148;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<NlMsgHdr>(), 16);
        assert_eq!(std::mem::size_of::<InetDiagSockId>(), 48);
        assert_eq!(std::mem::size_of::<InetDiagReqV2>(), 56);
        assert_eq!(std::mem::size_of::<InetDiagReqCompat>(), 60);
        assert_eq!(std::mem::size_of::<InetDiagMsg>(), 72);
        assert_eq!(std::mem::size_of::<RtAttr>(), 4);
    }
}
