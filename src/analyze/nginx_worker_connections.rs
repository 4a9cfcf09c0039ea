//! Rule `nginx_worker_connections`: `worker_connections` against the descriptors a
//! worker may open. Every connection is a descriptor, and a proxied request holds two
//! (client and upstream), so a worker needs about twice worker_connections when it
//! proxies. The limit is `worker_rlimit_nofile` when set (the worker raises it itself),
//! else what the service gave it; for a running nginx the workers' real RLIMIT_NOFILE
//! (/proc/PID/limits) is the truth. Past it, accept() and connect() fail with EMFILE
//! ("Too many open files") before nginx reaches its own connection limit.

use serde_json::json;

use super::nginx_common::{
    at_json, configured, insert_after, insert_before, instance_json, reload_step, replace,
};
use super::Thresholds;
use crate::model::nginx::{NginxConfig, NginxInstance};
use crate::model::{Evidence, Finding, FixStep, Limit, Nature, Severity, Snapshot};

pub const ID: &str = "nginx_worker_connections";

/// nginx's default `worker_connections`.
pub const DEFAULT_WORKER_CONNECTIONS: u64 = 512;

/// The limit a worker has, and where it comes from.
fn worker_limit(
    s: &Snapshot,
    inst: &NginxInstance,
    cfg: &NginxConfig,
) -> Option<(u64, String, u64)> {
    // Running: the smallest soft limit among the workers, with their most open fds.
    let mut live: Option<(u64, u64)> = None;
    for pid in &inst.worker_pids {
        if let Some(p) = s.processes.get(pid) {
            if let Some(Limit::Value(v)) = p.nofile_soft {
                let (lim, fds) = live.unwrap_or((u64::MAX, 0));
                live = Some((lim.min(v), fds.max(p.open_fds)));
            }
        }
    }
    if let Some((lim, fds)) = live {
        return Some((
            lim,
            "the workers' RLIMIT_NOFILE (/proc/PID/limits)".into(),
            fds,
        ));
    }
    let r = cfg.worker_rlimit_nofile.as_ref()?;
    let v = r.value.trim().parse().ok()?;
    Some((v, format!("worker_rlimit_nofile ({})", r.at), 0))
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    for (inst, cfg) in configured(s) {
        let wc = cfg
            .worker_connections
            .as_ref()
            .and_then(|w| w.value.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_WORKER_CONNECTIONS);
        let proxies = cfg.proxied().next().is_some();
        let need = if proxies { wc * 2 } else { wc };
        let Some((limit, source, open)) = worker_limit(s, inst, cfg) else {
            continue;
        };
        if limit >= need {
            continue;
        }
        let near = limit > 0 && open as f64 * 100.0 / limit as f64 >= t.fd_warn_pct;
        let severity = if limit < wc || near {
            Severity::Warning
        } else {
            Severity::Info
        };
        let wc_at = cfg
            .worker_connections
            .as_ref()
            .map_or_else(|| "nginx's default".to_string(), |w| w.at.to_string());
        let mut f = Finding::new(
            ID,
            severity,
            if near { Nature::Live } else { Nature::Config },
            format!(
                "{}: worker_connections {wc} ({wc_at}) needs {need} descriptors per worker{}, but the limit is {limit} ({source})",
                inst.label(),
                if proxies { " when proxying (client + upstream)" } else { "" }
            ),
        );
        f.evidence.push(Evidence::new(
            "worker_connections",
            format!("{wc} ({wc_at})"),
        ));
        f.evidence.push(Evidence::new(
            "descriptor limit per worker",
            format!("{limit} ({source})"),
        ));
        if open > 0 {
            f.evidence.push(Evidence::new(
                "most descriptors open in one worker now",
                open,
            ));
        }
        f.why = "Each client connection is a descriptor, and proxying adds one for the upstream connection (plus files being served and logs). When a worker reaches its RLIMIT_NOFILE before worker_connections, accept() and connect() fail with EMFILE (\"Too many open files\" in the error log) and clients see refused or reset connections, while nginx believes it has room.".to_string();
        let value = need.div_ceil(1024) * 1024;
        let line = |indent: &str| format!("{indent}worker_rlimit_nofile {value};");
        let step = match (
            &cfg.worker_rlimit_nofile,
            &cfg.worker_processes,
            &cfg.events_at,
        ) {
            (Some(r), _, _) => replace(&r.at, &[line(r.at.indent())]),
            (None, Some(wp), _) => insert_after(&wp.at, &[line(wp.at.indent())]),
            // The main context: before `events {`.
            (None, None, Some(ev)) => insert_before(ev, &[line(ev.indent()), String::new()]),
            (None, None, None) => format!(
                "--- {f}\n+++ {f}\n@@ -1 +1 @@\n+worker_rlimit_nofile {value};\n",
                f = cfg.files.first().map_or("nginx.conf", String::as_str)
            ),
        };
        f.fix.push(FixStep::patch(
            format!("Let each worker open {value} descriptors (nginx raises its own limit to this at start, within fs.nr_open)"),
            step,
        ));
        f.fix.push(reload_step(inst));
        f.data = json!({
            "nginx": instance_json(inst),
            "worker_connections": wc,
            "worker_connections_at": cfg.worker_connections.as_ref().map(|w| at_json(&w.at)),
            "proxies": proxies,
            "needed": need,
            "limit": limit,
            "limit_source": source,
            "worker_rlimit_nofile": cfg.worker_rlimit_nofile.as_ref().map(|w| w.value.clone()),
            "max_open_fds": open,
        });
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::nginx_common::tests_support::{instance, snapshot_with};
    use crate::model::ProcessFacts;

    const CONF: &str = "worker_processes auto;\nevents {\n    worker_connections 768;\n}\nhttp { server { location / { proxy_pass http://127.0.0.1:1; } } }\n";

    fn worker(pid: u32, soft: u64, open: u64) -> ProcessFacts {
        ProcessFacts {
            pid,
            comm: "nginx".into(),
            uid: 33,
            cmdline: "nginx: worker process".into(),
            open_fds: open,
            nofile_soft: Some(Limit::Value(soft)),
            nofile_hard: Some(Limit::Value(524_288)),
            detached_tcp_fds: None,
        }
    }

    #[test]
    fn fires_when_the_workers_real_limit_is_below_what_proxying_needs() {
        // Debian's stock numbers: 768 connections, systemd's soft limit 1024.
        let mut s = snapshot_with(instance(Some(100), "nginx/1.22.1", CONF));
        s.processes.insert(101, worker(101, 1024, 40));
        s.processes.insert(102, worker(102, 1024, 900));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["needed"], 1536);
        assert_eq!(f[0].data["limit"], 1024);
        assert_eq!(f[0].data["max_open_fds"], 900);
        assert_eq!(
            f[0].severity,
            Severity::Warning,
            "900 of 1024 open is past fd_warn_pct"
        );
        assert!(
            f[0].fix[0]
                .mentions("@@ -1 +1,2 @@\n worker_processes auto;\n+worker_rlimit_nofile 2048;"),
            "{:?}",
            f[0].fix[0]
        );

        // Offline, worker_rlimit_nofile below worker_connections itself: warning.
        let low = CONF.replace(
            "worker_processes auto;\n",
            "worker_processes auto;\nworker_rlimit_nofile 500;\n",
        );
        let f = check(
            &snapshot_with(instance(None, "nginx/1.22.1", &low)),
            &Thresholds::default(),
        );
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].fix[0].mentions("-worker_rlimit_nofile 500;\n+worker_rlimit_nofile 2048;"));

        // Neither directive: added before `events {`, in the main context.
        let bare = CONF
            .replace("worker_processes auto;\nworker", "worker")
            .replace("worker_processes auto;\n", "worker_rlimit_nofile 500;\n");
        let f = check(
            &snapshot_with(instance(None, "nginx/1.22.1", &bare)),
            &Thresholds::default(),
        );
        assert!(
            f[0].fix[0].mentions("-worker_rlimit_nofile 500;"),
            "{:?}",
            f[0].fix[0]
        );
        let none = CONF.replace("worker_processes auto;\n", "");
        let mut s = snapshot_with(instance(Some(100), "nginx/1.22.1", &none));
        s.processes.insert(101, worker(101, 1024, 40));
        let f = check(&s, &Thresholds::default());
        assert!(
            f[0].fix[0].mentions("@@ -1 +1,3 @@\n+worker_rlimit_nofile 2048;\n+\n events {"),
            "{:?}",
            f[0].fix[0]
        );
    }

    #[test]
    fn does_not_fire_with_room_or_without_a_known_limit() {
        let mut s = snapshot_with(instance(Some(100), "nginx/1.22.1", CONF));
        s.processes.insert(101, worker(101, 65_536, 40));
        assert!(check(&s, &Thresholds::default()).is_empty());
        // Offline without worker_rlimit_nofile: the limit is the service's, unknown here.
        assert!(check(
            &snapshot_with(instance(None, "nginx/1.22.1", CONF)),
            &Thresholds::default()
        )
        .is_empty());
    }
}
