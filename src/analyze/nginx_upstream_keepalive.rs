//! Rule `nginx_upstream_keepalive`: nginx proxies to an upstream that caches no
//! connections, so every request opens (and closes) a TCP connection to the backend.
//! Two ways: an `upstream {}` block without `keepalive` on nginx before 1.29.7 (or
//! with `keepalive 0` on any version), or a `proxy_pass` to a literal address, whose
//! implicit upstream has no connection cache in any version (1.29.7's default applies
//! to upstream blocks only: `ngx_http_upstream_keepalive_init_main_conf()` skips
//! implicit upstreams).
//!
//! Fires for every such upstream, whatever the TIME_WAIT count: the severity follows
//! what the host shows toward its servers (TIME_WAIT, ports, a traced connection rate),
//! not a global TIME_WAIT threshold.

use std::collections::BTreeMap;

use serde_json::json;

use super::nginx_common::{
    at_json, churn, churn_evidence, configured, connection_insertion, defaults, inner_indent,
    insert_after, insert_before, instance_json, reload_step, replace, OpenRates,
};
use super::Thresholds;
use crate::model::nginx::{Location, NginxConfig, NginxInstance, ProxyTarget, Server};
use crate::model::{Endpoint, Evidence, Finding, FixStep, Nature, Snapshot};

pub const ID: &str = "nginx_upstream_keepalive";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    check_with_rates(s, t, &super::nginx_common::open_rates(s))
}

/// What proxies without a connection cache: an upstream block, or a literal address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Block(String),
    Literal(String, u16),
}

/// The rule with connection rates from a tracer (`check` passes none).
pub fn check_with_rates(s: &Snapshot, t: &Thresholds, rates: &OpenRates) -> Vec<Finding> {
    let mut out = Vec::new();
    for (inst, cfg) in configured(s) {
        let d = defaults(inst);
        let mut groups: BTreeMap<Target, Vec<(&Server, &Location)>> = BTreeMap::new();
        for (srv, loc, pp) in cfg.proxied() {
            match &pp.target {
                ProxyTarget::Upstream { name } => {
                    let Some(u) = cfg.upstream(name) else {
                        continue;
                    };
                    let cached = u
                        .cached_connections(inst.version.as_ref())
                        .unwrap_or(if d.keepalive { 32 } else { 0 });
                    if cached == 0 {
                        groups
                            .entry(Target::Block(u.name.clone()))
                            .or_default()
                            .push((srv, loc));
                    }
                }
                ProxyTarget::Address { host, port, .. } => {
                    groups
                        .entry(Target::Literal(host.clone(), *port))
                        .or_default()
                        .push((srv, loc));
                }
                ProxyTarget::Unix { .. } | ProxyTarget::Variable => {}
            }
        }
        for (target, locs) in groups {
            out.push(finding(s, t, inst, cfg, &target, &locs, &d.note, rates));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn finding(
    s: &Snapshot,
    t: &Thresholds,
    inst: &NginxInstance,
    cfg: &NginxConfig,
    target: &Target,
    locs: &[(&Server, &Location)],
    version_note: &str,
    rates: &OpenRates,
) -> Finding {
    let (endpoints, dest, cause, names): (Vec<Endpoint>, String, String, Vec<String>) = match target
    {
        Target::Block(name) => {
            let u = cfg.upstream(name);
            let eps = u
                .map(|u| {
                    u.servers
                        .iter()
                        .flat_map(|s| s.endpoints.iter().copied())
                        .collect()
                })
                .unwrap_or_default();
            let servers: Vec<String> = u
                .map(|u| u.servers.iter().map(|s| s.address.clone()).collect())
                .unwrap_or_default();
            let at = u.map(|u| u.at.to_string()).unwrap_or_default();
            let why = match u.and_then(|u| u.keepalive.as_ref()) {
                Some(k) => format!("upstream {name}, {} sets keepalive {}", k.at, k.value),
                None => format!("upstream {name}, {at} has no keepalive"),
            };
            (eps, servers.join(", "), why, servers)
        }
        Target::Literal(host, port) => {
            let eps = locs
                .iter()
                .find_map(|(_, l)| match l.proxy_pass.as_ref().map(|p| &p.target) {
                    Some(ProxyTarget::Address { endpoints, .. }) => Some(endpoints.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let first = locs
                .first()
                .and_then(|(_, l)| l.proxy_pass.as_ref())
                .map(|p| p.at.to_string())
                .unwrap_or_default();
            (
                eps,
                format!("{host}:{port}"),
                format!("proxy_pass at {first} names an address: no upstream block, no connection cache"),
                vec![format!("{host}:{port}")],
            )
        }
    };
    let c = churn(s, inst, &endpoints, rates);
    let severity = c.severity(t);
    let title = format!(
        "{} opens a new connection per request to {dest} ({cause}){}",
        inst.label(),
        c.title_suffix()
    );
    let mut f = Finding::new(
        ID,
        severity,
        if c.seen() {
            Nature::Live
        } else {
            Nature::Config
        },
        title,
    );
    if let Target::Block(name) = target {
        if let Some(u) = cfg.upstream(name) {
            f.evidence.push(Evidence::new(
                format!("upstream {name}"),
                format!("{} (servers: {})", u.at, names.join(", ")),
            ));
        }
    }
    let shown: Vec<String> = locs
        .iter()
        .take(5)
        .map(|(srv, l)| format!("{} {} ({})", srv.label(), l.label, l.at))
        .collect();
    let more = locs.len().saturating_sub(5);
    f.evidence.push(Evidence::new(
        "proxied from",
        if more > 0 {
            format!("{} and {more} more", shown.join("; "))
        } else {
            shown.join("; ")
        },
    ));
    for (label, value) in churn_evidence(&c, &dest) {
        f.evidence.push(Evidence::new(label, value));
    }
    f.evidence
        .push(Evidence::new("nginx version", version_note));
    if endpoints.is_empty() {
        f.evidence.push(Evidence::new(
            "servers",
            "given by name or unix socket: not matched to this host's sockets",
        ));
    }
    f.why = format!(
        "Without a connection cache nginx opens a TCP connection to the backend for every request and closes it after the response, so each request costs a handshake, and the side that closes first keeps the connection in TIME_WAIT for 60 s (on this host that also holds a local port toward {dest}). nginx keeps upstream connections alive only for an upstream block with keepalive (the default from nginx 1.29.7; a proxy_pass to a literal address never has one), proxy_http_version 1.1 and no Connection: close header."
    );
    f.fix = fixes(inst, cfg, target, locs);
    f.data = json!({
        "nginx": instance_json(inst),
        "target": match target {
            Target::Block(n) => json!({"kind": "upstream", "name": n,
                "at": cfg.upstream(n).map(|u| at_json(&u.at)),
                "keepalive": cfg.upstream(n).and_then(|u| u.keepalive.as_ref()).map(|k| k.value.clone())}),
            Target::Literal(h, p) => json!({"kind": "address", "host": h, "port": p}),
        },
        "servers": names,
        "locations": locs.iter().map(|(srv, l)| json!({
            "server": srv.label(), "location": l.label, "at": at_json(&l.at),
            "proxy_pass": l.proxy_pass.as_ref().map(|p| at_json(&p.at)),
        })).collect::<Vec<_>>(),
        "churn": c.json(),
    });
    f
}

/// The recipe as diffs: a connection cache, then HTTP/1.1 and no Connection header
/// where each location needs them (the header added at the level whose list is in
/// force, never as a location's first, which would drop the inherited ones).
fn fixes(
    inst: &NginxInstance,
    cfg: &NginxConfig,
    target: &Target,
    locs: &[(&Server, &Location)],
) -> Vec<FixStep> {
    let mut steps = Vec::new();
    match target {
        Target::Block(name) => {
            if let Some(u) = cfg.upstream(name) {
                match &u.keepalive {
                    Some(k) => steps.push(FixStep::patch(
                        format!("Cache idle connections to upstream {name}: keepalive 0 turns the cache off (32 per worker is nginx's own default from 1.29.7)"),
                        replace(&k.at, &[format!("{}keepalive 32;", k.at.indent())]),
                    )),
                    None => steps.push(FixStep::patch(
                        format!("Cache idle connections to upstream {name} (32 per worker, nginx's own default from 1.29.7; it does not limit how many connections are open)"),
                        insert_after(&u.at, &[format!("{}keepalive 32;", inner_indent(&u.at))]),
                    )),
                }
            }
        }
        Target::Literal(host, port) => {
            let name = format!("backend_{}_{port}", host.replace(['.', ':', '[', ']'], "_"));
            if let Some((srv, _)) = locs.first() {
                let ind = srv.at.indent().to_string();
                steps.push(FixStep::patch(
                    format!("Give {host}:{port} an upstream block with a connection cache (a literal address in proxy_pass never has one)"),
                    insert_before(
                        &srv.at,
                        &[
                            format!("{ind}upstream {name} {{"),
                            format!("{ind}    server {host}:{port};"),
                            format!("{ind}    keepalive 32;"),
                            format!("{ind}}}"),
                            String::new(),
                        ],
                    ),
                ));
            }
            for (_, l) in locs {
                if let Some(pp) = &l.proxy_pass {
                    let from = format!("{host}:{port}");
                    let url = if pp.url.contains(&from) {
                        pp.url.replacen(&from, &name, 1)
                    } else {
                        pp.url.replacen(host.as_str(), &name, 1)
                    };
                    let new_line = pp.at.text.replacen(&pp.url, &url, 1);
                    steps.push(FixStep::patch(
                        format!("Proxy {} through it", l.label),
                        replace(&pp.at, &[new_line]),
                    ));
                }
            }
        }
    }
    let d = defaults(inst);
    let mut conn_points: Vec<String> = Vec::new();
    let mut version_points: Vec<String> = Vec::new();
    for (srv, l) in locs {
        if l.proxy_pass.is_none() {
            continue;
        }
        let version_ok = match l.http_version_value() {
            Some(v) => v != "1.0",
            None => d.keepalive,
        };
        if !version_ok {
            match &l.http_version {
                // An explicit 1.0: change that line.
                Some(v) => {
                    let key = v.at.to_string();
                    if !version_points.contains(&key) {
                        version_points.push(key);
                        steps.push(FixStep::patch(
                            format!("{}: speak HTTP/1.1 to the backend (1.0 closes after each response)", l.label),
                            replace(&v.at, &[format!("{}proxy_http_version 1.1;", v.at.indent())]),
                        ));
                    }
                }
                // nginx's default 1.0: once per server (proxy_http_version is inherited
                // like most directives).
                None => {
                    let key = srv.at.to_string();
                    if !version_points.contains(&key) {
                        version_points.push(key);
                        steps.push(FixStep::patch(
                            format!("{}: speak HTTP/1.1 to backends (nginx's default before 1.29.7 is 1.0, which closes after each response)", srv.label()),
                            insert_after(&srv.at, &[format!("{}proxy_http_version 1.1;", inner_indent(&srv.at))]),
                        ));
                    }
                }
            }
        }
        // A Connection header from a variable (a websocket map) is left alone here:
        // nginx_proxy_keepalive_headers judges what the map yields.
        let (at, lines, how) = match l.connection_header() {
            Some(h) if h.value.eq_ignore_ascii_case("close") => (
                h.at.clone(),
                vec![format!(
                    "{}proxy_set_header Connection \"\";",
                    h.at.indent()
                )],
                "replace",
            ),
            Some(_) => continue,
            None if d.keepalive => continue,
            None => match connection_insertion(l) {
                Some(at) => {
                    let line = format!("{}proxy_set_header Connection \"\";", at.indent());
                    (at, vec![line], "insert")
                }
                None => continue,
            },
        };
        let key = at.to_string();
        if conn_points.contains(&key) {
            continue;
        }
        conn_points.push(key);
        let where_ = if l.headers.is_empty() || how == "replace" {
            l.label.clone()
        } else {
            format!("the proxy_set_header list {} uses", l.label)
        };
        let why_there = if l.headers.is_empty() || how == "replace" {
            ""
        } else {
            "; it goes with the other proxy_set_header lines, since a level that sets any inherits none"
        };
        steps.push(FixStep::patch(
            format!("Send no Connection header in {where_} (nginx sends Connection: close by default before 1.29.7){why_there}"),
            if how == "replace" { replace(&at, &lines) } else { insert_after(&at, &lines) },
        ));
    }
    steps.push(reload_step(inst));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::nginx_common::tests_support::{instance, snapshot_with};
    use crate::model::{Endpoint, ListenerSocket, Owner, PortUse, Severity, StateCounts, TcpState};

    const NO_KEEPALIVE: &str = "events {}\nhttp {\n    upstream backend {\n        server 127.0.0.1:18080;\n    }\n    server {\n        listen 8080;\n        location / {\n            proxy_pass http://backend;\n        }\n        location /lit {\n            proxy_pass http://127.0.0.1:9000/x/;\n        }\n    }\n}\n";

    #[test]
    fn fires_for_an_upstream_without_keepalive_and_a_literal_address() {
        let mut s = snapshot_with(instance(Some(4410), "nginx/1.22.1", NO_KEEPALIVE));
        let backend = Endpoint::new("127.0.0.1".parse().expect("ip"), 18080);
        s.sockets.time_wait.by_destination.insert(backend, 1200);
        let f = check(&s, &Thresholds::default());
        assert_eq!(
            f.len(),
            2,
            "{:#?}",
            f.iter().map(|f| &f.title).collect::<Vec<_>>()
        );
        let up = f
            .iter()
            .find(|f| f.data["target"]["kind"] == "upstream")
            .expect("upstream");
        assert_eq!(
            up.title,
            "nginx (pid 4410) opens a new connection per request to 127.0.0.1:18080 (upstream backend, /etc/nginx/nginx.conf:3 has no keepalive): 1200 TIME_WAIT toward it (~20.0 new connections/s)"
        );
        assert_eq!(up.severity, Severity::Warning);
        assert_eq!(up.nature, Nature::Live);
        assert_eq!(up.data["churn"]["time_wait_client_side"], 1200);
        assert_eq!(up.data["nginx"]["pid"], 4410);
        let patch = up.fix[0].patch.as_deref().expect("a diff");
        assert!(
            patch.contains("@@ -3 +3,2 @@\n     upstream backend {\n+        keepalive 32;\n"),
            "{patch}"
        );
        assert!(
            up.fix
                .iter()
                .any(|s| s
                    .mentions("@@ -6 +6,2 @@\n     server {\n+        proxy_http_version 1.1;")),
            "{:#?}",
            up.fix
        );
        assert!(up
            .fix
            .iter()
            .any(|s| s.mentions("+            proxy_set_header Connection \"\";")));
        assert!(up
            .fix
            .last()
            .and_then(|s| s.command.as_deref())
            .is_some_and(|c| c.contains("kill -HUP 4410")));

        // No TIME_WAIT toward the literal address: still reported, as info (idle now).
        let lit = f
            .iter()
            .find(|f| f.data["target"]["kind"] == "address")
            .expect("literal");
        assert_eq!(lit.severity, Severity::Info);
        assert!(
            lit.title.contains(
                "to 127.0.0.1:9000 (proxy_pass at /etc/nginx/nginx.conf:12 names an address"
            ),
            "{}",
            lit.title
        );
        assert!(
            lit.fix[0].mentions("+    upstream backend_127_0_0_1_9000 {"),
            "{:?}",
            lit.fix[0]
        );
        assert!(
            lit.fix[1].mentions("+            proxy_pass http://backend_127_0_0_1_9000/x/;"),
            "{:?}",
            lit.fix[1]
        );
    }

    #[test]
    fn backend_on_this_host_closing_first_counts_and_ports_make_it_critical() {
        let mut s = snapshot_with(instance(Some(7), "nginx/1.22.1", NO_KEEPALIVE));
        s.sockets.listeners.push(ListenerSocket {
            local: Endpoint::new("127.0.0.1".parse().expect("ip"), 18080),
            accept_queue: 0,
            backlog: 511,
            backlog_known: true,
            inode: 1,
            owner: None,
        });
        s.sockets.time_wait.by_listen_port.insert(18080, 600);
        let f = check(&s, &Thresholds::default());
        let up = f
            .iter()
            .find(|f| f.data["target"]["kind"] == "upstream")
            .expect("upstream");
        assert_eq!(up.data["churn"]["time_wait_backend_side"], 600);
        assert_eq!(up.severity, Severity::Warning);

        let mut rates = OpenRates::new();
        rates.insert(
            (7, Endpoint::new("127.0.0.1".parse().expect("ip"), 18080)),
            1200.0,
        );
        let f = check_with_rates(&s, &Thresholds::default(), &rates);
        let up = f
            .iter()
            .find(|f| f.data["target"]["kind"] == "upstream")
            .expect("upstream");
        assert!(
            up.title
                .ends_with(": 1200 connections/s traced, 600 TIME_WAIT"),
            "{}",
            up.title
        );
        // The same rate from the flows `check` traced (worker pid 7, 2400 in 2 s).
        {
            use crate::model::{Direction, FlowCounts, FlowKey, FlowPeer, FlowRow, NamespaceFlows};
            let mut traced = s.clone();
            traced.flows = Some(NamespaceFlows {
                duration_ms: 2000,
                flows: vec![FlowRow {
                    key: FlowKey {
                        pid: 7,
                        netns: 1,
                        direction: Direction::Active,
                        peer: FlowPeer::Remote(Endpoint::new(
                            "127.0.0.1".parse().expect("ip"),
                            18080,
                        )),
                    },
                    comm: "nginx".into(),
                    netns_name: String::new(),
                    counts: FlowCounts {
                        opened: 2400,
                        ..FlowCounts::default()
                    },
                }],
                ..NamespaceFlows::default()
            });
            let f = check(&traced, &Thresholds::default());
            let up = f
                .iter()
                .find(|f| f.data["target"]["kind"] == "upstream")
                .expect("upstream");
            assert!(
                up.title
                    .ends_with(": 1200 connections/s traced, 600 TIME_WAIT"),
                "{}",
                up.title
            );
        }

        // Ports toward the backend nearly gone: critical, and owned by a worker.
        let mut counts = StateCounts::default();
        counts.0[TcpState::TimeWait.index()] = 27_000;
        counts.0[TcpState::Established.index()] = 1_000;
        s.sockets.port_use.push(PortUse {
            local_ip: "127.0.0.1".parse().expect("ip"),
            remote: Endpoint::new("127.0.0.1".parse().expect("ip"), 18080),
            counts,
            sample_owner: Some(Owner { pid: 8, fd: 12 }),
            usable: 28_232,
            time_wait_ages: Default::default(),
            tw_reuse: false,
        });
        let f = check(&s, &Thresholds::default());
        let up = f
            .iter()
            .find(|f| f.data["target"]["kind"] == "upstream")
            .expect("upstream");
        assert_eq!(up.severity, Severity::Critical);
        assert_eq!(up.data["churn"]["ports_used"], 28_000);
        assert_eq!(up.data["churn"]["owned_by_nginx"], true);
        assert!(
            up.evidence
                .iter()
                .any(|e| e.value == "28000 of 28232 (99.2%)"),
            "{:?}",
            up.evidence
        );
    }

    #[test]
    fn does_not_fire_with_keepalive_or_on_new_defaults() {
        let with = NO_KEEPALIVE
            .replace(
                "server 127.0.0.1:18080;\n",
                "server 127.0.0.1:18080;\n        keepalive 16;\n",
            )
            .replace(
                "proxy_pass http://127.0.0.1:9000/x/;",
                "proxy_pass http://backend/x/;",
            );
        let s = snapshot_with(instance(Some(1), "nginx/1.22.1", &with));
        assert!(check(&s, &Thresholds::default()).is_empty());
        // 1.29.7: upstream blocks keep connections by default; literal addresses still not.
        let s = snapshot_with(instance(Some(1), "nginx/1.29.7", NO_KEEPALIVE));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["target"]["kind"], "address");
        // keepalive 0 turns it off on any version.
        let off = NO_KEEPALIVE.replace(
            "server 127.0.0.1:18080;\n",
            "server 127.0.0.1:18080;\n        keepalive 0;\n",
        );
        let s = snapshot_with(instance(Some(1), "nginx/1.30.0", &off));
        assert!(check(&s, &Thresholds::default())
            .iter()
            .any(|f| f.data["target"]["kind"] == "upstream"));
        // Offline: a warning, no host evidence.
        let s = snapshot_with(instance(None, "nginx/1.22.1", NO_KEEPALIVE));
        let f = check(&s, &Thresholds::default());
        assert!(f
            .iter()
            .all(|f| f.severity == Severity::Warning && f.data["churn"]["live"] == false));
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }
}
