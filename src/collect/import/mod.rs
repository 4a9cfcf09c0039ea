//! Text people already have, read as a recorded host for `--from` and `diff`: saved
//! `ss` and `netstat` tables, `netstat -s`, `nstat`, `sysctl -a`, copies of
//! `/proc/net/tcp{,6}`, `/proc/net/{netstat,snmp,sockstat}`, `ulimit -n`,
//! `/proc/sys/fs/file-nr`, `dmesg`, and sosreport folders, which hold most of these
//! under known names.
//!
//! Each file's format is told from its content, not its name (a sosreport's names are
//! used to find them). The parsers (one per format, on `&str`) skip and count what
//! they cannot read. What the input lacks is one `replay_missing` notice naming the
//! evidence, how to capture it, and the rules that therefore could not run or ran on
//! less.

pub mod sosreport;
pub mod table;
pub mod text;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::procfs::{counters, net_tcp, sockstat};
use super::snapshot::{FromError, Recorded, RecordedNs};
use crate::model::{
    CounterSample, Family, KernelLogEntry, Limit, NetnsInfo, NetnsKind, Notice, NoticeCode, Owners,
    Process, ProcessFacts, Socket, Sockstat, Source, HOST_WIDE_SYSCTLS, PER_NETNS_SYSCTLS,
};
use table::SocketTable;

/// A format `--from` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Ss,
    Netstat,
    ProcNetTcp,
    NetstatS,
    Nstat,
    ProcCounters,
    Sockstat,
    SysctlA,
    Ulimit,
    FileNr,
    Dmesg,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Ss => "ss",
            Format::Netstat => "netstat",
            Format::ProcNetTcp => "/proc/net/tcp",
            Format::NetstatS => "netstat -s",
            Format::Nstat => "nstat",
            Format::ProcCounters => "/proc/net/netstat or snmp",
            Format::Sockstat => "/proc/net/sockstat",
            Format::SysctlA => "sysctl -a",
            Format::Ulimit => "ulimit -n",
            Format::FileNr => "/proc/sys/fs/file-nr",
            Format::Dmesg => "dmesg",
        }
    }
}

/// The format of a capture, from its first meaningful lines; `None` when it is none
/// tcpdoctor reads.
pub fn detect(text: &str) -> Option<Format> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .take(40)
        .collect();
    let first = lines.first()?.trim_start();
    let has = |p: &dyn Fn(&str) -> bool| lines.iter().any(|l| p(l));
    if first.starts_with("sl") && first.contains("local_address") {
        return Some(Format::ProcNetTcp);
    }
    if first.starts_with("Netid") || (first.starts_with("State") && first.contains("Recv-Q")) {
        return Some(Format::Ss);
    }
    if first.starts_with("Active Internet connections") || first.starts_with("Proto Recv-Q") {
        return Some(Format::Netstat);
    }
    if first == "#kernel" {
        return Some(Format::Nstat);
    }
    if first.starts_with("sockets: used") {
        return Some(Format::Sockstat);
    }
    if lines.len() == 1 {
        if text::parse_file_nr(first).is_some() {
            return Some(Format::FileNr);
        }
        if text::parse_ulimit(first).is_some() {
            return Some(Format::Ulimit);
        }
    }
    if has(&|l| l.starts_with("TcpExt: ") || l.starts_with("Tcp: RtoAlgorithm")) {
        return Some(Format::ProcCounters);
    }
    if has(&|l| l == "Tcp:" || l == "TcpExt:") {
        return Some(Format::NetstatS);
    }
    if has(&|l| l.starts_with("tcp ") || l.starts_with("tcp6 ")) && !has(&|l| l.contains(" = ")) {
        return Some(Format::Netstat);
    }
    // Rows without a header (`ss -H`).
    if lines.iter().take(5).all(|l| {
        l.starts_with(char::is_whitespace) || l.split_whitespace().next().is_some_and(is_state)
    }) {
        return Some(Format::Ss);
    }
    let named = lines
        .iter()
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| k.contains('.') && !k.contains(' '))
        })
        .count();
    if named * 2 > lines.len() {
        return Some(Format::SysctlA);
    }
    let nstat_like = lines
        .iter()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 2
                && w[1].parse::<i64>().is_ok()
                && ["Ip", "Tcp", "Udp", "Icmp"]
                    .iter()
                    .any(|g| w[0].starts_with(g))
        })
        .count();
    if nstat_like * 2 > lines.len() {
        return Some(Format::Nstat);
    }
    if lines.iter().filter(|l| dmesg_line(l).is_some()).count() * 2 > lines.len() {
        return Some(Format::Dmesg);
    }
    None
}

fn is_state(w: &str) -> bool {
    w.parse::<crate::model::TcpState>().is_ok() && !w.eq_ignore_ascii_case("unconn")
}

/// `[  123.456789] message` -> (seconds, message); `dmesg -T` times give 0 s.
fn dmesg_line(l: &str) -> Option<(u64, &str)> {
    let rest = l.trim_start().strip_prefix('[')?;
    let (stamp, msg) = rest.split_once(']')?;
    let secs = stamp
        .trim()
        .split('.')
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    Some((secs, msg.trim_start()))
}

fn parse_dmesg(text: &str) -> Vec<KernelLogEntry> {
    let mut grouped: BTreeMap<String, KernelLogEntry> = BTreeMap::new();
    for (secs, msg) in text.lines().filter_map(dmesg_line) {
        let e = grouped.entry(msg.to_string()).or_insert(KernelLogEntry {
            message: msg.to_string(),
            count: 0,
            last_seen_s: 0,
        });
        e.count += 1;
        e.last_seen_s = e.last_seen_s.max(secs);
    }
    grouped.into_values().collect()
}

/// `/proc/net/tcp` or `tcp6` text (the family from the address width).
pub fn parse_proc_net_tcp(text: &str) -> SocketTable {
    let mut t = SocketTable {
        has_timers: true,
        has_inodes: true,
        ..SocketTable::default()
    };
    let count = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("sl") {
            continue;
        }
        if i + 1 == count && !text.ends_with('\n') {
            // The capture ends mid-line: its inode (or more) may be cut.
            t.skipped += 1;
            t.first_error
                .get_or_insert_with(|| format!("line {}: cut short", i + 1));
            continue;
        }
        let family = match l.split_whitespace().nth(1).map(str::len) {
            Some(13) => Family::V4,
            Some(37) => Family::V6,
            _ => {
                t.skipped += 1;
                t.first_error
                    .get_or_insert_with(|| format!("line {}: not an address column", i + 1));
                continue;
            }
        };
        match net_tcp::parse_line(l, family) {
            Ok(s) => t.sockets.push(s),
            Err(e) => {
                t.skipped += 1;
                t.first_error
                    .get_or_insert_with(|| format!("line {}: {e}", i + 1));
            }
        }
    }
    t
}

/// One capture file, parsed.
#[derive(Debug, Clone)]
pub enum Piece {
    Sockets(Format, SocketTable),
    Counters(Format, BTreeMap<String, i64>),
    Sockstat(Sockstat),
    Sysctls(BTreeMap<String, String>),
    Ulimit(Limit),
    FileNr(String),
    KernelLog(Vec<KernelLogEntry>),
}

/// A file read and what it gave.
#[derive(Debug, Clone)]
pub struct Capture {
    pub path: PathBuf,
    pub format: Format,
    pub piece: Piece,
    pub skipped: u64,
    pub first_error: Option<String>,
}

/// Parses `text` as `format`.
pub fn parse(path: &Path, format: Format, text: &str) -> Capture {
    let (piece, skipped, first_error) = match format {
        Format::Ss | Format::Netstat | Format::ProcNetTcp => {
            let t = match format {
                Format::Ss => table::parse_ss(text),
                Format::Netstat => table::parse_netstat(text),
                _ => parse_proc_net_tcp(text),
            };
            let (s, e) = (t.skipped, t.first_error.clone());
            (Piece::Sockets(format, t), s, e)
        }
        Format::NetstatS | Format::Nstat => {
            let p = if format == Format::Nstat {
                text::parse_nstat(text)
            } else {
                text::parse_netstat_s(text)
            };
            (Piece::Counters(format, p.values), p.skipped, p.first_error)
        }
        Format::ProcCounters => {
            let (values, errors) = counters::parse(text);
            let first = errors.first().map(|e| e.to_string());
            (Piece::Counters(format, values), errors.len() as u64, first)
        }
        Format::Sockstat => match sockstat::parse_tcp(text) {
            Some(s) => (Piece::Sockstat(s), 0, None),
            None => (
                Piece::Sysctls(BTreeMap::new()),
                1,
                Some("no readable TCP: line".into()),
            ),
        },
        Format::SysctlA => {
            let p = text::parse_sysctl_a(text);
            (Piece::Sysctls(p.values), p.skipped, p.first_error)
        }
        Format::Ulimit => match text::parse_ulimit(text) {
            Some(l) => (Piece::Ulimit(l), 0, None),
            None => (
                Piece::Sysctls(BTreeMap::new()),
                1,
                Some("not a limit".into()),
            ),
        },
        Format::FileNr => match text::parse_file_nr(text) {
            Some(v) => (Piece::FileNr(v), 0, None),
            None => (
                Piece::Sysctls(BTreeMap::new()),
                1,
                Some("not three numbers".into()),
            ),
        },
        Format::Dmesg => (Piece::KernelLog(parse_dmesg(text)), 0, None),
    };
    Capture {
        path: path.to_path_buf(),
        format,
        piece,
        skipped,
        first_error,
    }
}

/// Files larger than this are not read whole (a capture of a million sockets is about
/// 150 MB of ss text).
const MAX_FILE: u64 = 1 << 30;

/// Reads and parses one file, telling its format; `Ok(None)` when it is no capture
/// tcpdoctor reads.
pub fn read_capture(path: &Path) -> Result<Option<Capture>, FromError> {
    let io = |source| FromError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE {
        return Err(FromError::Import {
            what: format!("'{}'", path.display()),
            why: format!(
                "{} bytes, more than the {} read from a text capture",
                meta.len(),
                MAX_FILE
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(detect(&text).map(|f| parse(path, f, &text)))
}

/// Reads `paths`: files, or folders (a sosreport, or a folder of captures).
pub fn open(paths: &[PathBuf]) -> Result<Recorded, FromError> {
    if let [dir] = paths {
        if dir.is_dir() && sosreport::is_sosreport(dir) {
            return sosreport::open(dir);
        }
    }
    let mut captures = Vec::new();
    let mut unknown = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| FromError::Io {
                    path: p.clone(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|e| e.is_file())
                .collect();
            entries.sort();
            for e in entries {
                match read_capture(&e)? {
                    Some(c) => captures.push(c),
                    None => unknown.push(e),
                }
            }
        } else {
            match read_capture(p)? {
                Some(c) => captures.push(c),
                None => unknown.push(p.clone()),
            }
        }
    }
    let what = describe_paths(paths);
    if captures.is_empty() {
        return Err(FromError::Import {
            what,
            why: "nothing in it is a capture tcpdoctor reads (a snapshot, or saved output of ss -tan, netstat -ant, netstat -s, nstat -az, sysctl -a, /proc/net/tcp, a sosreport)".into(),
        });
    }
    let mut host = ImportedHost::new(what, "imported");
    for u in unknown {
        host.notices.push(Notice::new(
            NoticeCode::RecordsSkipped,
            format!(
                "'{}' is not a capture tcpdoctor reads; left out",
                u.display()
            ),
        ));
    }
    let mut ns = ImportedNs::new(NetnsInfo {
        inode: 0,
        name: "imported".into(),
        kind: NetnsKind::Unnamed,
        current: true,
        initial: true,
        container: None,
        ip_netns: Vec::new(),
        processes: 0,
        first_pid: None,
    });
    for c in captures {
        ns.add(c);
    }
    host.namespaces.push(ns);
    Ok(host.finish())
}

fn describe_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One namespace's captures, combined.
#[derive(Debug)]
pub struct ImportedNs {
    pub info: NetnsInfo,
    captures: Vec<Capture>,
}

impl ImportedNs {
    pub fn new(info: NetnsInfo) -> ImportedNs {
        ImportedNs {
            info,
            captures: Vec::new(),
        }
    }

    pub fn add(&mut self, c: Capture) {
        self.captures.push(c);
    }

    pub fn is_empty(&self) -> bool {
        self.captures.is_empty()
    }
}

/// A host being imported.
#[derive(Debug)]
pub struct ImportedHost {
    what: String,
    pub hostname: String,
    pub namespaces: Vec<ImportedNs>,
    pub notices: Vec<Notice>,
}

/// The richer the table, the better: ss (tcp_info, fds, backlogs) before netstat
/// before /proc/net/tcp, and with more columns before fewer.
fn table_rank(format: Format, t: &SocketTable) -> (u8, u8) {
    let kind = match format {
        Format::Ss => 3,
        Format::Netstat => 2,
        _ => 1,
    };
    let cols = [t.has_owners, t.has_timers, t.has_tcp_info, t.has_inodes]
        .iter()
        .filter(|b| **b)
        .count() as u8;
    (cols, kind)
}

impl ImportedHost {
    pub fn new(what: String, hostname: &str) -> ImportedHost {
        ImportedHost {
            what,
            hostname: hostname.into(),
            namespaces: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// The recorded host, with the notice of what it lacks.
    pub fn finish(self) -> Recorded {
        let mut namespaces = Vec::new();
        let mut sockets: Vec<(u64, Socket)> = Vec::new();
        let mut owners = Owners::default();
        let mut any_owners = false;
        let mut missing = self.notices;
        let mut sources_used: Vec<String> = Vec::new();
        for (k, ns) in self.namespaces.into_iter().enumerate() {
            // Inodes of imported namespaces: 0 for the first, small numbers after, so
            // every namespace has its own.
            let mut info = ns.info;
            info.inode = k as u64;
            let mut rec = RecordedNs {
                info: Some(info.clone()),
                source: None,
                owners_known: false,
                ..RecordedNs::default()
            };
            let mut best: Option<(Format, SocketTable, PathBuf)> = None;
            let mut other_tables: Vec<String> = Vec::new();
            let mut counters: Option<(Format, BTreeMap<String, i64>)> = None;
            let mut ulimit: Option<Limit> = None;
            let mut have_sysctls = false;
            for c in ns.captures {
                if c.skipped > 0 {
                    missing.push(super::snapshot::skipped_notice(
                        &format!("'{}' ({})", c.path.display(), c.format.name()),
                        c.skipped,
                        c.first_error.as_deref().unwrap_or("?"),
                    ));
                }
                match c.piece {
                    Piece::Sockets(f, t) => {
                        // Two tables of one namespace would count every socket twice:
                        // keep the richer; /proc/net/tcp and tcp6 add up.
                        match &mut best {
                            Some((bf, bt, _))
                                if *bf == Format::ProcNetTcp && f == Format::ProcNetTcp =>
                            {
                                bt.sockets.extend(t.sockets);
                                bt.skipped += t.skipped;
                            }
                            Some((bf, bt, bp)) if table_rank(f, &t) > table_rank(*bf, bt) => {
                                other_tables.push(format!("'{}'", bp.display()));
                                best = Some((f, t, c.path));
                            }
                            Some(_) => other_tables.push(format!("'{}'", c.path.display())),
                            None => best = Some((f, t, c.path)),
                        }
                    }
                    Piece::Counters(f, values) => match &mut counters {
                        // /proc/net/netstat and snmp complement each other.
                        Some((_, have)) => {
                            for (k, v) in values {
                                have.entry(k).or_insert(v);
                            }
                        }
                        None => counters = Some((f, values)),
                    },
                    Piece::Sockstat(s) => rec.sockstat = Some(s),
                    Piece::Sysctls(v) => {
                        have_sysctls |= !v.is_empty();
                        for (k, val) in v {
                            if PER_NETNS_SYSCTLS.contains(&k.as_str())
                                || HOST_WIDE_SYSCTLS.contains(&k.as_str())
                            {
                                rec.sysctls.insert(k, val);
                            }
                        }
                    }
                    Piece::Ulimit(l) => ulimit = Some(l),
                    Piece::FileNr(v) => {
                        rec.sysctls.insert("fs.file-nr".into(), v);
                    }
                    Piece::KernelLog(v) => rec.kernel_log = Some(v),
                }
            }
            if !other_tables.is_empty() {
                missing.push(Notice::new(
                    NoticeCode::RecordsSkipped,
                    format!(
                        "{} also list{} sockets; only the richest table is read, so none is counted twice",
                        other_tables.join(", "),
                        if other_tables.len() == 1 { "s" } else { "" }
                    ),
                ));
            }
            let mut have = Have {
                sysctls: have_sysctls,
                sockstat: rec.sockstat.is_some(),
                counters: counters.is_some(),
                file_nr: rec.sysctls.contains_key("fs.file-nr"),
                kernel_log: rec.kernel_log.is_some(),
                ..Have::default()
            };
            if let Some((_, values)) = counters {
                rec.counters = Some(CounterSample {
                    before: values.clone(),
                    after: values,
                    interval_ms: 0,
                });
            }
            if let Some((f, t, path)) = best {
                have.sockets = true;
                have.owners = t.has_owners;
                have.fds = t.has_fds;
                have.timers = t.has_timers;
                have.tcp_info = t.has_tcp_info;
                have.inodes = t.has_inodes;
                have.backlogs = t.has_backlogs;
                sources_used.push(format!("'{}' ({})", path.display(), f.name()));
                rec.source = Some(if t.has_backlogs {
                    Source::Netlink
                } else {
                    Source::Proc
                });
                if t.cut_addresses > 0 {
                    missing.push(Notice::new(
                        NoticeCode::RecordsSkipped,
                        format!(
                            "{} in '{}' may have its IPv6 address cut short by netstat (save it with netstat -W): those peers may be wrong",
                            crate::model::units::count(t.cut_addresses, "socket", "sockets"),
                            path.display()
                        ),
                    ));
                }
                if t.has_owners {
                    any_owners = true;
                    rec.owners_known = true;
                    for (inode, o) in &t.owners {
                        owners.map.insert(*inode, *o);
                    }
                    for (pid, comm) in &t.comms {
                        let p = Process {
                            pid: *pid,
                            comm: comm.clone(),
                            uid: 0,
                            cmdline: String::new(),
                            open_fds: 0,
                        };
                        owners.processes.insert(*pid, p);
                        rec.processes.insert(
                            *pid,
                            ProcessFacts {
                                pid: *pid,
                                comm: comm.clone(),
                                uid: 0,
                                cmdline: String::new(),
                                // Not in a socket table: unknown, and no rule judges 0
                                // against a limit it does not know.
                                open_fds: 0,
                                nofile_soft: None,
                                nofile_hard: None,
                                detached_tcp_fds: None,
                            },
                        );
                    }
                }
                sockets.extend(t.sockets.into_iter().map(|s| (info.inode, s)));
            }
            let lacks = have.lacks();
            if let Some(l) = ulimit {
                missing.push(Notice::new(
                    NoticeCode::RecordsSkipped,
                    format!(
                        "ulimit -n says {} for the shell that ran it; no rule applies it to other processes (their limits are in /proc/PID/limits)",
                        crate::collect::snapshot::format::limit_text(Some(l)).unwrap_or_default()
                    ),
                ));
            }
            let n = lacks_notice(&info.name, &lacks);
            if let Some(n) = n {
                rec.missing.push(n);
            }
            namespaces.push(rec);
        }
        let origin = if sources_used.is_empty() {
            self.what.clone()
        } else {
            sources_used.join(", ")
        };
        Recorded::from_parts(
            origin,
            self.hostname,
            namespaces,
            any_owners.then_some(owners),
            sockets,
            missing,
        )
    }
}

/// What an import held.
#[derive(Debug, Clone, Copy, Default)]
struct Have {
    sockets: bool,
    owners: bool,
    fds: bool,
    timers: bool,
    tcp_info: bool,
    inodes: bool,
    backlogs: bool,
    counters: bool,
    sockstat: bool,
    sysctls: bool,
    file_nr: bool,
    kernel_log: bool,
}

/// A piece of evidence an import lacked: what, how to capture it, and the rules that
/// could not run without it (`run: false`) or ran on less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub what: &'static str,
    pub capture: &'static str,
    pub rules: &'static [&'static str],
    /// The rules do not run at all without it.
    pub blocks: bool,
}

const ALL_SOCKET_RULES: &[&str] = &[
    "close_wait_leak",
    "close_wait_unaccepted",
    "time_wait_pressure",
    "ephemeral_port_exhaustion",
    "listen_overflow",
    "orphans",
];

impl Have {
    fn lacks(&self) -> Vec<Evidence> {
        let mut out = Vec::new();
        let lack = |out: &mut Vec<Evidence>, cond: bool, e: Evidence| {
            if !cond {
                out.push(e);
            }
        };
        lack(
            &mut out,
            self.sockets,
            Evidence {
                what: "sockets",
                capture: "ss -tanpoie",
                rules: ALL_SOCKET_RULES,
                blocks: true,
            },
        );
        if self.sockets {
            lack(
                &mut out,
                self.owners,
                Evidence {
                    what: "socket owners",
                    capture: "ss -p or netstat -p, as root",
                    rules: &["close_wait_leak", "fd_exhaustion"],
                    blocks: false,
                },
            );
            lack(
                &mut out,
                !self.owners || self.fds,
                Evidence {
                    what: "descriptor numbers (netstat shows none; owners show fd=0)",
                    capture: "ss -p",
                    rules: &[],
                    blocks: false,
                },
            );
            lack(
                &mut out,
                self.timers,
                Evidence {
                    what: "timers (TIME_WAIT ages, so closing rates)",
                    capture: "ss -o or netstat -o",
                    rules: &["time_wait_pressure", "ephemeral_port_exhaustion"],
                    blocks: false,
                },
            );
            lack(
                &mut out,
                self.tcp_info,
                Evidence {
                    what: "tcp_info (how long CLOSE_WAIT sockets have been idle)",
                    capture: "ss -i",
                    rules: &["close_wait_leak"],
                    blocks: false,
                },
            );
            lack(
                &mut out,
                self.inodes || !self.owners,
                Evidence {
                    what:
                        "socket inodes (owned sockets are numbered from 72057594037927936 instead)",
                    capture: "ss -e or netstat -e",
                    rules: &[],
                    blocks: false,
                },
            );
            lack(
                &mut out,
                self.backlogs,
                Evidence {
                    what: "listen backlogs (netstat and /proc/net/tcp show 0)",
                    capture: "ss",
                    rules: &["listen_overflow"],
                    blocks: false,
                },
            );
        }
        lack(
            &mut out,
            self.counters,
            Evidence {
                what: "counters",
                capture: "netstat -s or nstat -az",
                rules: &["listen_overflow", "time_wait_pressure", "orphans"],
                blocks: false,
            },
        );
        lack(
            &mut out,
            self.sockstat,
            Evidence {
                what: "sockstat",
                capture: "cat /proc/net/sockstat",
                rules: &["time_wait_pressure", "orphans"],
                blocks: false,
            },
        );
        lack(
            &mut out,
            self.sysctls,
            Evidence {
                what: "sysctls (the kernel defaults are assumed)",
                capture: "sysctl -a",
                rules: &["sysctl_audit", "conntrack_table", "netns_sysctl_drift"],
                blocks: true,
            },
        );
        lack(
            &mut out,
            self.file_nr || self.sysctls,
            Evidence {
                what: "the file table",
                capture: "cat /proc/sys/fs/file-nr",
                rules: &["fd_exhaustion"],
                blocks: false,
            },
        );
        out.push(Evidence {
            what: "process descriptor counts and limits",
            capture: "tcpdoctor snapshot",
            rules: &["fd_exhaustion", "nginx_worker_connections"],
            blocks: false,
        });
        lack(
            &mut out,
            self.kernel_log,
            Evidence {
                what: "the kernel log",
                capture: "dmesg",
                rules: &["kernel_log"],
                blocks: true,
            },
        );
        out.push(Evidence {
            what: "nginx configurations",
            capture: "tcpdoctor snapshot, or tcpdoctor lint nginx FILE",
            rules: &[
                "nginx_upstream_keepalive",
                "nginx_proxy_keepalive_headers",
                "nginx_proxy_header_inheritance",
                "nginx_client_keepalive",
                "nginx_worker_connections",
            ],
            blocks: true,
        });
        out.push(Evidence {
            what: "a second counter reading",
            capture: "tcpdoctor snapshot, or nstat twice",
            rules: &["listen_overflow", "time_wait_pressure"],
            blocks: false,
        });
        out
    }
}

/// The `replay_missing` notice: what an import lacked and the rules that could not run
/// (or ran on less) for it.
fn lacks_notice(ns: &str, lacks: &[Evidence]) -> Option<Notice> {
    if lacks.is_empty() {
        return None;
    }
    let items: Vec<String> = lacks
        .iter()
        .map(|e| format!("{} ({})", e.what, e.capture))
        .collect();
    let mut blocked: Vec<&str> = Vec::new();
    let mut less: Vec<&str> = Vec::new();
    for e in lacks {
        for r in e.rules {
            let list = if e.blocks { &mut blocked } else { &mut less };
            if !list.contains(r) {
                list.push(r);
            }
        }
    }
    less.retain(|r| !blocked.contains(r));
    let mut msg = format!("the import of {ns} lacks {}", items.join(", "));
    if !blocked.is_empty() {
        msg.push_str(&format!(
            "; rules that could not run: {}",
            blocked.join(", ")
        ));
    }
    if !less.is_empty() {
        msg.push_str(&format!("; rules that ran on less: {}", less.join(", ")));
    }
    Some(Notice::new(NoticeCode::ReplayMissing, msg))
}

/// The notice for a recording without socket owners.
pub fn no_owners_notice(origin: &str) -> Notice {
    Notice::new(
        NoticeCode::ReplayMissing,
        format!(
            "{origin} holds no socket owners (save ss or netstat with -p, as root): sockets are not named after processes"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_content() {
        let cases = [
            (
                "State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n",
                Format::Ss,
            ),
            ("ESTAB 0 0 127.0.0.1:1 127.0.0.1:2\n", Format::Ss),
            (
                "Active Internet connections (servers and established)\nProto Recv-Q\n",
                Format::Netstat,
            ),
            (
                "  sl  local_address rem_address   st tx_queue rx_queue\n",
                Format::ProcNetTcp,
            ),
            (
                "Ip:\n    Forwarding: 2\nTcp:\n    6 active connection openings\n",
                Format::NetstatS,
            ),
            ("#kernel\nIpInReceives 14 0.0\n", Format::Nstat),
            ("TcpExt: SyncookiesSent\nTcpExt: 0\n", Format::ProcCounters),
            (
                "sockets: used 5\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 0\n",
                Format::Sockstat,
            ),
            (
                "net.ipv4.tcp_tw_reuse = 2\nnet.core.somaxconn = 4096\n",
                Format::SysctlA,
            ),
            ("1024\n", Format::Ulimit),
            ("1139\t0\t2466239\n", Format::FileNr),
            ("[  12.5] TCP: too many orphaned sockets\n", Format::Dmesg),
        ];
        for (text, want) in cases {
            assert_eq!(detect(text), Some(want), "{text:?}");
        }
        assert_eq!(detect("hello world\nthis is prose\n"), None);
        assert_eq!(detect(""), None);
    }

    #[test]
    fn the_lacks_notice_names_evidence_and_rules() {
        let have = Have {
            sockets: true,
            owners: true,
            fds: true,
            ..Have::default()
        };
        let n = lacks_notice("imported", &have.lacks()).expect("notice");
        assert_eq!(n.code, NoticeCode::ReplayMissing);
        assert!(
            n.message.contains("timers (TIME_WAIT ages"),
            "{}",
            n.message
        );
        assert!(
            n.message.contains("rules that could not run: sysctl_audit"),
            "{}",
            n.message
        );
        assert!(n.message.contains("kernel_log"), "{}", n.message);
    }
}
