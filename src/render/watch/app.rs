//! The state of `tcpdoctor watch`: what the last samples showed (bounded history), the
//! CLOSE_WAIT trends, and the viewer's choices (pause, sort, filter, selection, popups).
//! No terminal I/O and no clock: samples come in with their timestamp, keys as [`Key`],
//! so the whole UI is tested by feeding hand-made snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::analyze::trend::{CloseWaitTrend, PidTrend, TrendConfig};
use crate::analyze::util::closing_rate;
use crate::model::{Endpoint, Finding, Severity, Snapshot, Source, StateCounts, TcpState};

/// Samples of history kept for the sparklines (4 minutes at the default 2 s).
pub const HISTORY: usize = 120;

/// Rows kept per table after sorting by size; the filter searches these. Bounds the work
/// per sample on hosts with thousands of destinations.
const ROWS_KEPT: usize = 2_000;

/// The kernel counters whose rates are shown: (label, `/proc/net/{snmp,netstat}` key).
pub const RATES: [(&str, &str); 6] = [
    ("active opens", "Tcp.ActiveOpens"),
    ("passive opens", "Tcp.PassiveOpens"),
    ("listen overflows", "TcpExt.ListenOverflows"),
    ("TIME_WAIT overflows", "TcpExt.TCPTimeWaitOverflow"),
    ("resets sent", "Tcp.OutRsts"),
    ("estab. resets", "Tcp.EstabResets"),
];

/// A key press, as the app understands it (the run loop maps terminal events to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// Ctrl-C: raw mode turns it into a key instead of SIGINT.
    Interrupt,
}

/// What the process table is ordered by (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Most CLOSE_WAIT first (TIME_WAIT / ports: biggest first).
    CloseWait,
    /// Fastest CLOSE_WAIT growth first.
    Growth,
    /// By process name (TIME_WAIT / ports: by address).
    Name,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::CloseWait => SortKey::Growth,
            SortKey::Growth => SortKey::Name,
            SortKey::Name => SortKey::CloseWait,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::CloseWait => "count",
            SortKey::Growth => "growth",
            SortKey::Name => "name",
        }
    }
}

/// A popup over the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    None,
    Help,
    /// The explanation of one finding (refreshed when a new sample has the same rule).
    Finding {
        finding: Box<Finding>,
        scroll: u16,
    },
}

/// Fixed for the whole session.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    pub hostname: String,
    pub interval: Duration,
    /// Rows of the top-N tables at most (the screen may show fewer).
    pub top: usize,
    pub color: bool,
    pub trend: TrendConfig,
    /// Port use (% of the usable range) drawn as a warning and as critical: the
    /// `port_warn_pct` and `port_critical_pct` thresholds of the rules.
    pub port_warn_pct: f64,
    pub port_critical_pct: f64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        let t = crate::analyze::Thresholds::default();
        WatchConfig {
            hostname: String::new(),
            interval: Duration::from_secs(2),
            top: 10,
            color: true,
            trend: TrendConfig::default(),
            port_warn_pct: t.port_warn_pct,
            port_critical_pct: t.port_critical_pct,
        }
    }
}

/// One process holding CLOSE_WAIT sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    pub close_wait: u64,
    /// Longest time since the peer was last heard, over its CLOSE_WAIT sockets.
    pub oldest_idle_ms: Option<u64>,
    pub trend: Option<PidTrend>,
    /// Seconds until its descriptors reach the soft limit at the CLOSE_WAIT growth of
    /// its trend ([`crate::analyze::runway::descriptors`]); `None` when not growing or
    /// the limit is not known.
    pub fds_exhausted_in_s: Option<f64>,
}

impl ProcessRow {
    fn growth(&self) -> f64 {
        self.trend.as_ref().map_or(0.0, |t| t.growth_per_min)
    }
}

/// One traced flow in the churn panel: a process and the destination it opens
/// connections to (or the port it accepts them on), over the time since the previous
/// sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnRow {
    pub pid: u32,
    pub comm: String,
    /// `10.0.0.5:8080` (outgoing) or `:8080 in` (accepted on that port).
    pub peer: String,
    pub opened_per_s: f64,
    /// `local 100%`, `peer 98%`, `mixed 60% local`, or `-` when none ended.
    pub closer: String,
    /// Failed connect() calls, per second, and the commonest errno.
    pub failed: u64,
    pub failed_per_s: f64,
    pub failed_errno: Option<&'static str>,
    pub resets: u64,
}

impl ChurnRow {
    fn from_flow(f: &crate::model::NamespaceFlows, r: &crate::model::FlowRow) -> ChurnRow {
        let c = &r.counts;
        let closer = crate::render::trace::first_closer(c);
        ChurnRow {
            pid: r.key.pid,
            comm: if r.comm.is_empty() {
                "?".to_string()
            } else {
                r.comm.clone()
            },
            peer: match r.key.peer {
                crate::model::FlowPeer::Remote(e) => e.to_string(),
                crate::model::FlowPeer::ListeningPort(p) => format!(":{p} in"),
            },
            opened_per_s: f.rate(c.opened),
            closer,
            failed: c.connect_failures.total(),
            failed_per_s: f.rate(c.connect_failures.total()),
            failed_errno: c
                .connect_failures
                .named()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .max_by_key(|(_, n)| *n)
                .map(|(name, _)| name),
            resets: c.resets_sent + c.resets_received,
        }
    }
}

/// TIME_WAIT sockets of one destination (this host connected) or one local listening
/// port (this host served); each lives 60 s, so count / 60 is the closing rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWaitRow {
    /// `10.0.0.5:5432` for a destination, `:8080 served` for a listening port.
    pub label: String,
    pub count: u64,
    /// Connections closed per second, from the TIME_WAIT ages (the rate `check` gives:
    /// [`crate::analyze::util::closing_rate`]), in thousandths.
    pub per_s_milli: u64,
}

/// Ephemeral ports used towards one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRow {
    pub local_ip: IpAddr,
    pub remote: Endpoint,
    /// Ports connect() cannot pick now ([`crate::model::PortUse::unavailable`]):
    /// TIME_WAIT that tcp_tw_reuse may take over is not among them.
    pub unavailable: u64,
    pub time_wait: u64,
    /// Usable minus unavailable.
    pub headroom: u64,
    pub unavailable_pct: f64,
    pub who: String,
}

/// What the latest sample showed, digested for display.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub at_ms: u64,
    pub taken_at_unix_ms: u64,
    pub source: Option<Source>,
    pub total: StateCounts,
    pub counter_interval_ms: Option<u64>,
    pub owners_known: bool,
    pub processes: Vec<ProcessRow>,
    /// CLOSE_WAIT sockets with no known process (unaccepted, or owner not visible).
    pub unowned_close_wait: u64,
    pub time_wait: Vec<TimeWaitRow>,
    pub ports: Vec<PortRow>,
    pub usable_ports: u64,
    /// Per [`RATES`] entry; `None` on the first sample or when the counter is missing.
    pub rates: Vec<Option<f64>>,
    /// Traced flows, most connections first; `None` when connections are not traced.
    pub churn: Option<Vec<ChurnRow>>,
    /// What the churn rates cover.
    pub churn_interval_ms: Option<u64>,
    pub findings: Vec<Finding>,
    pub notices: usize,
}

/// The whole state of the live view.
#[derive(Debug, Clone)]
pub struct WatchApp {
    pub(super) config: WatchConfig,
    pub(super) states: VecDeque<StateCounts>,
    pub(super) rate_history: Vec<VecDeque<f64>>,
    trend: CloseWaitTrend,
    pub(super) view: Option<View>,
    pub(super) samples: u64,
    pub(super) paused: bool,
    /// (namespaces read, all on the host): see [`WatchApp::set_namespaces`].
    pub(super) namespaces: (usize, bool),
    /// See [`WatchApp::set_spacing`]; `None`: the configured interval.
    pub(super) spacing: Option<std::time::Duration>,
    /// Process names of the tracked trends, by pid.
    comms: BTreeMap<u32, String>,
    pub(super) sort: SortKey,
    pub(super) filter: String,
    pub(super) editing_filter: bool,
    pub(super) selected: usize,
    pub(super) overlay: Overlay,
    quit: bool,
    pub(super) error: Option<String>,
}

impl WatchApp {
    pub fn new(config: WatchConfig) -> WatchApp {
        WatchApp {
            trend: CloseWaitTrend::new(config.trend),
            config,
            states: VecDeque::with_capacity(HISTORY),
            rate_history: vec![VecDeque::with_capacity(HISTORY); RATES.len()],
            view: None,
            samples: 0,
            paused: false,
            namespaces: (1, false),
            spacing: None,
            comms: BTreeMap::new(),
            sort: SortKey::CloseWait,
            filter: String::new(),
            editing_filter: false,
            selected: 0,
            overlay: Overlay::None,
            quit: false,
            error: None,
        }
    }

    /// Takes in a sample collected at `at_ms` (a monotonic millisecond clock) with the
    /// findings `check` made of it. Ignored while paused; returns whether it was taken.
    /// The spacing of samples in effect: the interval, or longer when sampling would
    /// otherwise break its CPU budget (shown in the header).
    pub fn set_spacing(&mut self, spacing: std::time::Duration) {
        self.spacing = Some(spacing);
    }

    /// How many network namespaces the samples cover, and whether that is every one on
    /// the host; shown in the header when more than one.
    pub fn set_namespaces(&mut self, count: usize, all: bool) {
        self.namespaces = (count, all);
    }

    pub fn ingest(&mut self, at_ms: u64, snap: &Snapshot, mut findings: Vec<Finding>) -> bool {
        if self.paused {
            return false;
        }
        self.samples += 1;
        self.error = None;
        let total = snap.summary.total();
        push_bounded(&mut self.states, total);

        // CLOSE_WAIT per process: one pass over the CLOSE_WAIT sockets the digest holds.
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        let mut oldest: BTreeMap<u32, u64> = BTreeMap::new();
        let mut unowned = 0;
        for cw in &snap.sockets.close_wait {
            match cw.owner {
                Some(o) => {
                    *counts.entry(o.pid).or_default() += 1;
                    if let Some(idle) = cw.idle_ms {
                        let e = oldest.entry(o.pid).or_default();
                        *e = (*e).max(u64::from(idle));
                    }
                }
                None => unowned += 1,
            }
        }
        self.trend
            .observe(at_ms, &counts, |pid| snap.processes.contains_key(&pid));
        // The trend is evidence one snapshot lacks: CLOSE_WAIT a process has not closed
        // yet is a leak once its count keeps rising.
        crate::analyze::trend::confirm_leaks(&mut findings, &self.trend);
        // Names of every tracked pid, also once its CLOSE_WAIT count fell to zero.
        let tracked: Vec<u32> = self.trend.trends().iter().map(|t| t.pid).collect();
        self.comms.retain(|pid, _| tracked.contains(pid));
        for pid in tracked {
            if let Some(p) = snap.process(pid) {
                self.comms.insert(pid, p.comm.clone());
            }
        }
        let mut processes: Vec<ProcessRow> = counts
            .iter()
            .map(|(pid, n)| {
                let trend = self.trend.get(*pid);
                // A confirmed leak grows its descriptors as fast as its CLOSE_WAIT.
                let fds_exhausted_in_s = trend
                    .as_ref()
                    .filter(|t| t.confirmed_leak)
                    .and_then(|t| {
                        let p = snap.process(*pid)?;
                        let limit = p.nofile_soft.and_then(|l| l.value())?;
                        crate::analyze::runway::descriptors(
                            p.open_fds,
                            limit,
                            t.growth_per_min / 60.0,
                            60_000,
                        )
                    })
                    .map(|r| r.exhausted_in_s);
                ProcessRow {
                    pid: *pid,
                    comm: snap
                        .process(*pid)
                        .map_or_else(|| "?".to_string(), |p| p.comm.clone()),
                    close_wait: *n,
                    oldest_idle_ms: oldest.get(pid).copied(),
                    trend,
                    fds_exhausted_in_s,
                }
            })
            .collect();
        processes.sort_by(|a, b| b.close_wait.cmp(&a.close_wait).then(a.pid.cmp(&b.pid)));
        processes.truncate(ROWS_KEPT);

        let tw = &snap.sockets.time_wait;
        let milli = |count: u64, ages: Option<&crate::model::TimeWaitAges>| {
            let r = closing_rate(snap, count, &ages.copied().unwrap_or_default());
            (r.per_s * 1000.0).round() as u64
        };
        let mut time_wait: Vec<TimeWaitRow> = tw
            .by_destination
            .iter()
            .map(|(ep, n)| TimeWaitRow {
                label: ep.to_string(),
                count: *n,
                per_s_milli: milli(*n, tw.ages_by_destination.get(ep)),
            })
            .chain(tw.by_listen_port.iter().map(|(port, n)| TimeWaitRow {
                label: format!(":{port} served"),
                count: *n,
                per_s_milli: milli(*n, tw.ages_by_served_port.get(port)),
            }))
            .collect();
        time_wait.sort_by(|a, b| b.count.cmp(&a.count).then(a.label.cmp(&b.label)));
        time_wait.truncate(ROWS_KEPT);

        // Each destination against its own namespace's range; tightest first.
        let mut ports: Vec<PortRow> = snap
            .sockets
            .port_use
            .iter()
            .map(|p| {
                let usable = p.usable;
                let unavailable = p.unavailable();
                PortRow {
                    local_ip: p.local_ip,
                    remote: p.remote,
                    unavailable,
                    time_wait: p.counts.get(TcpState::TimeWait),
                    headroom: p.headroom(),
                    unavailable_pct: if usable == 0 {
                        100.0
                    } else {
                        unavailable as f64 * 100.0 / usable as f64
                    },
                    who: p
                        .sample_owner
                        .and_then(|o| snap.process(o.pid))
                        .map(|p| p.comm.clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        ports.sort_by(|a, b| {
            a.headroom
                .cmp(&b.headroom)
                .then(b.unavailable.cmp(&a.unavailable))
                .then((a.local_ip, a.remote).cmp(&(b.local_ip, b.remote)))
        });
        ports.truncate(ROWS_KEPT);

        let churn = snap.flows.as_ref().map(|f| {
            let mut rows: Vec<ChurnRow> =
                f.flows.iter().map(|r| ChurnRow::from_flow(f, r)).collect();
            // Most connect() calls first, failed ones included: a process that cannot
            // get a port is news.
            rows.sort_by(|a, b| {
                (b.opened_per_s + b.failed_per_s)
                    .total_cmp(&(a.opened_per_s + a.failed_per_s))
                    .then(b.failed.cmp(&a.failed))
                    .then(a.pid.cmp(&b.pid))
                    .then(a.peer.cmp(&b.peer))
            });
            rows.truncate(ROWS_KEPT);
            rows
        });

        let rates: Vec<Option<f64>> = RATES
            .iter()
            .map(|(_, key)| snap.counters.as_ref().and_then(|c| c.rate(key)))
            .collect();
        for (hist, r) in self.rate_history.iter_mut().zip(&rates) {
            push_bounded(hist, r.unwrap_or(0.0).max(0.0));
        }

        // An open explanation follows its finding: the same title, or the only finding of
        // the same rule (titles carry counts that change). Otherwise the old text stays.
        if let Overlay::Finding { finding, .. } = &mut self.overlay {
            let same_rule: Vec<&Finding> = findings
                .iter()
                .filter(|f| f.rule_id == finding.rule_id)
                .collect();
            let newer =
                same_rule
                    .iter()
                    .find(|f| f.title == finding.title)
                    .or(if same_rule.len() == 1 {
                        same_rule.first()
                    } else {
                        None
                    });
            if let Some(f) = newer {
                **finding = (*f).clone();
            }
        }
        self.selected = self.selected.min(findings.len().saturating_sub(1));
        self.view = Some(View {
            at_ms,
            taken_at_unix_ms: snap.taken_at_unix_ms,
            source: snap.source,
            total,
            counter_interval_ms: snap
                .counters
                .as_ref()
                .map(|c| c.interval_ms)
                .filter(|ms| *ms > 0),
            owners_known: snap.owners_known,
            processes,
            unowned_close_wait: unowned,
            time_wait,
            ports,
            usable_ports: snap.ephemeral_ports().usable(),
            rates,
            churn_interval_ms: snap.flows.as_ref().map(|f| f.duration_ms),
            churn,
            findings,
            notices: snap.missing.len(),
        });
        true
    }

    /// A sample that could not be taken: shown in the footer until the next one.
    pub fn record_error(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }

    pub fn handle_key(&mut self, key: Key) {
        if key == Key::Interrupt {
            self.quit = true;
            return;
        }
        if self.editing_filter {
            match key {
                Key::Char(c) if !c.is_control() => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing_filter = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing_filter = false;
                }
                _ => {}
            }
            return;
        }
        match &mut self.overlay {
            Overlay::Finding { scroll, .. } => {
                match key {
                    Key::Up | Key::Char('k') => *scroll = scroll.saturating_sub(1),
                    Key::Down | Key::Char('j') => *scroll = scroll.saturating_add(1),
                    Key::PageUp => *scroll = scroll.saturating_sub(10),
                    Key::PageDown => *scroll = scroll.saturating_add(10),
                    Key::Home => *scroll = 0,
                    Key::Esc | Key::Enter => self.overlay = Overlay::None,
                    Key::Char('q') => self.quit = true,
                    Key::Char('p') => self.paused = !self.paused,
                    _ => {}
                }
                return;
            }
            Overlay::Help => {
                match key {
                    Key::Char('q') => self.quit = true,
                    Key::Char('p') => self.paused = !self.paused,
                    _ => self.overlay = Overlay::None,
                }
                return;
            }
            Overlay::None => {}
        }
        let findings = self.view.as_ref().map_or(0, |v| v.findings.len());
        let last = findings.saturating_sub(1);
        match key {
            Key::Char('q') => self.quit = true,
            Key::Char('p') => self.paused = !self.paused,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => self.editing_filter = true,
            Key::Char('?') | Key::Char('h') => self.overlay = Overlay::Help,
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => self.selected = (self.selected + 1).min(last),
            Key::PageUp => self.selected = self.selected.saturating_sub(5),
            Key::PageDown => self.selected = (self.selected + 5).min(last),
            Key::Home => self.selected = 0,
            Key::End => self.selected = last,
            Key::Enter => {
                if let Some(f) = self
                    .view
                    .as_ref()
                    .and_then(|v| v.findings.get(self.selected))
                {
                    self.overlay = Overlay::Finding {
                        finding: Box::new(f.clone()),
                        scroll: 0,
                    };
                }
            }
            Key::Esc => self.filter.clear(),
            _ => {}
        }
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn sort(&self) -> SortKey {
        self.sort
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn is_editing_filter(&self) -> bool {
        self.editing_filter
    }

    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// Samples taken in (paused ones excluded).
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    /// Index of the selected finding.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// The name of a process whose CLOSE_WAIT trend is tracked.
    pub fn comm(&self, pid: u32) -> Option<&str> {
        self.comms.get(&pid).map(String::as_str)
    }

    /// Every tracked CLOSE_WAIT trend, pid order.
    pub fn trends(&self) -> Vec<PidTrend> {
        self.trend.trends()
    }

    /// Process rows that pass the filter, in the chosen order.
    pub fn visible_processes(&self) -> Vec<&ProcessRow> {
        let Some(v) = &self.view else {
            return Vec::new();
        };
        let mut rows: Vec<&ProcessRow> = v
            .processes
            .iter()
            .filter(|r| self.matches(&r.comm) || self.matches(&r.pid.to_string()))
            .collect();
        match self.sort {
            SortKey::CloseWait => {}
            SortKey::Growth => rows.sort_by(|a, b| {
                b.growth()
                    .total_cmp(&a.growth())
                    .then(b.close_wait.cmp(&a.close_wait))
                    .then(a.pid.cmp(&b.pid))
            }),
            SortKey::Name => rows.sort_by(|a, b| a.comm.cmp(&b.comm).then(a.pid.cmp(&b.pid))),
        }
        rows
    }

    /// TIME_WAIT rows that pass the filter, in the chosen order.
    pub fn visible_time_wait(&self) -> Vec<&TimeWaitRow> {
        let Some(v) = &self.view else {
            return Vec::new();
        };
        let mut rows: Vec<&TimeWaitRow> = v
            .time_wait
            .iter()
            .filter(|r| self.matches(&r.label))
            .collect();
        if self.sort == SortKey::Name {
            rows.sort_by(|a, b| a.label.cmp(&b.label));
        }
        rows
    }

    /// Destinations by ephemeral ports used that pass the filter, in the chosen order.
    pub fn visible_ports(&self) -> Vec<&PortRow> {
        let Some(v) = &self.view else {
            return Vec::new();
        };
        let mut rows: Vec<&PortRow> = v
            .ports
            .iter()
            .filter(|r| {
                self.matches(&r.remote.to_string())
                    || self.matches(&r.local_ip.to_string())
                    || self.matches(&r.who)
            })
            .collect();
        if self.sort == SortKey::Name {
            rows.sort_by(|a, b| a.remote.cmp(&b.remote).then(a.local_ip.cmp(&b.local_ip)));
        }
        rows
    }

    /// Churn rows (traced flows) that pass the filter, in the chosen order; `None` when
    /// connections are not traced.
    pub fn visible_churn(&self) -> Option<Vec<&ChurnRow>> {
        let rows = self.view.as_ref()?.churn.as_ref()?;
        let mut rows: Vec<&ChurnRow> = rows
            .iter()
            .filter(|r| {
                self.matches(&r.comm) || self.matches(&r.pid.to_string()) || self.matches(&r.peer)
            })
            .collect();
        if self.sort == SortKey::Name {
            rows.sort_by(|a, b| a.comm.cmp(&b.comm).then(a.peer.cmp(&b.peer)));
        }
        Some(rows)
    }

    /// Case-insensitive substring match against the filter (an empty filter matches).
    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// Findings per severity in the latest sample: (critical, warning, info).
    pub fn finding_counts(&self) -> (usize, usize, usize) {
        let Some(v) = &self.view else {
            return (0, 0, 0);
        };
        let n = |s: Severity| v.findings.iter().filter(|f| f.severity == s).count();
        (
            n(Severity::Critical),
            n(Severity::Warning),
            n(Severity::Info),
        )
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortUse, TimeWaitAges};

    #[test]
    fn time_wait_and_port_panels_show_the_rates_and_ports_check_judges() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let dst = Endpoint::new(lo, 5001);
        // 800 TIME_WAIT made over the last 2 s (400/s), 400 of them under 1 s old.
        let mut ages = TimeWaitAges::default();
        for i in 0..800u64 {
            ages.add(Some(i * 2000 / 800), 1000);
        }
        let mut snap = Snapshot::default();
        let tw = &mut snap.sockets.time_wait;
        tw.by_destination.insert(dst, 800);
        tw.ages_by_destination.insert(dst, ages);
        tw.by_listen_port.insert(8080, 600);
        let mut counts = StateCounts::default();
        counts.0[TcpState::TimeWait.index()] = 800;
        counts.0[TcpState::Established.index()] = 10;
        snap.sockets.port_use.push(PortUse {
            local_ip: lo,
            remote: dst,
            counts,
            sample_owner: None,
            usable: 2000,
            time_wait_ages: ages,
            tw_reuse: true,
        });
        let mut app = WatchApp::new(WatchConfig::default());
        app.ingest(0, &snap, Vec::new());
        let rows = app.visible_time_wait();
        // From the ages: 400/s, not 800 / 60 s.
        assert_eq!(
            (rows[0].label.as_str(), rows[0].per_s_milli),
            ("127.0.0.1:5001", 400_000)
        );
        // No ages for the served port: its count over 60 s.
        assert_eq!(
            (rows[1].label.as_str(), rows[1].per_s_milli),
            (":8080 served", 10_000)
        );
        let ports = app.visible_ports();
        // 10 open + 400 not yet reusable; the 400 older TIME_WAIT ports are free.
        assert_eq!((ports[0].unavailable, ports[0].headroom), (410, 1590));
        assert_eq!(ports[0].unavailable_pct, 20.5);
    }
}
