//! `tcpdoctor check`: gather a [`HostSnapshot`] of this host (every network namespace
//! when run as root from the host's own), read it again `--interval` later for counter
//! rates and the CLOSE_WAIT re-check, run the rules, return the report. The readings
//! are `collect::host`'s; this file decides when they happen and what the rates are.
//!
//! When it can (root, BPF), `check` traces connections from just before the first
//! reading to the second ([`FlowTracing`]), so the rules see who opened, closed and
//! failed connections during the interval. When it cannot, one notice says so and
//! nothing else changes.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::analyze;
use crate::collect::flows::{self, FlowTracing};
use crate::collect::host::{self, Collected, HostOptions};
use crate::collect::namespace::CounterReading;
use crate::model::{CheckReport, CounterSample, HostSnapshot};
use crate::settings::{CheckSettings, Common};

use super::netns::{self, Purpose};
use super::CmdError;

/// How `check`, `watch` and `serve` collect, from the common settings.
fn host_options(common: &Common, by_process: bool, detached_fds: bool) -> HostOptions {
    HostOptions {
        proc_root: common.proc_root.clone(),
        replay: common.replay,
        source: common.source,
        threads: common.threads.max(1),
        owner_scan: common.owner_scan,
        by_process,
        detached_fds,
        tap: None,
        keep_owners: false,
    }
}

pub fn run(common: &Common, s: &CheckSettings) -> Result<CheckReport, CmdError> {
    if !common.from.is_empty() {
        // A recording (snapshot or imported text): the same rules on what it holds.
        let mut rec = super::from::open(common)?;
        let host = super::from::host(&mut rec, common, Purpose::Diagnosis, false)?;
        let findings = analyze::run_host(&host, &s.thresholds);
        return Ok(CheckReport {
            hostname: rec.hostname,
            host,
            findings,
        });
    }
    let Collected { host, hostname, .. } = gather(common, s, None)?;
    let findings = analyze::run_host(&host, &s.thresholds);
    Ok(CheckReport {
        hostname,
        host,
        findings,
    })
}

/// What `check` reads of this host, `--interval` apart; `tap` also gets every socket
/// read, and then the owner map is kept in [`Collected::owners`] (`snapshot`).
pub(super) fn gather(
    common: &Common,
    s: &CheckSettings,
    tap: Option<std::sync::Arc<dyn crate::collect::namespace::SocketTap>>,
) -> Result<Collected, CmdError> {
    let selection = netns::select(common, Purpose::Diagnosis)?;
    let mut opts = host_options(common, false, true);
    opts.keep_owners = tap.is_some();
    opts.tap = tap;
    // Attached before the first reading, read at the second: the tracer covers the
    // counter interval. Without an interval (or on a capture) there is nothing to trace.
    let mut tracing = (s.trace && !common.replay && !s.interval.is_zero()).then(FlowTracing::start);
    let started = Instant::now();
    let mut collected = host::collect(&selection.targets, selection.all, selection.notices, &opts)?;
    match &mut tracing {
        Some(Ok(t)) => t.seed(&collected.host),
        Some(Err(e)) => collected.host.missing.push(flows::unavailable_notice(e)),
        None => {}
    }
    // nginx masters in every namespace and their configuration (issue 12), read while
    // the counter interval runs.
    let (instances, notices) = crate::collect::nginx::discover(&common.proc_root);
    crate::collect::nginx::attach(&mut collected.host, instances, notices);
    // The host's configuration files (issue 12): the sysctl files applied at boot and
    // where each process's open-files limit is set. A standalone collector:
    // collect::limits_source::attach_host_config.
    crate::collect::limits_source::attach_host_config(&mut collected.host, &common.proc_root);
    // A capture is one reading: reading its files again after a wait would only give
    // rates of zero. Its notice says so.
    if !common.replay {
        // The second reading `interval` after the collection started; a collection
        // that took longer waits no more.
        if let Some(rest) = s.interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        let second = host::read_again(&selection.targets, &opts, &mut collected);
        if let Some(Ok(t)) = &mut tracing {
            t.attach(&mut collected.host);
        }
        // Detached: the tracer stops at the second reading.
        drop(tracing);
        rates_between_readings(&mut collected, &second);
        // Where the CLOSE_WAIT sockets were opened, when a recorder (serve, watch,
        // trace --leaks) runs on this host.
        if s.trace && has_close_wait(&collected.host) {
            super::leaks::attach_to_host(
                &mut collected.host,
                &common.proc_root,
                &mut Default::default(),
            );
        }
    }
    Ok(collected)
}

fn has_close_wait(host: &HostSnapshot) -> bool {
    host.namespaces
        .iter()
        .any(|s| !s.sockets.close_wait.is_empty())
}

/// Each namespace's counters over its own interval: the ones read late in a big run
/// had their first reading later than the first namespace's.
fn rates_between_readings(c: &mut Collected, second: &BTreeMap<u64, CounterReading>) {
    for snap in &mut c.host.namespaces {
        let Some(inode) = snap.netns.as_ref().map(|n| n.inode) else {
            continue;
        };
        let first = c.readings.get(&inode).and_then(|r| r.counters.as_ref());
        if let (Some(first), Some(second)) = (first, second.get(&inode)) {
            snap.counters = Some(CounterSample {
                before: first.values.clone(),
                after: second.values.clone(),
                interval_ms: second.at.saturating_duration_since(first.at).as_millis() as u64,
            });
        }
    }
}

/// The last counter reading of each namespace, by inode, kept between samples.
pub type CounterHistory = BTreeMap<u64, CounterReading>;

/// Repeated snapshots for long-running views (`watch`, `serve`): each one's counter
/// rates cover the time since the previous sample, so no sample waits. Namespaces are
/// looked up again for every sample: containers come and go.
#[derive(Debug, Default)]
pub struct Sampler {
    history: CounterHistory,
    by_process: bool,
    containers: netns::ContainerCache,
    tracing: Tracing,
    /// Stacks of leaked sockets symbolized at earlier samples.
    stacks: crate::collect::provenance::StackCache,
}

/// The tracer of a [`Sampler`].
#[derive(Debug, Default)]
enum Tracing {
    #[default]
    Off,
    /// Started at the first sample.
    Wanted,
    On(Box<FlowTracing>),
    /// It could not start: this notice goes with every sample.
    Unavailable(crate::model::Notice),
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

    /// Keep the connection tracer attached: each sample's namespaces get the flows
    /// counted since the previous sample (`Snapshot::flows`), and it records who opens
    /// each socket (leak provenance: `Snapshot::provenance`, and `check` run meanwhile
    /// finds the recording). It starts with the first
    /// sample; when it cannot, every sample carries a `trace_unavailable` notice.
    pub fn with_tracing(mut self) -> Sampler {
        self.tracing = Tracing::Wanted;
        self
    }

    /// Collects a snapshot of every selected namespace. The first sample's counter
    /// deltas are zero (nothing to compare), and so are a replayed capture's.
    pub fn sample(&mut self, common: &Common) -> Result<HostSnapshot, CmdError> {
        let selection = netns::select_cached(common, Purpose::Diagnosis, &mut self.containers)?;
        let opts = host_options(common, self.by_process, false);
        if matches!(self.tracing, Tracing::Wanted) {
            // A replayed capture is not traced: nothing there happens now.
            self.tracing = if common.replay {
                Tracing::Off
            } else {
                match FlowTracing::start_recording() {
                    Ok(t) => Tracing::On(Box::new(t)),
                    Err(e) => Tracing::Unavailable(flows::unavailable_notice(&e)),
                }
            };
        }
        let mut collected =
            host::collect(&selection.targets, selection.all, selection.notices, &opts)?;
        if !common.replay {
            self.rates_since_previous(&mut collected);
        }
        match &mut self.tracing {
            Tracing::On(t) => {
                t.seed(&collected.host);
                t.attach(&mut collected.host);
                // This sampler records: its own recording names where the CLOSE_WAIT
                // sockets were opened (and any other recorder's, for older ones).
                if has_close_wait(&collected.host) {
                    super::leaks::attach_to_host(
                        &mut collected.host,
                        &common.proc_root,
                        &mut self.stacks,
                    );
                }
            }
            Tracing::Unavailable(n) => collected.host.missing.push(n.clone()),
            Tracing::Off | Tracing::Wanted => {}
        }
        Ok(collected.host)
    }

    fn rates_since_previous(&mut self, c: &mut Collected) {
        for snap in &mut c.host.namespaces {
            let Some(inode) = snap.netns.as_ref().map(|n| n.inode) else {
                continue;
            };
            let Some(now) = c.readings.get(&inode).and_then(|r| r.counters.clone()) else {
                continue;
            };
            if let Some(before) = self.history.get(&inode) {
                snap.counters = Some(CounterSample {
                    before: before.values.clone(),
                    after: now.values.clone(),
                    interval_ms: now.at.saturating_duration_since(before.at).as_millis() as u64,
                });
            }
            self.history.insert(inode, now);
        }
        // Forget namespaces that are gone.
        self.history
            .retain(|inode, _| c.readings.contains_key(inode));
    }
}
