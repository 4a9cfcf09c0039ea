//! `tcpdoctor check`: gather a [`HostSnapshot`] of this host (every network namespace
//! when run as root), run the rules, return the report. Collection is in
//! [`super::collect`].

use crate::analyze;
use crate::model::{CheckReport, HostSnapshot};
use crate::settings::{CheckSettings, Common};

use super::collect::{collect_host, CounterHistory, Counters};
use super::netns;
use super::CmdError;

pub fn run(common: &Common, s: &CheckSettings) -> Result<CheckReport, CmdError> {
    let selection = netns::select(common, true)?;
    let host = collect_host(common, &selection, false, Counters::Interval(s.interval))?;
    let findings = analyze::run_host(&host, &s.thresholds);
    Ok(CheckReport {
        hostname: crate::collect::sysctl::hostname(&common.proc_root),
        host,
        findings,
    })
}

/// Repeated snapshots for long-running views (`watch`, `serve`): each one's counter
/// rates cover the time since the previous sample, so no sample waits. Namespaces are
/// looked up again for every sample: containers come and go.
#[derive(Debug, Default)]
pub struct Sampler {
    history: CounterHistory,
    by_process: bool,
    containers: netns::ContainerCache,
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

    /// Collects a snapshot of every selected namespace. The first sample's counter
    /// deltas are zero (nothing to compare).
    pub fn sample(&mut self, common: &Common) -> Result<HostSnapshot, CmdError> {
        let selection = netns::select_cached(common, true, &mut self.containers)?;
        collect_host(
            common,
            &selection,
            self.by_process,
            Counters::SincePrevious(&mut self.history),
        )
    }
}
