//! `ss -tan...` output parsed: rows of a live run (`parse_rows`, `state_counts`) and
//! the richer lines of captured `ss -tanoiHe` fixtures (`parse_lines`), with endpoints
//! as tcpdoctor's model spells them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tcpdoctor::model::{Endpoint, Family, TcpState};

/// Kernel spelling of a state as `ss` prints it (`ESTAB`, `CLOSE-WAIT`, ...).
pub fn kernel_state_from_ss(ss_state: &str) -> Option<&'static str> {
    Some(match ss_state {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "UNCONN" | "CLOSE" => "CLOSE",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        "LISTEN" => "LISTEN",
        "CLOSING" => "CLOSING",
        _ => return None,
    })
}

/// One row of `ss -tanH` (or `-tlnH`): the columns as ss prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsRow {
    /// As ss prints it: `ESTAB`, `CLOSE-WAIT`, ...
    pub state: String,
    pub recv_q: u64,
    /// `127.0.0.1:5000`, `[::1]:5000`, `0.0.0.0:*` for a listener's peer.
    pub local: String,
    pub peer: String,
}

impl SsRow {
    /// The state in kernel spelling.
    pub fn kernel_state(&self) -> Option<&'static str> {
        kernel_state_from_ss(&self.state)
    }
}

/// The rows of `ss -t...H` output; lines without the five columns are left out.
pub fn parse_rows(text: &str) -> Vec<SsRow> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let recv_q = f.get(1)?.parse().ok()?;
            Some(SsRow {
                state: f[0].to_string(),
                recv_q,
                local: f.get(3)?.to_string(),
                peer: f.get(4)?.to_string(),
            })
        })
        .collect()
}

/// The rows of `ss -tanpH` output with the pids of their `users:((...,pid=N,fd=M))`
/// column (empty when no process holds the socket, or ss could not see it).
pub fn parse_rows_with_pids(text: &str) -> Vec<(SsRow, Vec<u32>)> {
    text.lines()
        .filter_map(|line| {
            let row = parse_rows(line).pop()?;
            let pids = line
                .split("pid=")
                .skip(1)
                .filter_map(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().ok()
                })
                .collect();
            Some((row, pids))
        })
        .collect()
}

/// Per-state counts (kernel spelling) of `ss -tanH` output; states with no sockets are
/// absent. Panics on a state it does not know.
pub fn state_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let state = kernel_state_from_ss(first)
            .unwrap_or_else(|| panic!("unknown ss state {first:?} in line {line:?}"));
        *counts.entry(state.to_string()).or_insert(0) += 1;
    }
    counts
}

/// One socket of `ss -tan` / `ss -tanoiHe`: state, queues, local, peer, and from -oe the
/// inode, uid and timer name; from -i (the tab-indented second line) lastrcv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsLine {
    pub state: TcpState,
    pub recv_q: u32,
    pub send_q: u32,
    pub local: Endpoint,
    pub remote: Endpoint,
    pub inode: Option<u64>,
    pub uid: u32,
    pub timer: Option<String>,
    pub lastrcv: Option<u32>,
}

/// `127.0.0.1:80`, `[::1]:80`, `*:80`, `0.0.0.0:*` as an endpoint of `family`.
pub fn endpoint(s: &str, family: Family) -> Endpoint {
    let (addr, port) = s.rsplit_once(':').expect("ss endpoint has a port");
    let port = if port == "*" {
        0
    } else {
        port.parse().expect("port")
    };
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match addr {
        "*" => Endpoint::unspecified(family).address,
        a => a.parse().expect("ss address"),
    };
    Endpoint::new(ip, port)
}

/// The sockets of one family in captured `ss -tan...` output.
pub fn parse_lines(text: &str, family: Family) -> Vec<SsLine> {
    let mut out: Vec<SsLine> = Vec::new();
    for line in text.lines() {
        if line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.lastrcv = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("lastrcv:"))
                    .and_then(|v| v.parse().ok());
            }
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let is_v6 = f[3].starts_with('[') || f[3].starts_with("*:");
        // `*:port` is a dual-stack listener, reported in the AF_INET6 dump.
        if (family == Family::V6) != is_v6 {
            continue;
        }
        let kv = |k: &str| f.iter().find_map(|w| w.strip_prefix(k));
        out.push(SsLine {
            state: f[0].parse().expect("ss state"),
            recv_q: f[1].parse().expect("recv-q"),
            send_q: f[2].parse().expect("send-q"),
            local: endpoint(f[3], family),
            remote: endpoint(f[4], family),
            inode: kv("ino:").map(|v| v.parse().expect("ino")),
            uid: kv("uid:").map_or(0, |v| v.parse().expect("uid")),
            timer: kv("timer:(").map(|v| v.split(',').next().unwrap_or("").to_string()),
            lastrcv: None,
        });
    }
    out
}
