//! Parser for `/proc/net/tcp` and `/proc/net/tcp6`, the fallback when sock_diag is not
//! available and the format older tooling saves.
//!
//! Format (`tcp4_seq_show()`, `Documentation/networking/proc_net_tcp.rst`):
//! `sl local rem st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
//! Addresses are 32-bit words printed with `%08X` in host byte order, ports `%04X`,
//! `tm->when` is in USER_HZ ticks (1/100 s; the doc says jiffies, the code says
//! `jiffies_delta_to_clock_t`). A malformed line is skipped and counted, never fatal.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Endpoint, Family, Socket, StateSet, TcpState, Timer, TimerKind};

/// Milliseconds per USER_HZ tick. USER_HZ is 100 on every Linux architecture.
const MS_PER_TICK: u64 = 10;

/// Why one line could not be read. Names the field and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("expected at least 10 fields, found {0}")]
    TooFewFields(usize),
    #[error("bad {field} '{value}'")]
    BadField { field: &'static str, value: String },
}

fn bad(field: &'static str, value: &str) -> LineError {
    // Cap what we echo back: the input may be hostile or binary.
    let value: String = value.chars().take(48).collect();
    LineError::BadField { field, value }
}

/// Counts of a parse run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcTcpStats {
    pub sockets: u64,
    /// Lines that could not be parsed.
    pub skipped: u64,
    /// The first bad line, 1-based, and why, for the notice shown to the user.
    pub first_error: Option<(u64, LineError)>,
}

/// Parses one data line (not the header).
pub fn parse_line(line: &str, family: Family) -> Result<Socket, LineError> {
    let mut f = line.split_ascii_whitespace();
    let mut next = |n: usize| f.next().ok_or(LineError::TooFewFields(n));
    let _sl = next(0)?;
    let local = next(1)?;
    let remote = next(2)?;
    let st = next(3)?;
    let queues = next(4)?;
    let timer = next(5)?;
    let retrans = next(6)?;
    let uid = next(7)?;
    let _timeout = next(8)?;
    let inode = next(9)?;

    let local = parse_endpoint(local, family).ok_or_else(|| bad("local address", local))?;
    let remote = parse_endpoint(remote, family).ok_or_else(|| bad("remote address", remote))?;
    let state = u8::from_str_radix(st, 16)
        .ok()
        .and_then(TcpState::from_kernel)
        .ok_or_else(|| bad("state", st))?;
    let (tx, rx) = queues
        .split_once(':')
        .ok_or_else(|| bad("queues", queues))?;
    let send_q = u32::from_str_radix(tx, 16).map_err(|_| bad("tx_queue", tx))?;
    let recv_q = u32::from_str_radix(rx, 16).map_err(|_| bad("rx_queue", rx))?;
    let (tr, when) = timer.split_once(':').ok_or_else(|| bad("timer", timer))?;
    let tr = u8::from_str_radix(tr, 16).map_err(|_| bad("timer kind", tr))?;
    let when = u64::from_str_radix(when, 16).map_err(|_| bad("timer expiry", when))?;
    let retrans = u32::from_str_radix(retrans, 16).map_err(|_| bad("retransmits", retrans))?;
    let uid = uid.parse::<u32>().map_err(|_| bad("uid", uid))?;
    let inode = inode.parse::<u64>().map_err(|_| bad("inode", inode))?;

    let timer = TimerKind::from_kernel(tr).map(|kind| Timer {
        kind,
        remaining_ms: when.saturating_mul(MS_PER_TICK),
        retransmits: u8::try_from(retrans).unwrap_or(u8::MAX),
    });
    Ok(Socket {
        family,
        state,
        local,
        remote,
        inode,
        uid,
        recv_q,
        send_q,
        timer,
        cookie: None,
        tcp_info: None,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + `:port` (IPv6).
fn parse_endpoint(s: &str, family: Family) -> Option<Endpoint> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        // The kernel printed the in-memory (network-order) word as a host integer;
        // turning it back into host bytes restores the address bytes.
        u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes)
    };
    let ip = match family {
        Family::V4 if addr.len() == 8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        Family::V6 if addr.len() == 32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(Endpoint::new(ip, port))
}

/// Parses a whole file, calling `visit` for each socket whose state is in `states`.
/// I/O errors end the read (and are returned); bad lines are skipped and counted.
pub fn parse<R: BufRead, F: FnMut(&Socket)>(
    mut reader: R,
    family: Family,
    states: StateSet,
    visit: &mut F,
) -> std::io::Result<ProcTcpStats> {
    let mut stats = ProcTcpStats::default();
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        let result = match std::str::from_utf8(&buf) {
            Ok(line) => {
                let t = line.trim_start();
                if t.is_empty() || (line_no == 1 && t.starts_with("sl")) {
                    continue;
                }
                parse_line(line, family)
            }
            Err(_) => Err(bad("line encoding", "not UTF-8")),
        };
        match result {
            Ok(sock) => {
                stats.sockets += 1;
                if states.contains(sock.state) {
                    visit(&sock);
                }
            }
            Err(e) => {
                stats.skipped += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some((line_no, e));
                }
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TW_LINE: &str = "   3: 0100007F:A2C4 0100007F:1F90 06 00000000:00000000 03:00001756 00000000     0        0 0 3 0000000000000000";

    #[test]
    fn time_wait_line_has_timer_in_hundredths() {
        let s = parse_line(TW_LINE, Family::V4).expect("valid line");
        assert_eq!(s.state, TcpState::TimeWait);
        assert_eq!(s.local.to_string(), "127.0.0.1:41668");
        assert_eq!(s.remote.to_string(), "127.0.0.1:8080");
        let t = s.timer.expect("timer");
        assert_eq!(t.kind, TimerKind::TimeWait);
        assert_eq!(t.remaining_ms, 0x1756 * 10); // 59.74 s
        assert_eq!(s.inode, 0);
    }

    #[test]
    fn ipv6_loopback_words() {
        let line = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(line, Family::V6).expect("valid line");
        assert_eq!(s.local.to_string(), "[::1]:8080");
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!(s.uid, 1000);
        assert_eq!(s.inode, 4242);
        assert_eq!(s.timer, None);
    }

    #[test]
    fn malformed_lines_are_skipped_counted_and_named() {
        let input = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n{TW_LINE}\n   1: 0100007F:ZZZZ 0100007F:1F90 06 0:0 03:0 0 0 0 0\ngarbage\n   2: 0100007F:1F90 0100007F:1F90 FF 0:0 00:0 0 0 0 0\n\u{0}\u{1}\n"
        );
        let mut seen = 0;
        let stats = parse(input.as_bytes(), Family::V4, StateSet::all(), &mut |_| {
            seen += 1
        })
        .expect("in-memory read");
        assert_eq!(seen, 1);
        assert_eq!(stats.sockets, 1);
        assert_eq!(stats.skipped, 4);
        let (line, err) = stats.first_error.expect("error kept");
        assert_eq!(line, 3);
        assert_eq!(err.to_string(), "bad local address '0100007F:ZZZZ'");
    }

    #[test]
    fn truncated_line_reports_field_count() {
        assert_eq!(
            parse_line("   0: 0100007F:1F90 00000000:0000 0A", Family::V4),
            Err(LineError::TooFewFields(4))
        );
    }

    #[test]
    fn wrong_family_width_is_rejected() {
        assert!(parse_line(TW_LINE, Family::V6).is_err());
    }

    #[test]
    fn state_filter_applies() {
        let only_listen: StateSet = [TcpState::Listen].into_iter().collect();
        let mut seen = 0;
        let stats = parse(TW_LINE.as_bytes(), Family::V4, only_listen, &mut |_| {
            seen += 1
        })
        .expect("in-memory read");
        assert_eq!((seen, stats.sockets, stats.skipped), (0, 1, 0));
    }
}
