//! `tcpdoctor check`: gather a [`Snapshot`] of this host, run the rules, return the
//! report. Collection runs in parallel where it can: the /proc owner scan on worker
//! threads while the socket dumps stream on this one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::analyze;
use crate::collect::kmsg;
use crate::collect::procfs::owners::{self, Wanted};
use crate::collect::procfs::{counters, limits, sockstat};
use crate::collect::sockets::{self, SocketQuery};
use crate::collect::sysctl;
use crate::model::{
    parse_port_list, CounterSample, DigestBuilder, FileTable, Finding, KernelLogEntry, Notice,
    ProcessFacts, Snapshot, Source, StateSet, TcpState,
};
use crate::settings::{CheckSettings, Common};

use super::CmdError;

/// What `check` shows.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub hostname: String,
    pub snapshot: Snapshot,
    pub findings: Vec<Finding>,
}

pub fn run(common: &Common, s: &CheckSettings) -> Result<CheckReport, CmdError> {
    let snapshot = collect_snapshot(common, s.interval)?;
    let findings = analyze::run(&snapshot, &s.thresholds);
    Ok(CheckReport {
        hostname: read_trimmed(&common.proc_root.join("sys/kernel/hostname")).unwrap_or_default(),
        snapshot,
        findings,
    })
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_counters(proc_root: &Path, missing: &mut Vec<Notice>) -> Option<BTreeMap<String, i64>> {
    let mut all = BTreeMap::new();
    let mut any = false;
    for f in ["netstat", "snmp"] {
        let path = proc_root.join("net").join(f);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                any = true;
                let (m, errors) = counters::parse(&text);
                all.extend(m);
                if let Some(e) = errors.first() {
                    missing.push(Notice::new(
                        "counters_partial",
                        format!(
                            "'{}': {} malformed lines skipped ({e})",
                            path.display(),
                            errors.len()
                        ),
                    ));
                }
            }
            Err(e) => missing.push(Notice::new(
                "counters_unavailable",
                format!("cannot read '{}': {e}", path.display()),
            )),
        }
    }
    any.then_some(all)
}

/// The kernel log: `/dev/kmsg` on a live host, `<proc-root>/kmsg` (one record per line)
/// when replaying a captured one.
fn kernel_log(proc_root: &Path, missing: &mut Vec<Notice>) -> Option<Vec<KernelLogEntry>> {
    let live = proc_root == Path::new("/proc");
    let path: PathBuf = if live {
        PathBuf::from("/dev/kmsg")
    } else {
        proc_root.join("kmsg")
    };
    let records = if live {
        kmsg::read_all(&path)
    } else {
        std::fs::read(&path).map(|b| {
            b.split(|c| *c == b'\n')
                .filter_map(kmsg::parse_record)
                .collect()
        })
    };
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (run as root, or allow it with kernel.dmesg_restrict=0)"
            } else {
                ""
            };
            missing.push(Notice::new(
                "kernel_log_unavailable",
                format!("cannot read the kernel log '{}': {e}{hint}", path.display()),
            ));
            return None;
        }
    };
    let mut grouped: BTreeMap<String, KernelLogEntry> = BTreeMap::new();
    for r in records {
        let e = grouped.entry(r.message.clone()).or_insert(KernelLogEntry {
            message: r.message,
            count: 0,
            last_seen_s: 0,
        });
        e.count += 1;
        e.last_seen_s = e.last_seen_s.max(r.usec / 1_000_000);
    }
    Some(grouped.into_values().collect())
}

/// One snapshot whose counters are read at the start and again `interval` later
/// (the collection itself runs in between).
pub fn collect_snapshot(common: &Common, interval: Duration) -> Result<Snapshot, CmdError> {
    let started = Instant::now();
    let mut missing = Vec::new();
    let before = read_counters(&common.proc_root, &mut missing);
    let mut snap = collect_without_counters(common, missing, false)?;
    if let Some(before) = before {
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        let mut ignore = Vec::new();
        let after = read_counters(&common.proc_root, &mut ignore).unwrap_or_else(|| before.clone());
        snap.counters = Some(CounterSample {
            before,
            after,
            interval_ms: started.elapsed().as_millis() as u64,
        });
    }
    Ok(snap)
}

/// Repeated snapshots for long-running views (`watch`, `serve`): each one's counter
/// rates cover the time since the previous sample, so no sample waits.
#[derive(Debug, Default)]
pub struct Sampler {
    prev: Option<(Instant, BTreeMap<String, i64>)>,
    by_process: bool,
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// Also fill [`SocketDigest::by_process`](crate::model::SocketDigest::by_process)
    /// (TCP sockets per owning process): one inode lookup per socket with a descriptor.
    pub fn with_sockets_by_process(mut self) -> Sampler {
        self.by_process = true;
        self
    }

    /// Collects a snapshot. The first one's counter deltas are zero (nothing to compare).
    pub fn sample(&mut self, common: &Common) -> Result<Snapshot, CmdError> {
        let mut missing = Vec::new();
        let now = Instant::now();
        let counters = read_counters(&common.proc_root, &mut missing);
        let mut snap = collect_without_counters(common, missing, self.by_process)?;
        if let Some(after) = counters {
            let (before, interval_ms) = match self.prev.take() {
                Some((t, before)) => (before, now.duration_since(t).as_millis() as u64),
                None => (after.clone(), 0),
            };
            snap.counters = Some(CounterSample {
                before,
                after: after.clone(),
                interval_ms,
            });
            self.prev = Some((now, after));
        }
        Ok(snap)
    }
}

fn collect_without_counters(
    common: &Common,
    mut missing: Vec<Notice>,
    by_process: bool,
) -> Result<Snapshot, CmdError> {
    let root = common.proc_root.as_path();
    let sysctls = sysctl::read(root, sysctl::KEYS);

    let mut snap = Snapshot {
        taken_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        sysctls,
        ..Snapshot::default()
    };
    let reserved = snap
        .sysctl("net.ipv4.ip_local_reserved_ports")
        .map(parse_port_list)
        .unwrap_or_default();
    let mut builder = DigestBuilder::new(snap.port_range(), reserved);
    if by_process {
        builder = builder.count_by_process();
    }

    let first: StateSet = [TcpState::Listen, TcpState::CloseWait]
        .into_iter()
        .collect();
    let rest: StateSet = TcpState::ALL
        .into_iter()
        .filter(|s| !first.contains(*s))
        .collect();

    let (dumps, scan) = std::thread::scope(|scope| {
        let scan = scope.spawn(|| owners::scan(root, Wanted::All, common.threads));
        let dumps = (|| {
            // Listeners and CLOSE_WAIT with tcp_info (for CLOSE_WAIT age), then the
            // rest without it: tcp_info costs kernel time on every socket it is asked for.
            let a = sockets::stream(
                &SocketQuery {
                    states: first,
                    ipv4: true,
                    ipv6: true,
                    tcp_info: true,
                    source: common.source,
                },
                root,
                |sock| builder.add_first_pass(sock),
            )?;
            let b = sockets::stream(
                &SocketQuery {
                    states: rest,
                    ipv4: true,
                    ipv6: true,
                    tcp_info: false,
                    source: common.source,
                },
                root,
                |sock| builder.add(sock),
            )?;
            Ok::<_, CmdError>((a, b))
        })();
        (dumps, scan.join().ok())
    });
    let (a, b) = dumps?;
    snap.source = Some(a.source);
    if a.source == Source::Proc {
        builder.backlogs_unknown();
    }
    missing.extend(a.notices);
    missing.extend(
        b.notices
            .into_iter()
            .filter(|n| n.code != "netlink_unavailable"),
    );

    let (owner_data, scan_stats) = match scan {
        Some((o, st)) => (Some(o), Some(st)),
        None => (None, None),
    };
    let (summary, digest) =
        builder.finish(|inode| owner_data.as_ref().and_then(|o| o.map.first(inode)));
    snap.summary = summary;
    snap.sockets = digest;
    snap.owners_known = owner_data.is_some();

    if let (Some(o), Some(st)) = (&owner_data, &scan_stats) {
        let unowned = snap
            .sockets
            .close_wait
            .iter()
            .filter(|c| c.inode != 0 && c.owner.is_none())
            .count()
            + snap
                .sockets
                .listeners
                .iter()
                .filter(|l| l.inode != 0 && l.owner.is_none())
                .count();
        missing.extend(owners::missing_owner_notice(
            unowned as u64,
            st,
            owners::effective_uid(),
        ));
        if st.denied > 0 {
            missing.push(Notice::new(
                "fd_counts_partial",
                format!("descriptor counts of {} processes could not be read (run as root to check every process against its limit)", st.denied),
            ));
        }
        snap.processes = process_facts(root, o);
    }

    snap.file_table = snap.sysctl("fs.file-nr").and_then(|v| {
        let f: Vec<u64> = v
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        match f.as_slice() {
            [allocated, _, max] => Some(FileTable {
                allocated: *allocated,
                max: *max,
            }),
            _ => None,
        }
    });
    snap.sockstat = std::fs::read_to_string(root.join("net/sockstat"))
        .ok()
        .and_then(|t| sockstat::parse_tcp(&t));
    snap.kernel_log = kernel_log(root, &mut missing);

    snap.missing = missing;
    Ok(snap)
}

/// Name, uid, command line, descriptor count and RLIMIT_NOFILE of every scanned process.
fn process_facts(root: &Path, o: &crate::model::Owners) -> BTreeMap<u32, ProcessFacts> {
    let mut out = BTreeMap::new();
    // Descriptor limits matter for the processes of the namespace being checked: those
    // are the ones whose accept()/connect() fail here. Processes whose namespace cannot
    // be read (not root) are kept: we cannot tell.
    let own_netns = owners::netns_inode(&root.join("self/ns/net"));
    for pf in &o.fd_counts {
        if own_netns.is_some() && pf.netns.is_some() && pf.netns != own_netns {
            continue;
        }
        let (pid, fds) = (&pf.pid, &pf.open_fds);
        let dir = root.join(pid.to_string());
        let p = match o.process(*pid) {
            Some(p) => p.clone(),
            None => owners::read_process(&dir, *pid, *fds),
        };
        let nofile = std::fs::read_to_string(dir.join("limits"))
            .ok()
            .and_then(|t| limits::parse_nofile(&t));
        out.insert(
            *pid,
            ProcessFacts {
                pid: *pid,
                comm: p.comm,
                uid: p.uid,
                cmdline: p.cmdline,
                open_fds: *fds,
                nofile_soft: nofile.map(|n| n.soft),
                nofile_hard: nofile.map(|n| n.hard),
            },
        );
    }
    out
}
