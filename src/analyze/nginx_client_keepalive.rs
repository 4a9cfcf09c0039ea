//! Rule `nginx_client_keepalive`: `keepalive_timeout` / `keepalive_requests` that make
//! nginx close client connections itself, early: `keepalive_timeout 0` (keep-alive
//! off), a timeout under [`TINY_TIMEOUT_MS`], or `keepalive_requests` under
//! [`FEW_REQUESTS`]. nginx then closes first, so the TIME_WAIT lands on nginx's
//! listening ports, and clients that expected to reuse the connection reconnect (a
//! load balancer in front may even send a request on a connection nginx is closing).

use serde_json::json;

use super::nginx_common::{at_json, configured, instance_json, replace};
use super::Thresholds;
use crate::model::nginx::{NginxInstance, Setting};
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot};

pub const ID: &str = "nginx_client_keepalive";

/// An idle timeout shorter than this closes connections clients commonly keep (load
/// balancers idle out after 60 s or more; browsers keep connections for minutes).
pub const TINY_TIMEOUT_MS: u64 = 5_000;
/// Requests per connection below this make clients reconnect often (nginx's default is
/// 1000 since 1.19.10, 100 before).
pub const FEW_REQUESTS: u64 = 100;

/// An nginx time (`ngx_parse_time()`): a number with optional units ms, s, m, h, d, w,
/// M, y, possibly combined (`1m30s`); no unit means seconds.
pub fn parse_time_ms(v: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(c - b'0'))?,
            );
            i += 1;
            continue;
        }
        let n = num.take()?;
        let (mult, len) = match (c, b.get(i + 1)) {
            (b'm', Some(b's')) => (1, 2),
            (b's', _) => (1_000, 1),
            (b'm', _) => (60_000, 1),
            (b'h', _) => (3_600_000, 1),
            (b'd', _) => (86_400_000, 1),
            (b'w', _) => (604_800_000, 1),
            (b'M', _) => (2_592_000_000, 1),
            (b'y', _) => (31_536_000_000, 1),
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
        i += len;
    }
    if let Some(n) = num {
        total = total.checked_add(n.checked_mul(1_000)?)?;
    }
    Some(total)
}

/// Server-side TIME_WAIT on the ports nginx listens on here, and those ports.
fn server_side(s: &Snapshot, inst: &NginxInstance) -> (u64, Vec<u16>) {
    let pids: Vec<u32> = inst.pids().collect();
    let mut ports: Vec<u16> = s
        .sockets
        .listeners
        .iter()
        .filter(|l| l.owner.is_some_and(|o| pids.contains(&o.pid)))
        .map(|l| l.local.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let tw = ports
        .iter()
        .map(|p| {
            s.sockets
                .time_wait
                .by_listen_port
                .get(p)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    (tw, ports)
}

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let mut out = Vec::new();
    for (inst, cfg) in configured(s) {
        let (tw, ports) = server_side(s, inst);
        let live = inst.master_pid.is_some();
        for k in &cfg.keepalive_timeouts {
            let Some(ms) = k.value.split_whitespace().next().and_then(parse_time_ms) else {
                continue;
            };
            if ms >= TINY_TIMEOUT_MS {
                continue;
            }
            let off = ms == 0;
            let what = if off {
                "turns client keep-alive off: one connection per request".to_string()
            } else {
                format!("closes idle client connections after {ms} ms")
            };
            out.push(finding(
                inst,
                k,
                "keepalive_timeout",
                &what,
                off,
                live,
                tw,
                &ports,
                "75s",
            ));
        }
        for k in &cfg.keepalive_requests {
            let Some(n) = k.value.trim().parse::<u64>().ok() else {
                continue;
            };
            if n >= FEW_REQUESTS {
                continue;
            }
            let what = format!(
                "closes every client connection after {n} request{}",
                if n == 1 { "" } else { "s" }
            );
            out.push(finding(
                inst,
                k,
                "keepalive_requests",
                &what,
                n <= 1,
                live,
                tw,
                &ports,
                "1000",
            ));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn finding(
    inst: &NginxInstance,
    k: &Setting,
    directive: &str,
    what: &str,
    off: bool,
    live: bool,
    tw: u64,
    ports: &[u16],
    default: &str,
) -> Finding {
    // Keep-alive off is a warning offline and where the churn shows; a short timeout
    // or a small request count is information.
    let severity = match (off, live, tw > 0) {
        (true, false, _) | (true, true, true) => Severity::Warning,
        _ => Severity::Info,
    };
    let churn = if live && tw > 0 {
        format!(
            ": {tw} TIME_WAIT on its listening ports (~{:.1} closes/s)",
            tw as f64 / 60.0
        )
    } else {
        String::new()
    };
    let mut f = Finding::new(
        ID,
        severity,
        if live && tw > 0 {
            Nature::Live
        } else {
            Nature::Config
        },
        format!(
            "{} {directive} {} ({}, {}) {what}{churn}",
            inst.label(),
            k.value,
            k.at,
            k.context
        ),
    );
    f.evidence.push(Evidence::new(
        directive,
        format!("{} ({}, {})", k.value, k.at, k.context),
    ));
    if live {
        f.evidence.push(Evidence::new(
            "TIME_WAIT on nginx's listening ports (nginx closed first)",
            if ports.is_empty() {
                "no listener of this nginx seen here".to_string()
            } else {
                format!(
                    "{tw} on {}",
                    ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        ));
    }
    f.why = "When nginx ends a client connection itself it is the side that closes first and keeps the TIME_WAIT (on its listening port: memory, not ports), and the client pays a new handshake, and TLS, for its next request. A load balancer in front that keeps idle connections longer than nginx does may send a request on a connection nginx is just closing, and get an error. nginx's defaults are keepalive_timeout 75s and keepalive_requests 1000.".to_string();
    f.fix.push(FixStep::patch(
        "Let clients keep their connections (nginx's default; keep it longer than the idle timeout of a load balancer in front)",
        replace(&k.at, &[format!("{}{directive} {default};", k.at.indent())]),
    ));
    f.fix.push(super::nginx_common::reload_step(inst));
    f.data = json!({
        "nginx": instance_json(inst),
        "directive": directive,
        "value": k.value,
        "at": at_json(&k.at),
        "context": k.context,
        "keepalive_off": off,
        "time_wait_on_listen_ports": if live { Some(tw) } else { None },
        "listen_ports": ports,
    });
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::nginx_common::tests_support::{instance, snapshot_with};
    use crate::model::{Endpoint, ListenerSocket, Owner};

    #[test]
    fn nginx_times() {
        assert_eq!(parse_time_ms("65"), Some(65_000));
        assert_eq!(parse_time_ms("500ms"), Some(500));
        assert_eq!(parse_time_ms("1m30s"), Some(90_000));
        assert_eq!(parse_time_ms("0"), Some(0));
        assert_eq!(parse_time_ms("x"), None);
        assert_eq!(parse_time_ms("5q"), None);
    }

    #[test]
    fn fires_for_keepalive_off_and_few_requests_with_the_server_side_churn() {
        let text = "http {\n    keepalive_timeout 0;\n    server {\n        keepalive_requests 1;\n        location /a { keepalive_timeout 2s; }\n    }\n}\n";
        let mut s = snapshot_with(instance(Some(30), "nginx/1.22.1", text));
        s.sockets.listeners.push(ListenerSocket {
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), 80),
            accept_queue: 0,
            backlog: 511,
            backlog_known: true,
            inode: 5,
            owner: Some(Owner { pid: 30, fd: 6 }),
        });
        s.sockets.time_wait.by_listen_port.insert(80, 3000);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].title, "nginx (pid 30) keepalive_timeout 0 (/etc/nginx/nginx.conf:2, http) turns client keep-alive off: one connection per request: 3000 TIME_WAIT on its listening ports (~50.0 closes/s)");
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["time_wait_on_listen_ports"], 3000);
        assert!(f[0].fix[0].mentions("-    keepalive_timeout 0;\n+    keepalive_timeout 75s;"));
        assert_eq!(f[1].data["context"], "location /a");
        assert_eq!(f[1].severity, Severity::Info);
        assert_eq!(f[2].data["directive"], "keepalive_requests");
        assert_eq!(f[2].severity, Severity::Warning);
    }

    #[test]
    fn does_not_fire_for_ordinary_values() {
        let text = "http { keepalive_timeout 65 60; keepalive_requests 1000; server { keepalive_timeout 5s; } }";
        assert!(check(
            &snapshot_with(instance(Some(1), "nginx/1.22.1", text)),
            &Thresholds::default()
        )
        .is_empty());
    }
}
