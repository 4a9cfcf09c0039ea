//! One [`HostSnapshot`] of the namespaces a command chose: the collection behind
//! `check`, `watch` and `serve`. The command decides which namespaces and in what order
//! (the first carries the host-wide evidence) and when to read again; this module reads.
//!
//! What runs when: the owner scan (once for the host: socket inodes are unique across
//! namespaces) and worker threads that take namespaces one at a time, enter each and
//! read it ([`namespace::read`]). Normally they run at the same time. To count
//! descriptors of sockets that are in no table, the scan runs first: a socket the scan
//! saw and the later dumps did not is then one that left the tables, not one made
//! after its bucket was walked. Host-wide evidence (kernel log, process facts, the
//! host-wide sysctls) is read once and given to the first namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::kmsg;
use super::namespace::{self, CounterReading, NsOptions, NsReading, SocketTap};
use super::netns::{self, NamespaceError, NetnsError, NsTarget};
use super::owners::{self, OwnerScan, ScanStats, Wanted};
use super::procfs::{detached, process};
use super::sockets::{CollectError, SourcePref};
use super::sysctl;
use crate::model::units::count;
use crate::model::{
    HostSnapshot, KernelLogEntry, Notice, NoticeCode, Owners, ProcessFacts, Snapshot,
};

/// The one host-wide sysctl every namespace's conntrack count is compared with.
const CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";

/// How to collect.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// `/proc`, or the folder of a captured host.
    pub proc_root: PathBuf,
    /// `proc_root` is a captured host: nothing live is read.
    pub replay: bool,
    pub source: SourcePref,
    /// Worker threads for namespaces.
    pub threads: usize,
    pub owner_scan: OwnerScan,
    /// Fill `SocketDigest::by_process` (`serve`).
    pub by_process: bool,
    /// Count each process's descriptors of TCP sockets that are in no table
    /// (`ProcessFacts::detached_tcp_fds`; `check`).
    pub detached_fds: bool,
    /// Every socket read also goes here (`tcpdoctor snapshot`).
    pub tap: Option<Arc<dyn SocketTap>>,
    /// Return the owner map in [`Collected::owners`] (`tcpdoctor snapshot`).
    pub keep_owners: bool,
}

/// When a namespace was first read.
#[derive(Debug, Clone)]
pub struct FirstReading {
    pub counters: Option<CounterReading>,
    pub close_wait_at: Instant,
}

/// A collection: the snapshot, plus the reading times the command needs to turn two
/// readings into rates.
#[derive(Debug)]
pub struct Collected {
    pub host: HostSnapshot,
    /// `kernel.hostname` (empty when unreadable).
    pub hostname: String,
    /// Each namespace's first reading, by namespace inode.
    pub readings: BTreeMap<u64, FirstReading>,
    /// The first reading of the descriptor tables of the processes holding CLOSE_WAIT
    /// sockets, for [`read_again`]; `None` without an owner scan.
    pub fd_tables: Option<FdTables>,
    /// The owner scan, with [`HostOptions::keep_owners`].
    pub owners: Option<Owners>,
}

/// Reads every target. Namespaces that cannot be read become `netns_unreadable`
/// notices; when the only target cannot be read, that is the error.
pub fn collect(
    targets: &[NsTarget],
    all_namespaces: bool,
    notices: Vec<Notice>,
    opts: &HostOptions,
) -> Result<Collected, NamespaceError> {
    let (results, scan, owners_at) = read_namespaces_and_owners(targets, opts);
    let mut host = HostSnapshot {
        namespaces: Vec::new(),
        all_namespaces,
        missing: notices,
    };
    let read = settle(targets, results, &mut host.missing)?;
    let (owner_data, scan_stats): (Option<Owners>, Option<ScanStats>) = scan.unzip();

    let taken_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let root = opts.proc_root.as_path();
    let mut host_missing = Vec::new();
    let mut kernel_log = read_kernel_log(root, opts.replay, &mut host_missing);
    let selected: Vec<u64> = read.iter().map(|(t, _)| t.info.inode).collect();
    let mut facts = owner_data
        .as_ref()
        .map(|o| process_facts(root, o, opts.replay, &selected))
        .unwrap_or_default();
    if let (true, false, Some(o)) = (opts.detached_fds, opts.replay, &owner_data) {
        count_detached(root, o, &read, &mut facts);
    }
    if let Some(st) = &scan_stats {
        host_missing.extend(unreadable_processes(st));
    }
    let conntrack_max = read
        .first()
        .and_then(|(_, r)| r.sysctls.get(CONNTRACK_MAX).cloned());

    let mut readings = BTreeMap::new();
    for (n, (target, reading)) in read.into_iter().enumerate() {
        let primary = n == 0;
        let NsReading {
            builder,
            source,
            mut sysctls,
            counters,
            sockstat,
            notices,
            inodes: _,
            close_wait_at,
        } = reading;
        let (summary, digest) = builder.finish_owned(owner_data.as_ref().map(|o| &o.map));
        let mut snap = Snapshot {
            taken_at_unix_ms,
            source: Some(source),
            summary,
            sockets: digest,
            sockstat,
            missing: notices,
            owners_known: owner_data.is_some(),
            netns: Some(target.info.clone()),
            ..Snapshot::default()
        };
        // Processes whose namespace is this one; those of unknown namespace (and, in
        // a replay, all of them) go to the first.
        let inode = target.info.inode;
        let mine: Vec<u32> = facts
            .iter()
            .filter(|(_, (ns, _))| match ns {
                Some(ns) => *ns == inode || (opts.replay && primary),
                None => primary,
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in mine {
            if let Some((_, f)) = facts.remove(&pid) {
                snap.processes.insert(pid, f);
            }
        }
        if let Some(max) = &conntrack_max {
            sysctls.insert(CONNTRACK_MAX.into(), max.clone());
        }
        snap.sysctls = sysctls;
        if primary {
            snap.kernel_log = kernel_log.take();
            snap.missing.append(&mut host_missing);
        }
        if let Some(st) = &scan_stats {
            snap.missing.extend(owners::missing_owner_notice(
                unowned(&snap),
                st,
                owners::effective_uid(),
                opts.replay,
            ));
        }
        readings.insert(
            inode,
            FirstReading {
                counters: counters.clone(),
                close_wait_at,
            },
        );
        // One reading so far: no rate until the command adds a second.
        snap.counters = counters.map(|c| crate::model::CounterSample {
            before: c.values.clone(),
            after: c.values,
            interval_ms: 0,
        });
        host.namespaces.push(snap);
    }
    let fd_tables = owners_at.map(|_| FdTables::read(root, &host));
    Ok(Collected {
        host,
        hostname: sysctl::hostname(root),
        readings,
        fd_tables,
        owners: owner_data.filter(|_| opts.keep_owners),
    })
}

/// One namespace's reading, or why there is none.
type NsResult = Result<Result<NsReading, CollectError>, NetnsError>;

/// The namespace readings (in target order), the owner scan and when it ended; see the
/// module text for the order they run in.
fn read_namespaces_and_owners(
    targets: &[NsTarget],
    opts: &HostOptions,
) -> (Vec<NsResult>, Option<(Owners, ScanStats)>, Option<Instant>) {
    let root = opts.proc_root.as_path();
    let ns_opts = NsOptions {
        source: opts.source,
        by_process: opts.by_process,
        record_inodes: opts.detached_fds && !opts.replay,
        replay: opts.replay,
        tap: opts.tap.as_deref(),
        inode: 0,
    };
    let primary = targets.first().map(|t| t.info.inode);
    // The closure sees the namespace's roots and nothing of the host's paths.
    let read_all = || {
        netns::for_each(targets, root, opts.threads, |t, roots| {
            let ns_opts = NsOptions {
                inode: t.info.inode,
                ..ns_opts
            };
            namespace::read(roots, &ns_opts, Some(t.info.inode) == primary)
        })
    };
    let scan = || {
        let scanned = owners::scan(root, Wanted::All, &opts.owner_scan);
        (scanned, Instant::now())
    };
    if opts.detached_fds {
        let (scanned, at) = scan();
        (read_all(), Some(scanned), Some(at))
    } else {
        std::thread::scope(|scope| {
            let scan = scope.spawn(scan);
            let results = read_all();
            // A panic in the scan is a bug; treat it as "no owners" rather than abort.
            let (scanned, at) = scan.join().ok().unzip();
            (results, scanned, at)
        })
    }
}

/// The namespaces that could be read, with their readings, in target order.
fn settle<'t>(
    targets: &'t [NsTarget],
    results: Vec<NsResult>,
    notices: &mut Vec<Notice>,
) -> Result<Vec<(&'t NsTarget, NsReading)>, NamespaceError> {
    let single = targets.len() == 1;
    let mut read = Vec::new();
    for (t, r) in targets.iter().zip(results) {
        if let Some(reading) = netns::settle(r, &t.info, single, notices)? {
            read.push((t, reading));
        }
    }
    Ok(read)
}

/// The kernel log, or `None` with the notice saying why not.
fn read_kernel_log(
    root: &Path,
    replay: bool,
    missing: &mut Vec<Notice>,
) -> Option<Vec<KernelLogEntry>> {
    match kmsg::read_log(root, replay) {
        Ok(log) => log,
        Err(n) => {
            missing.push(n);
            None
        }
    }
}

/// The notice for processes whose descriptors could not be read (not root).
fn unreadable_processes(st: &ScanStats) -> Option<Notice> {
    (st.denied > 0).then(|| {
        let euid = owners::effective_uid();
        let why = if euid == 0 {
            "even to root (hardened /proc or a security module)".to_string()
        } else {
            format!("as uid {euid} (run as root)")
        };
        Notice::new(
            NoticeCode::FdCountsPartial,
            format!(
                "the descriptors of {} of {} are not readable {why}: their open files against RLIMIT_NOFILE, the sockets they own and the closed sockets they still hold are not in this report",
                st.denied,
                count(st.processes, "process", "processes")
            ),
        )
    })
}

/// Sockets of this snapshot that hold a descriptor but whose owner was not found.
fn unowned(snap: &Snapshot) -> u64 {
    let d = &snap.sockets;
    (d.close_wait
        .iter()
        .filter(|c| c.inode != 0 && c.owner.is_none())
        .count()
        + d.listeners
            .iter()
            .filter(|l| l.inode != 0 && l.owner.is_none())
            .count()) as u64
}

/// Name, uid, command line, descriptor count and RLIMIT_NOFILE of every scanned process
/// in a namespace being read (or of unknown namespace, or any in a replay), with its
/// namespace.
fn process_facts(
    root: &Path,
    o: &Owners,
    replay: bool,
    selected: &[u64],
) -> BTreeMap<u32, (Option<u64>, ProcessFacts)> {
    let keep = |ns: Option<u64>| replay || ns.is_none_or(|n| selected.contains(&n));
    let mut out = BTreeMap::new();
    for pf in o.fd_counts.iter().filter(|pf| keep(pf.netns)) {
        let dir = root.join(pf.pid.to_string());
        let p = match o.process(pf.pid) {
            Some(p) => p.clone(),
            None => process::read_process(&dir, pf.pid, pf.open_fds),
        };
        let (nofile_soft, nofile_hard) = process::read_nofile(&dir);
        out.insert(
            pf.pid,
            (
                pf.netns,
                ProcessFacts {
                    pid: pf.pid,
                    comm: p.comm,
                    uid: p.uid,
                    cmdline: p.cmdline,
                    open_fds: pf.open_fds,
                    nofile_soft,
                    nofile_hard,
                    detached_tcp_fds: None,
                },
            ),
        );
    }
    out
}

/// Sets `detached_tcp_fds` of every process whose descriptors were read: its TCP
/// socket descriptors that no dump of the namespaces read saw.
fn count_detached(
    root: &Path,
    o: &Owners,
    read: &[(&NsTarget, NsReading)],
    facts: &mut BTreeMap<u32, (Option<u64>, ProcessFacts)>,
) {
    let mut dumped: Vec<u64> = read
        .iter()
        .flat_map(|(_, r)| r.inodes.iter().copied())
        .collect();
    dumped.sort_unstable();
    dumped.dedup();
    let counts = detached::count(root, &o.map, &dumped, |pid| facts.contains_key(&pid));
    for (pid, (_, f)) in facts.iter_mut() {
        f.detached_tcp_fds = Some(counts.get(pid).copied().unwrap_or(0));
    }
}

/// The second look of `check` at every namespace `c` holds: counters again, and
/// whether each CLOSE_WAIT socket is still there (`CloseWaitSocket::still_there`,
/// `Snapshot::close_wait_recheck_ms`). Returns the counter readings by namespace inode;
/// rates are the command's business.
pub fn read_again(
    targets: &[NsTarget],
    opts: &HostOptions,
    c: &mut Collected,
) -> BTreeMap<u64, CounterReading> {
    let wanted: Vec<&NsTarget> = targets
        .iter()
        .filter(|t| {
            c.host
                .namespaces
                .iter()
                .any(|s| s.netns.as_ref().map(|n| n.inode) == Some(t.info.inode))
        })
        .collect();
    let sources: BTreeMap<u64, crate::model::Source> = c
        .host
        .namespaces
        .iter()
        .filter_map(|s| Some((s.netns.as_ref()?.inode, s.source?)))
        .collect();
    let seconds = netns::for_each(&wanted, &opts.proc_root, opts.threads, |t, roots| {
        sources
            .get(&t.info.inode)
            .map(|source| namespace::read_again(roots, *source))
    });
    let mut out = BTreeMap::new();
    for (t, second) in wanted.iter().zip(seconds) {
        let inode = t.info.inode;
        let Some(snap) = c
            .host
            .namespaces
            .iter_mut()
            .find(|s| s.netns.as_ref().map(|n| n.inode) == Some(inode))
        else {
            continue;
        };
        let second = match second {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                snap.missing.push(Notice::new(
                    NoticeCode::NetnsUnreadable,
                    format!("the second reading failed ({e}): no counter rates, CLOSE_WAIT not re-checked"),
                ));
                continue;
            }
        };
        snap.missing.extend(second.notices);
        if let (Some(seen), Some(first)) = (&second.close_wait, c.readings.get(&inode)) {
            for cw in &mut snap.sockets.close_wait {
                cw.still_there = Some(seen.still_there(cw));
            }
            snap.close_wait_recheck_ms = Some(
                second
                    .close_wait_at
                    .saturating_duration_since(first.close_wait_at)
                    .as_millis() as u64,
            );
        }
        if let Some(r) = second.counters {
            out.insert(inode, r);
        }
    }
    if let Some(first) = &c.fd_tables {
        recount_descriptors(&opts.proc_root, first, &mut c.host);
    }
    out
}

/// The size of the descriptor table of each process holding CLOSE_WAIT sockets, and
/// when it was read: the size of /proc/PID/fd, which Linux 6.2 and later give as the
/// number of descriptors in use without listing them (0 on older kernels: nothing is
/// recorded). That number also counts the descriptor each thread blocked in accept()
/// has reserved for the connection it waits for (`__sys_accept4_file` takes the
/// descriptor before `do_accept` sleeps; `proc_readfd_count` counts the bits of
/// `open_fds`), which a listing of /proc/PID/fd leaves out: so growth is measured
/// between two such sizes, never against the owner scan's listing.
#[derive(Debug, Clone)]
pub struct FdTables {
    at: Instant,
    sizes: BTreeMap<u32, u64>,
}

impl FdTables {
    fn read(root: &Path, host: &HostSnapshot) -> FdTables {
        let mut sizes = BTreeMap::new();
        for pid in host.namespaces.iter().flat_map(close_wait_holders) {
            let Ok(meta) = std::fs::metadata(root.join(pid.to_string()).join("fd")) else {
                continue;
            };
            if meta.len() > 0 {
                sizes.insert(pid, meta.len());
            }
        }
        FdTables {
            at: Instant::now(),
            sizes,
        }
    }
}

/// Processes of `snap` that hold (by descriptor) a CLOSE_WAIT socket.
fn close_wait_holders(snap: &Snapshot) -> std::collections::BTreeSet<u32> {
    snap.sockets
        .close_wait
        .iter()
        .filter(|c| c.inode != 0)
        .filter_map(|c| c.owner.map(|o| o.pid))
        .filter(|pid| snap.processes.contains_key(pid))
        .collect()
}

/// Counts again the descriptors of every process holding CLOSE_WAIT sockets
/// (`Snapshot::descriptor_recheck`), so a leak's growth over the interval shows: the
/// owner scan's count plus what the table gained since `first`.
fn recount_descriptors(root: &Path, first: &FdTables, host: &mut HostSnapshot) {
    let again = FdTables::read(root, host);
    let after_ms = again.at.saturating_duration_since(first.at).as_millis() as u64;
    for snap in &mut host.namespaces {
        for (pid, now) in &again.sizes {
            let (Some(before), Some(p)) = (first.sizes.get(pid), snap.processes.get(pid)) else {
                continue;
            };
            let open_fds = (p.open_fds + now).saturating_sub(*before);
            snap.descriptor_recheck
                .insert(*pid, crate::model::DescriptorRecheck { open_fds, after_ms });
        }
    }
}
