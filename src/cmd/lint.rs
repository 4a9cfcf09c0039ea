//! `tcpdoctor lint nginx [FILE]`: the nginx rules on a configuration alone, without a
//! running process and without host evidence. Which configuration: FILE, else those of
//! the running masters (read as `check` reads them, but judged offline), else the path
//! compiled into the installed binary, else /etc/nginx/nginx.conf.

use std::path::{Path, PathBuf};

use crate::analyze;
use crate::collect::nginx;
use crate::model::nginx::{ConfigOrigin, NginxInstance};
use crate::model::{Finding, LintReport, Snapshot};
use crate::settings::{Common, LintSettings};

use super::CmdError;

pub fn run(common: &Common, s: &LintSettings) -> Result<LintReport, CmdError> {
    let mut notices = Vec::new();
    let installed = nginx::installed();
    let mut configs: Vec<NginxInstance> = match &s.file {
        Some(file) => {
            let file = absolute(file);
            let (binary, version) = match &installed {
                Some((b, info)) => (Some(b.clone()), info.version.clone()),
                None => (None, None),
            };
            vec![nginx::lint_instance(
                &file,
                ConfigOrigin::Given,
                version,
                binary,
            )]
        }
        None => {
            let (running, n) = nginx::discover(&common.proc_root);
            notices.extend(n);
            let mut seen: Vec<(String, String)> = Vec::new();
            let mut out = Vec::new();
            for mut inst in running {
                let key = (inst.root.clone(), inst.config_file.clone());
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                // Judged offline: the configuration, not the host.
                inst.master_pid = None;
                inst.worker_pids.clear();
                out.push(inst);
            }
            if out.is_empty() {
                let (file, origin, binary, version) = match &installed {
                    Some((b, info)) => (
                        PathBuf::from(info.conf_path()),
                        ConfigOrigin::CompiledIn,
                        Some(b.clone()),
                        info.version.clone(),
                    ),
                    None => (
                        PathBuf::from("/etc/nginx/nginx.conf"),
                        ConfigOrigin::Guessed,
                        None,
                        None,
                    ),
                };
                out.push(nginx::lint_instance(&file, origin, version, binary));
            }
            out
        }
    };
    if let Some(v) = &s.version {
        for c in &mut configs {
            c.version = Some(v.clone());
        }
    }
    let mut findings: Vec<Finding> = Vec::new();
    for c in &configs {
        let snap = Snapshot {
            nginx: vec![c.clone()],
            ..Snapshot::default()
        };
        for rule in analyze::RULES.iter().filter(|r| r.id.starts_with("nginx_")) {
            findings.extend((rule.check)(&snap, &s.thresholds));
        }
    }
    findings.sort_by_key(Finding::rank);
    Ok(LintReport {
        target: "nginx",
        configs,
        findings,
        notices,
    })
}

/// A relative FILE is relative to the working directory (as `nginx -c` with `-p .`).
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
