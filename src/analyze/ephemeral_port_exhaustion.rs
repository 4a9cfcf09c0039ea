//! Rule `ephemeral_port_exhaustion`: local ports from `ip_local_port_range` towards one
//! destination. A connect() needs a local port unique per (source ip, destination ip,
//! destination port), so the range runs out per destination, not per host. Pure: reads
//! the snapshot only.
//!
//! A port is unavailable while a socket other than TIME_WAIT holds it, and while a
//! TIME_WAIT socket holds it unless tcp_tw_reuse applies to the destination and the
//! entry is older than the reuse delay ([`PortUse::unavailable`]). Each free port then
//! serves one new connection per reuse delay (with reuse) or per TIME_WAIT length
//! (without): that bounds the rate a destination sustains. A destination fires on the
//! share of its ports unavailable now (`port_warn_pct` / `port_critical_pct`), and as
//! a warning on its closing rate: one above what it sustains, or one whose steady state
//! would pass `port_warn_pct`. A rate is a forecast (a burst looks like one too), so it
//! never makes a finding critical on its own: ports that really run out are. One
//! finding lists the destinations; the worst one names the severity and the title.
//!
//! When connections were traced (`Snapshot::flows`), the rate is the one measured:
//! connections opened toward the destination per second plus connect() calls that
//! failed there with EADDRNOTAVAIL (what was asked, not only what got a port), and the
//! process making them is named. EADDRNOTAVAIL traced toward a destination means its
//! ports ran out during the interval: critical. Either way the finding says whether the
//! rate is sustainable and, when not, when the ports run out ([`runway::ports`]).

use std::net::IpAddr;

use serde_json::json;

use super::runway::{self, PortRunway};
use super::util::{
    closing_rate, counter, counter_interval_ms, describe_rate, owner_label, pct, rate_text, round2,
    unreserved_listeners_in, widened_port_range, window_text,
};
use super::{traced, Thresholds};
use crate::model::kernel::is_loopback;
use crate::model::{
    ClosingRate, Evidence, Finding, FixStep, Nature, PortRange, PortUse, Severity, Snapshot,
    SysctlChange, TcpState, TimeWaitPolicy,
};

pub const ID: &str = "ephemeral_port_exhaustion";

/// Destinations shown in the evidence.
const TOP: usize = 5;

/// What the tracer saw toward one destination (every process together).
struct TracedDemand {
    opened: u64,
    eaddrnotavail: u64,
    /// (opened + EADDRNOTAVAIL) per second.
    per_s: f64,
    duration_ms: u64,
    /// The process that asked most: `python3 (pid 812)`, its pid.
    who: String,
    pid: u32,
}

/// Connections asked of `remote` while traced; `None` when it was not traced or no
/// flow went there.
fn traced_demand(s: &Snapshot, remote: crate::model::Endpoint) -> Option<TracedDemand> {
    let f = s.flows.as_ref()?;
    let mut d = TracedDemand {
        opened: 0,
        eaddrnotavail: 0,
        per_s: 0.0,
        duration_ms: f.duration_ms,
        who: String::new(),
        pid: 0,
    };
    let mut top = 0;
    let mut seen = false;
    for r in f.toward(remote) {
        seen = true;
        let asked = r.counts.opened + r.counts.connect_failures.eaddrnotavail;
        d.opened += r.counts.opened;
        d.eaddrnotavail += r.counts.connect_failures.eaddrnotavail;
        if asked > top || d.who.is_empty() {
            top = asked;
            d.who = traced::who(s, r);
            d.pid = r.key.pid;
        }
    }
    d.per_s = f.rate(d.opened + d.eaddrnotavail);
    seen.then_some(d)
}

/// What the numbers are for one destination.
struct DestinationUse<'a> {
    entry: &'a PortUse,
    unavailable: u64,
    unavailable_pct: f64,
    /// The closing rate from TIME_WAIT ages (the rate without a tracer).
    rate: ClosingRate,
    traced: Option<TracedDemand>,
    /// Its demand (traced, else the closing rate), what it sustains, and when the ports
    /// run out.
    runway: PortRunway,
    /// Ports unavailable once this closing rate has gone on for a reuse delay (with
    /// reuse) or a TIME_WAIT length (without), as a share of the usable ones.
    projected_pct: f64,
    severity: Severity,
}

impl DestinationUse<'_> {
    fn sustainable(&self) -> bool {
        self.runway.sustainable()
    }

    /// EADDRNOTAVAIL traced toward it: connect() found no port.
    fn ran_out(&self) -> u64 {
        self.traced.as_ref().map_or(0, |t| t.eaddrnotavail)
    }

    /// `python3 (pid 812)`: the traced process when there is one, else the sample
    /// owner of its sockets.
    fn who(&self, s: &Snapshot) -> String {
        match &self.traced {
            Some(t) if !t.who.is_empty() && t.pid != 0 => t.who.clone(),
            _ => owner_label(s, self.entry.sample_owner),
        }
    }
}

/// Whether this rule reports the EADDRNOTAVAIL traced toward `remote`: the ports toward
/// it are counted (a `port_use` entry), so a traced EADDRNOTAVAIL makes it a critical
/// destination here, named with who failed and how often. `connect_failures` leaves
/// those out rather than say the same thing in a second critical finding.
pub fn reports_eaddrnotavail_toward(s: &Snapshot, remote: crate::model::Endpoint) -> bool {
    let want = crate::model::Endpoint::new(remote.canonical_ip(), remote.port);
    s.sockets
        .port_use
        .iter()
        .any(|p| crate::model::Endpoint::new(p.remote.canonical_ip(), p.remote.port) == want)
}

pub fn check(s: &Snapshot, t: &Thresholds) -> Vec<Finding> {
    if s.sockets.port_use.is_empty() {
        return Vec::new();
    }
    let ports = s.ephemeral_ports();
    let range = ports.range;
    let policy = s.time_wait_policy();

    let mut flagged: Vec<DestinationUse> = s
        .sockets
        .port_use
        .iter()
        .filter_map(|e| assess(s, e, &policy, t))
        .collect();
    if flagged.is_empty() {
        return Vec::new();
    }
    flagged.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.ran_out().cmp(&a.ran_out()))
            .then(b.unavailable_pct.total_cmp(&a.unavailable_pct))
            .then(b.projected_pct.total_cmp(&a.projected_pct))
            .then(a.entry.remote.cmp(&b.entry.remote))
    });
    let worst = &flagged[0];
    let severity = worst.severity;
    let interval_ms = counter_interval_ms(s);
    let attempt_fails = counter(s, "Tcp.AttemptFails");
    let recycled = counter(s, "TcpExt.TWRecycled");
    let active_opens = counter(s, "Tcp.ActiveOpens");

    let worst_who = worst.who(s);
    let title = title(worst, &policy, flagged.len(), &worst_who);

    let mut evidence = vec![Evidence::new(
        "usable ephemeral ports per destination",
        format!(
            "{} (ip_local_port_range {}-{}{}, {} reserved inside)",
            worst.entry.usable,
            range.low,
            range.high,
            if !ports.range_seen {
                " assumed: not visible"
            } else {
                ""
            },
            ports.reserved_inside()
        ),
    )];
    for d in flagged.iter().take(TOP) {
        evidence.push(Evidence::new(
            format!("{} -> {}", d.entry.local_ip, d.entry.remote),
            destination_text(s, d, &policy),
        ));
    }
    evidence.push(Evidence::new(
        "tcp_tw_reuse",
        format!(
            "{}; TIME_WAIT lasts {}",
            reuse_setting_text(&policy),
            window_text(policy.len_ms)
        ),
    ));
    if recycled.total.is_some() {
        evidence.push(Evidence::new(
            "TcpExt.TWRecycled (connects that took over a TIME_WAIT port)",
            recycled.describe(interval_ms),
        ));
    }
    if active_opens.rate.is_some() {
        evidence.push(Evidence::new(
            "Tcp.ActiveOpens (connects, all destinations)",
            active_opens.describe(interval_ms),
        ));
    }
    if attempt_fails.total.is_some() {
        evidence.push(Evidence::new(
            "Tcp.AttemptFails (connects failed after the SYN)",
            attempt_fails.describe(interval_ms),
        ));
    }
    let listeners_in_range = unreserved_listeners_in(s, range)
        .into_keys()
        .collect::<Vec<u16>>();
    if !listeners_in_range.is_empty() {
        evidence.push(Evidence::new(
            "listening ports inside the range, not reserved",
            join_ports(&listeners_in_range),
        ));
    }

    let why = format!(
        "Each outgoing connection takes a local port from ip_local_port_range that only has to be unique for its (source IP, destination IP, destination port), so this host has {} ports for every such pair. A port stays taken while the connection is open, and after this host closes first it stays in TIME_WAIT for {}. Where tcp_tw_reuse applies to the destination (1: all; 2, the default: loopback only; both need TCP timestamps), connect() may take a TIME_WAIT port over once the entry is {} old, so each free port serves about one new connection per {}; elsewhere one per {}. Once none is free, connect() fails at once with EADDRNOTAVAIL (\"Cannot assign requested address\") without sending a SYN and no kernel counter records it: look for that error in the logs of {worst_who}. TIME_WAIT ages are read from each entry's timer; a peer that keeps sending restarts it, so such entries look younger and are counted as unavailable.",
        worst.entry.usable,
        window_text(policy.len_ms),
        window_text(policy.reuse_delay_ms),
        window_text(policy.reuse_delay_ms),
        window_text(policy.len_ms),
    );

    let (fix, proposed) = fix(s, worst, &policy, range, t);

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
            "port_range": [range.low, range.high],
            "port_range_assumed": !ports.range_seen,
            "reserved_in_range": ports.reserved_inside(),
            "usable": worst.entry.usable,
            "max_new_per_s": round2(worst.runway.sustainable_per_s),
            "tcp_tw_reuse": policy.tw_reuse,
            "tcp_tw_reuse_delay_ms": policy.reuse_delay_ms,
            "tcp_timestamps": policy.timestamps,
            "time_wait_len_s": policy.len_s(),
            "attempt_fails": attempt_fails.json(),
            "tw_recycled": recycled.json(),
            "active_opens": active_opens.json(),
            "interval_ms": interval_ms,
            "listening_ports_in_range": listeners_in_range,
            "destinations": flagged.iter().map(|d| destination_json(s, d)).collect::<Vec<_>>(),
        }),
    }]
}

/// One destination for the finding's `data`.
fn destination_json(s: &Snapshot, d: &DestinationUse) -> serde_json::Value {
    json!({
            "local_ip": d.entry.local_ip.to_string(),
            "remote_ip": d.entry.remote.canonical_ip().to_string(),
            "remote_port": d.entry.remote.port,
            "used": d.entry.used(),
            "time_wait": d.entry.time_wait(),
            "time_wait_young": d.entry.time_wait_ages.not_reusable_yet(),
            "established": d.entry.counts.get(TcpState::Established),
            "unavailable": d.unavailable,
            "headroom": d.entry.headroom(),
            "used_pct": round2(pct(d.entry.used(), d.entry.usable)),
            "unavailable_pct": round2(d.unavailable_pct),
            "judged_pct": round2(d.unavailable_pct),
            "tw_reuse_applies": d.entry.tw_reuse,
            "closes_per_s": round2(d.rate.per_s),
            "closes_window_ms": d.rate.window_ms,
            "sustainable_per_s": round2(d.runway.sustainable_per_s),
            "sustainable": d.sustainable(),
            "projected_pct": round2(d.projected_pct),
            "demand_per_s": round2(d.runway.demand_per_s),
            "demand_source": if d.traced.is_some() { "traced" } else { "time_wait_ages" },
            "traced": d.traced.as_ref().map(|t| json!({
                "opened": t.opened,
                "eaddrnotavail": t.eaddrnotavail,
                "per_s": round2(t.per_s),
                "duration_ms": t.duration_ms,
                "pid": t.pid,
            })),
            "runway": d.runway.json(),
            "severity": d.severity,
            "pid": d.entry.sample_owner.map(|o| o.pid),
            "comm": d.entry.sample_owner.and_then(|o| s.process(o.pid)).map(|p| p.comm.clone()),
    })
}

fn assess<'a>(
    s: &Snapshot,
    entry: &'a PortUse,
    policy: &TimeWaitPolicy,
    t: &Thresholds,
) -> Option<DestinationUse<'a>> {
    let usable = entry.usable;
    let share = |n: u64| if usable == 0 { 100.0 } else { pct(n, usable) };
    let unavailable = entry.unavailable();
    let unavailable_pct = share(unavailable);
    let rate = closing_rate(s, entry.time_wait(), &entry.time_wait_ages);
    let traced = traced_demand(s, entry.remote);
    let demand_per_s = traced.as_ref().map_or(rate.per_s, |t| t.per_s);
    let runway = runway::ports(entry, policy, demand_per_s);
    let sustainable_per_s = runway.sustainable_per_s;
    let hold_ms = entry.hold_ms(policy);
    let projected = entry.held_open() as f64 + demand_per_s * hold_ms as f64 / 1000.0;
    let projected_pct = if usable == 0 {
        100.0
    } else {
        projected * 100.0 / usable as f64
    };
    let ran_out = traced.as_ref().is_some_and(|d| d.eaddrnotavail > 0);
    let now = if unavailable_pct >= t.port_critical_pct || ran_out {
        Some(Severity::Critical)
    } else if unavailable_pct >= t.port_warn_pct {
        Some(Severity::Warning)
    } else {
        None
    };
    // The rate alone: faster than the ports sustain (connect() fails once the free
    // ports are used up), or a steady state past the warning share.
    let at_rate = ((demand_per_s > 0.0 && demand_per_s >= sustainable_per_s)
        || projected_pct >= t.port_warn_pct)
        .then_some(Severity::Warning);
    let severity = now.max(at_rate)?;
    Some(DestinationUse {
        entry,
        unavailable,
        unavailable_pct,
        rate,
        traced,
        runway,
        projected_pct,
        severity,
    })
}

fn title(worst: &DestinationUse, policy: &TimeWaitPolicy, flagged: usize, who: &str) -> String {
    let e = worst.entry;
    let more = match flagged {
        1 => String::new(),
        n => format!("; {} more destinations near the limit", n - 1),
    };
    let (rate, most) = (worst.runway.demand_per_s, worst.runway.sustainable_per_s);
    // Traced: what was asked of it (opened and refused for want of a port); else the
    // closing rate its TIME_WAIT ages give.
    let doing = if worst.traced.is_some() {
        "opening"
    } else {
        "closing"
    };
    // At the limit the kernel itself holds the rate there (connect() fails until a
    // port frees up); above it only while free ports last.
    let pace = if rate > most * 1.05 {
        format!(
            "{doing} ~{}/s, more than the ~{}/s it sustains",
            rate_text(rate),
            rate_text(most)
        )
    } else if rate >= most * 0.95 {
        format!(
            "{doing} ~{}/s, at the ~{}/s it sustains",
            rate_text(rate),
            rate_text(most)
        )
    } else {
        format!(
            "{doing} ~{}/s of ~{}/s it sustains",
            rate_text(rate),
            rate_text(most)
        )
    };
    let reuse = if e.tw_reuse {
        format!(
            "TIME_WAIT ports reused after {}",
            window_text(policy.reuse_delay_ms)
        )
    } else {
        format!(
            "no TIME_WAIT reuse: each port held {}",
            window_text(policy.len_ms)
        )
    };
    if let Some(t) = worst.traced.as_ref().filter(|t| t.eaddrnotavail > 0) {
        return format!(
            "{who} failed {} connect() calls with EADDRNOTAVAIL toward {} in {}: {} of {} ephemeral ports from {} unavailable, {} left; {pace} ({reuse}){more}",
            t.eaddrnotavail,
            e.remote,
            crate::model::units::human_duration_ms(t.duration_ms),
            worst.unavailable,
            e.usable,
            e.local_ip,
            e.headroom()
        );
    }
    format!(
        "Ephemeral ports towards {} from {} at {:.0}%: {} of {} unavailable, {} left; {pace} ({reuse}) ({who}){more}",
        e.remote,
        e.local_ip,
        worst.unavailable_pct,
        worst.unavailable,
        e.usable,
        e.headroom()
    )
}

fn destination_text(s: &Snapshot, d: &DestinationUse, policy: &TimeWaitPolicy) -> String {
    let e = d.entry;
    let open: Vec<String> = TcpState::ALL
        .iter()
        .filter(|st| **st != TcpState::TimeWait && e.counts.get(**st) > 0)
        .map(|st| format!("{} {}", e.counts.get(*st), st.name()))
        .collect();
    let open = if open.is_empty() {
        "none open".to_string()
    } else {
        open.join(", ")
    };
    let tw = e.time_wait();
    let tw_text = if e.tw_reuse {
        format!(
            "{tw} TIME_WAIT, {} of them under {} old (tcp_tw_reuse applies: the older ones can be taken over)",
            e.time_wait_ages.not_reusable_yet().min(tw),
            window_text(policy.reuse_delay_ms)
        )
    } else {
        format!("{tw} TIME_WAIT (tcp_tw_reuse does not apply: all held)")
    };
    let traced = match &d.traced {
        Some(t) => {
            format!(
                "; traced over {}: {} opened{}, {}/s asked ({})",
                crate::model::units::human_duration_ms(t.duration_ms),
                t.opened,
                if t.eaddrnotavail > 0 {
                    format!(", {} failed with EADDRNOTAVAIL", t.eaddrnotavail)
                } else {
                    String::new()
                },
                rate_text(t.per_s),
                d.who(s)
            ) + &match e.sample_owner {
                // The process holding the ports may not be the one asking for more.
                Some(o) if o.pid != t.pid => format!("; ports held by {}", owner_label(s, Some(o))),
                _ => String::new(),
            }
        }
        None => format!("; {}", owner_label(s, e.sample_owner)),
    };
    format!(
        "{} unavailable ({:.1}%), {} left: {open}; {tw_text}; closing {}, ~{}/s sustainable{traced}; {}",
        d.unavailable,
        d.unavailable_pct,
        e.headroom(),
        describe_rate(&d.rate),
        rate_text(d.runway.sustainable_per_s),
        d.runway.text()
    )
}

fn reuse_setting_text(policy: &TimeWaitPolicy) -> String {
    let setting = match policy.tw_reuse {
        Some(0) => "0 (off)".to_string(),
        Some(1) => "1 (outgoing connections reuse TIME_WAIT ports)".to_string(),
        Some(2) => "2 (loopback destinations only)".to_string(),
        Some(v) => v.to_string(),
        None => "not visible".to_string(),
    };
    let delay = if policy.reuse_delay_seen {
        format!("tcp_tw_reuse_delay {} ms", policy.reuse_delay_ms)
    } else {
        "reuse after about 1 s (no tcp_tw_reuse_delay on this kernel)".to_string()
    };
    let timestamps = if policy.timestamps == Some(0) {
        "; tcp_timestamps 0: no reuse at all"
    } else {
        ""
    };
    format!("{setting}, {delay}{timestamps}")
}

/// Comma-separated ports, as ip_local_reserved_ports takes them.
fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The steps, and the sysctls that fix this finding: a wider range when ports are
/// short, reuse where it does not apply yet and TIME_WAIT is what holds the ports.
fn fix(
    s: &Snapshot,
    worst: &DestinationUse,
    policy: &TimeWaitPolicy,
    range: PortRange,
    t: &Thresholds,
) -> (Vec<FixStep>, Vec<SysctlChange>) {
    let e = worst.entry;
    let who = owner_label(s, e.sample_owner);
    let dst = e.remote;
    let dst_ip: IpAddr = dst.canonical_ip();
    let mut proposed = Vec::new();
    let mut fix = vec![
        FixStep::say(format!(
            "Reuse connections to {dst} in {who}: a connection pool or HTTP keep-alive turns thousands of short connections (and their TIME_WAIT ports) into a few long ones."
        )),
        FixStep::say("Spread the load: ports run out per (source IP, destination IP, destination port), so another source IP on this host, or another destination IP or port for the same service (more backend listeners), adds a full range each."),
        FixStep::say("If the application binds a source IP before connect(), set IP_BIND_ADDRESS_NO_PORT on the socket (Linux 4.2+): without it bind(ip, 0) takes a port for all destinations and fails with EADDRINUSE long before any one destination is full."),
    ];
    let short = worst.unavailable_pct >= t.port_warn_pct || !worst.sustainable();
    if let (true, Some(wide)) = (short, widened_port_range(range)) {
        let value = format!("{} {}", wide.low, wide.high);
        let reserved_now = s
            .sysctl("net.ipv4.ip_local_reserved_ports")
            .unwrap_or("")
            .trim()
            .to_string();
        fix.push(FixStep::run(
            format!(
                "Widen the range to {wide}, clear of the ports services use below 32768 (start and end of different parity, as the kernel prefers); per network namespace, persist it in /etc/sysctl.d/. Not 1024-65535: it collides with services that start later"
            ),
            format!("sysctl -w net.ipv4.ip_local_port_range=\"{value}\""),
        ));
        proposed.push(SysctlChange {
            key: "net.ipv4.ip_local_port_range".into(),
            value,
            was: s.sysctl("net.ipv4.ip_local_port_range").map(str::to_string),
            why: format!(
                "{} more local ports per destination ({} has {} unavailable of {})",
                wide.len().saturating_sub(range.len()),
                dst,
                worst.unavailable,
                e.usable
            ),
        });
        let in_new: Vec<u16> = unreserved_listeners_in(s, wide).into_keys().collect();
        if in_new.is_empty() {
            fix.push(FixStep::say(
                "List any service port inside the new range in net.ipv4.ip_local_reserved_ports, so that connect() never takes it.",
            ));
        } else {
            let list = match reserved_now.as_str() {
                "" => join_ports(&in_new),
                old => format!("{old},{}", join_ports(&in_new)),
            };
            fix.push(FixStep::run(
                "Reserve the listening ports inside the new range, so that connect() never takes them",
                format!("sysctl -w net.ipv4.ip_local_reserved_ports={list}"),
            ));
            proposed.push(SysctlChange {
                key: "net.ipv4.ip_local_reserved_ports".into(),
                value: list,
                was: Some(reserved_now.clone()),
                why: format!(
                    "listening ports inside the widened range: {}",
                    join_ports(&in_new)
                ),
            });
        }
    }
    // TIME_WAIT is what holds the ports when it is most of what is unavailable.
    let tw_blocks = e.unavailable() > 0 && 2 * (e.unavailable() - e.held_open()) >= e.unavailable();
    let loopback = is_loopback(e.local_ip) || is_loopback(dst_ip);
    if policy.timestamps == Some(0) {
        fix.push(FixStep::run(
            "tcp_timestamps is 0 here: without TCP timestamps tcp_tw_reuse can never take a TIME_WAIT port over and PAWS is off. Turn them back on",
            "sysctl -w net.ipv4.tcp_timestamps=1",
        ));
        if tw_blocks {
            proposed.push(SysctlChange {
                key: "net.ipv4.tcp_timestamps".into(),
                value: "1".into(),
                was: Some("0".into()),
                why: "tcp_tw_reuse needs TCP timestamps to take TIME_WAIT ports over".into(),
            });
        }
    } else if e.tw_reuse {
        fix.push(FixStep::say(format!(
            "tcp_tw_reuse already applies to {dst}: connect() takes over TIME_WAIT ports older than {}. What is left is connections opened faster than one per port per {} (~{}/s here): only fewer, longer connections or more ports help.",
            window_text(policy.reuse_delay_ms),
            window_text(policy.reuse_delay_ms),
            rate_text(worst.runway.sustainable_per_s)
        )));
    } else if loopback {
        // The default 2 covers loopback; only a changed setting keeps it from applying.
        fix.push(FixStep::run(
            format!(
                "tcp_tw_reuse is {} here, so even loopback connections wait the whole TIME_WAIT for a port. The kernel default 2 lets connect() take over loopback TIME_WAIT ports after about a second",
                policy.tw_reuse.map_or("not visible".to_string(), |v| v.to_string())
            ),
            "sysctl -w net.ipv4.tcp_tw_reuse=2",
        ));
        if tw_blocks && policy.tw_reuse == Some(0) {
            proposed.push(SysctlChange {
                key: "net.ipv4.tcp_tw_reuse".into(),
                value: "2".into(),
                was: Some("0".into()),
                why: format!("back to the kernel default: TIME_WAIT holds the ports towards {dst}"),
            });
        }
    } else if policy.tw_reuse == Some(1) {
        fix.push(FixStep::say(format!(
            "tcp_tw_reuse is already 1, yet it does not take over these ports: the peer {dst_ip} must send TCP timestamps (some load balancers and Windows hosts do not)."
        )));
    } else {
        fix.push(FixStep::run(
            format!(
                "Let connect() take over TIME_WAIT ports towards other hosts after about {} (tcp_tw_reuse=1; now {}). It needs TCP timestamps on both ends, protects against stray old segments with them, and does nothing for connections this host accepts",
                window_text(policy.reuse_delay_ms),
                policy.tw_reuse.map_or("not visible".to_string(), |v| v.to_string())
            ),
            "sysctl -w net.ipv4.tcp_tw_reuse=1",
        ));
        if tw_blocks {
            proposed.push(SysctlChange {
                key: "net.ipv4.tcp_tw_reuse".into(),
                value: "1".into(),
                was: policy.tw_reuse.map(|v| v.to_string()),
                why: format!(
                    "TIME_WAIT holds {} of the {} unavailable ports towards {dst}",
                    e.unavailable() - e.held_open(),
                    e.unavailable()
                ),
            });
        }
    }
    fix.push(FixStep::run(
        "Watch it",
        format!(
            "ss -tan src {} dst {dst_ip} dport = :{} | awk 'NR>1 {{print $1}}' | sort | uniq -c",
            e.local_ip, dst.port
        ),
    ));
    (fix, proposed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ListenerSocket, Owner, ProcessFacts, StateCounts, TimeWaitAges};

    fn counts(established: u64, time_wait: u64) -> StateCounts {
        let mut c = StateCounts::default();
        c.0[TcpState::Established.index()] = established;
        c.0[TcpState::TimeWait.index()] = time_wait;
        c
    }

    /// `n` TIME_WAIT ages spread evenly over `span_ms`, youngest 0.
    fn ages(n: u64, span_ms: u64, delay_ms: u64) -> TimeWaitAges {
        let mut a = TimeWaitAges::default();
        for i in 0..n {
            a.add(Some(i * span_ms / n.max(1)), delay_ms);
        }
        a
    }

    fn port_use(remote: &str, port: u16, c: StateCounts) -> PortUse {
        PortUse {
            local_ip: "10.0.0.1".parse().expect("ip"),
            remote: Endpoint::new(remote.parse().expect("ip"), port),
            counts: c,
            sample_owner: Some(Owner { pid: 42, fd: 7 }),
            usable: 27_211,
            time_wait_ages: TimeWaitAges::default(),
            tw_reuse: false,
        }
    }

    fn snapshot(entries: Vec<PortUse>) -> Snapshot {
        let mut s = Snapshot::default();
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "32768 60999".into());
        // 1000 reserved inside (40000-40999), 8080 outside, 50000 twice (overlap).
        s.sysctls.insert(
            "net.ipv4.ip_local_reserved_ports".into(),
            "8080,40000-40999,50000,49990-50010".into(),
        );
        s.sysctls.insert("net.ipv4.tcp_tw_reuse".into(), "0".into());
        s.processes.insert(
            42,
            ProcessFacts {
                pid: 42,
                comm: "crawler".into(),
                uid: 1000,
                cmdline: "crawler".into(),
                open_fds: 100,
                nofile_soft: None,
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        s.sockets.port_use = entries;
        s
    }

    /// A loopback destination with a 200-port range where reuse applies.
    fn loopback(held_open: u64, time_wait: u64, young: u64, tw_reuse: bool) -> Snapshot {
        let mut s = snapshot(Vec::new());
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "40000 40199".into());
        s.sysctls
            .insert("net.ipv4.ip_local_reserved_ports".into(), String::new());
        s.sysctls.insert(
            "net.ipv4.tcp_tw_reuse".into(),
            if tw_reuse { "2" } else { "0" }.into(),
        );
        let mut a = ages(young, 1000, 1000);
        a.merge(&{
            // The rest between 1 and 2 s old.
            let mut old = TimeWaitAges::default();
            for i in 0..time_wait - young {
                old.add(Some(1000 + i * 1000 / (time_wait - young).max(1)), 1000);
            }
            old
        });
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        s.sockets.port_use.push(PortUse {
            local_ip: lo,
            remote: Endpoint::new(lo, 5001),
            counts: counts(held_open, time_wait),
            sample_owner: Some(Owner { pid: 42, fd: 7 }),
            usable: 200,
            time_wait_ages: a,
            tw_reuse,
        });
        s
    }

    #[test]
    fn usable_ports_subtract_reserved_inside_only_once() {
        let usable = |r: &str, res: &str| {
            crate::model::EphemeralPorts::from_sysctls(Some(r), Some(res)).usable()
        };
        assert_eq!(usable("32768 60999", ""), 28232);
        assert_eq!(
            usable("32768 60999", "8080,40000-40999,50000,49990-50010"),
            28232 - 1000 - 21
        );
        assert_eq!(usable("100 200", "50-150,140-160"), 40);
        assert_eq!(usable("100 100", "100"), 0);
    }

    #[test]
    fn fires_with_exact_headroom_and_percentages() {
        // usable = 28232 - 1000 - 21 = 27211; no reuse: all TIME_WAIT is unavailable.
        let s = snapshot(vec![
            port_use("10.0.0.5", 5432, counts(1_211, 23_000)), // 24211 = 88.98%
            port_use("10.0.0.6", 443, counts(100, 14_000)),    // 14100 = 51.82%
            port_use("10.0.0.7", 80, counts(10, 100)),         // small: not listed
        ]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let f = &f[0];
        assert_eq!(f.rule_id, ID);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.data["usable"], 27_211);
        assert_eq!(f.data["reserved_in_range"], 1_021);
        let d = f.data["destinations"].as_array().expect("array");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0]["remote_ip"], "10.0.0.5");
        assert_eq!(d[0]["used"], 24_211);
        assert_eq!(d[0]["unavailable"], 24_211);
        assert_eq!(d[0]["headroom"], 3_000);
        assert_eq!(d[0]["used_pct"], 88.98);
        assert_eq!(d[0]["severity"], "critical");
        assert_eq!(d[0]["comm"], "crawler");
        assert_eq!(d[0]["tw_reuse_applies"], false);
        // No ages: 23000 over 60 s; 26000 ports not held open, one per 60 s.
        assert_eq!(d[0]["closes_per_s"], 383.33);
        assert_eq!(d[0]["sustainable_per_s"], 433.33);
        assert_eq!(d[1]["headroom"], 13_111);
        assert_eq!(d[1]["used_pct"], 51.82);
        assert_eq!(d[1]["severity"], "warning");
        assert_eq!(f.data["max_new_per_s"], 433.33);
        assert_eq!(
            f.title,
            "Ephemeral ports towards 10.0.0.5:5432 from 10.0.0.1 at 89%: 24211 of 27211 unavailable, \
             3000 left; closing ~383/s of ~433/s it sustains (no TIME_WAIT reuse: each port held 60s) \
             (crawler (pid 42)); 1 more destinations near the limit"
        );
        assert!(f.why.contains("EADDRNOTAVAIL"));
        assert!(f.fix.iter().any(|l| l.mentions("IP_BIND_ADDRESS_NO_PORT")));
        // Not loopback, reuse off, TIME_WAIT holds the ports: tcp_tw_reuse=1 is proposed.
        assert!(f
            .fix
            .iter()
            .any(|l| l.command.as_deref() == Some("sysctl -w net.ipv4.tcp_tw_reuse=1")));
        let keys: Vec<(&str, &str)> = f
            .proposed
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("net.ipv4.ip_local_port_range", "32768 65535"),
                ("net.ipv4.tcp_tw_reuse", "1")
            ]
        );
        // Every command is apart from the prose.
        assert!(f.fix.iter().all(|l| !l.text.contains("sysctl -w")));
    }

    #[test]
    fn wider_range_suggestion_reserves_listening_ports_inside_it() {
        let mut s = snapshot(vec![port_use("10.0.0.5", 5432, counts(0, 27_000))]);
        s.sockets.listeners.push(ListenerSocket {
            // Outside today's range, inside the widened one.
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), 62000),
            accept_queue: 0,
            backlog: 511,
            backlog_known: true,
            inode: 9,
            owner: None,
        });
        let f = check(&s, &Thresholds::default());
        assert!(f[0].fix.iter().any(|l| l.command.as_deref()
            == Some("sysctl -w net.ipv4.ip_local_port_range=\"32768 65535\"")));
        assert!(
            f[0].fix.iter().any(|l| l.command.as_deref()
                == Some(
                    "sysctl -w net.ipv4.ip_local_reserved_ports=8080,40000-40999,50000,49990-50010,62000"
                )),
            "{:?}",
            f[0].fix
        );
        assert!(f[0]
            .proposed
            .iter()
            .any(|p| p.key == "net.ipv4.ip_local_reserved_ports" && p.value.ends_with(",62000")));
    }

    #[test]
    fn reusable_time_wait_is_not_unavailable_and_the_rate_is_bounded_by_the_delay() {
        // 200 ports, 190 TIME_WAIT of which 150 under 1 s old: 150 unavailable.
        let s = loopback(0, 190, 150, true);
        let e = &s.sockets.port_use[0];
        assert_eq!((e.unavailable(), e.headroom()), (150, 50));
        assert_eq!(e.sustainable_per_s(&s.time_wait_policy()), 200.0);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        let d = &f[0].data["destinations"][0];
        assert_eq!(d["unavailable"], 150);
        assert_eq!(d["time_wait_young"], 150);
        assert_eq!(d["tw_reuse_applies"], true);
        // 150 closes in the last second.
        assert_eq!(d["closes_per_s"], 150.0);
        assert_eq!(d["closes_window_ms"], 1000);
        assert_eq!(d["sustainable_per_s"], 200.0);
        assert_eq!(d["sustainable"], true);
        // 75% unavailable: a warning, said with the reuse delay.
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].title
                .contains("closing ~150/s of ~200/s it sustains (TIME_WAIT ports reused after 1s)"),
            "{}",
            f[0].title
        );
        // Loopback with reuse on: never tcp_tw_reuse=1, and nothing about reuse proposed.
        assert!(f[0].fix.iter().all(|l| !l.mentions("tcp_tw_reuse=1")));
        assert!(f[0]
            .proposed
            .iter()
            .all(|p| p.key != "net.ipv4.tcp_tw_reuse"));
    }

    #[test]
    fn every_port_reused_as_soon_as_allowed_is_critical() {
        // Every port busy and each reused as soon as it may: 200 closes in the last second.
        let s = loopback(0, 200, 200, true);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(f[0].data["destinations"][0]["sustainable"], false);
        assert!(
            f[0].title
                .contains("closing ~200/s, at the ~200/s it sustains"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn without_reuse_every_time_wait_counts_and_loopback_gets_the_default_back() {
        let s = loopback(0, 190, 150, false);
        let e = &s.sockets.port_use[0];
        assert_eq!(e.unavailable(), 190);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        let d = &f[0].data["destinations"][0];
        assert_eq!(d["unavailable"], 190);
        assert_eq!(d["tw_reuse_applies"], false);
        // 200 ports, one connection each per 60 s.
        assert_eq!(d["sustainable_per_s"], 3.33);
        assert!(f[0].fix.iter().all(|l| !l.mentions("tcp_tw_reuse=1")));
        assert!(f[0]
            .proposed
            .iter()
            .any(|p| p.key == "net.ipv4.tcp_tw_reuse" && p.value == "2"));
    }

    #[test]
    fn a_steady_rate_that_would_fill_half_the_range_warns_before_it_does() {
        // 2000 TIME_WAIT, all in the last 4 s (500/s), no reuse: at 500/s the range
        // would hold 30000 in TIME_WAIT; 7% unavailable now. A forecast: a warning.
        let mut e = port_use("10.0.0.5", 443, counts(0, 2000));
        e.time_wait_ages = ages(2000, 4000, 1000);
        let s = snapshot(vec![e]);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].title
                .contains("closing ~500/s, more than the ~454/s it sustains"),
            "{}",
            f[0].title
        );
        let d = &f[0].data["destinations"][0];
        assert_eq!(d["closes_per_s"], 500.0);
        assert_eq!(d["sustainable"], false);
        // The same at 200/s: a steady state of 12000 (44%) is no finding; at 300/s
        // (66%), a warning.
        let mut e = port_use("10.0.0.5", 443, counts(0, 800));
        e.time_wait_ages = ages(800, 4000, 1000);
        assert!(check(&snapshot(vec![e.clone()]), &Thresholds::default()).is_empty());
        e.counts = counts(0, 1200);
        e.time_wait_ages = ages(1200, 4000, 1000);
        let f = check(&snapshot(vec![e]), &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].data["destinations"][0]["projected_pct"], 66.15);
    }

    /// Traced flows of pid 91 toward `remote` over 1 s.
    fn traced(s: &mut Snapshot, remote: Endpoint, opened: u64, eaddrnotavail: u64) {
        use crate::model::{
            ConnectFailures, Direction, FlowCounts, FlowKey, FlowPeer, FlowRow, NamespaceFlows,
        };
        s.flows = Some(NamespaceFlows {
            duration_ms: 1000,
            flows: vec![FlowRow {
                key: FlowKey {
                    pid: 91,
                    netns: 1,
                    direction: Direction::Active,
                    peer: FlowPeer::Remote(remote),
                },
                comm: "java".into(),
                netns_name: String::new(),
                counts: FlowCounts {
                    opened,
                    closed_local: opened,
                    connect_failures: ConnectFailures {
                        eaddrnotavail,
                        ..ConnectFailures::default()
                    },
                    ..FlowCounts::default()
                },
            }],
            ..NamespaceFlows::default()
        });
    }

    #[test]
    fn traced_eaddrnotavail_is_critical_and_names_who_failed() {
        // 100 ports, all held open: connect() fails, 1312 times in the second traced.
        let mut e = port_use("10.0.0.7", 443, counts(100, 0));
        e.usable = 100;
        let remote = e.remote;
        let mut s = snapshot(vec![e]);
        traced(&mut s, remote, 0, 1312);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Critical);
        assert!(
            f[0].title.starts_with(
                "java (pid 91) failed 1312 connect() calls with EADDRNOTAVAIL toward 10.0.0.7:443 in 1.0s: 100 of 100 ephemeral ports from 10.0.0.1 unavailable, 0 left"
            ),
            "{}",
            f[0].title
        );
        let d = &f[0].data["destinations"][0];
        assert_eq!(d["demand_source"], "traced");
        assert_eq!(d["traced"]["eaddrnotavail"], 1312);
        assert_eq!(d["demand_per_s"], 1312.0);
        assert_eq!(d["runway"]["exhausted_in_s"], 0.0);
        assert_eq!(d["runway"]["sustainable"], false);
        // The crawler holds the ports, java asks for more: both are named.
        assert!(f[0].evidence.iter().any(|l| l.value.contains(
            "1312 failed with EADDRNOTAVAIL, 1312/s asked (java (pid 91)); ports held by crawler (pid 42)"
        )));
        assert!(f[0]
            .evidence
            .iter()
            .any(|l| l.value.contains("no port left now")));
    }

    #[test]
    fn the_traced_rate_says_whether_ports_last_and_when_they_run_out() {
        // 27211 usable, 5000 TIME_WAIT (no reuse); the ages alone would say ~83/s.
        let mut e = port_use("10.0.0.5", 443, counts(0, 5_000));
        let remote = e.remote;
        e.time_wait_ages = ages(5_000, 60_000, 1000);
        // Traced: 1000/s. 27211 / 60 = 453.5/s sustainable; 22211 free, 83.3/s
        // coming free: about 24 s left.
        let mut s = snapshot(vec![e.clone()]);
        traced(&mut s, remote, 1000, 0);
        let f = check(&s, &Thresholds::default());
        assert_eq!(f[0].severity, Severity::Warning);
        let d = &f[0].data["destinations"][0];
        assert_eq!(d["demand_per_s"], 1000.0);
        assert_eq!(d["sustainable"], false);
        let left = d["runway"]["exhausted_in_s"].as_f64().expect("runs out");
        assert!((left - 24.2).abs() < 0.1, "{left}");
        assert!(
            f[0].title
                .contains("opening ~1000/s, more than the ~454/s it sustains"),
            "{}",
            f[0].title
        );
        assert!(f[0].evidence.iter().any(|l| l.value.contains(
            "not sustainable: at 1000/s (~454/s sustainable) the ports run out in about 24."
        )));
        // Traced at 100/s: sustainable, and no finding for 18% of the ports.
        let mut calm = snapshot(vec![e]);
        traced(&mut calm, remote, 100, 0);
        assert!(check(&calm, &Thresholds::default()).is_empty());
    }

    #[test]
    fn does_not_fire_below_the_warning_share() {
        let s = snapshot(vec![port_use("10.0.0.5", 5432, counts(500, 9_000))]);
        assert!(check(&s, &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
        // Loopback TIME_WAIT that reuse can take over: not a finding even when it fills
        // most of a small range.
        let s = loopback(0, 190, 40, true);
        assert!(check(&s, &Thresholds::default()).is_empty());
    }
}
