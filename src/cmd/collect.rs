//! Collection shared by `check`, `watch` and `serve`: one [`HostSnapshot`] with a
//! [`Snapshot`] per network namespace.
//!
//! What runs at once: the owner scan (once for the host: socket inodes are unique across
//! namespaces) on its own thread, while worker threads take namespaces one at a time,
//! enter each and read its sockets, per-namespace sysctls, counters and sockstat.
//! Host-wide evidence (kernel log, file table, tcp_mem and the other global sysctls) is
//! read once and given to the primary namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::collect::kmsg;
use crate::collect::netns::{self, NsRoots};
use crate::collect::procfs::owners::{self, ScanStats, Wanted};
use crate::collect::procfs::{counters, limits, sockstat};
use crate::collect::sockets::{self, CollectError, SocketQuery, SourcePref};
use crate::collect::sysctl;
use crate::model::{
    CounterSample, DigestBuilder, EphemeralPorts, HostSnapshot, KernelLogEntry, Notice, NoticeCode,
    Owners, ProcessFacts, Snapshot, Socket, Sockstat, Source, StateSet, TcpState, TimeWaitPolicy,
    HOST_WIDE_SYSCTLS, PER_NETNS_SYSCTLS,
};
use crate::settings::Common;

use super::netns::{take, Selection};
use super::CmdError;

/// Above this many sockets (sockstat inuse + tw) a namespace is dumped in two passes
/// on two threads: CLOSE_WAIT with tcp_info (for their age) and the rest without it,
/// because tcp_info costs kernel time on every socket it is asked for. Below it one
/// pass with tcp_info is cheaper: each pass walks the whole TCP hash table, which the
/// namespaces of a host usually share.
const SPLIT_ABOVE: u64 = 50_000;

const CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";

/// Counter readings kept between samples, per namespace inode.
pub type CounterHistory = BTreeMap<u64, (Instant, BTreeMap<String, i64>)>;

/// How counter rates are measured.
pub enum Counters<'a> {
    /// Read at the start and again this long after (check).
    Interval(Duration),
    /// Read once; rates against the previous sample (watch, serve).
    SincePrevious(&'a mut CounterHistory),
}

/// What one namespace yields before owners are known.
struct NsPart {
    builder: DigestBuilder,
    source: Source,
    sysctls: BTreeMap<String, String>,
    counters: Option<(Instant, BTreeMap<String, i64>)>,
    sockstat: Option<Sockstat>,
    notices: Vec<Notice>,
}

pub fn read_counters(net_root: &Path, missing: &mut Vec<Notice>) -> Option<BTreeMap<String, i64>> {
    let mut all = BTreeMap::new();
    let mut any = false;
    for f in ["netstat", "snmp"] {
        let path = net_root.join("net").join(f);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                any = true;
                let (m, errors) = counters::parse(&text);
                all.extend(m);
                if let Some(e) = errors.first() {
                    missing.push(Notice::new(
                        NoticeCode::CountersPartial,
                        format!(
                            "'{}': {} malformed lines skipped ({e})",
                            path.display(),
                            errors.len()
                        ),
                    ));
                }
            }
            Err(e) => missing.push(Notice::new(
                NoticeCode::CountersUnavailable,
                format!("cannot read '{}': {e}", path.display()),
            )),
        }
    }
    any.then_some(all)
}

/// One namespace, read from the thread that is in it.
fn collect_ns(
    roots: &NsRoots,
    source: SourcePref,
    by_process: bool,
) -> Result<NsPart, CollectError> {
    let mut notices = Vec::new();
    let counters = read_counters(&roots.net, &mut notices).map(|c| (Instant::now(), c));
    let sysctls = sysctl::read(&roots.sys, PER_NETNS_SYSCTLS);
    let sockstat = std::fs::read_to_string(roots.net.join("net/sockstat"))
        .ok()
        .and_then(|t| sockstat::parse_tcp(&t));

    let ports = EphemeralPorts::from_sysctls(
        sysctls
            .get("net.ipv4.ip_local_port_range")
            .map(String::as_str),
        sysctls
            .get("net.ipv4.ip_local_reserved_ports")
            .map(String::as_str),
    );
    let mut builder =
        DigestBuilder::new(ports).time_wait_policy(TimeWaitPolicy::from_sysctls(|k| {
            sysctls.get(k).map(String::as_str)
        }));
    if by_process {
        builder = builder.count_by_process();
    }
    let query = |states: StateSet, tcp_info: bool| SocketQuery {
        states,
        ipv4: true,
        ipv6: true,
        tcp_info,
        source,
    };
    let listen: StateSet = [TcpState::Listen].into_iter().collect();
    let close_wait: StateSet = [TcpState::CloseWait].into_iter().collect();
    let others: StateSet = TcpState::ALL
        .into_iter()
        .filter(|s| *s != TcpState::Listen)
        .collect();
    let rest: StateSet = TcpState::ALL
        .into_iter()
        .filter(|s| *s != TcpState::Listen && *s != TcpState::CloseWait)
        .collect();

    // Listeners first: TIME_WAIT and port use are classified against their ports. A
    // LISTEN-only dump never walks the connection hash, so it is cheap.
    let first = sockets::stream(&query(listen, false), &roots.net, |s| {
        builder.add_first_pass(s)
    })?;
    let big = sockstat.is_none_or(|s| s.inuse + s.tw > SPLIT_ABOVE);
    let mut reports = vec![first];
    if big {
        let (cw, main) = std::thread::scope(|scope| {
            // A thread started here is in this thread's namespace too.
            let cw = scope.spawn(|| {
                let mut v: Vec<Socket> = Vec::new();
                sockets::stream(&query(close_wait, true), &roots.net, |s| v.push(*s))
                    .map(|r| (r, v))
            });
            let main = sockets::stream(&query(rest, false), &roots.net, |s| builder.add(s));
            (cw.join(), main)
        });
        reports.push(main?);
        match cw {
            Ok(r) => {
                let (r, v) = r?;
                for s in &v {
                    builder.add_first_pass(s);
                }
                reports.push(r);
            }
            Err(_) => notices.push(Notice::new(
                NoticeCode::CloseWaitUnavailable,
                "reading CLOSE_WAIT sockets failed (internal error); they are not in this report",
            )),
        }
    } else {
        reports.push(sockets::stream(&query(others, true), &roots.net, |s| {
            builder.add_first_pass(s)
        })?);
    }
    let source = reports[0].source;
    if source == Source::Proc {
        builder.backlogs_unknown();
    }
    for (i, r) in reports.into_iter().enumerate() {
        // The fallback notice once, not once per pass.
        notices.extend(
            r.notices
                .into_iter()
                .filter(|n| i == 0 || n.code != NoticeCode::NetlinkUnavailable),
        );
    }
    Ok(NsPart {
        builder,
        source,
        sysctls,
        counters,
        sockstat,
        notices,
    })
}

/// Reads every selected namespace. `by_process`: fill `SocketDigest::by_process`.
pub fn collect_host(
    common: &Common,
    sel: &Selection,
    by_process: bool,
    counters: Counters<'_>,
) -> Result<HostSnapshot, CmdError> {
    let started = Instant::now();
    let root = common.proc_root.as_path();
    let workers = common.threads.max(1);
    let targets = sel.targets();

    let (parts, scan) = std::thread::scope(|scope| {
        let scan = scope.spawn(|| owners::scan(root, Wanted::All, common.threads));
        let parts = netns::for_each(&targets, root, workers, |_, roots| {
            collect_ns(roots, common.source, by_process)
        });
        (parts, scan.join().ok())
    });

    let taken_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut host = HostSnapshot {
        namespaces: Vec::new(),
        all_namespaces: sel.all,
        missing: sel.notices.clone(),
    };
    // (index into sel.infos, part) for the namespaces that could be read.
    let mut read: Vec<(usize, NsPart)> = Vec::new();
    let single = targets.len() == 1;
    for ((i, _), part) in targets.iter().zip(parts) {
        let info = &sel.infos[*i];
        if let Some(p) = take(part, info, single, &mut host.missing)? {
            read.push((*i, p));
        }
    }

    // Host-wide evidence, read once here.
    let mut host_sysctls = sysctl::read(root, HOST_WIDE_SYSCTLS);
    let mut host_missing = Vec::new();
    let mut kernel_log = kernel_log(root, &mut host_missing);
    // Every namespace's conntrack count is compared with this global limit.
    let conntrack_max = host_sysctls.get(CONNTRACK_MAX).cloned();

    let (owner_data, scan_stats): (Option<Owners>, Option<ScanStats>) = scan.unzip();
    // Facts only for processes in a namespace being reported (or of unknown namespace).
    let selected: Vec<u64> = read.iter().map(|(i, _)| sel.infos[*i].inode).collect();
    let replay = sel.infos.len() == 1 && sel.infos[0].inode == 0;
    let mut facts = owner_data
        .as_ref()
        .map(|o| {
            process_facts(root, o, |ns| {
                replay || ns.is_none_or(|n| selected.contains(&n))
            })
        })
        .unwrap_or_default();

    let mut counters = counters;
    // With `Counters::Interval`: when each namespace's first counter reading was taken.
    let mut first_reading_at: BTreeMap<u64, Instant> = BTreeMap::new();
    for (n, (i, part)) in read.into_iter().enumerate() {
        let info = sel.infos[i].clone();
        let NsPart {
            builder,
            source,
            mut sysctls,
            counters: ns_counters,
            sockstat,
            notices,
        } = part;
        let primary = n == 0;
        let (summary, digest) =
            builder.finish(|inode| owner_data.as_ref().and_then(|o| o.map.first(inode)));
        let mut snap = Snapshot {
            taken_at_unix_ms,
            source: Some(source),
            summary,
            sockets: digest,
            sockstat,
            missing: notices,
            owners_known: owner_data.is_some(),
            ..Snapshot::default()
        };
        // Processes whose namespace is this one (unknown namespace: the primary's).
        let mine: Vec<u32> = facts
            .iter()
            .filter(|(_, (ns, _))| match ns {
                Some(ns) => *ns == info.inode || replay && primary,
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
        if primary {
            sysctls.extend(std::mem::take(&mut host_sysctls));
            snap.kernel_log = kernel_log.take();
            snap.missing.append(&mut host_missing);
            if let Some(st) = &scan_stats {
                if st.denied > 0 {
                    snap.missing.push(Notice::new(
                        NoticeCode::FdCountsPartial,
                        format!("descriptor counts of {} processes could not be read (run as root to check every process against its limit)", st.denied),
                    ));
                }
            }
        }
        snap.sysctls = sysctls;
        if let Some(st) = &scan_stats {
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
            snap.missing.extend(owners::missing_owner_notice(
                unowned as u64,
                st,
                owners::effective_uid(),
            ));
        }
        if let Some((at, after)) = ns_counters {
            snap.counters = Some(match &mut counters {
                Counters::Interval(_) => {
                    first_reading_at.insert(info.inode, at);
                    CounterSample {
                        before: after.clone(),
                        after,
                        interval_ms: 0,
                    }
                }
                Counters::SincePrevious(history) => {
                    let (before, interval_ms) = match history.remove(&info.inode) {
                        Some((t, before)) => (before, at.duration_since(t).as_millis() as u64),
                        None => (after.clone(), 0),
                    };
                    history.insert(info.inode, (at, after.clone()));
                    CounterSample {
                        before,
                        after,
                        interval_ms,
                    }
                }
            });
        }
        snap.netns = Some(info);
        host.namespaces.push(snap);
    }
    if let Counters::SincePrevious(history) = &mut counters {
        // Forget namespaces that are gone.
        let live: Vec<u64> = host
            .namespaces
            .iter()
            .filter_map(|s| s.netns.as_ref().map(|n| n.inode))
            .collect();
        history.retain(|k, _| live.contains(k));
    }

    // nginx (check only; issue 12): masters in every namespace and their configuration,
    // read while the counter interval runs. A standalone collector:
    // collect::nginx::discover + attach.
    if matches!(counters, Counters::Interval(_)) {
        let (instances, notices) = crate::collect::nginx::discover(root);
        crate::collect::nginx::attach(&mut host, instances, notices);
    }

    // Persisted settings (check only; issue 12): the sysctl files applied at boot (in
    // the primary snapshot) and where each process's open-files limit is set, read from
    // the host's files. A standalone collector: collect::limits_source::attach_host_config.
    if matches!(counters, Counters::Interval(_)) {
        crate::collect::limits_source::attach_host_config(&mut host, root);
    }

    // check: the second counter reading, `interval` after the first.
    if let Counters::Interval(interval) = counters {
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        let handles = sel.targets();
        let wanted: Vec<(usize, netns::Target<'_>)> = handles
            .into_iter()
            .filter(|(i, _)| {
                host.namespaces
                    .iter()
                    .any(|s| s.netns.as_ref().map(|n| n.inode) == Some(sel.infos[*i].inode))
            })
            .collect();
        let after = netns::for_each(&wanted, root, workers, |_, roots| {
            let mut ignore = Vec::new();
            read_counters(&roots.net, &mut ignore).map(|c| (Instant::now(), c))
        });
        for ((i, _), a) in wanted.iter().zip(after) {
            let inode = sel.infos[*i].inode;
            let Some(snap) = host
                .namespaces
                .iter_mut()
                .find(|s| s.netns.as_ref().map(|n| n.inode) == Some(inode))
            else {
                continue;
            };
            // Each namespace's own interval: the ones read late in a big run had their
            // first reading later than the primary's.
            if let (Some(c), Ok(Some((at, after))), Some(first)) =
                (&mut snap.counters, a, first_reading_at.get(&inode))
            {
                c.after = after;
                c.interval_ms = at.duration_since(*first).as_millis() as u64;
            }
        }
    }
    Ok(host)
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
                NoticeCode::KernelLogUnavailable,
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

/// Name, uid, command line, descriptor count and RLIMIT_NOFILE of the scanned
/// processes `keep` accepts (by network namespace), with their namespace.
fn process_facts(
    root: &Path,
    o: &Owners,
    keep: impl Fn(Option<u64>) -> bool,
) -> BTreeMap<u32, (Option<u64>, ProcessFacts)> {
    let mut out = BTreeMap::new();
    for pf in o.fd_counts.iter().filter(|pf| keep(pf.netns)) {
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
            (
                pf.netns,
                ProcessFacts {
                    pid: *pid,
                    comm: p.comm,
                    uid: p.uid,
                    cmdline: p.cmdline,
                    open_fds: *fds,
                    nofile_soft: nofile.map(|n| n.soft),
                    nofile_hard: nofile.map(|n| n.hard),
                    detached_tcp_fds: None,
                },
            ),
        );
    }
    out
}
