//! Rule `nginx_proxy_keepalive_headers`: an upstream caches connections (`keepalive`,
//! or nginx 1.29.7's default), but a location proxying to it speaks HTTP/1.0 or sends
//! `Connection: close` (nginx's own default before 1.29.7, a literal `close`, or a
//! `map` that yields `close`, like the usual websocket map's `'' close;`). Then the
//! backend closes after every response and the cache stays empty: one connection per
//! request, as if there were no keepalive.
//!
//! A location that lost `Connection ""` by setting headers of its own is
//! `nginx_proxy_header_inheritance`'s finding, not this one's.

use std::collections::BTreeMap;

use serde_json::json;

use super::nginx_common::{
    at_json, churn, churn_evidence, configured, connection_insertion, defaults, insert_after,
    instance_json, reload_step, replace, OpenRates,
};
use super::Thresholds;
use crate::model::nginx::{Location, NginxConfig, ProxyTarget, SourceRef};
use crate::model::{Endpoint, Evidence, Finding, FixStep, Nature, Snapshot};

pub const ID: &str = "nginx_proxy_keepalive_headers";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    check_with_rates(s, t, &super::nginx_common::open_rates(s))
}

/// What defeats keep-alive in one location.
#[derive(Debug, Clone)]
enum Defect {
    /// proxy_http_version 1.0, set at `at` (`None`: nginx's default).
    Http10(Option<SourceRef>),
    /// Connection: close, from a header line (`None`: nginx's default).
    ConnectionClose(Option<SourceRef>),
    /// A map gives `close` for some requests: the header and the map entry.
    MapClose {
        header: SourceRef,
        entry: SourceRef,
        variable: String,
    },
}

impl Defect {
    fn describe(&self) -> String {
        match self {
            Defect::Http10(Some(at)) => format!("proxy_http_version 1.0 ({at})"),
            Defect::Http10(None) => "proxy_http_version 1.0 (nginx's default before 1.29.7)".into(),
            Defect::ConnectionClose(Some(at)) => format!("proxy_set_header Connection close ({at})"),
            Defect::ConnectionClose(None) => {
                "Connection: close (nginx's default before 1.29.7; no proxy_set_header Connection \"\" in force)".into()
            }
            Defect::MapClose { header, entry, variable } => format!(
                "Connection {variable} ({header}) is \"close\" for requests without Upgrade ({entry})"
            ),
        }
    }
}

fn defects(l: &Location, cfg: &NginxConfig, new_defaults: bool) -> Vec<Defect> {
    let mut out = Vec::new();
    match &l.http_version {
        Some(v) if v.value == "1.0" => out.push(Defect::Http10(Some(v.at.clone()))),
        None if !new_defaults => out.push(Defect::Http10(None)),
        _ => {}
    }
    // Lost by the inheritance trap: the other rule's.
    let trapped = l.own_headers && l.dropped_headers.iter().any(|h| h.clears_connection());
    match l.connection_header() {
        Some(h) if h.value.eq_ignore_ascii_case("close") => {
            out.push(Defect::ConnectionClose(Some(h.at.clone())))
        }
        Some(h) if h.value.starts_with('$') => {
            if let Some(e) = cfg.map_of(&h.value).and_then(|m| {
                m.entries
                    .iter()
                    .find(|e| e.value.eq_ignore_ascii_case("close"))
            }) {
                out.push(Defect::MapClose {
                    header: h.at.clone(),
                    entry: e.at.clone(),
                    variable: h.value.clone(),
                });
            }
        }
        None if !new_defaults && !trapped => out.push(Defect::ConnectionClose(None)),
        _ => {}
    }
    out
}

pub fn check_with_rates(s: &Snapshot, t: &Thresholds, rates: &OpenRates) -> Vec<Finding> {
    let mut out = Vec::new();
    for (inst, cfg) in configured(s) {
        let d = defaults(inst);
        let mut by_upstream: BTreeMap<String, Vec<(&Location, Vec<Defect>)>> = BTreeMap::new();
        for (_, l, pp) in cfg.proxied() {
            let ProxyTarget::Upstream { name } = &pp.target else {
                continue;
            };
            let Some(u) = cfg.upstream(name) else {
                continue;
            };
            let cached = u.cached_connections(inst.version.as_ref()).unwrap_or(0);
            if cached == 0 {
                continue; // nginx_upstream_keepalive
            }
            let ds = defects(l, cfg, d.keepalive);
            if !ds.is_empty() {
                by_upstream.entry(u.name.clone()).or_default().push((l, ds));
            }
        }
        for (name, locs) in by_upstream {
            let Some(u) = cfg.upstream(&name) else {
                continue;
            };
            let endpoints: Vec<Endpoint> = u
                .servers
                .iter()
                .flat_map(|s| s.endpoints.iter().copied())
                .collect();
            let dest = u
                .servers
                .iter()
                .map(|s| s.address.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let c = churn(s, inst, &endpoints, rates);
            let first = &locs[0];
            let title = format!(
                "{} keeps no connection to upstream {name} alive: {} sends {} ({}){}",
                inst.label(),
                first.0.label,
                first.1[0].describe(),
                if locs.len() > 1 {
                    format!("and {} more locations", locs.len() - 1)
                } else {
                    first.0.at.to_string()
                },
                c.title_suffix()
            );
            let mut f = Finding::new(
                ID,
                c.severity(t),
                if c.seen() {
                    Nature::Live
                } else {
                    Nature::Config
                },
                title,
            );
            let ka = u.keepalive.as_ref().map_or_else(
                || "keepalive 32 (nginx's default from 1.29.7)".to_string(),
                |k| format!("keepalive {} ({})", k.value, k.at),
            );
            f.evidence.push(Evidence::new(
                format!("upstream {name}"),
                format!("{} (servers: {dest}), {ka}", u.at),
            ));
            for (l, ds) in &locs {
                f.evidence.push(Evidence::new(
                    format!("{} ({})", l.label, l.at),
                    ds.iter()
                        .map(Defect::describe)
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
            for (label, value) in churn_evidence(&c, &format!("upstream {name}")) {
                f.evidence.push(Evidence::new(label, value));
            }
            f.evidence.push(Evidence::new("nginx version", &d.note));
            f.why = "An upstream connection is kept for the next request only when the response allows it: HTTP/1.1 and no Connection: close. With HTTP/1.0, or with Connection: close on the request, the backend closes the connection after each response, so the keepalive cache stays empty and every request opens a new TCP connection (and leaves a TIME_WAIT on the side that closed first).".to_string();
            let mut done: Vec<String> = Vec::new();
            for (l, ds) in &locs {
                for d in ds {
                    let (at, lines, text) = match d {
                        Defect::Http10(Some(at)) => (
                            at.clone(),
                            vec![format!("{}proxy_http_version 1.1;", at.indent())],
                            "Speak HTTP/1.1 to the backend",
                        ),
                        Defect::Http10(None) => {
                            let Some(pp) = &l.proxy_pass else { continue };
                            (pp.at.clone(), vec![format!("{}proxy_http_version 1.1;", pp.at.indent())], "Speak HTTP/1.1 to the backend (add after proxy_pass)")
                        }
                        Defect::ConnectionClose(Some(at)) => (
                            at.clone(),
                            vec![format!("{}proxy_set_header Connection \"\";", at.indent())],
                            "Send no Connection header",
                        ),
                        Defect::ConnectionClose(None) => {
                            let Some(at) = connection_insertion(l) else { continue };
                            (at.clone(), vec![format!("{}proxy_set_header Connection \"\";", at.indent())], "Send no Connection header: add it to the proxy_set_header list in force there (a level that sets any proxy_set_header inherits none)")
                        }
                        Defect::MapClose { entry, .. } => (
                            entry.clone(),
                            vec![entry.text.replacen("close", "''", 1)],
                            "Make the map send no Connection header for ordinary requests (websocket upgrades keep theirs)",
                        ),
                    };
                    let key = at.to_string();
                    if done.contains(&key) {
                        continue;
                    }
                    done.push(key);
                    let replaces =
                        !matches!(d, Defect::Http10(None) | Defect::ConnectionClose(None));
                    f.fix.push(FixStep::patch(
                        format!("{}: {text}", l.label),
                        if replaces {
                            replace(&at, &lines)
                        } else {
                            insert_after(&at, &lines)
                        },
                    ));
                }
            }
            f.fix.push(reload_step(inst));
            f.data = json!({
                "nginx": instance_json(inst),
                "upstream": name,
                "upstream_at": at_json(&u.at),
                "keepalive": u.keepalive.as_ref().map(|k| k.value.clone()),
                "locations": locs.iter().map(|(l, ds)| json!({
                    "location": l.label, "at": at_json(&l.at),
                    "problems": ds.iter().map(|d| match d {
                        Defect::Http10(at) => json!({"kind": "http_1_0", "at": at.as_ref().map(at_json)}),
                        Defect::ConnectionClose(at) => json!({"kind": "connection_close", "at": at.as_ref().map(at_json)}),
                        Defect::MapClose { header, entry, variable } => json!({"kind": "map_close", "variable": variable, "at": at_json(header), "map_entry": at_json(entry)}),
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "churn": c.json(),
            });
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::nginx_common::tests_support::{instance, snapshot_with};
    use crate::model::Severity;

    const BASE: &str = "http {\n    map $http_upgrade $connection_upgrade {\n        default upgrade;\n        ''      close;\n    }\n    upstream app {\n        server 10.0.0.5:8080;\n        keepalive 16;\n    }\n    server {\n        location / {\n            proxy_pass http://app;\n        }\n        location /ws {\n            proxy_http_version 1.1;\n            proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;\n            proxy_pass http://app;\n        }\n    }\n}\n";

    #[test]
    fn fires_for_http_1_0_default_connection_close_and_a_close_map() {
        let s = snapshot_with(instance(Some(50), "nginx/1.24.0", BASE));
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.severity, Severity::Info, "running and idle");
        assert!(f.title.starts_with("nginx (pid 50) keeps no connection to upstream app alive: location / sends proxy_http_version 1.0 (nginx's default before 1.29.7)"), "{}", f.title);
        let problems = &f.data["locations"];
        assert_eq!(problems[0]["problems"][0]["kind"], "http_1_0");
        assert_eq!(problems[0]["problems"][1]["kind"], "connection_close");
        assert_eq!(problems[1]["problems"][0]["kind"], "map_close");
        assert_eq!(problems[1]["problems"][0]["map_entry"]["line"], 4);
        assert!(f
            .fix
            .iter()
            .any(|s| s.mentions("+            proxy_http_version 1.1;")));
        assert!(
            f.fix
                .iter()
                .any(|s| s.mentions("-        ''      close;\n+        ''      '';")),
            "{:#?}",
            f.fix
        );
    }

    #[test]
    fn does_not_fire_with_the_recipe_on_new_defaults_or_without_keepalive() {
        let good = BASE
            .replace("''      close;", "''      '';")
            .replace("            proxy_pass http://app;\n        }\n        location /ws", "            proxy_pass http://app;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }\n        location /ws");
        assert!(check(
            &snapshot_with(instance(Some(1), "nginx/1.22.1", &good)),
            &Thresholds::default()
        )
        .is_empty());
        // 1.29.7: 1.1 and no Connection header by default; the close map still counts.
        let f = check(
            &snapshot_with(instance(Some(1), "nginx/1.29.7", BASE)),
            &Thresholds::default(),
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["locations"].as_array().map(Vec::len), Some(1));
        // No keepalive in the upstream: nginx_upstream_keepalive's finding, not this.
        let none = BASE.replace("        keepalive 16;\n", "");
        assert!(check(
            &snapshot_with(instance(Some(1), "nginx/1.22.1", &none)),
            &Thresholds::default()
        )
        .is_empty());
    }
}
