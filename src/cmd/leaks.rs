//! `tcpdoctor trace --leaks`, the data side: while the tracer records who opens each
//! socket, look at the host's CLOSE_WAIT sockets, take the leaked ones (idle for the
//! leak age or longer, plus descriptors the kernel closed under their holder), join
//! them by cookie to their origins and group them by call site ([`LeakReport`]).
//!
//! Also the join `check` makes ([`attach_to_host`]): the sockets of its close_wait
//! findings matched to the records of a recorder running on the host (`serve`,
//! `watch`, `trace --leaks`), carried to the rules in `Snapshot::provenance`.

use std::collections::{BTreeMap, HashSet};

use crate::collect::netns as ns;
use crate::collect::owners::{self, Wanted};
use crate::collect::provenance::{self as prov, Recorded, Resolver};
use crate::collect::sockets::{self, SocketQuery};
use crate::collect::trace::origins::{find_recorders, LeakCounters};
use crate::collect::trace::Tracer;
use crate::model::provenance::{group, LeakReport, OriginTable, ProcessLeaks, Provenance};
use crate::model::{FlowFilter, HostSnapshot, Notice, NoticeCode, StateSet, TcpState};
use crate::settings::Common;

use super::netns::{self, ContainerCache, Purpose};
use super::CmdError;

/// One CLOSE_WAIT socket with a descriptor, as the leak look needs it.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    cookie: Option<u64>,
    inode: u64,
    idle_ms: Option<u32>,
}

/// Repeated looks at the leaks of one recording run.
#[derive(Debug)]
pub struct LeakLook {
    common: Common,
    filter: FlowFilter,
    leak_age_ms: u64,
    since_unix_ms: u64,
    resolver: Resolver,
    containers: ContainerCache,
}

impl LeakLook {
    /// `common` must name every namespace (the session's); `filter` narrows processes
    /// and namespaces.
    pub fn new(common: &Common, filter: &FlowFilter, leak_age_ms: u64) -> LeakLook {
        LeakLook {
            common: common.clone(),
            filter: filter.clone(),
            leak_age_ms,
            since_unix_ms: now_unix_ms(),
            resolver: Resolver::default(),
            containers: ContainerCache::default(),
        }
    }

    /// Looks now: the leaked sockets and their call sites, and notices about what the
    /// recording lost.
    pub fn look(&mut self, tracer: &Tracer) -> Result<(LeakReport, Vec<Notice>), CmdError> {
        let maps = tracer.origins().ok_or_else(|| {
            CmdError::Trace(crate::collect::trace::TraceError::Load(
                "the tracer was started without leak recording".into(),
            ))
        })?;
        // Counters on both sides of the table read: evictions are estimated low, never
        // high (see `table`).
        let before = tracer.leak_counters()?;
        let sel = netns::select_cached(&self.common, Purpose::Diagnosis, &mut self.containers)?;
        let targets: Vec<_> = sel
            .targets
            .iter()
            .filter(|t| self.filter.netns.is_empty() || self.filter.netns.contains(&t.info.inode))
            .collect();
        let query = SocketQuery {
            states: [TcpState::CloseWait].into_iter().collect::<StateSet>(),
            ipv4: true,
            ipv6: true,
            tcp_info: true,
            source: self.common.source,
        };
        let dumped = ns::for_each(
            &targets,
            &self.common.proc_root,
            self.common.threads.max(1),
            |_, roots| {
                let mut v: Vec<Waiting> = Vec::new();
                let r = sockets::stream(&query, &roots.net, |s| {
                    if s.inode == 0 {
                        return; // in an accept queue: nobody holds it yet
                    }
                    let idle_ms =
                        s.tcp_info
                            .and_then(|i| match (i.last_data_recv_ms, i.last_ack_recv_ms) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            });
                    v.push(Waiting {
                        cookie: s.cookie,
                        inode: s.inode,
                        idle_ms,
                    });
                });
                r.map(|_| v)
            },
        );
        let mut notices = Vec::new();
        let mut waiting = Vec::new();
        for (t, r) in targets.iter().zip(dumped) {
            match r {
                Ok(Ok(v)) => waiting.extend(v),
                Ok(Err(e)) => notices.push(Notice::new(
                    NoticeCode::NetnsUnreadable,
                    format!("{}: CLOSE_WAIT sockets not read: {e}", t.info.name),
                )),
                Err(e) => notices.push(Notice::new(
                    NoticeCode::NetnsUnreadable,
                    format!("{}: {e}", t.info.name),
                )),
            }
        }
        let wanted: rustc_hash::FxHashSet<u64> = waiting.iter().map(|w| w.inode).collect();
        let (found, _) = owners::scan(
            &self.common.proc_root,
            Wanted::Inodes(&wanted),
            &self.common.owner_scan,
        );

        let cookies_waiting: HashSet<u64> = waiting.iter().filter_map(|w| w.cookie).collect();
        let mut rec = prov::read(maps, &cookies_waiting, &self.common.proc_root)?;
        let after = tracer.leak_counters()?;
        let detached = std::mem::take(&mut rec.detached);

        // Per process: CLOSE_WAIT in all, the leaked ones' cookies.
        #[derive(Default)]
        struct Tally {
            close_wait: u64,
            leaked: u64,
            cookies: Vec<u64>,
        }
        let mut by_pid: BTreeMap<u32, Tally> = BTreeMap::new();
        let age = self.leak_age_ms;
        for w in &waiting {
            // A socket shared by several processes (inherited) counts for the lowest pid.
            let Some(pid) = found.map.owners(w.inode).map(|o| o.pid).min() else {
                continue;
            };
            let t = by_pid.entry(pid).or_default();
            t.close_wait += 1;
            if w.idle_ms.is_some_and(|ms| u64::from(ms) >= age) {
                t.leaked += 1;
                t.cookies.extend(w.cookie);
            }
        }
        let mut detached_of: BTreeMap<u32, u64> = BTreeMap::new();
        for o in detached.values() {
            *detached_of.entry(o.pid).or_default() += 1;
        }
        for pid in detached_of.keys() {
            by_pid.entry(*pid).or_default();
        }

        let cookies: Vec<u64> = by_pid.values().flat_map(|t| t.cookies.clone()).collect();
        let p: Provenance = prov::join(
            maps,
            &rec,
            cookies,
            detached,
            &mut self.resolver,
            self.since_unix_ms,
            format!("tcpdoctor trace --leaks (pid {})", std::process::id()),
        );

        let mut report = LeakReport {
            at_unix_ms: now_unix_ms(),
            leak_age_ms: age,
            recording_since_unix_ms: self.since_unix_ms,
            table: table(&rec, before, after),
            ..LeakReport::default()
        };
        for (pid, t) in by_pid {
            let comm = found
                .process(pid)
                .map(|p| p.comm.clone())
                .or_else(|| read_comm(&self.common, pid))
                .unwrap_or_default();
            if !self.filter.pids.is_empty() && !self.filter.pids.contains(&pid) {
                continue;
            }
            if !self.filter.comms.is_empty() && !self.filter.comms.contains(&comm) {
                continue;
            }
            report.close_wait += t.close_wait;
            let detached = detached_of.get(&pid).copied().unwrap_or(0);
            let leaked = t.leaked + detached;
            if leaked == 0 {
                continue;
            }
            report.leaked += leaked;
            let origins: Vec<_> = t
                .cookies
                .iter()
                .filter_map(|c| p.origins.get(c))
                .chain(p.detached.values().filter(|o| o.pid == pid))
                .collect();
            let groups = group(pid, leaked, &origins, &p);
            report.processes.push(ProcessLeaks {
                pid,
                comm,
                close_wait: t.close_wait,
                leaked,
                detached,
                attributed: origins.len() as u64,
                groups,
            });
        }
        report
            .processes
            .sort_by(|a, b| b.leaked.cmp(&a.leaked).then(a.pid.cmp(&b.pid)));
        notices.extend(table_notices(&report.table, rec.skipped));
        Ok((report, notices))
    }
}

/// The table's state. Records come and go while it is read: evictions are counted as
/// added before the read, less removed by its end, less present, so a socket opened
/// or closed meanwhile never counts as pushed out.
fn table(rec: &Recorded, before: LeakCounters, c: LeakCounters) -> OriginTable {
    let bound = LeakCounters {
        added: before.added,
        ..c
    };
    OriginTable {
        present: rec.present,
        capacity: u64::from(rec.capacity),
        added: c.added,
        removed: c.removed,
        evicted: bound.evicted(rec.present),
        failed: c.failed,
        stacks_lost: c.stacks_lost,
        accept_unrecorded: c.accept_no_cookie,
    }
}

/// What the recording lost, as notices.
pub fn table_notices(t: &OriginTable, skipped: u64) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut say = |text: String| out.push(Notice::new(NoticeCode::TraceLosses, text));
    if t.evicted > 0 || t.failed > 0 {
        say(format!(
            "the origin table ({} entries) overflowed: {} records were pushed out and {} could not be stored, so some leaked sockets have no origin; raise --leak-table",
            t.capacity,
            t.evicted,
            t.failed
        ));
    }
    if t.stacks_lost > 0 {
        say(format!(
            "{} sockets were recorded without their stack (stack table full, a stack hash collision, or no user stack): they group by thread name",
            t.stacks_lost
        ));
    }
    if t.accept_unrecorded > 0 {
        say(format!(
            "{} accepted sockets were not recorded: they were queued before recording began",
            t.accept_unrecorded
        ));
    }
    if skipped > 0 {
        say(format!(
            "{skipped} origin records from the kernel could not be read and were skipped"
        ));
    }
    out
}

fn read_comm(common: &Common, pid: u32) -> Option<String> {
    std::fs::read_to_string(common.proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `tcpdoctor trace --leaks ... (pid N)`: the recorder's command line (bounded, made
/// printable) and pid.
fn recorder_label(proc_root: &std::path::Path, pid: u32) -> String {
    let p = crate::collect::procfs::process::read_process(&proc_root.join(pid.to_string()), pid, 0);
    let cmd = if p.cmdline.is_empty() {
        "tcpdoctor"
    } else {
        p.cmdline.as_str()
    };
    format!("{cmd} (pid {pid})")
}

/// `check`'s join: the CLOSE_WAIT sockets of every namespace of `host` (and the
/// detached descriptors of its processes) matched to the records of the recorders
/// running on this host, into each namespace's `provenance`. Without a recorder, or
/// without the privilege to read one, nothing changes (the finding then says how to
/// get provenance).
/// `stacks` keeps the stacks symbolized from one call to the next (`watch`, `serve`).
pub fn attach_to_host(
    host: &mut HostSnapshot,
    proc_root: &std::path::Path,
    stacks: &mut prov::StackCache,
) {
    let Ok(recorders) = find_recorders() else {
        return;
    };
    let close_wait: HashSet<u64> = host
        .namespaces
        .iter()
        .flat_map(|s| s.sockets.close_wait.iter().filter_map(|c| c.cookie))
        .collect();
    let mut resolver = Resolver::with_cache(std::mem::take(stacks));
    for r in recorders {
        let Ok(rec) = prov::read(&r.maps, &close_wait, proc_root) else {
            continue;
        };
        let detached = &rec.detached;
        let recorder = recorder_label(proc_root, r.pid);
        for snap in &mut host.namespaces {
            let cookies: HashSet<u64> = snap
                .sockets
                .close_wait
                .iter()
                .filter_map(|c| c.cookie)
                .filter(|c| rec.origins.contains_key(c))
                .collect();
            let inode = snap.netns.as_ref().map(|n| n.inode);
            let held: BTreeMap<u64, _> = detached
                .iter()
                .filter(|(_, o)| Some(o.netns) == inode && snap.processes.contains_key(&o.pid))
                .map(|(k, o)| (*k, o.clone()))
                .collect();
            if cookies.is_empty() && held.is_empty() {
                // Still say that a recording exists: the finding then tells that these
                // sockets predate it rather than how to start one.
                if snap.provenance.is_none() && !snap.sockets.close_wait.is_empty() {
                    snap.provenance = Some(Provenance {
                        recording_since_unix_ms: r.since_unix_ms,
                        recorder: recorder.clone(),
                        ..Provenance::default()
                    });
                }
                continue;
            }
            let p = prov::join(
                &r.maps,
                &rec,
                cookies,
                held,
                &mut resolver,
                r.since_unix_ms,
                recorder.clone(),
            );
            match &mut snap.provenance {
                Some(existing) if !existing.origins.is_empty() || !existing.detached.is_empty() => {
                    // Two recorders: the first one's stacks ids would clash; keep it.
                }
                slot => *slot = Some(p),
            }
        }
    }
    *stacks = resolver.into_cache();
}
