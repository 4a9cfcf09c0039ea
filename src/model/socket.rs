//! One TCP socket as the kernel describes it, in plain owned data.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

use super::TcpState;

/// Address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl Serialize for Family {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// An address and port. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack
/// sockets) are kept as the kernel reports them: the socket's family stays IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(address: IpAddr, port: u16) -> Endpoint {
        Endpoint { address, port }
    }

    pub fn unspecified(family: Family) -> Endpoint {
        let address = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Endpoint { address, port: 0 }
    }

    /// The address with an IPv4-mapped IPv6 address shown as plain IPv4, for matching
    /// user filters such as `--peer 10.0.0.0/8` against dual-stack sockets.
    pub fn canonical_ip(&self) -> IpAddr {
        match self.address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        }
    }
}

impl fmt::Display for Endpoint {
    /// `127.0.0.1:80`, `[::1]:80`; the port is `*` when 0, as ss prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}")?,
            IpAddr::V6(a) => write!(f, "[{a}]")?,
        }
        if self.port == 0 {
            f.write_str(":*")
        } else {
            write!(f, ":{}", self.port)
        }
    }
}

/// Which kernel timer is pending on a socket (`idiag_timer`, the `tr` column of
/// /proc/net/tcp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// Retransmission, RACK or tail-loss probe (code 1).
    Retransmit,
    /// Keep-alive, also used for orphaned FIN_WAIT2 when tcp_fin_timeout > 60 s (code 2).
    KeepAlive,
    /// TIME_WAIT or FIN_WAIT2 minisocket expiry (code 3).
    TimeWait,
    /// Zero-window probe (code 4).
    ZeroWindowProbe,
    /// A code this version does not know.
    Other(u8),
}

impl TimerKind {
    /// Maps the kernel's timer code; 0 (no timer) is `None`.
    pub fn from_kernel(code: u8) -> Option<TimerKind> {
        match code {
            0 => None,
            1 => Some(TimerKind::Retransmit),
            2 => Some(TimerKind::KeepAlive),
            3 => Some(TimerKind::TimeWait),
            4 => Some(TimerKind::ZeroWindowProbe),
            other => Some(TimerKind::Other(other)),
        }
    }

    /// Names as ss prints them in `timer:(name,...)`.
    pub fn name(self) -> &'static str {
        match self {
            TimerKind::Retransmit => "on",
            TimerKind::KeepAlive => "keepalive",
            TimerKind::TimeWait => "timewait",
            TimerKind::ZeroWindowProbe => "persist",
            TimerKind::Other(_) => "unknown",
        }
    }
}

impl Serialize for TimerKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A pending timer and the time left on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timer {
    pub kind: TimerKind,
    /// Milliseconds until it fires (netlink gives ms; /proc/net/tcp gives 1/100 s).
    pub remaining_ms: u64,
    /// Retransmissions (or probes) already made.
    pub retransmits: u8,
}

/// The parts of `struct tcp_info` tcpdoctor uses. The kernel's struct grows over time and
/// older kernels send a shorter one, so every field is optional: `None` means the kernel
/// did not send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TcpInfo {
    /// Milliseconds since data was last sent (`tcpi_last_data_sent`).
    pub last_data_sent_ms: Option<u32>,
    /// Milliseconds since data was last received (`tcpi_last_data_recv`, ss `lastrcv`).
    pub last_data_recv_ms: Option<u32>,
    /// Milliseconds since an ACK was last received (`tcpi_last_ack_recv`, ss `lastack`).
    pub last_ack_recv_ms: Option<u32>,
    /// Smoothed round-trip time in microseconds (`tcpi_rtt`).
    pub rtt_us: Option<u32>,
    /// Round-trip time variance in microseconds (`tcpi_rttvar`).
    pub rtt_var_us: Option<u32>,
    /// Retransmitted segments over the connection's life (`tcpi_total_retrans`).
    pub total_retrans: Option<u32>,
    /// Bytes acknowledged by the peer (`tcpi_bytes_acked`).
    pub bytes_acked: Option<u64>,
    /// Bytes received (`tcpi_bytes_received`).
    pub bytes_received: Option<u64>,
    /// Minimum RTT seen, microseconds (`tcpi_min_rtt`).
    pub min_rtt_us: Option<u32>,
}

/// One TCP socket. No heap data: a million of these is one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Socket {
    pub family: Family,
    pub state: TcpState,
    pub local: Endpoint,
    pub remote: Endpoint,
    /// Socket inode; 0 when no file descriptor refers to it (TIME_WAIT, orphans, and
    /// connections still waiting in a listener's accept queue).
    pub inode: u64,
    pub uid: u32,
    /// Unread bytes (CLOSE_WAIT: +1 for the FIN until EOF is read); for LISTEN sockets
    /// the current accept-queue length.
    pub recv_q: u32,
    /// Unacknowledged bytes; for LISTEN sockets the backlog.
    pub send_q: u32,
    pub timer: Option<Timer>,
    /// Kernel socket cookie (netlink only), stable for the socket's life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    pub tcp_info: Option<TcpInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_prints_like_ss() {
        let v4 = Endpoint::new("127.0.0.1".parse().expect("ip"), 80);
        assert_eq!(v4.to_string(), "127.0.0.1:80");
        let v6 = Endpoint::new("::1".parse().expect("ip"), 0);
        assert_eq!(v6.to_string(), "[::1]:*");
    }

    #[test]
    fn mapped_address_canonicalises_to_v4() {
        let e = Endpoint::new("::ffff:10.1.2.3".parse().expect("ip"), 1);
        assert_eq!(e.canonical_ip(), "10.1.2.3".parse::<IpAddr>().expect("ip"));
    }
}
