//! Socket tables as people save them: `ss -tan[p][o][i][e]` (iproute2) and
//! `netstat -ant[p]` / `-neopa` (net-tools), parsed leniently from text.
//!
//! What each gives (the importer says what is missing):
//! - ss: states, queues (a listener's Send-Q is its backlog), `users:((..))` owners with
//!   fd (`-p`; `("name",pid=1,fd=3)` since iproute2 3.x, `("name",1,3)` before),
//!   `timer:(timewait,55sec,0)` (`-o`), `ino:N uid:N` (`-e`), tcp_info such as
//!   `lastrcv:N lastack:N rtt:A/B` on a continuation line (`-i`).
//! - netstat: states and queues, `PID/name` (`-p`, no descriptor numbers), `User Inode`
//!   (`-e`), `timewait (57.89/0/0)` (`-o`). A listener's Send-Q there is 0 (it reads
//!   /proc/net/tcp), so backlogs are unknown. Without `-W` it cuts long IPv6 addresses.
//!
//! Lines that are not socket rows (headers, other protocols) are passed over; rows that
//! cannot be read are skipped and counted, never guessed. A row broken over two lines
//! (pasted from a narrow terminal) is joined back when its second part does not start
//! with a state or protocol.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{Endpoint, Family, Owner, Socket, TcpInfo, TcpState, Timer, TimerKind};

/// Sockets read from a table, with what the table held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketTable {
    pub sockets: Vec<Socket>,
    /// (inode, owner): inodes are the table's, or made up per row when it has none
    /// (`inodes == false`).
    pub owners: Vec<(u64, Owner)>,
    /// Process names by pid.
    pub comms: BTreeMap<u32, String>,
    pub has_owners: bool,
    /// Descriptor numbers of owners (ss -p has them, netstat -p not).
    pub has_fds: bool,
    pub has_timers: bool,
    pub has_tcp_info: bool,
    pub has_inodes: bool,
    /// Listener backlogs (ss's Send-Q).
    pub has_backlogs: bool,
    pub skipped: u64,
    pub first_error: Option<String>,
    /// IPv6 addresses netstat may have cut (no -W).
    pub cut_addresses: u64,
}

/// Inodes made up for rows of tables without them start here, far above what the
/// kernel hands out, so they never meet a real one.
pub const MADE_UP_INODES: u64 = 1 << 56;

impl SocketTable {
    fn skip(&mut self, line_no: usize, why: impl Into<String>) {
        self.skipped += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("line {line_no}: {}", why.into()));
        }
    }
}

/// A state word as ss or netstat print it; `None` for anything else.
fn state_word(w: &str) -> Option<TcpState> {
    if w.is_empty()
        || !w
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let s: TcpState = w.parse().ok()?;
    // UNCONN is a UDP word.
    (!w.eq_ignore_ascii_case("unconn")).then_some(s)
}

/// `127.0.0.1:80`, `[::1]:80`, `::1:80`, `::ffff:10.0.0.1:80`, `*:22`, `0.0.0.0:*`,
/// `[fe80::1]%eth0:22`, `10.0.0.1%lo:53`. `None` for names (ss/netstat without -n).
pub fn parse_addr(s: &str) -> Option<Endpoint> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = match port {
        "*" => 0,
        p => p.parse().ok()?,
    };
    let host = host
        .strip_prefix('[')
        .map_or(host, |h| h.trim_end_matches(']'));
    // A scope or interface (`%eth0`) names no address.
    let host = host.split('%').next().unwrap_or(host);
    let host = host.trim_end_matches(']');
    let ip: IpAddr = match host {
        "*" => IpAddr::from([0u8, 0, 0, 0]),
        h => h.parse().ok()?,
    };
    Some(Endpoint::new(ip, port))
}

/// Durations as ss prints timers: `55sec`, `1min2sec`, `200ms`, `2h3min`, `1.5sec`.
fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut unit = String::new();
    let mut any = false;
    let flush = |num: &mut String, unit: &mut String, total: &mut f64| -> Option<()> {
        if num.is_empty() {
            return if unit.is_empty() { Some(()) } else { None };
        }
        let v: f64 = num.parse().ok()?;
        let ms = match unit.as_str() {
            "ms" => 1.0,
            "sec" | "s" | "" => 1000.0,
            "min" => 60_000.0,
            "h" | "hr" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return None,
        };
        *total += v * ms;
        num.clear();
        unit.clear();
        Some(())
    };
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total)?;
            }
            num.push(c);
            any = true;
        } else if c.is_ascii_alphabetic() {
            unit.push(c);
        } else {
            return None;
        }
    }
    flush(&mut num, &mut unit, &mut total)?;
    (any && total.is_finite() && total >= 0.0).then_some(total.round() as u64)
}

/// `users:(("nginx",pid=10,fd=6),("nginx",pid=11,fd=6))` or the pre-3.x
/// `users:(("nginx",10,6))`: (comm, pid, fd) each.
fn parse_users(s: &str) -> Option<Vec<(String, u32, u32)>> {
    let body = s.strip_prefix("users:(")?.strip_suffix(')')?;
    let mut out = Vec::new();
    for entry in body.split("),(") {
        let e = entry.trim_start_matches('(').trim_end_matches(')');
        // The name is quoted and may hold commas.
        let e = e.strip_prefix('"')?;
        let (name, rest) = e.split_once("\",")?;
        let mut pid = None;
        let mut fd = None;
        for (k, part) in rest.split(',').enumerate() {
            let (key, v) = match part.split_once('=') {
                Some((key, v)) => (key, v),
                None => (
                    if k == 0 {
                        "pid"
                    } else if k == 1 {
                        "fd"
                    } else {
                        ""
                    },
                    part,
                ),
            };
            match key {
                "pid" => pid = v.parse().ok(),
                "fd" => fd = v.parse().ok(),
                _ => {}
            }
        }
        out.push((name.to_string(), pid?, fd?));
    }
    (!out.is_empty()).then_some(out)
}

/// `timer:(timewait,55sec,0)`.
fn parse_ss_timer(s: &str) -> Option<Option<Timer>> {
    let body = s.strip_prefix("timer:(")?.strip_suffix(')')?;
    let mut it = body.split(',');
    // The names ss prints are the ones a snapshot stores.
    let kind =
        crate::collect::snapshot::format::timer_kind(it.next()?).unwrap_or(TimerKind::Other(0));
    let remaining_ms = parse_duration_ms(it.next()?)?;
    let retransmits = it.next().and_then(|r| r.parse().ok()).unwrap_or(0);
    Some(Some(Timer {
        kind,
        remaining_ms,
        retransmits,
    }))
}

/// A netstat `-o` timer: `timewait (57.89/0/0)`, `keepalive (7199.99/0/0)`, `off
/// (0.00/0/0)`, `on (0.20/0/0)`: kind, then seconds left.
fn parse_netstat_timer(kind: &str, rest: &str) -> Option<Option<Timer>> {
    let body = rest.strip_prefix('(')?.strip_suffix(')')?;
    let secs: f64 = body.split('/').next()?.parse().ok()?;
    let retransmits = body
        .split('/')
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let kind = match kind {
        "off" => return Some(None),
        "on" => TimerKind::Retransmit,
        "keepalive" => TimerKind::KeepAlive,
        "timewait" => TimerKind::TimeWait,
        "probe" => TimerKind::ZeroWindowProbe,
        _ => TimerKind::Other(0),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    Some(Some(Timer {
        kind,
        remaining_ms: (secs * 1000.0).round() as u64,
        retransmits,
    }))
}

/// Reads ss's tcp_info keys (`-i`) into `info`; says whether any was there.
fn take_tcp_info(token: &str, info: &mut TcpInfo) -> bool {
    let Some((k, v)) = token.split_once(':') else {
        return false;
    };
    let ms = |v: &str| v.parse::<u32>().ok();
    // ss prints rtt as avg/var in milliseconds with decimals.
    let us = |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 4.0e6)
            .map(|f| (f * 1000.0).round() as u32)
    };
    match k {
        "lastsnd" => info.last_data_sent_ms = ms(v),
        "lastrcv" => info.last_data_recv_ms = ms(v),
        "lastack" => info.last_ack_recv_ms = ms(v),
        "rtt" => {
            let (a, b) = v.split_once('/').unwrap_or((v, ""));
            info.rtt_us = us(a);
            info.rtt_var_us = us(b);
        }
        "minrtt" => info.min_rtt_us = us(v),
        "bytes_acked" => info.bytes_acked = v.parse().ok(),
        "bytes_received" => info.bytes_received = v.parse().ok(),
        // `retrans:cur/total`
        "retrans" => info.total_retrans = v.split('/').nth(1).and_then(|t| t.parse().ok()),
        _ => return false,
    }
    true
}

/// Unsets a tcp_info key whose value was cut.
fn forget_tcp_info(key: &str, info: &mut TcpInfo) {
    match key {
        "lastsnd" => info.last_data_sent_ms = None,
        "lastrcv" => info.last_data_recv_ms = None,
        "lastack" => info.last_ack_recv_ms = None,
        "rtt" => {
            info.rtt_us = None;
            info.rtt_var_us = None;
        }
        "minrtt" => info.min_rtt_us = None,
        "bytes_acked" => info.bytes_acked = None,
        "bytes_received" => info.bytes_received = None,
        "retrans" => info.total_retrans = None,
        _ => {}
    }
}

/// Whether a line starts a new row of an ss table (optionally after a `tcp` Netid).
fn starts_ss_row(line: &str) -> bool {
    let mut it = line.split_whitespace();
    match it.next() {
        Some("tcp") | Some("tcp6") => it.next().and_then(state_word).is_some(),
        Some(w) => state_word(w).is_some(),
        None => false,
    }
}

/// Other kinds of rows ss prints with `-a` and no `-t`: left out without a count.
fn other_protocol(line: &str) -> bool {
    matches!(
        line.split_whitespace().next(),
        Some(
            "udp"
                | "raw"
                | "u_str"
                | "u_dgr"
                | "u_seq"
                | "p_raw"
                | "p_dgr"
                | "nl"
                | "sctp"
                | "mptcp"
                | "icmp6"
                | "xdp"
                | "tipc"
                | "v_str"
                | "v_dgr"
                | "unix"
        )
    )
}

fn is_header(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("State") || t.starts_with("Netid") || t.starts_with("Recv-Q")
}

/// Parses `ss -tan` with any of `-p -o -e -i` (and `-m`, ignored).
pub fn parse_ss(text: &str) -> SocketTable {
    let mut t = SocketTable {
        has_backlogs: true,
        has_fds: true,
        ..SocketTable::default()
    };
    // Rows with their continuation lines joined.
    let mut rows: Vec<(usize, String)> = Vec::new();
    let mut in_other = false;
    let cut_last = !text.ends_with('\n');
    let count = text.lines().count();
    for (i, raw) in text.lines().enumerate() {
        if cut_last && i + 1 == count {
            // The capture ends mid-line: that row may be cut anywhere.
            if !raw.trim().is_empty() && (starts_ss_row(raw) || !rows.is_empty()) {
                t.skip(i + 1, "cut short (the capture ends mid-line)");
                if !starts_ss_row(raw) {
                    rows.pop();
                }
            }
            break;
        }
        let line = raw.trim_end();
        if line.trim().is_empty() || is_header(line) {
            continue;
        }
        if starts_ss_row(line) {
            in_other = false;
            rows.push((i + 1, line.to_string()));
        } else if other_protocol(line) {
            in_other = true;
        } else if in_other {
            continue;
        } else if let Some((_, row)) = rows.last_mut() {
            // A terminal's wrap keeps the text as it was: join it back as it is.
            row.push_str(raw);
        } else {
            t.skip(i + 1, "not a socket row");
        }
    }
    let mut made_up = MADE_UP_INODES;
    for (line_no, row) in rows {
        let mut tokens: Vec<&str> = row.split_whitespace().collect();
        if matches!(tokens.first(), Some(&"tcp") | Some(&"tcp6")) {
            tokens.remove(0);
        }
        if tokens.len() < 5 {
            t.skip(line_no, "fewer than 5 columns");
            continue;
        }
        let Some(state) = state_word(tokens[0]) else {
            t.skip(line_no, format!("unknown state '{}'", cut(tokens[0])));
            continue;
        };
        let (Ok(recv_q), Ok(send_q)) = (tokens[1].parse::<u32>(), tokens[2].parse::<u32>()) else {
            t.skip(line_no, "Recv-Q/Send-Q are not numbers");
            continue;
        };
        let (Some(local), Some(remote)) = (parse_addr(tokens[3]), parse_addr(tokens[4])) else {
            t.skip(
                line_no,
                format!(
                    "addresses '{}' '{}' are not numeric (save ss with -n)",
                    cut(tokens[3]),
                    cut(tokens[4])
                ),
            );
            continue;
        };
        if local.address.is_ipv4() != remote.address.is_ipv4() && !remote.address.is_unspecified() {
            t.skip(line_no, "local and peer addresses of different families");
            continue;
        }
        let family = if local.address.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        // A v6 listener prints its peer as `*:*` or `[::]:*`: keep the family.
        let remote = if family == Family::V6 && remote.address.is_ipv4() {
            Endpoint::unspecified(Family::V6)
        } else {
            remote
        };
        let mut sock = Socket {
            family,
            state,
            local,
            remote,
            inode: 0,
            uid: 0,
            recv_q,
            send_q,
            timer: None,
            cookie: None,
            tcp_info: None,
        };
        let mut users: Vec<(String, u32, u32)> = Vec::new();
        let mut info = TcpInfo::default();
        let mut any_info = false;
        let mut bad: Option<String> = None;
        // users:((...)) may have been split at spaces in a process name or a wrap.
        let rest = tokens[5..].join(" ");
        let rest = join_users(&rest);
        // The tcp_info key read last: a bare number after it is the rest of its value,
        // cut by a wrapped line, so its value is not known.
        let mut last_info: Option<&str> = None;
        let mut seen_users = false;
        let mut seen_timer = false;
        for tok in rest.split_whitespace() {
            // Another row run into this one (a broken line joined to the wrong row).
            if state_word(tok).is_some()
                || parse_addr(tok).is_some()
                || (tok.starts_with("users:(") && seen_users)
                || (tok.starts_with("timer:(") && seen_timer)
            {
                bad = Some(format!("two rows run together at '{}'", cut(tok)));
                break;
            }
            seen_users |= tok.starts_with("users:(");
            seen_timer |= tok.starts_with("timer:(");
            if tok
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
            {
                if let Some(k) = last_info.take() {
                    forget_tcp_info(k, &mut info);
                }
                continue;
            }
            last_info = None;
            if tok.starts_with("users:(") {
                match parse_users(tok) {
                    Some(u) => users = u,
                    None => bad = Some(format!("cannot read '{}'", cut(tok))),
                }
            } else if tok.starts_with("timer:(") {
                t.has_timers = true;
                match parse_ss_timer(tok) {
                    Some(tm) => sock.timer = tm,
                    None => bad = Some(format!("cannot read '{}'", cut(tok))),
                }
            } else if let Some(v) = tok.strip_prefix("ino:") {
                t.has_inodes = true;
                match v.parse() {
                    Ok(n) => sock.inode = n,
                    Err(_) => bad = Some(format!("bad inode '{}'", cut(v))),
                }
            } else if let Some(v) = tok.strip_prefix("uid:") {
                sock.uid = v.parse().unwrap_or(0);
            } else if take_tcp_info(tok, &mut info) {
                any_info = true;
                last_info = tok.split(':').next();
            }
        }
        if let Some(why) = bad {
            t.skip(line_no, why);
            continue;
        }
        if any_info {
            t.has_tcp_info = true;
            sock.tcp_info = Some(info);
        }
        if !users.is_empty() {
            t.has_owners = true;
            if sock.inode == 0 {
                made_up += 1;
                sock.inode = made_up;
            }
            for (comm, pid, fd) in users {
                t.owners.push((sock.inode, Owner { pid, fd }));
                t.comms.entry(pid).or_insert(comm);
            }
        }
        t.sockets.push(sock);
    }
    t
}

/// Puts a `users:((...))` that whitespace split back into one token.
fn join_users(s: &str) -> String {
    let Some(start) = s.find("users:(") else {
        return s.to_string();
    };
    let (head, tail) = s.split_at(start);
    // It ends at the first `))` after the start.
    let end = tail.find("))").map_or(tail.len(), |e| e + 2);
    let users: String = tail[..end].split_whitespace().collect::<Vec<_>>().join("");
    format!("{head}{users} {}", &tail[end..])
}

fn cut(s: &str) -> String {
    crate::model::units::ellipsize(s, 40)
}

/// Parses `netstat -ant[p]`, `-neopa`, `-W` and friends (tcp and tcp6 rows only).
pub fn parse_netstat(text: &str) -> SocketTable {
    let mut t = SocketTable::default();
    // Which optional columns the header announced.
    let mut has_user = false;
    let mut has_pid = false;
    let mut has_timer = false;
    let mut wide = false;
    let mut made_up = MADE_UP_INODES;
    let mut lines: Vec<&str> = text.lines().collect();
    if !text.ends_with('\n') && !lines.is_empty() {
        // The capture ends mid-line: that row may be cut anywhere.
        let last = lines.len();
        if lines.pop().is_some_and(|l| !l.trim().is_empty()) {
            t.skip(last, "cut short (the capture ends mid-line)");
        }
    }
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        let line_no = i + 1;
        i += 1;
        let t0 = line.trim_start();
        if t0.starts_with("Proto") {
            has_user = t0.contains("User") && t0.contains("Inode");
            has_pid = t0.contains("PID/Program");
            has_timer = t0.contains("Timer");
            continue;
        }
        let mut row = lines[i - 1].to_string();
        let first = t0.split_whitespace().next().unwrap_or("");
        if first != "tcp" && first != "tcp6" {
            continue;
        }
        // A row cut by a narrow terminal: its rest starts with neither a protocol nor
        // a heading.
        while let Some(next) = lines.get(i) {
            let n = next.trim_start();
            let w = n.split_whitespace().next().unwrap_or("");
            let continues = !n.is_empty()
                && !matches!(
                    w,
                    "tcp" | "tcp6" | "udp" | "udp6" | "raw" | "raw6" | "unix" | "Proto" | "Active"
                )
                && !n.starts_with('[');
            if !continues {
                break;
            }
            // A terminal's wrap keeps the text as it was: join it back as it is.
            row = row.trim_end_matches('\r').to_string();
            row.push_str(next);
            i += 1;
        }
        let tok: Vec<&str> = row.split_whitespace().collect();
        if tok.len() < 5 {
            t.skip(line_no, "fewer than 5 columns");
            continue;
        }
        let (Ok(recv_q), Ok(send_q)) = (tok[1].parse::<u32>(), tok[2].parse::<u32>()) else {
            t.skip(line_no, "Recv-Q/Send-Q are not numbers");
            continue;
        };
        let (Some(local), Some(remote)) = (parse_addr(tok[3]), parse_addr(tok[4])) else {
            t.skip(
                line_no,
                format!(
                    "addresses '{}' '{}' are not numeric (save netstat with -n)",
                    cut(tok[3]),
                    cut(tok[4])
                ),
            );
            continue;
        };
        // net-tools cuts "address:port" to 23 characters without -W (wide).
        if tok[3].len() > 23 || tok[4].len() > 23 {
            wide = true;
        }
        let maybe_cut = first == "tcp6" && (tok[3].len() == 23 || tok[4].len() == 23);
        let Some(state) = tok.get(5).and_then(|w| state_word(w)) else {
            t.skip(line_no, "no TCP state");
            continue;
        };
        let family = if local.address.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let remote = if family == Family::V6 && remote.address.is_ipv4() {
            Endpoint::unspecified(Family::V6)
        } else {
            remote
        };
        if family == Family::V4 && !remote.address.is_ipv4() {
            t.skip(line_no, "local and peer addresses of different families");
            continue;
        }
        let mut sock = Socket {
            family,
            state,
            local,
            remote,
            inode: 0,
            uid: 0,
            recv_q,
            send_q,
            timer: None,
            cookie: None,
            tcp_info: None,
        };
        let mut k = 6;
        if has_user {
            // User may be a name (without -n): only a number is a uid.
            sock.uid = tok.get(k).and_then(|u| u.parse().ok()).unwrap_or(0);
            match tok.get(k + 1).map(|v| v.parse::<u64>()) {
                Some(Ok(n)) => sock.inode = n,
                _ => {
                    t.skip(line_no, "no inode in the Inode column");
                    continue;
                }
            }
            t.has_inodes = true;
            k += 2;
        }
        let mut owner: Option<(u32, String)> = None;
        if has_pid {
            match tok.get(k) {
                Some(&"-") => {}
                Some(p) => match p.split_once('/') {
                    Some((pid, name)) => match pid.parse::<u32>() {
                        Ok(pid) => owner = Some((pid, name.to_string())),
                        Err(_) => {
                            t.skip(line_no, format!("bad PID/Program '{}'", cut(p)));
                            continue;
                        }
                    },
                    None => {
                        t.skip(line_no, format!("bad PID/Program '{}'", cut(p)));
                        continue;
                    }
                },
                None => {}
            }
            k += 1;
            // A program name with spaces runs on until the timer.
            while has_timer
                && tok.get(k).is_some_and(|w| {
                    !matches!(*w, "off" | "on" | "keepalive" | "timewait" | "probe")
                        && !w.starts_with('(')
                })
            {
                k += 1;
            }
        }
        if has_timer {
            t.has_timers = true;
            let (kind, rest) = (tok.get(k).copied(), tok.get(k + 1).copied());
            match (kind, rest) {
                (Some(kind), Some(rest)) => match parse_netstat_timer(kind, rest) {
                    Some(tm) => sock.timer = tm,
                    None => {
                        t.skip(line_no, format!("bad timer '{kind} {}'", cut(rest)));
                        continue;
                    }
                },
                _ => {
                    t.skip(line_no, "no timer");
                    continue;
                }
            }
        }
        if maybe_cut {
            t.cut_addresses += 1;
        }
        if let Some((pid, comm)) = owner {
            t.has_owners = true;
            if sock.inode == 0 {
                made_up += 1;
                sock.inode = made_up;
            }
            // netstat gives no descriptor number.
            t.owners.push((sock.inode, Owner { pid, fd: 0 }));
            t.comms.entry(pid).or_insert(comm);
        }
        t.sockets.push(sock);
    }
    if wide {
        t.cut_addresses = 0;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_every_spelling() {
        let e = |s: &str| parse_addr(s).map(|e| e.to_string());
        assert_eq!(e("127.0.0.1:80").as_deref(), Some("127.0.0.1:80"));
        assert_eq!(e("[::1]:8443").as_deref(), Some("[::1]:8443"));
        assert_eq!(e("::1:8443").as_deref(), Some("[::1]:8443"));
        assert_eq!(e(":::*").as_deref(), Some("[::]:*"));
        assert_eq!(e("*:22").as_deref(), Some("0.0.0.0:22"));
        assert_eq!(
            e("[::ffff:127.0.0.1]:80").as_deref(),
            Some("[::ffff:127.0.0.1]:80")
        );
        assert_eq!(
            e("::ffff:127.0.0.1:80").as_deref(),
            Some("[::ffff:127.0.0.1]:80")
        );
        assert_eq!(e("[fe80::1]%eth0:22").as_deref(), Some("[fe80::1]:22"));
        assert_eq!(e("10.0.0.1%lo:53").as_deref(), Some("10.0.0.1:53"));
        assert_eq!(e("localhost:http"), None);
        assert_eq!(e("host.example:80"), None);
    }

    #[test]
    fn ss_timer_durations() {
        assert_eq!(parse_duration_ms("55sec"), Some(55_000));
        assert_eq!(parse_duration_ms("1min2sec"), Some(62_000));
        assert_eq!(parse_duration_ms("200ms"), Some(200));
        assert_eq!(parse_duration_ms("1.5sec"), Some(1500));
        assert_eq!(parse_duration_ms("2h3min"), Some(7_380_000));
        assert_eq!(parse_duration_ms("abc"), None);
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn owners_old_and_new() {
        assert_eq!(
            parse_users(r#"users:(("nginx",pid=10,fd=6),("ng,x",pid=11,fd=7))"#),
            Some(vec![("nginx".into(), 10, 6), ("ng,x".into(), 11, 7)])
        );
        assert_eq!(
            parse_users(r#"users:(("sshd",1234,3))"#),
            Some(vec![("sshd".into(), 1234, 3)])
        );
        assert_eq!(parse_users(r#"users:(("x",pid=a,fd=1))"#), None);
    }

    #[test]
    fn a_row_wrapped_by_a_terminal_is_joined() {
        let text = "State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n\
                    CLOSE-WAIT 1 0 127.0.0.1:8080 127.0.0.1:51352 users:((\"sock\n\
                    farm\",pid=30261,fd=14))\n\
                    TIME-WAIT 0 0 127.0.0.1:51358 127.0.0.1:8080\n";
        let t = parse_ss(text);
        assert_eq!(t.sockets.len(), 2, "{:?}", t.first_error);
        assert_eq!(t.owners.len(), 1);
        assert_eq!(t.comms.get(&30261).map(String::as_str), Some("sockfarm"));
        assert_eq!(t.skipped, 0);
    }

    #[test]
    fn netstat_wide_and_narrow() {
        let text = "Proto Recv-Q Send-Q Local Address           Foreign Address         State       PID/Program name\n\
                    tcp        1      0 127.0.0.1:8080          127.0.0.1:51352         CLOSE_WAIT  30261/sockfarm\n\
                    tcp6       0      0 2001:db8::1:443         2001:db8::2:5000        ESTABLISHED -\n";
        let t = parse_netstat(text);
        assert_eq!(t.sockets.len(), 2, "{:?}", t.first_error);
        assert_eq!(t.owners[0].1, Owner { pid: 30261, fd: 0 });
        assert!(t.has_owners && !t.has_inodes && !t.has_timers);
    }
}
