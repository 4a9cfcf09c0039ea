//! Rule `nginx_proxy_header_inheritance`: the inheritance trap. A location that sets
//! any `proxy_set_header` inherits none from the server or http level
//! (`ngx_http_proxy_merge_loc_conf()` takes the enclosing list only when the level has
//! none), so a `proxy_set_header Connection "";` written once at the top silently stops
//! applying there, and nginx before 1.29.7 sends `Connection: close` from that location:
//! the upstream's keepalive is lost for its requests only. Points at the location.

use serde_json::json;

use super::nginx_common::{
    at_json, churn, churn_evidence, configured, defaults, insert_after, instance_json, reload_step,
    OpenRates,
};
use super::Thresholds;
use crate::model::nginx::ProxyTarget;
use crate::model::{Endpoint, Evidence, Finding, FixStep, Nature, Snapshot};

pub const ID: &str = "nginx_proxy_header_inheritance";

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    check_with_rates(s, t, &super::nginx_common::open_rates(s))
}

pub fn check_with_rates(s: &Snapshot, t: &Thresholds, rates: &OpenRates) -> Vec<Finding> {
    let mut out = Vec::new();
    for (inst, cfg) in configured(s) {
        let d = defaults(inst);
        // From 1.29.7 no Connection header is sent by default: losing `Connection ""`
        // costs nothing there.
        if d.keepalive {
            continue;
        }
        for (srv, l, pp) in cfg.proxied() {
            if !l.own_headers {
                continue;
            }
            let Some(lost) = l.dropped_headers.iter().find(|h| h.clears_connection()) else {
                continue;
            };
            if l.connection_header().is_some() {
                continue;
            }
            // Only where a connection could be kept: an upstream with a cache.
            let (upstream, endpoints): (String, Vec<Endpoint>) = match &pp.target {
                ProxyTarget::Upstream { name } => match cfg.upstream(name) {
                    Some(u) if u.cached_connections(inst.version.as_ref()).unwrap_or(0) > 0 => (
                        u.name.clone(),
                        u.servers
                            .iter()
                            .flat_map(|s| s.endpoints.iter().copied())
                            .collect(),
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            let c = churn(s, inst, &endpoints, rates);
            let own_last = l.headers.iter().max_by_key(|h| h.at.line);
            let title = format!(
                "{} {} ({}) sets its own proxy_set_header, so {}'s Connection \"\" ({}) does not apply: it sends Connection: close to upstream {upstream}{}",
                inst.label(),
                l.label,
                l.at,
                if lost.at.file == l.at.file { "the enclosing level" } else { "an enclosing level" },
                lost.at,
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
            f.evidence.push(Evidence::new(
                format!("{} sets", l.label),
                l.headers
                    .iter()
                    .map(|h| format!("{} ({})", h.name, h.at))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
            f.evidence.push(Evidence::new(
                "dropped from the enclosing level",
                l.dropped_headers
                    .iter()
                    .map(|h| format!("{} \"{}\" ({})", h.name, h.value, h.at))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
            f.evidence.push(Evidence::new("server", srv.label()));
            for (label, value) in churn_evidence(&c, &format!("upstream {upstream}")) {
                f.evidence.push(Evidence::new(label, value));
            }
            f.evidence.push(Evidence::new("nginx version", &d.note));
            f.why = "proxy_set_header is inherited from the enclosing level only by a level that sets none itself: one header of its own and the location's list is just its own lines. The Connection \"\" written for keep-alive at the server or http level then no longer applies, nginx adds its default Connection: close, the backend closes after every response, and each request of this location opens a new connection.".to_string();
            if let Some(last) = own_last {
                let ind = last.at.indent().to_string();
                let mut lines = vec![format!("{ind}proxy_set_header Connection \"\";")];
                // The other dropped headers were lost the same way; restore them too.
                for h in l.dropped_headers.iter().filter(|h| !h.clears_connection()) {
                    let v = if h.value.is_empty() || h.value.contains([' ', '"', ';']) {
                        format!("\"{}\"", h.value.replace('"', "\\\""))
                    } else {
                        h.value.clone()
                    };
                    lines.push(format!("{ind}proxy_set_header {} {v};", h.name));
                }
                f.fix.push(FixStep::patch(
                    format!("Repeat the enclosing level's headers in {} (Connection \"\" first; the others it dropped the same way)", l.label),
                    insert_after(&last.at, &lines),
                ));
            }
            f.fix.push(FixStep::say(
                "Or keep the shared headers in one snippet file and `include` it in every location that sets its own, so the list cannot drift.",
            ));
            f.fix.push(reload_step(inst));
            f.data = json!({
                "nginx": instance_json(inst),
                "location": l.label,
                "at": at_json(&l.at),
                "upstream": upstream,
                "own_headers": l.headers.iter().map(|h| json!({"name": h.name, "at": at_json(&h.at)})).collect::<Vec<_>>(),
                "dropped_headers": l.dropped_headers.iter().map(|h| json!({"name": h.name, "value": h.value, "at": at_json(&h.at)})).collect::<Vec<_>>(),
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

    const TRAP: &str = "http {\n    upstream app {\n        server 127.0.0.1:18080;\n        keepalive 16;\n    }\n    server {\n        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n        proxy_set_header Host $host;\n        location / {\n            proxy_pass http://app;\n        }\n        location /api {\n            proxy_set_header X-Real-IP $remote_addr;\n            proxy_pass http://app;\n        }\n    }\n}\n";

    #[test]
    fn fires_at_the_location_that_sets_its_own_headers() {
        let mut s = snapshot_with(instance(Some(9), "nginx/1.22.1", TRAP));
        s.sockets
            .time_wait
            .by_destination
            .insert(Endpoint::new("127.0.0.1".parse().expect("ip"), 18080), 90);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1, "only /api");
        let f = &f[0];
        assert_eq!(f.data["at"]["line"], 13);
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.title.starts_with("nginx (pid 9) location /api (/etc/nginx/nginx.conf:13) sets its own proxy_set_header, so the enclosing level's Connection \"\" (/etc/nginx/nginx.conf:8) does not apply"), "{}", f.title);
        let patch = f.fix[0].patch.as_deref().expect("diff");
        assert_eq!(
            patch,
            "--- /etc/nginx/nginx.conf\n+++ /etc/nginx/nginx.conf\n@@ -14 +14,3 @@\n             proxy_set_header X-Real-IP $remote_addr;\n+            proxy_set_header Connection \"\";\n+            proxy_set_header Host $host;\n"
        );
    }

    #[test]
    fn does_not_fire_when_repeated_on_new_versions_or_without_keepalive() {
        let fixed = TRAP.replace(
            "proxy_set_header X-Real-IP $remote_addr;\n",
            "proxy_set_header X-Real-IP $remote_addr;\n            proxy_set_header Connection \"\";\n",
        );
        assert!(check(
            &snapshot_with(instance(Some(1), "nginx/1.22.1", &fixed)),
            &Thresholds::default()
        )
        .is_empty());
        assert!(check(
            &snapshot_with(instance(Some(1), "nginx/1.29.7", TRAP)),
            &Thresholds::default()
        )
        .is_empty());
        let no_ka = TRAP.replace("        keepalive 16;\n", "");
        assert!(check(
            &snapshot_with(instance(Some(1), "nginx/1.22.1", &no_ka)),
            &Thresholds::default()
        )
        .is_empty());
    }
}
