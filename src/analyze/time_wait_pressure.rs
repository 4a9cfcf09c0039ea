//! Rule `time_wait_pressure`: TIME_WAIT against `net.ipv4.tcp_max_tw_buckets`, entries
//! the kernel had to drop (`TcpExt.TCPTimeWaitOverflow`), who closes first, and how fast.
//! Pure: reads the snapshot only.
//!
//! Fires when the share of the limit reaches `time_wait_warn_pct`, or when TIME_WAIT
//! entries are being dropped right now (critical). Below that, an Info finding is given
//! when the table overflowed at some point since boot, or when TIME_WAIT is large in
//! absolute terms ([`LARGE_TIME_WAIT`]): far from the limit it is harmless to the kernel,
//! but the implied connection churn is worth knowing. A handful of TIME_WAIT is normal
//! and gives nothing.
//!
//! The closing rate is measured, not read off the count: `TcpExt.TW` (+ `TWKilled`)
//! over the counter interval for the namespace, and the TIME_WAIT ages of each group
//! for each served port and destination. The count over 60 s undercounts wherever
//! tcp_tw_reuse takes entries over early (`TcpExt.TWRecycled`).
//!
//! A TIME_WAIT entry has no owner. When connections were traced (`Snapshot::flows`),
//! the flows that closed first name who makes them ("python3 (pid 812) opens 410
//! connections/s to 10.0.0.5:8080 and closes first"), and a process closing first at
//! [`TRACED_CHURN_PER_S`] or more is an Info finding even while TIME_WAIT is small.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::util::{
    closing_rate, counter, counter_interval_ms, describe_rate, measured_closes_per_s, pct,
    proposed_tw_buckets, rate_text, round2, window_text, CounterReading,
};
use super::{traced, Thresholds};
use crate::model::kernel::is_loopback;
use crate::model::{
    ClosingRate, Endpoint, Evidence, Finding, FixStep, FlowPeer, FlowRow, NamespaceFlows, Nature,
    PortUse, Severity, Snapshot, SysctlChange, TcpState, TimeWaitAges, TimeWaitPolicy,
};

pub const ID: &str = "time_wait_pressure";

/// TIME_WAIT count that earns an Info finding even far from the limit: about 167
/// connections per second closed first by this host.
pub const LARGE_TIME_WAIT: u64 = 10_000;

/// Connections per second one traced flow closes first that earn an Info finding on
/// their own: a process opening (or accepting) short connections at this rate holds
/// 6000 TIME_WAIT entries at the 60 s length.
pub const TRACED_CHURN_PER_S: f64 = 100.0;

/// Share of classified TIME_WAIT one side needs to be called the closer.
const DOMINANT_PCT: f64 = 80.0;

/// Rows shown per breakdown.
const TOP: usize = 5;

/// Memory of one TIME_WAIT minisocket (`tw_sock_TCP` slab object, 6.18 x86_64).
const TW_BYTES: u64 = 256;

/// Which side of the connections closes first here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closer {
    /// TIME_WAIT on local ports this host serves: it served and closed first.
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

/// One client-side destination: its TIME_WAIT, how fast it closes, and whether
/// connect() may take its ports back early.
struct DestinationRow<'a> {
    remote: Endpoint,
    count: u64,
    ages: TimeWaitAges,
    rate: ClosingRate,
    reuse: bool,
    /// The tightest source address's port use towards it, when the digest kept one.
    ports: Option<&'a PortUse>,
}

/// One port this host serves.
struct ServedRow {
    port: u16,
    count: u64,
    rate: ClosingRate,
}

/// What the rule measured, shared by the title, the explanation and the fix.
struct Measured<'a> {
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
    /// Connections closed first per second: measured by the counters, else from ages.
    closes_per_s: f64,
    recycled: CounterReading,
    policy: TimeWaitPolicy,
    destinations: Vec<DestinationRow<'a>>,
    /// Traced flows that closed first, most closes first: who makes the TIME_WAIT.
    closers: Vec<TracedCloser<'a>>,
}

/// A traced flow whose connections this host closed first.
struct TracedCloser<'a> {
    flows: &'a NamespaceFlows,
    row: &'a FlowRow,
    who: String,
    /// TIME_WAIT now toward its destination (outgoing) or on its port (incoming).
    time_wait: u64,
}

impl TracedCloser<'_> {
    fn closed_first_per_s(&self) -> f64 {
        self.flows.rate(self.row.counts.closed_local)
    }

    /// `python3 (pid 812) opens 410 connections/s to 10.0.0.5:8080 and closes first`.
    fn sentence(&self) -> String {
        format!(
            "{} {}",
            self.who,
            traced::churn_phrase(self.flows, self.row)
        )
    }
}

/// The traced flows of `s` that closed connections first, most first (at most `TOP`).
fn traced_closers(s: &Snapshot) -> Vec<TracedCloser<'_>> {
    let Some(flows) = &s.flows else {
        return Vec::new();
    };
    let digest = &s.sockets.time_wait;
    let mut out: Vec<TracedCloser> = flows
        .flows
        .iter()
        .filter(|r| r.counts.closed_local > 0)
        .map(|r| TracedCloser {
            flows,
            row: r,
            who: traced::who(s, r),
            time_wait: match r.key.peer {
                FlowPeer::Remote(e) => digest
                    .by_destination
                    .get(&Endpoint::new(e.canonical_ip(), e.port))
                    .copied()
                    .unwrap_or(0),
                FlowPeer::ListeningPort(p) => digest.by_listen_port.get(&p).copied().unwrap_or(0),
            },
        })
        .collect();
    out.sort_by(|a, b| {
        b.row
            .counts
            .closed_local
            .cmp(&a.row.counts.closed_local)
            .then(a.row.key.cmp(&b.row.key))
    });
    out.truncate(TOP);
    out
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
    let closers = traced_closers(s);

    let severity = if overflow.rising() || share.is_some_and(|p| p >= t.time_wait_critical_pct) {
        Severity::Critical
    } else if share.is_some_and(|p| p >= t.time_wait_warn_pct) {
        Severity::Warning
    } else if overflow.ever()
        || time_wait >= LARGE_TIME_WAIT
        || closers
            .first()
            .is_some_and(|c| c.closed_first_per_s() >= TRACED_CHURN_PER_S)
    {
        Severity::Info
    } else {
        return Vec::new();
    };

    let digest = &s.sockets.time_wait;
    let policy = s.time_wait_policy();
    let closer = closer_of(digest.server_side, digest.client_side);
    let mut all_ages = digest.server_ages;
    all_ages.merge(&digest.client_ages);
    let from_ages = closing_rate(s, time_wait, &all_ages);
    let measured = measured_closes_per_s(s);
    let closes_per_s = measured.unwrap_or(from_ages.per_s);
    let recycled = counter(s, "TcpExt.TWRecycled");
    let active_opens = counter(s, "Tcp.ActiveOpens");

    let served: Vec<ServedRow> = top(&digest.by_listen_port)
        .into_iter()
        .map(|(port, count)| ServedRow {
            port,
            count,
            rate: closing_rate(
                s,
                count,
                &digest
                    .ages_by_served_port
                    .get(&port)
                    .copied()
                    .unwrap_or_default(),
            ),
        })
        .collect();
    let destinations: Vec<DestinationRow> = top(&digest.by_destination)
        .into_iter()
        .map(|(remote, count)| destination_row(s, remote, count))
        .collect();
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
        recycled,
        policy,
        destinations,
        closers,
    };
    let title = title(&m);

    let source = match (measured, interval_ms) {
        (Some(_), Some(ms)) => format!("TcpExt.TW over {}", window_text(ms)),
        _ => format!(
            "from TIME_WAIT ages, over the last {}",
            window_text(from_ages.window_ms)
        ),
    };
    let mut evidence = vec![Evidence::new(
        "TIME_WAIT sockets",
        format!(
            "{time_wait} (~{} connections/s closed first by this host, {source})",
            rate_text(closes_per_s)
        ),
    )];
    if measured.is_some() {
        evidence.push(Evidence::new(
            "closing rate from TIME_WAIT ages",
            if recycled.rising() {
                format!(
                    "{}; entries tcp_tw_reuse took over are gone from these",
                    describe_rate(&from_ages)
                )
            } else {
                describe_rate(&from_ages)
            },
        ));
    }
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
    if recycled.total.is_some() {
        evidence.push(Evidence::new(
            "TcpExt.TWRecycled (TIME_WAIT ports taken over by connect())",
            recycled.describe(interval_ms),
        ));
    }
    if active_opens.rate.is_some() {
        evidence.push(Evidence::new(
            "Tcp.ActiveOpens (connections opened)",
            active_opens.describe(interval_ms),
        ));
    }
    if closer != Closer::Unknown {
        evidence.push(Evidence::new(
            "who closes first",
            format!(
                "server side (on a port this host serves): {}; client side (ephemeral port): {}",
                digest.server_side, digest.client_side
            ),
        ));
    }
    for c in &m.closers {
        evidence.push(Evidence::new(
            format!("traced {}: {}", traced::over(c.flows), c.who),
            format!(
                "{}{}; {} TIME_WAIT {} now",
                traced::churn_phrase(c.flows, c.row),
                traced::lifetime_note(c.row),
                c.time_wait,
                match c.row.key.peer {
                    FlowPeer::Remote(_) => "toward it",
                    FlowPeer::ListeningPort(_) => "on that port",
                }
            ),
        ));
    }
    let port_rows = served.iter().map(|r| {
        Evidence::new(
            format!("server side, served port {}", r.port),
            format!("{} ({})", r.count, describe_rate(&r.rate)),
        )
    });
    let dest_rows = m.destinations.iter().map(|d| {
        Evidence::new(
            format!("client side, towards {}", d.remote),
            destination_text(d, &policy),
        )
    });
    // The side that closes first most comes first.
    if closer == Closer::Client {
        evidence.extend(dest_rows.chain(port_rows));
    } else {
        evidence.extend(port_rows.chain(dest_rows));
    }
    if closer == Closer::Server {
        for (ip, n) in &peers {
            evidence.push(Evidence::new(format!("client {ip}"), n));
        }
    }

    let why = why(&m);
    let (fix, proposed) = fix(s, &m);

    vec![Finding {
        rule_id: ID,
        namespaces: Vec::new(),
        nature: Nature::Live,
        severity,
        title,
        evidence,
        why,
        fix,
        proposed,
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
            "closes_per_s_source": if measured.is_some() { "counters" } else { "ages" },
            "closes_from_ages": {"per_s": round2(from_ages.per_s), "window_ms": from_ages.window_ms},
            "tw_recycled": recycled.json(),
            "active_opens": active_opens.json(),
            "time_wait_len_s": policy.len_s(),
            "tcp_tw_reuse": policy.tw_reuse,
            "tcp_tw_reuse_delay_ms": policy.reuse_delay_ms,
            "closer": closer.name(),
            "server_side": digest.server_side,
            "client_side": digest.client_side,
            "top_listen_ports": served.iter().map(|r| json!({
                "port": r.port, "count": r.count,
                "per_s": round2(r.rate.per_s), "window_ms": r.rate.window_ms,
            })).collect::<Vec<_>>(),
            "top_destinations": m.destinations.iter().map(|d| json!({
                "address": d.remote.canonical_ip().to_string(), "port": d.remote.port,
                "count": d.count,
                "per_s": round2(d.rate.per_s), "window_ms": d.rate.window_ms,
                "young": d.ages.not_reusable_yet().min(d.count),
                "tw_reuse_applies": d.reuse,
                "local_ip": d.ports.map(|p| p.local_ip.to_string()),
                "usable": d.ports.map(|p| p.usable),
                "unavailable": d.ports.map(PortUse::unavailable),
                "headroom": d.ports.map(PortUse::headroom),
                "sustainable_per_s": d.ports.map(|p| round2(p.sustainable_per_s(&policy))),
            })).collect::<Vec<_>>(),
            "top_peers": peers.iter().map(|(ip, n)| json!({
                "address": ip.to_string(), "count": n,
            })).collect::<Vec<_>>(),
            "traced": s.flows.as_ref().map(|f| json!({
                "duration_ms": f.duration_ms,
                "closers": m.closers.iter().map(|c| {
                    let mut v = traced::flow_json(f, c.row);
                    v["time_wait"] = json!(c.time_wait);
                    v
                }).collect::<Vec<_>>(),
            })),
        }),
    }]
}

fn destination_row(s: &Snapshot, remote: Endpoint, count: u64) -> DestinationRow<'_> {
    let ages = s
        .sockets
        .time_wait
        .ages_by_destination
        .get(&remote)
        .copied()
        .unwrap_or_default();
    let ports = s
        .sockets
        .port_use
        .iter()
        .filter(|p| p.remote == remote)
        .min_by_key(|p| p.headroom());
    let ip = remote.canonical_ip();
    DestinationRow {
        remote,
        count,
        ages,
        rate: closing_rate(s, count, &ages),
        // Without its port use (not kept), judge by the destination alone: loopback
        // destinations are reached from loopback addresses.
        reuse: ports.map_or_else(|| s.tw_reuse_applies(ip, ip), |p| p.tw_reuse),
        ports,
    }
}

fn destination_text(d: &DestinationRow, policy: &TimeWaitPolicy) -> String {
    let reuse = if d.reuse {
        format!(
            "{} under {} old; tcp_tw_reuse applies: ports back after {}",
            d.ages.not_reusable_yet().min(d.count),
            window_text(policy.reuse_delay_ms),
            window_text(policy.reuse_delay_ms)
        )
    } else {
        format!(
            "tcp_tw_reuse does not apply: each port held {}",
            window_text(policy.len_ms)
        )
    };
    let ports = d
        .ports
        .map(|p| {
            format!(
                "; {} of {} ports unavailable from {}",
                p.unavailable(),
                p.usable,
                p.local_ip
            )
        })
        .unwrap_or_default();
    format!("{} ({}); {reuse}{ports}", d.count, describe_rate(&d.rate))
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

/// ` (tcp_tw_reuse takes their ports back after 1s)`, for client-side closers.
fn reuse_note(m: &Measured) -> String {
    if !matches!(m.closer, Closer::Client | Closer::Mixed) || m.destinations.is_empty() {
        return String::new();
    }
    let n = m.destinations.len();
    let reusing = m.destinations.iter().filter(|d| d.reuse).count();
    if reusing == n {
        format!(
            " (tcp_tw_reuse takes their ports back after {})",
            window_text(m.policy.reuse_delay_ms)
        )
    } else if reusing == 0 {
        format!(
            " (no TIME_WAIT reuse towards them: each port held {})",
            window_text(m.policy.len_ms)
        )
    } else {
        format!(" (tcp_tw_reuse applies to {reusing} of the top {n} destinations)")
    }
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
        Closer::Server => ", mostly as a server",
        Closer::Client => ", mostly as a client",
        Closer::Mixed | Closer::Unknown => "",
    };
    let traced = m
        .closers
        .first()
        .map(|c| format!(": {}", c.sentence()))
        .unwrap_or_default();
    let rate = format!(
        "~{} connections/s closed first by this host{side}{traced}{}",
        rate_text(m.closes_per_s),
        reuse_note(m)
    );
    if overflow.rising() {
        let window = interval_ms
            .map(|ms| format!(" in {}", crate::model::units::human_duration_ms(ms)))
            .unwrap_or_default();
        let of = match limit {
            Some(l) => format!("{used} of tcp_max_tw_buckets {l} in use"),
            None => format!("{used} in use"),
        };
        return format!(
            "TIME_WAIT table full: {} entries dropped{window} ({of}); {rate}",
            overflow.delta.unwrap_or(0)
        );
    }
    match (severity, limit, share) {
        (Severity::Critical | Severity::Warning, Some(l), Some(p)) => {
            format!("TIME_WAIT at {p:.0}% of tcp_max_tw_buckets: {used} of {l}; {rate}")
        }
        _ if time_wait < LARGE_TIME_WAIT && overflow.ever() => format!(
            "TIME_WAIT overflowed tcp_max_tw_buckets {} times since boot (not now); {time_wait} TIME_WAIT now",
            overflow.total.unwrap_or(0)
        ),
        // Traced churn alone: the process is the news.
        _ if time_wait < LARGE_TIME_WAIT => match m.closers.first() {
            Some(c) => format!("{}: {} TIME_WAIT", c.sentence(), c.time_wait),
            None => format!("{time_wait} TIME_WAIT sockets: {rate}"),
        },
        _ => format!("{time_wait} TIME_WAIT sockets: {rate}"),
    }
}

fn why(m: &Measured) -> String {
    let (time_wait, closer, overflow) = (m.time_wait, m.closer, &m.overflow);
    let len = window_text(m.policy.len_ms);
    let length_source = if m.policy.len_ms == crate::model::kernel::TIME_WAIT_LEN_S * 1000 {
        "TCP_TIMEWAIT_LEN; no sysctl shortens it on upstream kernels".to_string()
    } else {
        format!(
            "{} on this kernel",
            crate::model::kernel::VENDOR_TIME_WAIT_SYSCTL
        )
    };
    let mut why = format!(
        "The side that closes a TCP connection first keeps it in TIME_WAIT for {len} ({length_source}). This host closes about {} connections per second first; the {time_wait} entries are what is left of the last {len} of them. Each entry's timer tells when it closed, which gives the rate per destination and served port; a peer that keeps sending restarts the timer, so ages are estimates.",
        rate_text(m.closes_per_s)
    );
    if m.recycled.rising() || m.destinations.iter().any(|d| d.reuse) {
        why.push_str(&format!(
            " Where tcp_tw_reuse applies (loopback by default, every destination with 1; both need TCP timestamps), connect() takes over a TIME_WAIT port once the entry is {} old, and the entry is gone early (TcpExt.TWRecycled counts these): the count then understates the closing rate.",
            window_text(m.policy.reuse_delay_ms)
        ));
    }
    let side = match closer {
        Closer::Client => format!(" Most sit on ephemeral local ports: this host is the client of short-lived connections (no keep-alive or pooling) and closes them itself; where reuse does not apply each entry keeps its local port taken towards that destination for {len}."),
        Closer::Server => " Most sit on ports this host serves: the server closes first, as with HTTP/1.0 clients, `Connection: close` responses, or a reverse proxy in front that does not keep its upstream connections alive; server-side TIME_WAIT costs a little memory, not ports.".to_string(),
        Closer::Mixed => " They are split between ports this host serves (closing first as a server) and ephemeral ports (closing first as a client).".to_string(),
        Closer::Unknown => String::new(),
    };
    why.push_str(&side);
    if m.severity > Severity::Info || overflow.ever() {
        why.push_str(" When tcp_max_tw_buckets is reached the kernel destroys new TIME_WAIT entries at once and only counts them in TCPTimeWaitOverflow, without a log line: connections still close, but lose the protection against stray segments of the old connection.");
    }
    why
}

fn fix(s: &Snapshot, m: &Measured) -> (Vec<FixStep>, Vec<SysctlChange>) {
    let closer = m.closer;
    let nginx = "nginx as a reverse proxy before 1.29.7 opens a new upstream connection per request: add `keepalive 32;` to the `upstream { }` block and `proxy_http_version 1.1;` plus `proxy_set_header Connection \"\";` where it proxies. proxy_set_header is inherited only by a location that sets none itself: a location that sets e.g. Host must repeat `proxy_set_header Connection \"\";` or it sends `Connection: close` again. nginx 1.29.7+ and 1.30 keep upstream connections alive by default.";
    let pooling = "Reuse connections instead of opening one per request: HTTP/1.1 keep-alive and a connection pool in the client (database pools, HTTP client pools with enough idle connections per host).";
    let server_keepalive = "Keep client connections alive on the server so that closes are rare and clients close first: do not answer with `Connection: close`, keep HTTP keep-alive on (nginx `keepalive_timeout 0` turns it off), and have HTTP/1.0 clients upgrade.";

    let mut fix = Vec::new();
    let mut proposed = Vec::new();
    match closer {
        Closer::Client | Closer::Mixed | Closer::Unknown => {
            fix.push(FixStep::say(pooling));
            fix.push(FixStep::say(nginx));
            if closer == Closer::Mixed {
                fix.push(FixStep::say(server_keepalive));
            }
            fix.extend(reuse_steps(m));
        }
        Closer::Server => {
            fix.push(FixStep::say(server_keepalive));
            fix.push(FixStep::say(format!(
                "If a reverse proxy fronts this server, fix it there: {nginx}"
            )));
        }
    }
    if let Some(c) = m.closers.first().filter(|c| c.row.key.pid != 0) {
        fix.push(FixStep::run(
            format!(
                "Watch {}'s connections open and close, per destination, as they happen",
                c.who
            ),
            format!("tcpdoctor trace --pid {}", c.row.key.pid),
        ));
    }
    if m.severity > Severity::Info {
        if let Some(v) =
            proposed_tw_buckets(s, m.buckets_used).filter(|v| m.limit.is_none_or(|l| *v > l))
        {
            fix.push(FixStep::run(
                format!(
                    "Give the table room while the churn is fixed (per network namespace; persist it in /etc/sysctl.d/). Each entry costs about {TW_BYTES} bytes, so 100000 is about 25 MB. Never lower the limit"
                ),
                format!("sysctl -w net.ipv4.tcp_max_tw_buckets={v}"),
            ));
            proposed.push(SysctlChange {
                key: "net.ipv4.tcp_max_tw_buckets".into(),
                value: v.to_string(),
                was: m.limit.map(|l| l.to_string()),
                why: format!(
                    "{} TIME_WAIT entries in use against a limit of {}",
                    m.buckets_used,
                    m.limit.map_or("unknown".to_string(), |l| l.to_string())
                ),
            });
        }
    }
    if let (true, Some(d)) = (m.lowered, m.default_limit) {
        fix.push(FixStep::run(
            format!("tcp_max_tw_buckets is below the kernel default {d}: find and remove the setting that lowered it"),
            "grep -r tcp_max_tw_buckets /etc/sysctl.conf /etc/sysctl.d/",
        ));
    }
    fix.push(FixStep::say("Do not set tcp_tw_recycle: it was removed in Linux 4.12, and before that it silently dropped connections from clients behind NAT."));
    fix.push(FixStep::say(format!(
        "Do not lower tcp_fin_timeout for this: it only limits orphaned FIN_WAIT2 sockets; TIME_WAIT stays {}.",
        window_text(m.policy.len_ms)
    )));
    (fix, proposed)
}

/// What tcp_tw_reuse can still do for the client side: nothing where it applies; its
/// default back where loopback lost it; 1 for other hosts. Never 1 for loopback
/// destinations, which the default 2 already covers.
fn reuse_steps(m: &Measured) -> Vec<FixStep> {
    let delay = window_text(m.policy.reuse_delay_ms);
    let without: Vec<&DestinationRow> = m.destinations.iter().filter(|d| !d.reuse).collect();
    let loopback = |d: &&DestinationRow| {
        let ip: IpAddr = d.remote.canonical_ip();
        is_loopback(ip) || d.ports.is_some_and(|p| is_loopback(p.local_ip))
    };
    let mut steps = Vec::new();
    if m.policy.timestamps == Some(0) {
        steps.push(FixStep::run(
            "tcp_timestamps is 0 here, so tcp_tw_reuse can never take a TIME_WAIT port over (and PAWS is off). Turn them back on",
            "sysctl -w net.ipv4.tcp_timestamps=1",
        ));
        return steps;
    }
    if !m.destinations.is_empty() && without.is_empty() {
        steps.push(FixStep::say(format!(
            "tcp_tw_reuse already applies to these destinations: connect() takes their TIME_WAIT ports back after {delay}. It does not shorten TIME_WAIT for others; fewer, longer connections do."
        )));
    }
    if without.iter().any(loopback) {
        steps.push(FixStep::run(
            format!(
                "tcp_tw_reuse is {} here, so loopback connections wait the whole TIME_WAIT for a port; the kernel default 2 lets connect() take loopback TIME_WAIT ports over after about {delay}",
                m.policy.tw_reuse.map_or("not visible".to_string(), |v| v.to_string())
            ),
            "sysctl -w net.ipv4.tcp_tw_reuse=2",
        ));
    }
    let remote: Vec<String> = without
        .iter()
        .filter(|d| !loopback(d))
        .map(|d| d.remote.to_string())
        .collect();
    if !remote.is_empty() {
        if m.policy.tw_reuse == Some(1) {
            steps.push(FixStep::say(format!(
                "tcp_tw_reuse is already 1, yet it does not apply towards {}: those peers must send TCP timestamps.",
                remote.join(", ")
            )));
        } else {
            steps.push(FixStep::run(
                format!(
                    "tcp_tw_reuse only helps outgoing connections: with 1 (now {}) connect() may take over a port towards {} whose TIME_WAIT is {delay} old, if both ends use TCP timestamps. It does not shorten TIME_WAIT and does nothing for connections this host accepts",
                    m.policy.tw_reuse.map_or("not visible".to_string(), |v| v.to_string()),
                    remote.join(", ")
                ),
                "sysctl -w net.ipv4.tcp_tw_reuse=1",
            ));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CounterSample, Sockstat};

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
        assert_eq!(f.data["closes_per_s_source"], "ages");
        // Client side first, then the served port; peers only for a server-side closer.
        assert_eq!(
            f.evidence[f.evidence.len() - 1].label,
            "server side, served port 443"
        );
        assert!(f
            .evidence
            .iter()
            .all(|e| !e.label.starts_with("client 10.")));
        assert!(f.fix.iter().any(|l| l.mentions("keepalive 32;")
            && l.mentions("proxy_set_header Connection \"\";")
            && l.mentions("1.29.7")));
        assert!(f.fix.iter().any(|l| l.mentions("tcp_tw_recycle")));
        assert!(f.fix.iter().any(|l| l.mentions("tcp_fin_timeout")));
        // Twice what is in use (the kernel default is not known here).
        assert!(f
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("sysctl -w net.ipv4.tcp_max_tw_buckets=224000")));
        assert_eq!(f.proposed.len(), 1);
        assert_eq!(
            (f.proposed[0].key.as_str(), f.proposed[0].value.as_str()),
            ("net.ipv4.tcp_max_tw_buckets", "224000")
        );
        // tcp_tw_reuse is not visible: reuse is not assumed, and 1 is offered for these
        // remote destinations as a step, not proposed for the table.
        assert!(f
            .title
            .ends_with("(no TIME_WAIT reuse towards them: each port held 60s)"));
        assert!(f
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("sysctl -w net.ipv4.tcp_tw_reuse=1")));
        assert!(f.fix.iter().all(|l| !l.text.contains("sysctl -w")));
    }

    /// `n` ages spread evenly over `span_ms`, youngest 0.
    fn ages(n: u64, span_ms: u64) -> TimeWaitAges {
        let mut a = TimeWaitAges::default();
        for i in 0..n {
            a.add(Some(i * span_ms / n.max(1)), 1000);
        }
        a
    }

    /// 12,108 loopback TIME_WAIT made at ~405/s, of which tcp_tw_reuse took the older
    /// ones over: the count over 60 s says 202/s, the ages and the counters 405/s.
    fn loopback_churn() -> Snapshot {
        let mut s = snapshot(12_108, 262_144);
        s.sysctls.insert("net.ipv4.tcp_tw_reuse".into(), "2".into());
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let dst = Endpoint::new(lo, 5001);
        let a = ages(12_108, 29_896);
        let d = &mut s.sockets.time_wait;
        d.client_side = 12_108;
        d.client_ages = a;
        d.by_destination.insert(dst, 12_108);
        d.ages_by_destination.insert(dst, a);
        d.by_peer.insert(lo, 12_108);
        let mut counts = crate::model::StateCounts::default();
        counts.0[TcpState::TimeWait.index()] = 12_108;
        s.sockets.port_use.push(PortUse {
            local_ip: lo,
            remote: dst,
            counts,
            sample_owner: None,
            usable: 28_232,
            time_wait_ages: a,
            tw_reuse: true,
        });
        s
    }

    #[test]
    fn the_closing_rate_comes_from_ages_and_counters_not_the_count_over_60s() {
        let mut s = loopback_churn();
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Info);
        // 12108 over ~29.9 s of ages: ~405/s over the last 16 s.
        assert_eq!(f[0].data["closes_per_s_source"], "ages");
        let rate = f[0].data["closes_per_s"].as_f64().expect("rate");
        assert!((rate - 405.0).abs() < 5.0, "{rate}");
        assert_eq!(
            f[0].title,
            "12108 TIME_WAIT sockets: ~405 connections/s closed first by this host, mostly as a client (tcp_tw_reuse takes their ports back after 1s)"
        );
        let d = &f[0].data["top_destinations"][0];
        assert_eq!(d["tw_reuse_applies"], true);
        assert_eq!(d["young"], 406);
        assert_eq!(d["unavailable"], 406);
        assert_eq!(d["sustainable_per_s"], 28_232.0);
        // Loopback with the default: never tcp_tw_reuse=1, nothing proposed (Info).
        assert!(f[0].fix.iter().all(|l| !l.mentions("tcp_tw_reuse=1")));
        assert!(f[0].proposed.is_empty());

        // With counters, TcpExt.TW is the measured rate; TWRecycled is shown.
        let mut c = CounterSample {
            interval_ms: 1000,
            ..Default::default()
        };
        for (k, a, b) in [
            ("TcpExt.TW", 1000, 1410),
            ("TcpExt.TWRecycled", 500, 900),
            ("Tcp.ActiveOpens", 100, 510),
        ] {
            c.before.insert(k.into(), a);
            c.after.insert(k.into(), b);
        }
        s.counters = Some(c);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].data["closes_per_s_source"], "counters");
        assert_eq!(f[0].data["closes_per_s"], 410.0);
        assert_eq!(f[0].data["tw_recycled"]["per_s"], 400.0);
        assert!(f[0].evidence[0]
            .value
            .contains("~410 connections/s closed first by this host, TcpExt.TW over 1s"));
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.label == "closing rate from TIME_WAIT ages"
                && e.value.contains("tcp_tw_reuse took over")));
    }

    #[test]
    fn loopback_without_reuse_gets_the_default_back_never_1() {
        let mut s = loopback_churn();
        s.sysctls.insert("net.ipv4.tcp_tw_reuse".into(), "0".into());
        s.sockets.port_use[0].tw_reuse = false;
        let f = check(&s, &Thresholds::default());
        assert!(f[0]
            .title
            .ends_with("(no TIME_WAIT reuse towards them: each port held 60s)"));
        assert_eq!(f[0].data["top_destinations"][0]["unavailable"], 12_108);
        assert!(f[0]
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("sysctl -w net.ipv4.tcp_tw_reuse=2")));
        assert!(f[0].fix.iter().all(|l| !l.mentions("tcp_tw_reuse=1")));
    }

    #[test]
    fn served_ports_are_rows_with_their_own_rate() {
        let mut s = snapshot(40_000, 262_144);
        let d = &mut s.sockets.time_wait;
        d.server_side = 40_000;
        d.by_listen_port.insert(8080, 40_000);
        // Made over the last 20 s: 2000/s.
        d.ages_by_served_port.insert(8080, ages(40_000, 20_000));
        d.server_ages = ages(40_000, 20_000);
        d.by_peer.insert("10.1.1.1".parse().expect("ip"), 40_000);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].data["closer"], "server");
        assert_eq!(f[0].data["top_listen_ports"][0]["per_s"], 2000.0);
        assert_eq!(f[0].data["top_listen_ports"][0]["window_ms"], 16_000);
        assert!(f[0]
            .title
            .contains("~2000 connections/s closed first by this host, mostly as a server"));
        assert!(f[0].evidence.iter().any(|e| e.label == "client 10.1.1.1"));
        assert!(f[0].fix.iter().all(|l| !l.mentions("tcp_tw_reuse")));
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

    /// A traced flow of `pid` to 10.0.0.5:8080 over 1 s.
    fn traced(s: &mut Snapshot, pid: u32, opened: u64, closed_local: u64, closed_peer: u64) {
        use crate::model::{Direction, FlowCounts, FlowKey, FlowRow, NamespaceFlows};
        let dst = Endpoint::new("10.0.0.5".parse().expect("ip"), 8080);
        s.flows = Some(NamespaceFlows {
            duration_ms: 1000,
            flows: vec![FlowRow {
                key: FlowKey {
                    pid,
                    netns: 1,
                    direction: Direction::Active,
                    peer: FlowPeer::Remote(dst),
                },
                comm: "python3".into(),
                netns_name: String::new(),
                counts: FlowCounts {
                    opened,
                    closed_local,
                    closed_peer,
                    ..FlowCounts::default()
                },
            }],
            ..NamespaceFlows::default()
        });
    }

    #[test]
    fn traced_churn_names_the_process_and_destination_even_when_time_wait_is_small() {
        let mut s = snapshot(300, 262_144);
        let dst = Endpoint::new("10.0.0.5".parse().expect("ip"), 8080);
        s.sockets.time_wait.client_side = 300;
        s.sockets.time_wait.by_destination.insert(dst, 300);
        traced(&mut s, 812, 410, 409, 0);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Info);
        assert_eq!(
            f[0].title,
            "python3 (pid 812) opens 410 connections/s to 10.0.0.5:8080 and closes first: 300 TIME_WAIT"
        );
        let c = &f[0].data["traced"]["closers"][0];
        assert_eq!(c["pid"], 812);
        assert_eq!(c["remote"], "10.0.0.5:8080");
        assert_eq!(c["opened_per_s"], 410.0);
        assert_eq!(c["time_wait"], 300);
        assert!(f[0]
            .evidence
            .iter()
            .any(|e| e.label == "traced over 1.0s: python3 (pid 812)"));
        assert!(f[0]
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("tcpdoctor trace --pid 812")));

        // With many TIME_WAIT the count leads and the process follows.
        let mut big = snapshot(24_600, 262_144);
        big.sockets.time_wait.client_side = 24_600;
        big.sockets.time_wait.by_destination.insert(dst, 24_600);
        traced(&mut big, 812, 410, 410, 0);
        let f = check(&big, &Thresholds::default());
        assert!(
            f[0].title.starts_with("24600 TIME_WAIT sockets: ~410 connections/s closed first by this host, mostly as a client: python3 (pid 812) opens 410 connections/s to 10.0.0.5:8080 and closes first"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn traced_keep_alive_or_slow_churn_is_no_finding() {
        let mut s = snapshot(40, 262_144);
        // One connection opened and kept.
        traced(&mut s, 9, 1, 0, 0);
        assert!(check(&s, &Thresholds::default()).is_empty());
        // 50/s closed first: below TRACED_CHURN_PER_S.
        traced(&mut s, 9, 50, 50, 0);
        assert!(check(&s, &Thresholds::default()).is_empty());
        // 400/s, but the peer closes first: no TIME_WAIT here.
        traced(&mut s, 9, 400, 0, 400);
        assert!(check(&s, &Thresholds::default()).is_empty());
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
