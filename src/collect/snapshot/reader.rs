//! Reads a snapshot file: the description of the host at once, then the socket lines as
//! they stream (never all of them in memory). A file of a newer format version is
//! refused by name; an older one loads (see [`super::format::SUPPORTED`]). Lines that
//! cannot be read are skipped and counted in a notice; a file cut short says how many
//! sockets it still gave.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::format::{self, Record, SocketRec};
use super::{FromError, Recorded, RecordedNs};
use crate::model::units::count;
use crate::model::{
    CounterSample, Notice, NoticeCode, Owner, Owners, Process, Socket, SocketOwnerMap,
};

/// The longest line read; longer means a damaged or foreign file (a snapshot's longest
/// lines are nginx configurations and owner chunks, far below this).
const MAX_LINE: usize = 64 << 20;

type Lines = BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>;

/// The socket lines of an open snapshot, read once.
pub struct SocketLines {
    path: PathBuf,
    lines: Lines,
    line_no: u64,
}

/// One line, without its newline; `None` at the end.
fn next_line(lines: &mut Lines, buf: &mut Vec<u8>) -> std::io::Result<Option<()>> {
    buf.clear();
    let n = (&mut *lines)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line longer than {} MiB", MAX_LINE >> 20),
        ));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(()))
}

use std::io::Read;

/// Opens `path` and reads everything but the sockets.
pub fn open(path: &Path) -> Result<Recorded, FromError> {
    let io = |source| FromError::Io {
        path: path.to_path_buf(),
        source,
    };
    let damaged = |why: String| FromError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    let file = File::open(path).map_err(io)?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(io)?;
    let mut lines: Lines = BufReader::with_capacity(256 * 1024, decoder);
    let mut buf = Vec::new();
    let mut line_no = 0u64;

    // The header decides whether the rest is read at all.
    match next_line(&mut lines, &mut buf) {
        Ok(Some(())) => line_no += 1,
        Ok(None) => return Err(damaged("it is empty".into())),
        Err(e) => return Err(damaged(format!("its first line cannot be read ({e})"))),
    }
    let header = header(path, &buf)?;

    let mut namespaces: Vec<RecordedNs> = Vec::new();
    let mut map = SocketOwnerMap::default();
    let mut processes: Vec<format::ProcessRec> = Vec::new();
    let mut missing: Vec<Notice> = Vec::new();
    let mut kernel_log: BTreeMap<u64, Vec<crate::model::KernelLogEntry>> = BTreeMap::new();
    let mut nginx_recs: Vec<format::NginxRec> = Vec::new();
    let mut owner_lines = 0u64;
    let mut skipped = 0u64;
    let mut first_bad: Option<String> = None;
    loop {
        match next_line(&mut lines, &mut buf) {
            Ok(Some(())) => line_no += 1,
            Ok(None) => {
                return Err(damaged(format!(
                    "it ends after line {line_no}, before its sockets (cut short?)"
                )))
            }
            Err(e) => {
                return Err(damaged(format!(
                    "line {} cannot be read ({e})",
                    line_no + 1
                )))
            }
        }
        let rec: Record = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(e) => {
                skipped += 1;
                first_bad.get_or_insert_with(|| format!("line {line_no}: {e}"));
                continue;
            }
        };
        match rec {
            Record::Header(_) => {
                skipped += 1;
                first_bad.get_or_insert_with(|| format!("line {line_no}: a second header"));
            }
            Record::Namespace(n) => namespaces.push(namespace(&n)),
            Record::Owners { entries } => {
                owner_lines += 1;
                for (inode, pid, fd) in entries {
                    map.insert(inode, Owner { pid, fd });
                }
            }
            Record::Process(p) => processes.push(p),
            Record::KernelLog { ns, entries } => {
                kernel_log
                    .entry(ns)
                    .or_default()
                    .extend(entries.iter().map(format::KernelLogRec::entry));
            }
            Record::Nginx(n) => nginx_recs.push(*n),
            Record::Notice(n) => missing.push(format::notice(&n)),
            Record::Sockets => break,
            Record::End { .. } => {
                return Err(damaged(format!(
                    "line {line_no} ends it before any socket line"
                )))
            }
        }
    }
    if skipped > 0 {
        missing.push(super::skipped_notice(
            &format!("the description in '{}'", path.display()),
            skipped,
            first_bad.as_deref().unwrap_or("?"),
        ));
    }
    for (inode, entries) in kernel_log {
        if let Some(ns) = namespaces.iter_mut().find(|n| n.inode() == inode) {
            ns.kernel_log = Some(entries);
        }
    }
    let owners_recorded = owner_lines > 0 || namespaces.iter().any(|n| n.owners_known);
    let mut owners = Owners {
        map,
        ..Owners::default()
    };
    for p in processes {
        owners.processes.insert(
            p.pid,
            Process {
                pid: p.pid,
                comm: p.comm.clone(),
                uid: p.uid,
                cmdline: p.cmdline.clone(),
                open_fds: p.open_fds,
            },
        );
        if !p.facts {
            continue;
        }
        let home =
            p.ns.and_then(|ino| namespaces.iter().position(|n| n.inode() == ino));
        if let Some(ns) = namespaces.get_mut(home.unwrap_or(0)) {
            ns.processes.insert(p.pid, p.facts());
        }
    }
    for rec in nginx_recs {
        let inst = super::nginx::replay_instance(&rec);
        let home = rec
            .netns
            .and_then(|ino| namespaces.iter().position(|n| n.inode() == ino));
        if let Some(ns) = namespaces.get_mut(home.unwrap_or(0)) {
            ns.nginx.push(inst);
        }
    }
    if namespaces.is_empty() {
        return Err(damaged("it describes no network namespace".into()));
    }
    let lines = SocketLines {
        path: path.to_path_buf(),
        lines,
        line_no,
    };
    Ok(Recorded::from_file(
        format!("snapshot '{}'", path.display()),
        &header,
        namespaces,
        owners_recorded.then_some(owners),
        missing,
        lines,
    ))
}

/// The header line: a snapshot of a version this tcpdoctor reads.
fn header(path: &Path, line: &[u8]) -> Result<format::Header, FromError> {
    let not_ours = |why: String| FromError::Damaged {
        path: path.to_path_buf(),
        why: format!(
            "{why}; it is not a tcpdoctor snapshot (make one with tcpdoctor snapshot -o FILE)"
        ),
    };
    let h = match serde_json::from_slice::<Record>(line) {
        Ok(Record::Header(h)) => h,
        Ok(_) => return Err(not_ours("its first line is not a header".into())),
        Err(e) => {
            // A newer header may have fields of another shape: its version still says.
            let v: serde_json::Value = serde_json::from_slice(line)
                .map_err(|_| not_ours(format!("its first line is not JSON ({e})")))?;
            match (v["format"].as_str(), v["version"].as_u64()) {
                (Some(format::FORMAT), Some(found)) if found > u64::from(format::VERSION) => {
                    return Err(FromError::Newer {
                        path: path.to_path_buf(),
                        found: u32::try_from(found).unwrap_or(u32::MAX),
                    })
                }
                _ => return Err(not_ours(format!("its header cannot be read ({e})"))),
            }
        }
    };
    if h.format != format::FORMAT {
        return Err(not_ours(format!("its format is '{}'", h.format)));
    }
    if h.version > *format::SUPPORTED.end() {
        return Err(FromError::Newer {
            path: path.to_path_buf(),
            found: h.version,
        });
    }
    if !format::SUPPORTED.contains(&h.version) {
        return Err(not_ours(format!("its version is {}", h.version)));
    }
    Ok(h)
}

fn namespace(n: &format::NamespaceRec) -> RecordedNs {
    let mut missing: Vec<_> = n.missing.iter().map(format::notice).collect();
    let flows = n.flows.as_ref().map(|f| {
        let (flows, bad) = f.to_model(n.inode, &n.name);
        if let Some(first) = bad.first() {
            missing.push(super::skipped_notice(
                &format!("traced flows of namespace {}", n.name),
                bad.len() as u64,
                &first.0,
            ));
        }
        flows
    });
    RecordedNs {
        info: Some(n.info()),
        source: n.source.as_deref().and_then(format::source_of),
        taken_at_unix_ms: n.taken_at_unix_ms,
        sysctls: n.sysctls.clone(),
        counters: n.counters.as_ref().map(|c| CounterSample {
            before: c.before.clone(),
            after: c.after.clone(),
            interval_ms: c.interval_ms,
        }),
        sockstat: n.sockstat(),
        close_wait_recheck_ms: n.close_wait_recheck_ms,
        close_wait_gone: n.close_wait_gone.iter().cloned().collect(),
        owners_known: n.owners_known,
        missing,
        processes: BTreeMap::new(),
        kernel_log: None,
        nginx: Vec::new(),
        persisted_sysctls: n.persisted_sysctls.as_ref().map(|p| p.to_model()),
        nofile_origins: n
            .nofile_origins
            .iter()
            .map(|o| (o.pid, o.to_model()))
            .collect(),
        flows,
        descriptor_recheck: n.descriptor_recheck.iter().map(|r| r.to_model()).collect(),
    }
}

impl SocketLines {
    /// Streams the socket lines to `visit` (namespace inode, socket). Lines that do
    /// not describe a socket are skipped and counted; a file that ends early, or whose
    /// compressed data breaks off, gives what it had and a notice saying so.
    pub fn stream(mut self, visit: &mut dyn FnMut(u64, &Socket)) -> Result<Vec<Notice>, FromError> {
        let mut notices = Vec::new();
        let mut buf = Vec::with_capacity(512);
        let mut sockets = 0u64;
        let mut skipped = 0u64;
        let mut first_bad: Option<String> = None;
        let mut ended: Option<u64> = None;
        let mut broken: Option<String> = None;
        loop {
            match next_line(&mut self.lines, &mut buf) {
                Ok(Some(())) => self.line_no += 1,
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            }
            if buf.starts_with(format::SOCKET_LINE_PREFIX) {
                let parsed = serde_json::from_slice::<SocketRec>(&buf)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.to_socket().map(|s| (r.s, s)).map_err(|e| e.0));
                match parsed {
                    Ok((ns, s)) => {
                        sockets += 1;
                        visit(ns, &s);
                    }
                    Err(e) => {
                        skipped += 1;
                        first_bad.get_or_insert_with(|| format!("line {}: {e}", self.line_no));
                    }
                }
                continue;
            }
            match serde_json::from_slice::<Record>(&buf) {
                Ok(Record::End { sockets: n }) => {
                    ended = Some(n);
                    break;
                }
                _ => {
                    skipped += 1;
                    first_bad
                        .get_or_insert_with(|| format!("line {}: not a socket line", self.line_no));
                }
            }
        }
        if skipped > 0 {
            notices.push(super::skipped_notice(
                &format!("the socket lines of '{}'", self.path.display()),
                skipped,
                first_bad.as_deref().unwrap_or("?"),
            ));
        }
        let cut = match (ended, broken) {
            (Some(n), None) if n == sockets + skipped => None,
            (Some(n), None) => Some(format!(
                "it says it holds {} but {} could be read",
                count(n, "socket", "sockets"),
                sockets
            )),
            (_, Some(e)) => Some(format!(
                "its data breaks off after {} ({e})",
                count(sockets, "socket", "sockets")
            )),
            (None, None) => Some(format!(
                "it ends after {} without its last line (cut short?)",
                count(sockets, "socket", "sockets")
            )),
        };
        if let Some(why) = cut {
            notices.push(Notice::new(
                NoticeCode::ReplayMissing,
                format!(
                    "the snapshot '{}' is incomplete: {why}; the sockets after that are not in this report",
                    self.path.display()
                ),
            ));
        }
        Ok(notices)
    }
}
