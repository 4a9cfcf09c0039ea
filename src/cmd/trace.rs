//! `tcpdoctor trace`, the data side: starts the tracer, tells it about listening sockets
//! that exist already, cuts the kernel's cumulative counts into intervals, names each
//! flow's namespace, applies the filters and keeps the run's totals. No printing and no
//! clock of its own beyond measuring intervals: the loop is `live::trace`.
//!
//! Other commands use [`TraceSession`] too: `check` can start one, wait its counter
//! interval, and take one [`FlowInterval`] with a row per (process, namespace,
//! destination or listening port, direction).

use crate::collect::trace::deltas::FlowDeltas;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::collect::netns as ns;
use crate::collect::owners::{self, Wanted};
use crate::collect::sockets::{self, SocketQuery};
use crate::collect::trace::{EventOptions, SeedListener, TraceOptions, Tracer};
use crate::model::{
    FlowCounts, FlowEvent, FlowFilter, FlowInterval, FlowKey, FlowRow, Notice, NoticeCode,
    StateSet, TcpState, TraceLosses, TraceSummary,
};
use crate::settings::{Common, NetnsChoice};

use super::netns::{self, ContainerCache, Purpose};
use super::CmdError;

/// Events taken from the ring buffer per call, at most.
const EVENTS_PER_TAKE: usize = 4096;

/// What a session is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionOptions {
    pub filter: FlowFilter,
    /// Raw events, at most this many per second in all.
    pub events_per_second: Option<u32>,
    /// Record who opens each socket (`trace --leaks`).
    pub leaks: Option<crate::collect::trace::LeakOptions>,
}

/// One run of the tracer.
pub struct TraceSession {
    tracer: Tracer,
    filter: FlowFilter,
    common: Common,
    names: BTreeMap<u64, String>,
    containers: ContainerCache,
    /// When the names were last looked up because of an unknown namespace.
    names_refreshed: Option<Instant>,
    started: Instant,
    last_read: Instant,
    /// Each kernel flow's counts at the last read.
    deltas: FlowDeltas,
    /// The whole run, per flow (after filters).
    run: BTreeMap<FlowKey, (String, FlowCounts)>,
    losses_at_start: TraceLosses,
    last_losses: TraceLosses,
    skipped_records: u64,
    pub notices: Vec<Notice>,
}

impl std::fmt::Debug for TraceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSession")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl TraceSession {
    /// Starts tracing. `common.netns` narrows the flows to one namespace (by default
    /// every namespace is traced: the kernel sees them all at once).
    pub fn start(common: &Common, options: &SessionOptions) -> Result<TraceSession, CmdError> {
        let mut filter = options.filter.clone();
        let mut notices = Vec::new();
        let everywhere = Common {
            netns: NetnsChoice::All,
            ..common.clone()
        };
        if !matches!(common.netns, NetnsChoice::Default | NetnsChoice::All) {
            let sel = netns::select(common, Purpose::Diagnosis)?;
            filter.netns = sel.targets.iter().map(|t| t.info.inode).collect();
        }
        let events = options.events_per_second.map(|per_second| EventOptions {
            per_second,
            // The kernel holds one value of each; several are filtered here.
            pid: single(&filter.pids),
            netns: single(&filter.netns),
            port: single(&filter.ports),
        });
        let mut tracer = Tracer::start(&TraceOptions {
            events,
            leaks: options.leaks,
            ..TraceOptions::default()
        })?;
        for d in &tracer.degraded {
            notices.push(Notice::new(NoticeCode::TraceDegraded, d.clone()));
        }
        if in_child_pid_namespace(&common.proc_root) {
            notices.push(Notice::new(
                NoticeCode::TraceDegraded,
                "tcpdoctor runs in a child pid namespace: the pids shown are those of the host's initial pid namespace, not the ones this namespace's /proc shows",
            ));
        }

        let mut containers = ContainerCache::default();
        let sel = netns::select_cached(&everywhere, Purpose::Diagnosis, &mut containers)?;
        let names = sel
            .targets
            .iter()
            .map(|t| (t.info.inode, t.info.name.clone()))
            .collect();
        let seeds = existing_listeners(&everywhere, &sel);
        let unfit = tracer.seed_listeners(&seeds);
        if unfit > 0 {
            notices.push(Notice::new(
                NoticeCode::TraceLosses,
                format!(
                    "{unfit} of {} listening sockets did not fit in the tracer's listener table: connections accepted on them before tracing may be counted as outgoing",
                    seeds.len()
                ),
            ));
        }
        notices.extend(sel.notices);

        let losses_at_start = tracer.losses()?;
        let now = Instant::now();
        Ok(TraceSession {
            tracer,
            filter,
            common: everywhere,
            names,
            containers,
            names_refreshed: None,
            started: now,
            last_read: now,
            deltas: FlowDeltas::default(),
            run: BTreeMap::new(),
            losses_at_start,
            last_losses: losses_at_start,
            skipped_records: 0,
            notices,
        })
    }

    /// The tracer (leak recording reads its maps).
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The settings the session runs with (every namespace) and its filter.
    pub fn scope(&self) -> (&Common, &FlowFilter) {
        (&self.common, &self.filter)
    }

    /// Time since tracing started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What happened since the previous call (or the start): one row per flow with
    /// new counts that passes the filters, biggest first.
    pub fn next_interval(&mut self) -> Result<FlowInterval, CmdError> {
        let now = Instant::now();
        let read = self.tracer.read_flows()?;
        self.skipped_records += read.skipped;
        let mut rows = Vec::new();
        for f in self.deltas.take(&mut self.tracer, read) {
            if !self.filter.matches_flow(&f.key, &f.comm) {
                continue;
            }
            rows.push((f.key, f.comm, f.counts));
        }

        let unknown = rows
            .iter()
            .any(|(k, _, _)| !self.names.contains_key(&k.netns));
        if unknown {
            self.refresh_names(now);
        }
        let mut totals = FlowCounts::default();
        let mut flows = Vec::with_capacity(rows.len());
        for (key, comm, counts) in rows {
            totals.add(&counts);
            let entry = self
                .run
                .entry(key)
                .or_insert_with(|| (comm.clone(), FlowCounts::default()));
            entry.1.add(&counts);
            flows.push(FlowRow {
                netns_name: self.name_of(key.netns),
                key,
                comm,
                counts,
            });
        }
        sort_rows(&mut flows);

        let losses = self.tracer.losses()?;
        let interval = FlowInterval {
            start_ms: self.last_read.duration_since(self.started).as_millis() as u64,
            duration_ms: now.duration_since(self.last_read).as_millis() as u64,
            flows,
            totals,
            losses: losses.since(&self.last_losses),
        };
        self.last_losses = losses;
        self.last_read = now;
        Ok(interval)
    }

    /// Waits up to `timeout` for raw events (false at once without `--events`).
    pub fn wait_events(&self, timeout: Duration) -> bool {
        self.tracer.wait_events(timeout)
    }

    /// Raw events waiting in the ring buffer that pass the filters, oldest first.
    pub fn take_events(&mut self) -> Vec<FlowEvent> {
        let batch = self.tracer.take_events(EVENTS_PER_TAKE);
        self.skipped_records += batch.skipped;
        batch
            .events
            .into_iter()
            .filter(|e| self.filter.matches_event(e))
            .collect()
    }

    /// Human name of a namespace (`net:[INODE]` when none is known).
    pub fn name_of(&self, inode: u64) -> String {
        self.names
            .get(&inode)
            .cloned()
            .unwrap_or_else(|| format!("net:[{inode}]"))
    }

    /// Whether flows from several namespaces may show up (rows then name theirs).
    pub fn several_namespaces(&self) -> bool {
        self.filter.netns.len() != 1
    }

    /// The whole run: every flow's counts since the start, the kernel's cost, and what
    /// was lost.
    pub fn summary(&mut self) -> Result<TraceSummary, CmdError> {
        let losses = self.tracer.losses()?;
        let mut totals = FlowCounts::default();
        let mut flows: Vec<FlowRow> = self
            .run
            .iter()
            .map(|(key, (comm, counts))| {
                totals.add(counts);
                FlowRow {
                    key: *key,
                    comm: comm.clone(),
                    netns_name: self.name_of(key.netns),
                    counts: *counts,
                }
            })
            .collect();
        sort_rows(&mut flows);
        let losses = losses.since(&self.losses_at_start);
        let mut notices = self.notices.clone();
        notices.extend(loss_notices(&losses, self.skipped_records));
        Ok(TraceSummary {
            flows: FlowInterval {
                start_ms: 0,
                duration_ms: self.started.elapsed().as_millis() as u64,
                flows,
                totals,
                losses,
            },
            programs: self.tracer.program_costs(),
            bpf_stats_enabled: bpf_stats_enabled(&self.common.proc_root),
            notices,
        })
    }

    /// Looks namespaces up again (a new container, a new `ip netns`), at most once per
    /// second.
    fn refresh_names(&mut self, now: Instant) {
        if self
            .names_refreshed
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.names_refreshed = Some(now);
        if let Ok(sel) =
            netns::select_cached(&self.common, Purpose::Diagnosis, &mut self.containers)
        {
            for t in sel.targets {
                self.names.insert(t.info.inode, t.info.name);
            }
        }
    }
}

/// The one value of a filter, when there is exactly one.
fn single<T: Copy>(values: &[T]) -> Option<T> {
    match values {
        [one] => Some(*one),
        _ => None,
    }
}

/// Biggest first: connections opened, failed and closed, then the key.
fn sort_rows(rows: &mut [FlowRow]) {
    let weight = |c: &FlowCounts| c.opened + c.connect_failures.total() + c.closed();
    rows.sort_by(|a, b| {
        weight(&b.counts)
            .cmp(&weight(&a.counts))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Sentences for what the tracer lost over the run.
pub fn loss_notices(l: &TraceLosses, skipped_records: u64) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut say = |text: String| out.push(Notice::new(NoticeCode::TraceLosses, text));
    if l.flows_full > 0 {
        say(format!(
            "{} counts found the tracer's flow table full (too many distinct processes and destinations): totals are low",
            l.flows_full
        ));
    }
    if l.missed_runs > 0 {
        say(format!(
            "the kernel skipped the tracer {} times (an event arrived while the same program ran on that CPU): counts are slightly low",
            l.missed_runs
        ));
    }
    if l.events_rate_limited > 0 {
        say(format!(
            "{} events were dropped by the --events-limit",
            l.events_rate_limited
        ));
    }
    if l.events_ring_full > 0 {
        say(format!(
            "{} events were dropped because they came faster than tcpdoctor read them",
            l.events_ring_full
        ));
    }
    if l.listeners_full > 0 {
        say(format!(
            "{} listening sockets found the tracer's listener table full",
            l.listeners_full
        ));
    }
    if skipped_records > 0 {
        say(format!(
            "{skipped_records} records from the kernel could not be read and were skipped"
        ));
    }
    out
}

/// Whether this process sees itself under more than one pid (`NSpid:` in its status
/// lists one per pid namespace level): the kernel side records initial-namespace pids.
fn in_child_pid_namespace(proc_root: &Path) -> bool {
    use crate::collect::{bounded, procfs::status};
    bounded::read(&proc_root.join("self/status"), bounded::SMALL)
        .ok()
        .and_then(|s| status::nspid(&s))
        .is_some_and(|pids| pids.len() > 1)
}

/// kernel.bpf_stats_enabled: whether the kernel measures BPF run time.
fn bpf_stats_enabled(proc_root: &Path) -> bool {
    std::fs::read_to_string(proc_root.join("sys/kernel/bpf_stats_enabled"))
        .is_ok_and(|v| v.trim() == "1")
}

/// Listening sockets of every namespace with their owners, to seed the tracer's
/// listener table. Best effort: a namespace that cannot be read is left out.
fn existing_listeners(common: &Common, sel: &netns::Selection) -> Vec<SeedListener> {
    let query = SocketQuery {
        states: [TcpState::Listen].into_iter().collect::<StateSet>(),
        ipv4: true,
        ipv6: true,
        tcp_info: false,
        source: common.source,
    };
    let found = ns::for_each(
        &sel.targets,
        &common.proc_root,
        common.threads.max(1),
        |_, roots| {
            let mut v: Vec<(u16, u64)> = Vec::new();
            let _ = sockets::stream(&query, &roots.net, |s| v.push((s.local.port, s.inode)));
            v
        },
    );
    let mut listeners: Vec<(u64, u16, u64)> = Vec::new();
    for (t, r) in sel.targets.iter().zip(found) {
        let Ok(v) = r else { continue };
        let inode = t.info.inode;
        listeners.extend(v.into_iter().map(|(port, sock)| (inode, port, sock)));
    }
    let wanted: rustc_hash::FxHashSet<u64> =
        listeners.iter().map(|l| l.2).filter(|i| *i != 0).collect();
    let (owners, _) = owners::scan(
        &common.proc_root,
        Wanted::Inodes(&wanted),
        &common.owner_scan,
    );
    let mut seen = HashSet::new();
    listeners
        .into_iter()
        .filter(|(netns, port, _)| seen.insert((*netns, *port)))
        .map(|(netns, port, sock)| {
            // A listener shared by several processes (a prefork server) goes to the
            // lowest pid, usually the one that opened it.
            let owner = owners.map.owners(sock).map(|o| o.pid).min();
            SeedListener {
                netns,
                port,
                pid: owner.unwrap_or(0),
                comm: owner
                    .and_then(|p| owners.process(p))
                    .map(|p| p.comm.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}
