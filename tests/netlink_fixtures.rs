//! The sock_diag reply parser against replies captured from a real kernel
//! (tests/fixtures/netlink/*, see each NOTE.md), cross-checked with `ss` output taken at
//! the same moment, and against truncated, corrupted and hostile replies.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;

use common::fixtures::netlink_fixture;
use common::ss;
use tcpdoctor::collect::netlink::parse::{decode_tcp_info, parse_datagram, DumpStats, ParseError};
use tcpdoctor::model::{Endpoint, Family, Socket, TcpState, TimerKind};

/// Parses a reply file. It holds several datagrams back to back; each message carries
/// its own length, so the concatenation parses like one long datagram.
fn parse_reply(bytes: &[u8]) -> (Vec<Socket>, DumpStats, Result<bool, ParseError>) {
    let mut out = Vec::new();
    let mut stats = DumpStats::default();
    let r = parse_datagram(bytes, &mut stats, &mut |s: &Socket| out.push(*s));
    (out, stats, r)
}

fn key(s: &Socket) -> (TcpState, Endpoint, Endpoint) {
    (s.state, s.local, s.remote)
}

fn check_against_ss(dir: &str, family: Family) {
    let (socks, stats, r) = parse_reply(&netlink_fixture(dir, "reply.bin"));
    assert_eq!(r, Ok(true), "{dir}: reply must end with NLMSG_DONE");
    assert_eq!(stats.skipped, 0, "{dir}: nothing skipped");
    assert_eq!(stats.bad_attributes, 0);
    assert!(!stats.interrupted);
    assert!(socks.iter().all(|s| s.family == family));

    // Same multiset of (state, local, remote, recv-q, send-q) as `ss -tan` saw.
    let ss_tan = String::from_utf8(netlink_fixture(dir, "ss-tan.txt")).expect("utf8");
    let mut ours: Vec<_> = socks.iter().map(|s| (key(s), s.recv_q, s.send_q)).collect();
    let mut theirs: Vec<_> = ss::parse_lines(&ss_tan, family)
        .into_iter()
        .map(|l| ((l.state, l.local, l.remote), l.recv_q, l.send_q))
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "{dir}: parsed sockets differ from ss -tan");

    // Inode, uid, timer kind and lastrcv agree with `ss -tanoiHe`.
    let ss_full = String::from_utf8(netlink_fixture(dir, "ss-tanoi.txt")).expect("utf8");
    let detail: HashMap<_, _> = ss::parse_lines(&ss_full, family)
        .into_iter()
        .map(|l| ((l.state, l.local, l.remote), l))
        .collect();
    for s in &socks {
        let l = detail
            .get(&key(s))
            .unwrap_or_else(|| panic!("{dir}: ss lacks {s:?}"));
        assert_eq!(Some(s.inode), l.inode, "{dir}: inode of {}", s.local);
        assert_eq!(s.uid, l.uid, "{dir}: uid of {}", s.local);
        assert_eq!(
            s.timer.map(|t| t.kind.name().to_string()),
            l.timer,
            "{dir}: timer of {} -> {}",
            s.local,
            s.remote
        );
        if let (Some(ours), Some(theirs)) =
            (s.tcp_info.and_then(|i| i.last_data_recv_ms), l.lastrcv)
        {
            // ss ran a few milliseconds after the dump.
            assert!(
                theirs >= ours && theirs - ours < 2_000,
                "{dir}: lastrcv {ours} vs ss {theirs}"
            );
        }
    }
}

#[test]
fn v4_reply_with_tcp_info_matches_ss() {
    check_against_ss("v4_all_info", Family::V4);
}

#[test]
fn v6_reply_with_mapped_and_dual_stack_matches_ss() {
    check_against_ss("v6_all_info", Family::V6);
    let (socks, _, _) = parse_reply(&netlink_fixture("v6_all_info", "reply.bin"));
    let mapped = socks
        .iter()
        .filter(|s| matches!(s.remote.address, IpAddr::V6(a) if a.to_ipv4_mapped().is_some()))
        .count();
    assert_eq!(mapped, 2, "two v4-mapped connections in the capture");
}

#[test]
fn v4_reply_without_info_matches_ss_and_has_no_tcp_info() {
    check_against_ss("v4_noinfo", Family::V4);
    let (socks, _, _) = parse_reply(&netlink_fixture("v4_noinfo", "reply.bin"));
    assert!(socks.iter().all(|s| s.tcp_info.is_none()));
}

#[test]
fn close_wait_only_reply_is_filtered_by_the_kernel() {
    let (socks, _, r) = parse_reply(&netlink_fixture("v4_close_wait_only", "reply.bin"));
    assert_eq!(r, Ok(true));
    assert_eq!(socks.len(), 3);
    assert!(socks.iter().all(|s| s.state == TcpState::CloseWait));
    // Recv-Q counts the FIN: 100 unread bytes -> 101, EOF alone -> 1.
    let mut q: Vec<u32> = socks.iter().map(|s| s.recv_q).collect();
    q.sort();
    assert_eq!(q, vec![1, 1, 101]);
}

#[test]
fn timewait_minisockets_carry_remaining_time_and_no_owner() {
    let (socks, _, _) = parse_reply(&netlink_fixture("v4_all_info", "reply.bin"));
    let tw: Vec<_> = socks
        .iter()
        .filter(|s| s.state == TcpState::TimeWait)
        .collect();
    assert_eq!(tw.len(), 2);
    for s in tw {
        let t = s.timer.expect("TIME_WAIT has a timer");
        assert_eq!(t.kind, TimerKind::TimeWait);
        assert!(t.remaining_ms > 0 && t.remaining_ms <= 60_000, "{t:?}");
        assert_eq!((s.inode, s.uid, s.recv_q, s.send_q), (0, 0, 0, 0));
        assert_eq!(s.tcp_info, None, "minisockets never carry tcp_info");
    }
    let listeners: Vec<_> = socks
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .collect();
    assert_eq!(listeners.len(), 5);
    let full = listeners
        .iter()
        .find(|s| s.local.port == 7002)
        .expect("listener 7002");
    assert_eq!(
        (full.recv_q, full.send_q),
        (2, 8),
        "accept queue 2 of backlog 8"
    );
}

#[test]
fn bound_inactive_socket_reports_as_close_and_is_counted_not_dropped() {
    let (socks, stats, r) = parse_reply(&netlink_fixture("v4_states_allbits_info", "reply.bin"));
    assert_eq!(r, Ok(true));
    assert_eq!(stats.skipped, 0);
    assert_eq!(socks.len(), 35);
    assert_eq!(
        socks.iter().filter(|s| s.state == TcpState::Close).count(),
        1
    );
}

// ---- malformed and hostile input -------------------------------------------------

#[test]
fn every_truncation_of_a_real_reply_errors_or_stops_cleanly() {
    let bytes = netlink_fixture("v4_all_info", "reply.bin");
    let (full, _, _) = parse_reply(&bytes);
    for cut in 0..bytes.len() {
        let (socks, _, r) = parse_reply(&bytes[..cut]);
        assert!(socks.len() <= full.len());
        match r {
            // A cut on a message boundary is a complete, shorter reply without DONE.
            Ok(done) => assert!(!done, "cut at {cut} cannot contain NLMSG_DONE"),
            Err(ParseError::Truncated { offset, .. }) => assert!(offset < cut),
            Err(e) => panic!("cut at {cut}: unexpected {e}"),
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = netlink_fixture("v6_all_info", "reply.bin");
    // Deterministic xorshift so a failure is reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let _ = parse_reply(&b);
    }
}

fn message(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// The first SOCK_DIAG_BY_FAMILY payload of a real reply.
fn first_socket_payload() -> Vec<u8> {
    let bytes = netlink_fixture("v4_all_info", "reply.bin");
    let len = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    bytes[16..len].to_vec()
}

#[test]
fn zero_and_oversized_lengths_are_errors_naming_the_offset() {
    let mut stats = DumpStats::default();
    let zero = [0u8; 16];
    let r = parse_datagram(&zero, &mut stats, &mut |_: &Socket| {});
    assert!(matches!(
        r,
        Err(ParseError::Truncated {
            offset: 0,
            claimed: 0,
            ..
        })
    ));
    let mut big = message(20, 2, &first_socket_payload());
    big[0..4].copy_from_slice(&100_000u32.to_ne_bytes());
    let r = parse_datagram(&big, &mut stats, &mut |_: &Socket| {});
    let e = r.expect_err("oversized length");
    assert!(e.to_string().contains("claims 100000 bytes"), "{e}");
}

#[test]
fn short_payload_unknown_state_and_family_are_skipped_and_counted() {
    let good = first_socket_payload();
    let mut unknown_state = good.clone();
    unknown_state[1] = 99;
    let mut unknown_family = good.clone();
    unknown_family[0] = 1; // AF_UNIX
    let mut reply = Vec::new();
    reply.extend(message(20, 2, &good[..40]));
    reply.extend(message(20, 2, &unknown_state));
    reply.extend(message(20, 2, &unknown_family));
    reply.extend(message(20, 2, &good));
    reply.extend(message(3, 2, &0i32.to_ne_bytes()));
    let (socks, stats, r) = parse_reply(&reply);
    assert_eq!(r, Ok(true));
    assert_eq!(socks.len(), 1);
    assert_eq!(stats.skipped, 3);
}

#[test]
fn bad_attribute_length_keeps_socket_drops_info_and_counts() {
    let mut p = first_socket_payload();
    // First attribute header right after the 72-byte inet_diag_msg: claim 65000 bytes.
    p[72..74].copy_from_slice(&65000u16.to_ne_bytes());
    let (socks, stats, _) = parse_reply(&message(20, 2, &p));
    assert_eq!(socks.len(), 1);
    assert_eq!(socks[0].tcp_info, None);
    assert_eq!(stats.bad_attributes, 1);
}

#[test]
fn kernel_error_message_becomes_an_error_with_errno() {
    let reply = message(2, 0, &(-libc_eperm()).to_ne_bytes());
    let (_, _, r) = parse_reply(&reply);
    let e = r.expect_err("NLMSG_ERROR");
    assert_eq!(
        e,
        ParseError::Kernel {
            errno: libc_eperm()
        }
    );
    assert!(e.to_string().contains("not permitted"), "{e}");
    // An ACK (error 0) is not an error.
    let (_, _, r) = parse_reply(&message(2, 0, &0i32.to_ne_bytes()));
    assert_eq!(r, Ok(false));
}

fn libc_eperm() -> i32 {
    1
}

#[test]
fn dump_interrupted_flag_is_reported() {
    let (_, stats, _) = parse_reply(&message(20, 0x12, &first_socket_payload()));
    assert!(stats.interrupted);
}

#[test]
fn tcp_info_of_any_length_fills_what_is_there() {
    let mut raw = vec![0u8; 232];
    raw[52..56].copy_from_slice(&1700u32.to_ne_bytes()); // last_data_recv
    raw[56..60].copy_from_slice(&1600u32.to_ne_bytes()); // last_ack_recv
    raw[68..72].copy_from_slice(&28u32.to_ne_bytes()); // rtt
    raw[148..152].copy_from_slice(&27u32.to_ne_bytes()); // min_rtt
    let full = decode_tcp_info(&raw);
    assert_eq!(full.last_data_recv_ms, Some(1700));
    assert_eq!(full.last_ack_recv_ms, Some(1600));
    assert_eq!(full.rtt_us, Some(28));
    assert_eq!(full.min_rtt_us, Some(27));
    // An old kernel's 104-byte struct: no min_rtt, no byte counters.
    let old = decode_tcp_info(&raw[..104]);
    assert_eq!(old.rtt_us, Some(28));
    assert_eq!((old.min_rtt_us, old.bytes_acked), (None, None));
    // Shorter than the time fields: everything None, no panic.
    assert_eq!(decode_tcp_info(&raw[..50]).last_data_recv_ms, None);
    assert_eq!(decode_tcp_info(&[]), Default::default());
}
