//! What the nginx rules share (not a rule): the host evidence of connection churn
//! toward an upstream, how the version decides the defaults, and diffs for the fixes.

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{closing_rate, pct};
use super::Thresholds;
use crate::model::nginx::{Location, NginxConfig, NginxInstance, ProxyHeader, SourceRef};
use crate::model::{Endpoint, FixStep, Severity, Snapshot, TcpState};

/// Connections opened per second by a process toward a destination, measured by a
/// tracer (`(pid, destination) -> per second`). Empty until one fills it: the rules
/// then judge churn from TIME_WAIT alone.
pub type OpenRates = BTreeMap<(u32, Endpoint), f64>;

/// The rates the tracer measured in `s` (outgoing flows of [`Snapshot::flows`]); empty
/// when connections were not traced.
pub fn open_rates(s: &Snapshot) -> OpenRates {
    let mut out = OpenRates::new();
    let Some(f) = &s.flows else {
        return out;
    };
    for r in &f.flows {
        if let crate::model::FlowPeer::Remote(e) = r.key.peer {
            *out.entry((r.key.pid, Endpoint::new(e.canonical_ip(), e.port)))
                .or_default() += f.rate(r.counts.opened);
        }
    }
    out
}

/// How the version decides the defaults.
pub struct Defaults {
    /// Upstream keep-alive, `proxy_http_version 1.1` and no `Connection: close` by
    /// default (nginx 1.29.7+).
    pub keepalive: bool,
    /// The version is known (else the old defaults are assumed and the text says so).
    pub known: bool,
    /// For evidence: `nginx/1.22.1: upstream keep-alive is off by default before 1.29.7`.
    pub note: String,
}

pub fn defaults(inst: &NginxInstance) -> Defaults {
    match inst.version.as_ref() {
        Some(v) => match v.keepalive_by_default() {
            Some(true) => Defaults {
                keepalive: true,
                known: true,
                note: format!("{}: keep-alive to upstream blocks by default (1.29.7+: keepalive 32, proxy_http_version 1.1, no Connection: close)", v.banner),
            },
            Some(false) => Defaults {
                keepalive: false,
                known: true,
                note: format!("{}: before 1.29.7, upstream keep-alive is off unless configured (proxy_http_version 1.0 and Connection: close by default)", v.banner),
            },
            None => Defaults {
                keepalive: false,
                known: false,
                note: format!("{}: nginx core version unknown; judged by the defaults before nginx 1.29.7 (no upstream keep-alive)", v.banner),
            },
        },
        None => Defaults {
            keepalive: false,
            known: false,
            note: "version unknown (give --nginx-version to lint); judged by the defaults before nginx 1.29.7 (no upstream keep-alive)".to_string(),
        },
    }
}

/// What the host shows toward some upstream endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Churn {
    /// Whether this is a running nginx (host evidence exists at all).
    pub live: bool,
    /// TIME_WAIT on this host's ephemeral ports toward the endpoints: nginx closed
    /// first.
    pub time_wait_client: u64,
    /// TIME_WAIT on an endpoint's listening port here (the backend runs on this host
    /// and closed first).
    pub time_wait_server: u64,
    /// New connections per second implied by that TIME_WAIT (each lasts 60 s).
    pub per_s: f64,
    /// Connections per second nginx opened toward them, when a tracer measured it.
    pub traced_per_s: Option<f64>,
    /// The tightest destination: local ports in use toward it and usable.
    pub ports_used: u64,
    pub ports_usable: u64,
    pub port_pct: f64,
    /// One of nginx's processes owns connections toward them now.
    pub owned_by_nginx: bool,
    /// Per endpoint: (endpoint, TIME_WAIT toward it).
    pub per_destination: Vec<(Endpoint, u64)>,
}

impl Churn {
    pub fn time_wait(&self) -> u64 {
        self.time_wait_client + self.time_wait_server
    }

    /// Connections per second, the traced rate when there is one.
    pub fn rate(&self) -> f64 {
        self.traced_per_s.unwrap_or(self.per_s)
    }

    /// Something is churning now.
    pub fn seen(&self) -> bool {
        self.time_wait() > 0 || self.traced_per_s.is_some_and(|r| r > 0.0)
    }

    /// The severity the damage earns: critical when the ports toward a destination run
    /// out, warning when connections churn now (or offline, where nothing can be
    /// seen: every request costs a connection), info for a running nginx that is idle
    /// toward it.
    pub fn severity(&self, t: &Thresholds) -> Severity {
        if !self.live {
            Severity::Warning
        } else if self.port_pct >= t.port_critical_pct {
            Severity::Critical
        } else if self.seen() {
            Severity::Warning
        } else {
            Severity::Info
        }
    }

    /// `: 1200 TIME_WAIT toward it (~20.0 connections/s)`, or "" when nothing is seen.
    pub fn title_suffix(&self) -> String {
        if let Some(r) = self.traced_per_s.filter(|r| *r > 0.0) {
            return format!(
                ": {r:.0} connections/s traced, {} TIME_WAIT",
                self.time_wait()
            );
        }
        if self.time_wait() > 0 {
            return format!(
                ": {} TIME_WAIT toward it (~{:.1} new connections/s)",
                self.time_wait(),
                self.per_s
            );
        }
        String::new()
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "live": self.live,
            "time_wait_client_side": self.time_wait_client,
            "time_wait_backend_side": self.time_wait_server,
            "per_s": (self.per_s * 100.0).round() / 100.0,
            "traced_per_s": self.traced_per_s,
            "ports_used": self.ports_used,
            "ports_usable": self.ports_usable,
            "port_used_pct": (self.port_pct * 100.0).round() / 100.0,
            "owned_by_nginx": self.owned_by_nginx,
            "destinations": self.per_destination.iter().map(|(e, n)| json!({
                "address": e.canonical_ip().to_string(), "port": e.port, "time_wait": n,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The churn the snapshot shows toward `endpoints` (nothing for an offline lint).
pub fn churn(
    s: &Snapshot,
    inst: &NginxInstance,
    endpoints: &[Endpoint],
    rates: &OpenRates,
) -> Churn {
    let mut c = Churn {
        live: inst.master_pid.is_some(),
        ..Churn::default()
    };
    if !c.live {
        return c;
    }
    let pids: Vec<u32> = inst.pids().collect();
    let digest = &s.sockets.time_wait;
    let mut per_s_traced = 0.0;
    let mut traced = false;
    // Closes per second toward the endpoints, from each group's TIME_WAIT ages (the one
    // closing rate of every rule), summed over client and server side.
    let mut per_s = 0.0;
    // Server-side TIME_WAIT of one port counted once even when two endpoints share it.
    let mut server_ports = std::collections::BTreeSet::new();
    for e in endpoints {
        let key = Endpoint::new(e.canonical_ip(), e.port);
        let client = digest.by_destination.get(&key).copied().unwrap_or(0);
        // The backend is here when one of this namespace's listeners has its port on
        // its address (or on any address).
        let local = s.sockets.listeners.iter().any(|l| {
            l.local.port == e.port
                && (l.local.canonical_ip() == key.address || l.local.address.is_unspecified())
        });
        let server = if local && server_ports.insert(e.port) {
            digest.by_listen_port.get(&e.port).copied().unwrap_or(0)
        } else {
            0
        };
        c.time_wait_client += client;
        c.time_wait_server += server;
        let none = crate::model::TimeWaitAges::default();
        per_s += closing_rate(
            s,
            client,
            digest.ages_by_destination.get(&key).unwrap_or(&none),
        )
        .per_s;
        if server > 0 {
            per_s += closing_rate(
                s,
                server,
                digest.ages_by_served_port.get(&e.port).unwrap_or(&none),
            )
            .per_s;
        }
        c.per_destination.push((key, client + server));
        for p in s.sockets.port_use.iter().filter(|p| p.remote == key) {
            let share = pct(p.used(), p.usable);
            if share >= c.port_pct {
                c.port_pct = share;
                c.ports_used = p.used();
                c.ports_usable = p.usable;
            }
            if p.sample_owner.is_some_and(|o| pids.contains(&o.pid))
                && p.counts.get(TcpState::Established) > 0
            {
                c.owned_by_nginx = true;
            }
        }
        for pid in &pids {
            if let Some(r) = rates.get(&(*pid, key)) {
                per_s_traced += r;
                traced = true;
            }
        }
    }
    c.per_s = per_s;
    c.traced_per_s = traced.then_some(per_s_traced);
    c
}

/// Evidence lines for a churn.
pub fn churn_evidence(c: &Churn, what: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !c.live {
        out.push((
            "host evidence".to_string(),
            "none: linted offline (tcpdoctor check shows the TIME_WAIT and ports of a running nginx)".to_string(),
        ));
        return out;
    }
    if let Some(r) = c.traced_per_s {
        out.push((
            format!("connections opened toward {what} (traced)"),
            format!("{r:.1}/s"),
        ));
    }
    out.push((
        format!("TIME_WAIT toward {what} (nginx closed first)"),
        format!(
            "{} (~{:.1}/s)",
            c.time_wait_client,
            c.time_wait_client as f64 / 60.0
        ),
    ));
    if c.time_wait_server > 0 {
        out.push((
            format!("TIME_WAIT on {what}'s own port (the backend runs here and closed first)"),
            c.time_wait_server.to_string(),
        ));
    }
    if c.ports_usable > 0 {
        out.push((
            format!("local ports in use toward {what}"),
            format!(
                "{} of {} ({:.1}%)",
                c.ports_used, c.ports_usable, c.port_pct
            ),
        ));
    }
    if !c.seen() {
        out.push((
            "churn now".to_string(),
            "none seen: idle toward it in the last 60 s, or a backend on another host closes first (its TIME_WAIT is there)".to_string(),
        ));
    }
    out
}

/// A diff inserting `lines` after the line `at`.
pub fn insert_after(at: &SourceRef, lines: &[String]) -> String {
    let mut p = format!(
        "--- {f}\n+++ {f}\n@@ -{l} +{l},{n} @@\n {ctx}\n",
        f = at.file,
        l = at.line,
        n = lines.len() + 1,
        ctx = at.text
    );
    for l in lines {
        p.push('+');
        p.push_str(l);
        p.push('\n');
    }
    p
}

/// A diff inserting `lines` before the line `at`.
pub fn insert_before(at: &SourceRef, lines: &[String]) -> String {
    let mut p = format!(
        "--- {f}\n+++ {f}\n@@ -{l} +{l},{n} @@\n",
        f = at.file,
        l = at.line,
        n = lines.len() + 1
    );
    for l in lines {
        p.push('+');
        p.push_str(l);
        p.push('\n');
    }
    p.push(' ');
    p.push_str(&at.text);
    p.push('\n');
    p
}

/// A diff replacing the line `at` with `lines`.
pub fn replace(at: &SourceRef, lines: &[String]) -> String {
    let mut p = format!(
        "--- {f}\n+++ {f}\n@@ -{l} +{l},{n} @@\n-{old}\n",
        f = at.file,
        l = at.line,
        n = lines.len(),
        old = at.text
    );
    for l in lines {
        p.push('+');
        p.push_str(l);
        p.push('\n');
    }
    p
}

/// The indentation of the lines inside the block opened at `at`.
pub fn inner_indent(at: &SourceRef) -> String {
    format!("{}    ", at.indent())
}

/// The header list a location uses comes from this level: where a new
/// `proxy_set_header` must go so it adds to the list instead of replacing it (a
/// location with none of its own inherits the nearest level's list whole, and adding
/// one there would drop the rest). `None`: no level sets any; the location itself is
/// the place.
pub fn header_list_end(l: &Location) -> Option<&ProxyHeader> {
    l.headers.iter().max_by_key(|h| h.at.line)
}

/// Where to add `proxy_set_header Connection "";` so that `l` sends none: after the
/// last header of the list in force, or after the proxy_pass when there is none.
pub fn connection_insertion(l: &Location) -> Option<SourceRef> {
    match header_list_end(l) {
        Some(h) => Some(h.at.clone()),
        None => l.proxy_pass.as_ref().map(|p| p.at.clone()),
    }
}

/// The last step of every nginx fix: test and reload.
pub fn reload_step(inst: &NginxInstance) -> FixStep {
    let bin = inst
        .binary
        .as_deref()
        .map_or("nginx", |b| b.trim_end_matches(" (deleted)"));
    match inst.master_pid {
        Some(pid) if inst.in_container() => FixStep::run(
            "Test the changed configuration inside the container, then reload gracefully (workers finish their requests)",
            format!("nsenter -t {pid} -m -- {bin} -t -c {} && kill -HUP {pid}", inst.config_file),
        ),
        Some(pid) => FixStep::run(
            "Test the changed configuration, then reload gracefully (workers finish their requests)",
            format!("{bin} -t -c {} && kill -HUP {pid}", inst.config_file),
        ),
        None => FixStep::run(
            "Test the changed configuration, then reload nginx",
            format!("{bin} -t -c {}", inst.config_file),
        ),
    }
}

/// `{"file": .., "line": ..}`.
pub fn at_json(at: &SourceRef) -> serde_json::Value {
    json!({"file": at.file, "line": at.line})
}

/// Instances of a snapshot that have a configuration.
pub fn configured(s: &Snapshot) -> impl Iterator<Item = (&NginxInstance, &NginxConfig)> {
    s.nginx
        .iter()
        .filter_map(|i| i.config.as_ref().map(|c| (i, c)))
}

/// `data` fields every nginx finding has.
pub fn instance_json(inst: &NginxInstance) -> serde_json::Value {
    json!({
        "pid": inst.master_pid,
        "workers": inst.worker_pids,
        "binary": inst.binary,
        "version": inst.version.as_ref().map(|v| v.banner.clone()),
        "config_file": inst.config_file,
        "root": inst.root,
    })
}

/// Builders for the nginx rules' tests: a configuration from text (through the real
/// parser), an instance, a snapshot holding it.
#[cfg(test)]
pub mod tests_support {
    use crate::collect::nginx::{extract, load, parse};
    use crate::model::nginx::{ConfigOrigin, NginxInstance, NginxVersion};
    use crate::model::Snapshot;

    /// `pid`: `None` for an offline lint.
    pub fn instance(pid: Option<u32>, banner: &str, text: &str) -> NginxInstance {
        let directives = parse::parse(text.as_bytes(), 0).unwrap_or_else(|e| panic!("{e}"));
        let loaded = load::LoadedConfig {
            files: vec![load::SourceFile {
                path: "/etc/nginx/nginx.conf".into(),
                text: text.to_string(),
            }],
            directives,
            bytes: text.len() as u64,
        };
        NginxInstance {
            master_pid: pid,
            worker_pids: pid.map(|p| vec![p + 1, p + 2]).unwrap_or_default(),
            netns: None,
            binary: Some("/usr/sbin/nginx".into()),
            version: NginxVersion::parse(banner),
            root: "/".into(),
            config_file: "/etc/nginx/nginx.conf".into(),
            origin: ConfigOrigin::CompiledIn,
            config: Some(extract::extract(&loaded)),
            error: None,
        }
    }

    pub fn snapshot_with(inst: NginxInstance) -> Snapshot {
        Snapshot {
            nginx: vec![inst],
            ..Snapshot::default()
        }
    }
}
