//! The records `bpf/trace.bpf.c` shares with user space, byte for byte, and their
//! conversion to the model. Pure: no BPF, no I/O, so every decoding rule is testable on
//! bytes. Sizes are pinned on both sides (`_Static_assert` in the C file, `const`
//! asserts here).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::model::flow::LIFETIME_BUCKETS;
use crate::model::{
    Direction, Endpoint, FlowCounts, FlowEvent, FlowEventKind, FlowKey, FlowPeer, Lifetimes,
    TcpState,
};

/// `AF_INET` / `AF_INET6` as the kernel stores them.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `DIR_*` in trace.bpf.c.
const DIR_ACTIVE: u8 = 1;
const DIR_PASSIVE: u8 = 2;

/// Slots of `flow_stats.failed` (`FAIL_*`).
pub const FAIL_SLOTS: usize = 9;

/// `struct flow_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawFlowKey {
    pub tgid: u32,
    pub netns: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub direction: u8,
}

/// `struct flow_stats`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawFlowStats {
    pub opened: u64,
    pub closed_local: u64,
    pub closed_peer: u64,
    pub closed_unknown: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub failed: [u64; FAIL_SLOTS],
    pub lifetime_count: u64,
    pub lifetime_sum_us: u64,
    pub lifetime: [u64; LIFETIME_BUCKETS],
    pub comm: [u8; 16],
}

/// `struct listener_key`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawListenerKey {
    pub netns: u32,
    pub port: u32,
}

/// `struct listener_owner`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawListenerOwner {
    pub sk: u64,
    pub tgid: u32,
    pub reserved: u32,
    pub comm: [u8; 16],
}

/// `struct flow_event`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawFlowEvent {
    pub ts_ns: u64,
    pub lifetime_ns: u64,
    pub tgid: u32,
    pub netns: u32,
    pub comm: [u8; 16],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub error: i32,
    pub direction: u8,
    pub reserved: [u8; 3],
}

// The same numbers as the _Static_asserts in bpf/trace.bpf.c.
const _: () = assert!(std::mem::size_of::<RawFlowKey>() == 28);
const _: () = assert!(std::mem::size_of::<RawFlowStats>() == 408);
const _: () = assert!(std::mem::size_of::<RawListenerKey>() == 8);
const _: () = assert!(std::mem::size_of::<RawListenerOwner>() == 32);
const _: () = assert!(std::mem::size_of::<RawFlowEvent>() == 88);

// SAFETY: plain #[repr(C)] integers and byte arrays without padding (the sizes above
// equal the sums of the fields), valid for any bit pattern: what aya::Pod requires.
unsafe impl aya::Pod for RawFlowKey {}
unsafe impl aya::Pod for RawFlowStats {}
unsafe impl aya::Pod for RawListenerKey {}
unsafe impl aya::Pod for RawListenerOwner {}

/// Slots of `trace_counters` (`CNT_*`).
pub mod counter {
    pub const FLOWS_FULL: u32 = 0;
    pub const LISTENERS_FULL: u32 = 1;
    pub const SOCKS_UNTRACKED: u32 = 2;
    pub const EVENTS_SENT: u32 = 3;
    pub const EVENTS_RATE_LIMITED: u32 = 4;
    pub const EVENTS_RING_FULL: u32 = 5;
    pub const ORIGINS_ADDED: u32 = 6;
    pub const ORIGINS_REMOVED: u32 = 7;
    pub const ORIGINS_FAILED: u32 = 8;
    pub const STACKS_LOST: u32 = 9;
    pub const ACCEPT_NO_COOKIE: u32 = 10;
    pub const SLOTS: u32 = 11;
}

/// A record the kernel wrote that does not decode: counted, never guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown direction {0}")]
    Direction(u8),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("event of {0} bytes, expected 88")]
    Size(usize),
    #[error("unknown opener {0}")]
    Via(u8),
}

/// `struct origin`: who opened one socket (leak recording), keyed by its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawOrigin {
    /// CLOCK_BOOTTIME, ns.
    pub at_ns: u64,
    pub inode: u64,
    pub tgid: u32,
    pub tid: u32,
    pub netns: u32,
    pub stack_id: i32,
    pub thread: [u8; 16],
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub via: u8,
    /// 1: the kernel closed the socket while a descriptor held it.
    pub closed_held: u32,
}

const _: () = assert!(std::mem::size_of::<RawOrigin>() == 72);

/// `VIA_*` in trace.bpf.c.
const VIA_CONNECT: u8 = 1;
const VIA_ACCEPT: u8 = 2;

impl RawOrigin {
    /// The model's origin of the socket with `cookie`; `boot_to_unix_ms` turns the
    /// kernel's boot-time clock into wall-clock time (the offset of the two clocks now).
    pub fn to_model(
        &self,
        cookie: u64,
        boot_to_unix_ms: i64,
    ) -> Result<crate::model::provenance::Origin, BadRecord> {
        use crate::model::provenance::{OpenedBy, Origin};
        let via = match self.via {
            VIA_CONNECT => OpenedBy::Connect,
            VIA_ACCEPT => OpenedBy::Accept,
            v => return Err(BadRecord::Via(v)),
        };
        let remote = Endpoint::new(address(self.family, &self.addr)?, self.port);
        let at_ms = (self.at_ns / 1_000_000) as i64;
        Ok(Origin {
            cookie,
            pid: self.tgid,
            tid: self.tid,
            thread: comm_text(&self.thread),
            at_unix_ms: at_ms.saturating_add(boot_to_unix_ms).max(0) as u64,
            via,
            stack_id: u32::try_from(self.stack_id).ok(),
            remote: remote.to_string(),
            netns: u64::from(self.netns),
            inode: self.inode,
        })
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> Result<IpAddr, BadRecord> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        f => Err(BadRecord::Family(f)),
    }
}

/// A NUL-padded comm as text (lossy: comm is bytes).
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

impl RawFlowKey {
    pub fn to_model(&self) -> Result<FlowKey, BadRecord> {
        let (direction, peer) = match self.direction {
            DIR_ACTIVE => (
                Direction::Active,
                FlowPeer::Remote(Endpoint::new(address(self.family, &self.addr)?, self.port)),
            ),
            DIR_PASSIVE => {
                // Checked for consistency although a passive key has no address.
                address(self.family, &self.addr)?;
                (Direction::Passive, FlowPeer::ListeningPort(self.port))
            }
            d => return Err(BadRecord::Direction(d)),
        };
        Ok(FlowKey {
            pid: self.tgid,
            netns: u64::from(self.netns),
            direction,
            peer,
        })
    }
}

/// Sums one flow's per-CPU values into counts and a name (the first CPU's that has one).
pub fn sum_stats<'a>(per_cpu: impl IntoIterator<Item = &'a RawFlowStats>) -> (FlowCounts, String) {
    let mut c = FlowCounts::default();
    let mut comm = String::new();
    for s in per_cpu {
        let f = &mut c.connect_failures;
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut c.opened, s.opened);
        add(&mut c.closed_local, s.closed_local);
        add(&mut c.closed_peer, s.closed_peer);
        add(&mut c.closed_unknown, s.closed_unknown);
        add(&mut c.resets_sent, s.resets_sent);
        add(&mut c.resets_received, s.resets_received);
        for (slot, n) in [
            &mut f.eaddrnotavail,
            &mut f.econnrefused,
            &mut f.etimedout,
            &mut f.enetunreach,
            &mut f.ehostunreach,
            &mut f.eaddrinuse,
            &mut f.eperm,
            &mut f.aborted,
            &mut f.other,
        ]
        .into_iter()
        .zip(s.failed)
        {
            add(slot, n);
        }
        let l: &mut Lifetimes = &mut c.lifetimes;
        add(&mut l.count, s.lifetime_count);
        add(&mut l.sum_us, s.lifetime_sum_us);
        for (b, n) in l.buckets.iter_mut().zip(s.lifetime) {
            add(b, n);
        }
        if comm.is_empty() {
            comm = comm_text(&s.comm);
        }
    }
    (c, comm)
}

/// `EV_*` in trace.bpf.c.
fn kind(k: u8) -> Result<FlowEventKind, BadRecord> {
    Ok(match k {
        1 => FlowEventKind::State,
        2 => FlowEventKind::ResetSent,
        3 => FlowEventKind::ResetReceived,
        4 => FlowEventKind::ConnectFailed,
        5 => FlowEventKind::Accepted,
        k => return Err(BadRecord::Kind(k)),
    })
}

/// Decodes one ring buffer record.
pub fn decode_event(bytes: &[u8]) -> Result<FlowEvent, BadRecord> {
    let r = RawFlowEvent::read_from_bytes(bytes).map_err(|_| BadRecord::Size(bytes.len()))?;
    let kind = kind(r.kind)?;
    let local = Endpoint::new(address(r.family, &r.saddr)?, r.sport);
    let remote = Endpoint::new(address(r.family, &r.daddr)?, r.dport);
    let direction = match r.direction {
        DIR_ACTIVE => Some(Direction::Active),
        DIR_PASSIVE => Some(Direction::Passive),
        _ => None,
    };
    let states = kind == FlowEventKind::State;
    Ok(FlowEvent {
        monotonic_ns: r.ts_ns,
        kind,
        pid: r.tgid,
        comm: comm_text(&r.comm),
        netns: u64::from(r.netns),
        direction,
        local,
        remote,
        old_state: states.then(|| TcpState::from_kernel(r.oldstate)).flatten(),
        new_state: states.then(|| TcpState::from_kernel(r.newstate)).flatten(),
        errno: (kind == FlowEventKind::ConnectFailed).then_some(r.error),
        lifetime_us: (r.lifetime_ns > 0).then_some(r.lifetime_ns / 1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn key(family: u8, direction: u8) -> RawFlowKey {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, 5]);
        RawFlowKey {
            tgid: 812,
            netns: 4026531840,
            addr,
            port: 8080,
            family,
            direction,
        }
    }

    #[test]
    fn keys_decode_by_direction_and_family() {
        let k = key(AF_INET, DIR_ACTIVE).to_model().expect("valid");
        assert_eq!(k.pid, 812);
        assert_eq!(k.netns, 4026531840);
        assert_eq!(k.direction, Direction::Active);
        assert_eq!(k.peer.to_string(), "10.0.0.5:8080");
        let p = key(AF_INET, DIR_PASSIVE).to_model().expect("valid");
        assert_eq!(p.peer, FlowPeer::ListeningPort(8080));
        let mut v6 = key(AF_INET6, DIR_ACTIVE);
        v6.addr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(v6.to_model().expect("valid").peer.to_string(), "[::1]:8080");
    }

    #[test]
    fn malformed_keys_are_refused_not_guessed() {
        assert_eq!(key(7, DIR_ACTIVE).to_model(), Err(BadRecord::Family(7)));
        assert_eq!(key(AF_INET, 9).to_model(), Err(BadRecord::Direction(9)));
        assert_eq!(key(AF_INET, 0).to_model(), Err(BadRecord::Direction(0)));
    }

    fn zero_stats() -> RawFlowStats {
        RawFlowStats::new_zeroed()
    }

    #[test]
    fn per_cpu_values_sum_and_the_name_comes_from_any_cpu() {
        let mut a = zero_stats();
        a.opened = 3;
        a.failed[0] = 2; // EADDRNOTAVAIL
        a.failed[7] = 1; // aborted
        a.lifetime[7] = 3;
        a.lifetime_count = 3;
        a.lifetime_sum_us = 300;
        let mut b = zero_stats();
        b.opened = 4;
        b.closed_local = 4;
        b.comm[..7].copy_from_slice(b"python3");
        let (c, comm) = sum_stats([&a, &b]);
        assert_eq!(comm, "python3");
        assert_eq!((c.opened, c.closed_local), (7, 4));
        assert_eq!(c.connect_failures.eaddrnotavail, 2);
        assert_eq!(c.connect_failures.aborted, 1);
        assert_eq!(c.connect_failures.total(), 3);
        assert_eq!(c.lifetimes.buckets[7], 3);
        assert_eq!(c.lifetimes.mean_us(), Some(100));
    }

    #[test]
    fn events_decode_and_bad_ones_are_named() {
        let mut r = RawFlowEvent::new_zeroed();
        r.ts_ns = 5;
        r.tgid = 42;
        r.netns = 7;
        r.comm[..4].copy_from_slice(b"curl");
        r.family = AF_INET;
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        r.sport = 40000;
        r.dport = 80;
        r.kind = 1;
        r.oldstate = 1; // ESTABLISHED
        r.newstate = 4; // FIN_WAIT1
        r.direction = DIR_ACTIVE;
        let e = decode_event(r.as_bytes()).expect("valid");
        assert_eq!(e.kind, FlowEventKind::State);
        assert_eq!((e.pid, e.comm.as_str(), e.netns), (42, "curl", 7));
        assert_eq!(e.local.to_string(), "127.0.0.1:40000");
        assert_eq!(e.remote.to_string(), "127.0.0.2:80");
        assert_eq!(e.old_state, Some(TcpState::Established));
        assert_eq!(e.new_state, Some(TcpState::FinWait1));
        assert_eq!(e.errno, None);
        r.kind = 4;
        r.error = 99;
        let f = decode_event(r.as_bytes()).expect("valid");
        assert_eq!((f.errno, f.old_state), (Some(99), None));
        r.kind = 77;
        assert_eq!(decode_event(r.as_bytes()), Err(BadRecord::Kind(77)));
        assert_eq!(decode_event(&[0u8; 10]), Err(BadRecord::Size(10)));
    }
}
