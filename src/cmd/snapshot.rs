//! `tcpdoctor snapshot -o FILE`: what `check` reads, collected exactly as `check`
//! collects it (the same namespaces, owner scan, two counter readings and CLOSE_WAIT
//! re-check), with every socket written down as the dumps yield it.

use std::sync::Arc;

use crate::collect::snapshot::writer::{Description, SnapshotWriter, Written};
use crate::settings::{CheckSettings, Common, SnapshotSettings};

use super::CmdError;

/// What was written.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub path: std::path::PathBuf,
    pub written: Written,
    pub hostname: String,
}

pub fn run(common: &Common, s: &SnapshotSettings) -> Result<SnapshotReport, CmdError> {
    let io = |source| CmdError::Write {
        path: s.output.clone(),
        source,
    };
    let writer = Arc::new(SnapshotWriter::create(&s.output).map_err(io)?);
    let check = CheckSettings {
        interval: s.interval,
        thresholds: crate::analyze::Thresholds::default(),
        verbose: false,
        emit_sysctl: false,
        json: false,
        trace: s.trace,
    };
    let collected = super::check::gather(common, &check, Some(writer.clone()))?;
    let nginx = collected
        .host
        .namespaces
        .iter()
        .flat_map(|n| &n.nginx)
        .map(|i| crate::collect::snapshot::nginx::record(&common.proc_root, i))
        .collect();
    let description = Description {
        hostname: &collected.hostname,
        host: &collected.host,
        owners: collected.owners.as_ref(),
        nginx,
    };
    // The collection is over: no tap is held elsewhere any more.
    let writer = Arc::try_unwrap(writer)
        .map_err(|_| io(std::io::Error::other("the socket writer is still in use")))?;
    let written = writer.finish(&description).map_err(io)?;
    Ok(SnapshotReport {
        path: s.output.clone(),
        written,
        hostname: collected.hostname,
    })
}
