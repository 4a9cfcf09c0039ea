//! A host as it was recorded, read back: a snapshot file (`tcpdoctor snapshot -o FILE`)
//! or imported text (`ss`, `netstat`, `sysctl -a`, a sosreport: [`crate::collect::import`]).
//!
//! [`Recorded`] plays the part of the live collectors for `--from`: its sockets stream
//! through [`Recorded::stream`] with the same query and visitor shape as
//! [`sockets::stream`](crate::collect::sockets::stream), owners come as the same
//! [`Owners`] the /proc scan builds, and [`Recorded::host_snapshot`] digests each
//! namespace with the same [`DigestBuilder`](crate::model::DigestBuilder) setup as a
//! live read ([`namespace::digest_builder`](crate::collect::namespace::digest_builder)),
//! so the rules and renderers that run are the live ones. A snapshot file streams: it
//! is read once, line by line, and a million sockets are never held at once.
//!
//! Format and versions: [`format`]; writing: [`writer`]; reading: [`reader`].

pub mod config;
pub mod flows;
pub mod format;
pub mod nginx;
pub mod reader;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::model::nginx::NginxInstance;
use crate::model::{
    CounterSample, HostSnapshot, KernelLogEntry, NetnsInfo, Notice, NoticeCode, Owners,
    ProcessFacts, Snapshot, Socket, SocketDigest, Sockstat, Source, StateSet, StateSummary,
};

use super::namespace::digest_builder;
use format::CloseWaitId;

/// `--from` input that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum FromError {
    #[error("cannot read --from '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--from '{}' is a tcpdoctor snapshot of format version {found}, newer than this tcpdoctor reads (versions {} to {}): read it with a newer tcpdoctor", path.display(), format::SUPPORTED.start(), format::SUPPORTED.end())]
    Newer { path: PathBuf, found: u32 },
    #[error("--from '{}' is damaged: {why}", path.display())]
    Damaged { path: PathBuf, why: String },
    #[error("--from {what}: {why}")]
    Import { what: String, why: String },
}

/// One recorded network namespace: everything read in it but its sockets.
#[derive(Debug, Clone, Default)]
pub struct RecordedNs {
    pub info: Option<NetnsInfo>,
    pub source: Option<Source>,
    pub taken_at_unix_ms: u64,
    pub sysctls: BTreeMap<String, String>,
    pub counters: Option<CounterSample>,
    pub sockstat: Option<Sockstat>,
    pub close_wait_recheck_ms: Option<u64>,
    /// CLOSE_WAIT sockets closed by the second look.
    pub close_wait_gone: BTreeSet<CloseWaitId>,
    pub owners_known: bool,
    pub missing: Vec<Notice>,
    pub processes: BTreeMap<u32, ProcessFacts>,
    pub kernel_log: Option<Vec<KernelLogEntry>>,
    pub nginx: Vec<NginxInstance>,
    pub persisted_sysctls: Option<crate::model::persisted::PersistedSysctls>,
    pub nofile_origins: BTreeMap<u32, crate::model::persisted::NofileOrigin>,
    pub flows: Option<crate::model::NamespaceFlows>,
    pub descriptor_recheck: BTreeMap<u32, crate::model::DescriptorRecheck>,
}

impl RecordedNs {
    pub fn inode(&self) -> u64 {
        self.info.as_ref().map_or(0, |i| i.inode)
    }
}

/// Where the sockets are.
enum SocketLines {
    /// The rest of a snapshot file, read once.
    File(Box<reader::SocketLines>),
    /// Parsed text (imports), by namespace inode; listeners first.
    Memory(Vec<(u64, Socket)>),
    /// Streamed already.
    Spent,
}

impl std::fmt::Debug for SocketLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketLines::File(_) => f.write_str("File"),
            SocketLines::Memory(v) => write!(f, "Memory({} sockets)", v.len()),
            SocketLines::Spent => f.write_str("Spent"),
        }
    }
}

/// A recorded host.
#[derive(Debug)]
pub struct Recorded {
    /// What was read: `snapshot 'FILE'`, `'ss.txt' (ss -tanp)`.
    pub origin: String,
    pub hostname: String,
    pub taken_at_unix_ms: u64,
    pub all_namespaces: bool,
    /// Host-level notices.
    pub missing: Vec<Notice>,
    pub namespaces: Vec<RecordedNs>,
    /// `None`: the recording holds no owners at all.
    pub owners: Option<Owners>,
    sockets: SocketLines,
}

/// What a [`Recorded::stream`] wants: the same fields as a live query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedQuery {
    pub states: StateSet,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Keep tcp_info (a live query asks the kernel for it only when needed).
    pub tcp_info: bool,
}

impl Recorded {
    /// Reads `paths`: one snapshot file, or text captures (files, several files, or a
    /// folder such as a sosreport) to import.
    pub fn open(paths: &[PathBuf]) -> Result<Recorded, FromError> {
        if let [one] = paths {
            if is_snapshot(one)? {
                return reader::open(one);
            }
        }
        super::import::open(paths)
    }

    /// Built from parsed text: sockets by namespace inode.
    pub fn from_parts(
        origin: String,
        hostname: String,
        namespaces: Vec<RecordedNs>,
        owners: Option<Owners>,
        mut sockets: Vec<(u64, Socket)>,
        missing: Vec<Notice>,
    ) -> Recorded {
        // Listeners first, as a live read gives them: the digest classifies ports
        // against them.
        sockets.sort_by_key(|(_, s)| s.state != crate::model::TcpState::Listen);
        Recorded {
            origin,
            hostname,
            taken_at_unix_ms: 0,
            all_namespaces: false,
            missing,
            namespaces,
            owners,
            sockets: SocketLines::Memory(sockets),
        }
    }

    pub(crate) fn from_file(
        origin: String,
        header: &format::Header,
        namespaces: Vec<RecordedNs>,
        owners: Option<Owners>,
        missing: Vec<Notice>,
        lines: reader::SocketLines,
    ) -> Recorded {
        Recorded {
            origin,
            hostname: header.hostname.clone(),
            taken_at_unix_ms: header.taken_at_unix_ms,
            all_namespaces: header.all_namespaces,
            missing,
            namespaces,
            owners,
            sockets: SocketLines::File(Box::new(lines)),
        }
    }

    /// Passes every recorded socket that matches `query` to `visit` with its
    /// namespace's inode, in recorded order (a namespace's listeners before its other
    /// sockets). Once only: a snapshot is read as it streams. Notices say what could
    /// not be read (damaged or truncated files, lines skipped).
    pub fn stream(
        &mut self,
        query: &RecordedQuery,
        mut visit: impl FnMut(u64, &Socket),
    ) -> Result<Vec<Notice>, FromError> {
        let wanted = |s: &Socket| {
            query.states.contains(s.state)
                && match s.family {
                    crate::model::Family::V4 => query.ipv4,
                    crate::model::Family::V6 => query.ipv6,
                }
        };
        let mut pass = |ns: u64, s: &Socket| {
            if wanted(s) {
                if query.tcp_info {
                    visit(ns, s);
                } else {
                    visit(
                        ns,
                        &Socket {
                            tcp_info: None,
                            ..*s
                        },
                    );
                }
            }
        };
        match std::mem::replace(&mut self.sockets, SocketLines::Spent) {
            SocketLines::File(lines) => lines.stream(&mut pass),
            SocketLines::Memory(v) => {
                for (ns, s) in &v {
                    pass(*ns, s);
                }
                self.sockets = SocketLines::Memory(v);
                Ok(Vec::new())
            }
            SocketLines::Spent => Err(FromError::Import {
                what: self.origin.clone(),
                why: "its sockets were read already (internal error)".into(),
            }),
        }
    }

    /// The [`HostSnapshot`] of the namespaces at `selected` (indexes into
    /// `namespaces`, the one carrying host-wide evidence first), each digested as a live
    /// read digests it. `by_process`: fill `SocketDigest::by_process`.
    pub fn host_snapshot(
        &mut self,
        selected: &[usize],
        all_namespaces: bool,
        by_process: bool,
    ) -> Result<HostSnapshot, FromError> {
        let mut builders: Vec<_> = selected
            .iter()
            .map(|i| {
                let ns = &self.namespaces[*i];
                (ns.inode(), digest_builder(&ns.sysctls, by_process))
            })
            .collect();
        let query = RecordedQuery {
            states: StateSet::all(),
            ipv4: true,
            ipv6: true,
            tcp_info: true,
        };
        let index: BTreeMap<u64, usize> = builders
            .iter()
            .enumerate()
            .map(|(k, (inode, _))| (*inode, k))
            .collect();
        let stream_notices = self.stream(&query, |ns, s| {
            if let Some(k) = index.get(&ns) {
                builders[*k].1.add_first_pass(s);
            }
        })?;
        let owners = self.owners.as_ref();
        let mut host = HostSnapshot {
            namespaces: Vec::new(),
            all_namespaces,
            missing: self.missing.clone(),
        };
        host.missing.extend(stream_notices);
        for (i, (_, mut builder)) in selected.iter().zip(builders) {
            let ns = &self.namespaces[*i];
            if ns.source == Some(Source::Proc) {
                builder.backlogs_unknown();
            }
            let (summary, mut digest): (StateSummary, SocketDigest) =
                builder.finish(|inode| owners.and_then(|o| o.map.first(inode)));
            if ns.close_wait_recheck_ms.is_some() {
                for c in &mut digest.close_wait {
                    c.still_there = Some(!ns.close_wait_gone.contains(&CloseWaitId::of(c)));
                }
            }
            host.namespaces.push(Snapshot {
                taken_at_unix_ms: ns.taken_at_unix_ms,
                source: ns.source,
                summary,
                sockets: digest,
                processes: ns.processes.clone(),
                sysctls: ns.sysctls.clone(),
                counters: ns.counters.clone(),
                close_wait_recheck_ms: ns.close_wait_recheck_ms,
                sockstat: ns.sockstat,
                kernel_log: ns.kernel_log.clone(),
                missing: ns.missing.clone(),
                owners_known: ns.owners_known,
                netns: ns.info.clone(),
                nginx: ns.nginx.clone(),
                persisted_sysctls: ns.persisted_sysctls.clone(),
                nofile_origins: ns.nofile_origins.clone(),
                flows: ns.flows.clone(),
                descriptor_recheck: ns.descriptor_recheck.clone(),
                // Not recorded: a recorder's origins are joined live only.
                provenance: None,
            });
        }
        Ok(host)
    }
}

/// Whether `path` is a zstd file (a snapshot) rather than text to import.
fn is_snapshot(path: &Path) -> Result<bool, FromError> {
    use std::io::Read;
    if path.is_dir() {
        return Ok(false);
    }
    let mut f = std::fs::File::open(path).map_err(|source| FromError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(FromError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(got == 4 && magic == format::ZSTD_MAGIC)
}

/// The notice for lines of a recording that could not be read.
pub fn skipped_notice(what: &str, skipped: u64, first: &str) -> Notice {
    Notice::new(
        NoticeCode::RecordsSkipped,
        format!(
            "skipped {} of {what} that could not be read (first: {first})",
            crate::model::units::count(skipped, "line", "lines")
        ),
    )
}
