//! Rule `time_wait_pressure`: TIME_WAIT against `net.ipv4.tcp_max_tw_buckets`, entries
//! the kernel had to drop (`TcpExt.TCPTimeWaitOverflow`), and who closes first. Pure: reads
//! the snapshot only.
//!
//! Fires when the share of the limit reaches `time_wait_warn_pct`, or when TIME_WAIT
//! entries are being dropped right now (critical). Below that, an Info finding is given
//! when the table overflowed at some point since boot, or when TIME_WAIT is large in
//! absolute terms ([`LARGE_TIME_WAIT`]): far from the limit it is harmless to the kernel,
//! but the implied connection churn is worth knowing. A handful of TIME_WAIT is normal
//! and gives nothing.

use std::collections::BTreeMap;

use serde_json::json;

use super::util::{counter, counter_interval_ms, pct, per_second_over_time_wait, CounterReading};
use super::Thresholds;
use crate::model::{Evidence, Finding, FixStep, Nature, Severity, Snapshot, TcpState};

pub const ID: &str = "time_wait_pressure";

/// TIME_WAIT count that earns an Info finding even far from the limit: about 167
/// connections per second closed first by this host.
pub const LARGE_TIME_WAIT: u64 = 10_000;

/// Share of classified TIME_WAIT one side needs to be called the closer.
const DOMINANT_PCT: f64 = 80.0;

/// Rows shown per breakdown.
const TOP: usize = 5;

/// Memory of one TIME_WAIT minisocket (`tw_sock_TCP` slab object, 6.18 x86_64).
const TW_BYTES: u64 = 256;

/// Which side of the connections closes first here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    /// TIME_WAIT on local listening ports: this host served and closed first.
    Server,
    /// TIME_WAIT on ephemeral ports: this host was the client and closed first.
    Client,
    Mixed,
    /// The digest holds no split (not collected).
    Unknown,
}

impl Closer {
    fn name(self) -> &'static str {
        match self {
            Closer::Server => "server",
            Closer::Client => "client",
            Closer::Mixed => "mixed",
            Closer::Unknown => "unknown",
        }
    }
}

/// What the rule measured, shared by the title, the explanation and the fix.
struct Measured {
    time_wait: u64,
    buckets_used: u64,
    limit: Option<u64>,
    share: Option<f64>,
    default_limit: Option<u64>,
    lowered: bool,
    overflow: CounterReading,
    interval_ms: Option<u64>,
    closer: Closer,
    severity: Severity,
    closes_per_s: f64,
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    let time_wait = s.summary.total().get(TcpState::TimeWait);
    // sockstat `tw` is the kernel's own count against the limit (it also holds orphaned
    // FIN_WAIT2 minisockets); the larger of the two covers readings taken a moment apart.
    let sockstat_tw = s.sockstat.map(|x| x.tw);
    let buckets_used = sockstat_tw.unwrap_or(0).max(time_wait);
    let limit = s
        .sysctl_i64("net.ipv4.tcp_max_tw_buckets")
        .and_then(|v| u64::try_from(v).ok());
    let share = limit.filter(|l| *l > 0).map(|l| pct(buckets_used, l));
    let default_limit = s.tw_buckets_default();
    let lowered = matches!((limit, default_limit), (Some(l), Some(d)) if l < d);
    let overflow = counter(s, "TcpExt.TCPTimeWaitOverflow");
    let interval_ms = counter_interval_ms(s);

    let severity = if overflow.rising() || share.is_some_and(|p| p >= t.time_wait_critical_pct) {
        Severity::Critical
    } else if share.is_some_and(|p| p >= t.time_wait_warn_pct) {
        Severity::Warning
    } else if overflow.ever() || time_wait >= LARGE_TIME_WAIT {
        Severity::Info
    } else {
        return Vec::new();
    };

    let digest = &s.sockets.time_wait;
    let closer = closer_of(digest.server_side, digest.client_side);
    let closes_per_s = per_second_over_time_wait(s, time_wait);
    let listen_ports = top(&digest.by_listen_port);
    let destinations = top(&digest.by_destination);
    let peers = top(&digest.by_peer);

    let m = Measured {
        time_wait,
        buckets_used,
        limit,
        share,
        default_limit,
        lowered,
        overflow,
        interval_ms,
        closer,
        severity,
        closes_per_s,
    };
    let title = title(&m);

    let mut evidence = vec![Evidence::new(
        "TIME_WAIT sockets",
        format!("{time_wait} (~{closes_per_s:.1} connections/s closed first by this host)"),
    )];
    if let Some(tw) = sockstat_tw {
        evidence.push(Evidence::new(
            "sockstat tw (TIME_WAIT + FIN_WAIT2 minisockets)",
            tw,
        ));
    }
    evidence.push(Evidence::new(
        "tcp_max_tw_buckets",
        match (limit, share) {
            (Some(l), Some(p)) => format!("{l} ({buckets_used} used, {p:.1}%)"),
            (Some(l), None) => format!("{l}: no TIME_WAIT entry is kept at all"),
            (None, _) => "not visible here".to_string(),
        },
    ));
    if let (true, Some(d)) = (lowered, default_limit) {
        evidence.push(Evidence::new(
            "kernel default (tcp_ehash_entries / 2)",
            format!("{d}: the limit was lowered"),
        ));
    }
    if overflow.total.is_some() {
        evidence.push(Evidence::new(
            "TCPTimeWaitOverflow (entries dropped)",
            overflow.describe(interval_ms),
        ));
    }
    if closer != Closer::Unknown {
        evidence.push(Evidence::new(
            "who closes first",
            format!(
                "server side (on a listening port): {}; client side (ephemeral port): {}",
                digest.server_side, digest.client_side
            ),
        ));
    }
    let port_rows = listen_ports.iter().map(|(port, n)| {
        Evidence::new(
            format!("server side, listening port {port}"),
            count_and_rate(s, *n),
        )
    });
    let dest_rows = destinations.iter().map(|(dst, n)| {
        Evidence::new(format!("client side, towards {dst}"), count_and_rate(s, *n))
    });
    // The side that closes first most comes first.
    if closer == Closer::Client {
        evidence.extend(dest_rows.chain(port_rows));
    } else {
        evidence.extend(port_rows.chain(dest_rows));
    }
    for (ip, n) in &peers {
        evidence.push(Evidence::new(format!("peer {ip}"), count_and_rate(s, *n)));
    }

    let why = why(&m);
    let fix = fix(s, &m);

    vec![Finding {
        rule_id: ID,
        namespaces: Vec::new(),
        nature: Nature::Live,
        severity,
        title,
        evidence,
        why,
        fix: fix.into_iter().map(FixStep::from).collect(),
        proposed: Vec::new(),
        data: json!({
            "time_wait": time_wait,
            "sockstat_tw": sockstat_tw,
            "buckets_used": buckets_used,
            "max_tw_buckets": limit,
            "used_pct": share.map(round2),
            "default_max_tw_buckets": default_limit,
            "limit_lowered": lowered,
            "overflow": overflow.json(),
            "interval_ms": interval_ms,
            "closes_per_s": round2(closes_per_s),
            "closer": closer.name(),
            "server_side": digest.server_side,
            "client_side": digest.client_side,
            "top_listen_ports": listen_ports.iter().map(|(port, n)| json!({
                "port": port, "count": n, "per_s": round2(per_second_over_time_wait(s, *n)),
            })).collect::<Vec<_>>(),
            "top_destinations": destinations.iter().map(|(dst, n)| json!({
                "address": dst.canonical_ip().to_string(), "port": dst.port, "count": n,
                "per_s": round2(per_second_over_time_wait(s, *n)),
            })).collect::<Vec<_>>(),
            "top_peers": peers.iter().map(|(ip, n)| json!({
                "address": ip.to_string(), "count": n,
                "per_s": round2(per_second_over_time_wait(s, *n)),
            })).collect::<Vec<_>>(),
        }),
    }]
}

fn closer_of(server: u64, client: u64) -> Closer {
    let all = server + client;
    if all == 0 {
        Closer::Unknown
    } else if pct(server, all) >= DOMINANT_PCT {
        Closer::Server
    } else if pct(client, all) >= DOMINANT_PCT {
        Closer::Client
    } else {
        Closer::Mixed
    }
}

/// The biggest `TOP` entries, ties by key.
fn top<K: Ord + Copy>(map: &BTreeMap<K, u64>) -> Vec<(K, u64)> {
    let mut v = super::util::sorted_counts(map.iter().map(|(k, n)| (*k, *n)));
    v.truncate(TOP);
    v
}

fn count_and_rate(s: &Snapshot, n: u64) -> String {
    format!("{n} (~{:.1}/s)", per_second_over_time_wait(s, n))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn title(m: &Measured) -> String {
    let Measured {
        time_wait,
        buckets_used: used,
        limit,
        share,
        overflow,
        interval_ms,
        closer,
        severity,
        ..
    } = *m;
    let side = match closer {
        Closer::Server => ", mostly closed first by this host as a server",
        Closer::Client => ", mostly closed first by this host as a client",
        Closer::Mixed | Closer::Unknown => "",
    };
    if overflow.rising() {
        let window = interval_ms
            .map(|ms| format!(" in {}", crate::model::units::human_duration_ms(ms)))
            .unwrap_or_default();
        let of = match limit {
            Some(l) => format!("{used} of tcp_max_tw_buckets {l} in use"),
            None => format!("{used} in use"),
        };
        return format!(
            "TIME_WAIT table full: {} entries dropped{window} ({of}){side}",
            overflow.delta.unwrap_or(0)
        );
    }
    match (severity, limit, share) {
        (Severity::Critical | Severity::Warning, Some(l), Some(p)) => {
            format!("TIME_WAIT at {p:.0}% of tcp_max_tw_buckets: {used} of {l}{side}")
        }
        _ if time_wait < LARGE_TIME_WAIT => format!(
            "TIME_WAIT overflowed tcp_max_tw_buckets {} times since boot (not now); {time_wait} TIME_WAIT now",
            overflow.total.unwrap_or(0)
        ),
        _ => format!(
            "{time_wait} TIME_WAIT sockets: ~{:.0} connections/s closed first by this host{side}",
            m.closes_per_s
        ),
    }
}

fn why(m: &Measured) -> String {
    let (time_wait, closer, overflow) = (m.time_wait, m.closer, &m.overflow);
    let closes_per_s = m.closes_per_s;
    let mut why = format!(
        "The side that closes a TCP connection first keeps it in TIME_WAIT for a fixed 60 s (TCP_TIMEWAIT_LEN; no sysctl shortens it on upstream kernels), so {time_wait} entries mean about {closes_per_s:.0} connections per second closed first by this host."
    );
    let side = match closer {
        Closer::Client => " Most sit on ephemeral local ports: this host is the client of short-lived connections (no keep-alive or pooling) and closes them itself; each entry also keeps its local port taken towards that destination for the 60 s.",
        Closer::Server => " Most sit on this host's listening ports: the server closes first, as with HTTP/1.0 clients, `Connection: close` responses, or a reverse proxy in front that does not keep its upstream connections alive; server-side TIME_WAIT costs a little memory, not ports.",
        Closer::Mixed => " They are split between listening ports (this host as a server closing first) and ephemeral ports (this host as a client closing first).",
        Closer::Unknown => "",
    };
    why.push_str(side);
    if m.severity > Severity::Info || overflow.ever() {
        why.push_str(" When tcp_max_tw_buckets is reached the kernel destroys new TIME_WAIT entries at once and only counts them in TCPTimeWaitOverflow, without a log line: connections still close, but lose the protection against stray segments of the old connection.");
    }
    why
}

fn fix(s: &Snapshot, m: &Measured) -> Vec<String> {
    let closer = m.closer;
    let nginx = "nginx as a reverse proxy before 1.29.7 opens a new upstream connection per request: add `keepalive 32;` to the `upstream { }` block and `proxy_http_version 1.1;` plus `proxy_set_header Connection \"\";` where it proxies. proxy_set_header is inherited only by a location that sets none itself: a location that sets e.g. Host must repeat `proxy_set_header Connection \"\";` or it sends `Connection: close` again. nginx 1.29.7+ and 1.30 keep upstream connections alive by default.".to_string();
    let pooling = "Reuse connections instead of opening one per request: HTTP/1.1 keep-alive and a connection pool in the client (database pools, HTTP client pools with enough idle connections per host).".to_string();
    let reuse_now = match s.sysctl_i64("net.ipv4.tcp_tw_reuse") {
        Some(v) => format!(" (now {v})"),
        None => String::new(),
    };
    let tw_reuse = format!(
        "tcp_tw_reuse only helps outgoing connections: with `sysctl -w net.ipv4.tcp_tw_reuse=1`{reuse_now} connect() may reuse a port whose TIME_WAIT is about a second old, if both ends use TCP timestamps; the default 2 does so for loopback only. It does not shorten TIME_WAIT and does nothing for connections this host accepts."
    );
    let server_keepalive = "Keep client connections alive on the server so that closes are rare and clients close first: do not answer with `Connection: close`, keep HTTP keep-alive on (nginx `keepalive_timeout 0` turns it off), and have HTTP/1.0 clients upgrade.".to_string();

    let mut fix = Vec::new();
    match closer {
        Closer::Client | Closer::Mixed | Closer::Unknown => {
            fix.push(pooling);
            fix.push(nginx);
            if closer == Closer::Mixed {
                fix.push(server_keepalive);
            }
            fix.push(tw_reuse);
        }
        Closer::Server => {
            fix.push(server_keepalive);
            fix.push(format!(
                "If a reverse proxy fronts this server, fix it there: {nginx}"
            ));
        }
    }
    if m.severity > Severity::Info {
        let suggested = m.limit.unwrap_or(0).max(m.buckets_used).max(1024) * 2;
        fix.push(format!(
            "Give the table room while the churn is fixed: `sysctl -w net.ipv4.tcp_max_tw_buckets={suggested}` (per network namespace; persist it in /etc/sysctl.d/). Each entry costs about {TW_BYTES} bytes, so 100000 is about 25 MB. Never lower the limit."
        ));
    }
    if let (true, Some(d)) = (m.lowered, m.default_limit) {
        fix.push(format!(
            "tcp_max_tw_buckets is below the kernel default {d}: remove the setting that lowered it (grep -r tcp_max_tw_buckets /etc/sysctl.conf /etc/sysctl.d/)."
        ));
    }
    fix.push("Do not set tcp_tw_recycle: it was removed in Linux 4.12, and before that it silently dropped connections from clients behind NAT.".to_string());
    fix.push("Do not lower tcp_fin_timeout for this: it only limits orphaned FIN_WAIT2 sockets; TIME_WAIT stays 60 s.".to_string());
    fix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CounterSample, Endpoint, Sockstat};

    fn snapshot(time_wait: u64, limit: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.summary.ipv4.0[TcpState::TimeWait.index()] = time_wait;
        s.sysctls
            .insert("net.ipv4.tcp_max_tw_buckets".into(), limit.to_string());
        s
    }

    fn overflow(s: &mut Snapshot, before: i64, after: i64) {
        let mut c = CounterSample {
            interval_ms: 1000,
            ..Default::default()
        };
        c.before.insert("TcpExt.TCPTimeWaitOverflow".into(), before);
        c.after.insert("TcpExt.TCPTimeWaitOverflow".into(), after);
        s.counters = Some(c);
    }

    #[test]
    fn fires_critical_near_the_limit_and_names_the_client_side() {
        let mut s = snapshot(110_000, 131_072);
        s.sockstat = Some(Sockstat {
            tw: 112_000,
            ..Default::default()
        });
        let d = &mut s.sockets.time_wait;
        d.client_side = 105_000;
        d.server_side = 5_000;
        let backend = Endpoint::new("10.0.0.5".parse().expect("ip"), 8080);
        d.by_destination.insert(backend, 90_000);
        d.by_destination
            .insert(Endpoint::new("10.0.0.6".parse().expect("ip"), 5432), 15_000);
        d.by_listen_port.insert(443, 5_000);
        d.by_peer.insert("10.0.0.5".parse().expect("ip"), 90_000);

        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Critical);
        assert!(
            f.title
                .starts_with("TIME_WAIT at 85% of tcp_max_tw_buckets: 112000 of 131072"),
            "{}",
            f.title
        );
        assert!(f.title.contains("as a client"));
        assert_eq!(f.data["buckets_used"], 112_000);
        assert_eq!(f.data["used_pct"], 85.45);
        assert_eq!(f.data["closer"], "client");
        assert_eq!(f.data["top_destinations"][0]["address"], "10.0.0.5");
        assert_eq!(f.data["top_destinations"][0]["count"], 90_000);
        assert_eq!(f.data["top_destinations"][0]["per_s"], 1500.0);
        assert_eq!(f.evidence[f.evidence.len() - 1].label, "peer 10.0.0.5");
        assert!(f.fix.iter().any(|l| l.mentions("keepalive 32;")
            && l.mentions("proxy_set_header Connection \"\";")
            && l.mentions("1.29.7")));
        assert!(f.fix.iter().any(|l| l.mentions("tcp_tw_recycle")));
        assert!(f.fix.iter().any(|l| l.mentions("tcp_fin_timeout")));
        assert!(f
            .fix
            .iter()
            .any(|l| l.mentions("tcp_max_tw_buckets=262144")));
    }

    #[test]
    fn overflow_during_the_sample_is_critical_even_below_the_limit_share() {
        let mut s = snapshot(4_000, 5_000);
        overflow(&mut s, 100, 130);
        s.sockets.time_wait.server_side = 4_000;
        s.sockets.time_wait.by_listen_port.insert(80, 4_000);
        s.sysctls
            .insert("net.ipv4.tcp_ehash_entries".into(), "262144".into());
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].title
                .starts_with("TIME_WAIT table full: 30 entries dropped in 1.0s"),
            "{}",
            f[0].title
        );
        assert_eq!(f[0].data["overflow"]["delta"], 30);
        assert_eq!(f[0].data["overflow"]["total"], 130);
        assert_eq!(f[0].data["closer"], "server");
        assert_eq!(f[0].data["limit_lowered"], true);
        assert_eq!(f[0].data["default_max_tw_buckets"], 131_072);
        assert!(f[0].fix[0].mentions("Connection: close"));
    }

    #[test]
    fn large_but_far_from_the_limit_is_info_and_past_overflow_too() {
        let s = snapshot(20_000, 262_144);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(f[0].data["closer"], "unknown");

        let mut past = snapshot(50, 262_144);
        overflow(&mut past, 7, 7);
        let f = check(&past, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Info);
        assert!(f[0].title.contains("7 times since boot"), "{}", f[0].title);
    }

    #[test]
    fn does_not_fire_for_a_handful_of_time_wait() {
        let mut s = snapshot(300, 131_072);
        overflow(&mut s, 0, 0);
        assert!(check(&s, &Thresholds::default()).is_empty());
        // No limit visible and a small count: nothing either.
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }
}
