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
    // Cap what we echo back, printable: the input may be hostile or binary.
    let value = crate::model::text::clean(value, 48);
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
    /// Entries the kernel listed twice (same addresses, ports and inode), passed on
    /// once. See [`Seen`].
    pub repeated: u64,
}

/// The identities of the sockets passed on so far, to drop the entries the kernel lists
/// twice. `/proc/net/tcp` is printed a buffer at a time; each read() finds its place
/// again by hash bucket and position inside the bucket (tcp_seek_last_pos()), so a
/// socket added to that bucket in between shifts the rest and the next read starts by
/// repeating entries (one removed skips some instead). A socket's identity is its
/// addresses, ports and inode (TIME_WAIT and request sockets have inode 0 but a
/// tuple that is unique in the table). Kept as one keyed 64-bit hash per socket: under
/// 20 MB at a million sockets, and a chance of about one in 30 million that two of a
/// million sockets collide and one is dropped; the keys are random per run, so no
/// input can aim for a collision.
#[derive(Debug, Default)]
struct Seen {
    keys: rustc_hash::FxHashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl Seen {
    /// True the first time this socket's identity is seen.
    fn first(&mut self, s: &Socket) -> bool {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one((s.local, s.remote, s.inode));
        self.keys.insert(key)
    }
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

/// Longest line kept: the kernel pads IPv4 lines to 150 bytes and writes IPv6 ones of
/// about 180. A longer one is garbage and is skipped without being stored, so a file
/// that is one endless line costs no memory.
const MAX_LINE: usize = 4096;

/// Reads one line into `buf` (cleared by the caller), keeping at most [`MAX_LINE`]
/// bytes of it. `None` at the end of the input, `Some(false)` when the line was longer
/// and its rest was skipped.
fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    let mut seen_any = false;
    let mut whole = true;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(seen_any.then_some(whole));
        }
        seen_any = true;
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        if take > room {
            whole = false;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        if done {
            return Ok(Some(whole && buf.len() <= MAX_LINE + 1));
        }
    }
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
    let mut seen = Seen::default();
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let whole = match read_line(&mut reader, &mut buf)? {
            None => break,
            Some(whole) => whole,
        };
        line_no += 1;
        let result = match std::str::from_utf8(&buf) {
            Ok(_) if !whole => Err(bad("line length", "more than 4096 bytes")),
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
                if !states.contains(sock.state) {
                    stats.sockets += 1;
                } else if seen.first(&sock) {
                    stats.sockets += 1;
                    visit(&sock);
                } else {
                    stats.repeated += 1;
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

    /// Regression (issue 16): `--source proc` under churn showed the same socket twice
    /// in 149 of 200 runs. The kernel repeats entries when a bucket changes between
    /// two read() calls; a repeated entry is passed on once and counted.
    #[test]
    fn entries_the_kernel_repeats_are_passed_on_once() {
        let listener = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0";
        // Same tuple, another inode: another socket (SO_REUSEPORT).
        let reuse = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 100 0 0 10 0";
        // The TIME_WAIT entry repeated with its timer further down: still one socket.
        let tw_later = TW_LINE.replace("03:00001756", "03:00001700");
        let input = format!("{listener}\n{TW_LINE}\n{reuse}\n{listener}\n{tw_later}\n{TW_LINE}\n");
        let mut seen = Vec::new();
        let stats = parse(input.as_bytes(), Family::V4, StateSet::all(), &mut |s| {
            seen.push((s.state, s.inode))
        })
        .expect("in-memory read");
        assert_eq!(
            seen,
            vec![
                (TcpState::Listen, 4242),
                (TcpState::TimeWait, 0),
                (TcpState::Listen, 4243)
            ]
        );
        assert_eq!((stats.sockets, stats.repeated, stats.skipped), (3, 3, 0));
    }

    #[test]
    fn an_endless_line_is_skipped_without_being_kept() {
        // 64 MiB without a newline, then a good line: memory stays at one line.
        struct Endless(u64);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (buf.len() as u64).min(self.0) as usize;
                buf[..n].fill(b'7');
                self.0 -= n as u64;
                Ok(n)
            }
        }
        use std::io::Read;
        let tail = format!("\n{TW_LINE}\n").into_bytes();
        let input = std::io::BufReader::new(Endless(64 << 20)).chain(tail.as_slice());
        let mut n = 0;
        let stats = parse(
            std::io::BufReader::new(input),
            Family::V4,
            StateSet::all(),
            &mut |_| n += 1,
        )
        .expect("in-memory read");
        assert_eq!((n, stats.sockets, stats.skipped), (1, 1, 1));
        let (line, e) = stats.first_error.expect("the long line");
        assert_eq!(line, 1);
        assert!(e.to_string().contains("more than 4096 bytes"), "{e}");
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
