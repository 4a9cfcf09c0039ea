//! Writes a snapshot while the collection runs. Sockets are written as the dumps yield
//! them ([`SocketTap`]), into a compressed frame in a scratch file beside the output, so
//! no socket list is ever held; once the collection is over, the output is written as
//! the description of the host, that frame, and a trailer, and renamed into place (a
//! failed run leaves no half-written snapshot under the name asked for).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::format::{
    self, CloseWaitId, CountersRec, Header, KernelLogRec, NamespaceRec, NginxRec, ProcessRec,
    Record, SocketRec, SockstatRec,
};
use crate::collect::namespace::SocketTap;
use crate::model::{HostSnapshot, Owners, Socket};

/// zstd level: 3 is zstd's default, fast enough not to slow a million-socket dump much.
const LEVEL: i32 = 3;
/// Owners per line.
const OWNERS_PER_LINE: usize = 4096;

type Encoder = zstd::stream::write::Encoder<'static, BufWriter<File>>;

struct Tap {
    enc: Option<Encoder>,
    line: Vec<u8>,
    sockets: u64,
    /// Inodes of the sockets written, to keep only their owners.
    inodes: Vec<u64>,
    error: Option<io::Error>,
}

/// A snapshot being written.
pub struct SnapshotWriter {
    out: PathBuf,
    scratch: PathBuf,
    tap: Mutex<Tap>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotWriter({})", self.out.display())
    }
}

/// What the finished file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub sockets: u64,
    pub namespaces: usize,
    pub bytes: u64,
}

/// Everything but the sockets.
#[derive(Debug)]
pub struct Description<'a> {
    pub hostname: &'a str,
    pub host: &'a HostSnapshot,
    pub owners: Option<&'a Owners>,
    pub nginx: Vec<NginxRec>,
}

fn scratch_path(out: &Path, what: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    out.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

impl SnapshotWriter {
    /// Starts a snapshot to be written at `out` (its folder must be writable).
    pub fn create(out: &Path) -> io::Result<SnapshotWriter> {
        let scratch = scratch_path(out, "sockets");
        let file = File::create(&scratch)?;
        let enc = Encoder::new(BufWriter::with_capacity(256 * 1024, file), LEVEL)?;
        Ok(SnapshotWriter {
            out: out.to_path_buf(),
            scratch,
            tap: Mutex::new(Tap {
                enc: Some(enc),
                line: Vec::with_capacity(512),
                sockets: 0,
                inodes: Vec::new(),
                error: None,
            }),
        })
    }

    /// Writes the description, the sockets and the trailer, and moves the file into
    /// place.
    pub fn finish(self, d: &Description<'_>) -> io::Result<Written> {
        let result = self.finish_inner(d);
        let _ = std::fs::remove_file(&self.scratch);
        result
    }

    fn finish_inner(&self, d: &Description<'_>) -> io::Result<Written> {
        let mut tap = self
            .tap
            .lock()
            .map_err(|_| io::Error::other("a socket writer panicked"))?;
        if let Some(e) = tap.error.take() {
            return Err(e);
        }
        if let Some(enc) = tap.enc.take() {
            enc.finish()?.flush()?;
        }
        let sockets = tap.sockets;
        let mut inodes = std::mem::take(&mut tap.inodes);
        inodes.sort_unstable();
        inodes.dedup();
        drop(tap);

        let partial = scratch_path(&self.out, "partial");
        let written = (|| -> io::Result<()> {
            let file = File::create(&partial)?;
            let mut w = BufWriter::with_capacity(256 * 1024, file);
            let mut enc = zstd::stream::write::Encoder::new(&mut w, LEVEL)?;
            for rec in describe(d, &inodes) {
                serde_json::to_writer(&mut enc, &rec)?;
                enc.write_all(b"\n")?;
            }
            serde_json::to_writer(&mut enc, &Record::Sockets)?;
            enc.write_all(b"\n")?;
            enc.finish()?;
            // The socket frame as it was compressed during the collection.
            io::copy(&mut File::open(&self.scratch)?, &mut w)?;
            let mut enc = zstd::stream::write::Encoder::new(&mut w, LEVEL)?;
            serde_json::to_writer(&mut enc, &Record::End { sockets })?;
            enc.write_all(b"\n")?;
            enc.finish()?;
            w.flush()?;
            w.get_ref().sync_all()?;
            Ok(())
        })();
        if let Err(e) = written.and_then(|()| std::fs::rename(&partial, &self.out)) {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        Ok(Written {
            sockets,
            namespaces: d.host.namespaces.len(),
            bytes: std::fs::metadata(&self.out).map_or(0, |m| m.len()),
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.scratch);
    }
}

impl SocketTap for SnapshotWriter {
    fn socket(&self, netns: u64, s: &Socket) {
        let Ok(mut guard) = self.tap.lock() else {
            return;
        };
        let tap = &mut *guard;
        if tap.error.is_some() {
            return;
        }
        tap.line.clear();
        let rec = SocketRec::from_socket(netns, s);
        let r = serde_json::to_writer(&mut tap.line, &rec)
            .map_err(io::Error::from)
            .and_then(|()| {
                tap.line.push(b'\n');
                match tap.enc.as_mut() {
                    Some(enc) => enc.write_all(&tap.line),
                    None => Err(io::Error::other("socket after the snapshot was finished")),
                }
            });
        match r {
            Ok(()) => {
                tap.sockets += 1;
                if s.inode != 0 {
                    tap.inodes.push(s.inode);
                }
            }
            Err(e) => tap.error = Some(e),
        }
    }
}

/// The description lines, in the order the reader expects.
fn describe(d: &Description<'_>, inodes: &[u64]) -> Vec<Record> {
    let host = d.host;
    let mut out = vec![Record::Header(Header {
        format: format::FORMAT.into(),
        version: format::VERSION,
        tool: format!("tcpdoctor {}", env!("CARGO_PKG_VERSION")),
        hostname: d.hostname.to_string(),
        taken_at_unix_ms: host.primary().map_or(0, |p| p.taken_at_unix_ms),
        kernel: kernel_release(),
        all_namespaces: host.all_namespaces,
    })];
    for n in &host.missing {
        out.push(Record::Notice(format::notice_rec(n)));
    }
    for s in &host.namespaces {
        let Some(info) = &s.netns else {
            continue;
        };
        let mut rec = NamespaceRec::from_info(info);
        rec.source = s.source.map(|src| src.name().to_string());
        rec.taken_at_unix_ms = s.taken_at_unix_ms;
        rec.sysctls = s.sysctls.clone();
        rec.counters = s.counters.as_ref().map(|c| CountersRec {
            before: c.before.clone(),
            after: c.after.clone(),
            interval_ms: c.interval_ms,
        });
        rec.sockstat = s.sockstat.as_ref().map(SockstatRec::from_model);
        rec.close_wait_recheck_ms = s.close_wait_recheck_ms;
        rec.close_wait_gone = s
            .sockets
            .close_wait
            .iter()
            .filter(|c| c.still_there == Some(false))
            .map(CloseWaitId::of)
            .collect();
        rec.owners_known = s.owners_known;
        rec.missing = s.missing.iter().map(format::notice_rec).collect();
        rec.persisted_sysctls = s
            .persisted_sysctls
            .as_ref()
            .map(super::config::PersistedRec::from_model);
        rec.nofile_origins = s
            .nofile_origins
            .iter()
            .map(|(pid, o)| super::config::NofileOriginRec::from_model(*pid, o))
            .collect();
        rec.flows = s.flows.as_ref().map(super::flows::FlowsRec::from_model);
        rec.descriptor_recheck = s
            .descriptor_recheck
            .iter()
            .map(|(pid, r)| super::flows::RecheckRec::from_model(*pid, r))
            .collect();
        out.push(Record::Namespace(Box::new(rec)));
    }
    if let Some(o) = d.owners {
        let mut entries: Vec<(u64, u32, u32)> = o
            .map
            .iter()
            .filter(|(inode, _)| inodes.binary_search(inode).is_ok())
            .map(|(inode, w)| (inode, w.pid, w.fd))
            .collect();
        entries.sort_unstable();
        for chunk in entries.chunks(OWNERS_PER_LINE) {
            out.push(Record::Owners {
                entries: chunk.to_vec(),
            });
        }
    }
    // Processes measured by `check`, with their namespace; then socket owners that
    // are not among them.
    let mut seen = std::collections::BTreeSet::new();
    for s in &host.namespaces {
        let ns = s.netns.as_ref().map(|n| n.inode);
        for f in s.processes.values() {
            if seen.insert(f.pid) {
                out.push(Record::Process(ProcessRec::from_facts(ns, f)));
            }
        }
    }
    if let Some(o) = d.owners {
        let mut owners: Vec<&crate::model::Process> = o.processes.values().collect();
        owners.sort_by_key(|p| p.pid);
        for p in owners {
            if seen.insert(p.pid) {
                out.push(Record::Process(ProcessRec {
                    pid: p.pid,
                    ns: None,
                    comm: p.comm.clone(),
                    uid: p.uid,
                    cmdline: p.cmdline.clone(),
                    open_fds: p.open_fds,
                    facts: false,
                    nofile_soft: None,
                    nofile_hard: None,
                    detached_tcp_fds: None,
                }));
            }
        }
    }
    for s in &host.namespaces {
        if let Some(log) = &s.kernel_log {
            let ns = s.netns.as_ref().map_or(0, |n| n.inode);
            out.push(Record::KernelLog {
                ns,
                entries: log
                    .iter()
                    .map(|e| KernelLogRec {
                        message: e.message.clone(),
                        count: e.count,
                        last_seen_s: e.last_seen_s,
                    })
                    .collect(),
            });
        }
    }
    for n in &d.nginx {
        out.push(Record::Nginx(Box::new(n.clone())));
    }
    out
}

/// `uname -r`, for the reader's information.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
