//! Rule `sysctl_audit`: TCP sysctls that were changed in ways that hurt (or that do not
//! do what they were set for), one finding per problem; and [`emit_sysctl`], which turns
//! what was found into a proposed /etc/sysctl.d file. Reads only the snapshot; writes
//! nothing anywhere.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::util::{owner_label, pct, unreserved_listeners_in, widened_port_range};
use super::Thresholds;
use crate::model::kernel::{defaults, parse_port_list};
use crate::model::{Evidence, Finding, FixStep, Nature, PortRange, Severity, Snapshot, TcpState};

pub const ID: &str = "sysctl_audit";

const FIN_TIMEOUT_DEFAULT: i64 = defaults::FIN_TIMEOUT_S;
const KEEPALIVE_TIME_DEFAULT: i64 = defaults::KEEPALIVE_TIME_S;
const SYN_RETRIES_DEFAULT: i64 = defaults::SYN_RETRIES;
const SYNACK_RETRIES_DEFAULT: i64 = defaults::SYNACK_RETRIES;
const SOMAXCONN_DEFAULT: i64 = defaults::SOMAXCONN;

/// Knobs that live in each network namespace; a new namespace starts from the kernel
/// default for each.
const PER_NETNS: &[&str] = crate::model::PER_NETNS_SYSCTLS;

pub fn check(s: &Snapshot, _t: &Thresholds) -> Vec<Finding> {
    let checks: &[fn(&Snapshot) -> Option<Problem>] = &[
        tw_recycle,
        timestamps,
        max_tw_buckets,
        syn_retries,
        synack_retries,
        syncookies,
        abort_on_overflow,
        port_range_overlap,
        somaxconn,
        port_range_parity,
        fin_timeout,
        keepalive_time,
        tw_reuse_on_a_server,
    ];
    let mut out: Vec<Finding> = checks
        .iter()
        .filter_map(|c| c(s))
        .map(Problem::into_finding)
        .collect();
    // Stable: check order within one severity.
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// One questionable setting, before the parts every sysctl finding shares are added.
struct Problem {
    key: &'static str,
    value: String,
    default: Option<String>,
    severity: Severity,
    title: String,
    evidence: Vec<Evidence>,
    why: String,
    fix: Vec<String>,
    data: Map<String, Value>,
}

impl Problem {
    fn new(s: &Snapshot, key: &'static str, severity: Severity) -> Problem {
        Problem {
            key,
            value: s.sysctl(key).unwrap_or_default().to_string(),
            default: None,
            severity,
            title: String::new(),
            evidence: Vec::new(),
            why: String::new(),
            fix: Vec::new(),
            data: Map::new(),
        }
    }

    fn into_finding(self) -> Finding {
        let per_netns = PER_NETNS.contains(&self.key);
        let mut evidence = vec![Evidence::new(self.key, &self.value)];
        if let Some(d) = &self.default {
            evidence.push(Evidence::new("kernel default", d));
        }
        evidence.extend(self.evidence);
        let short = self.key.rsplit('.').next().unwrap_or(self.key);
        let mut fix = self.fix;
        fix.push(format!(
            "Find where it is set and change it there, or the next boot brings it back: grep -rn {short} /etc/sysctl.conf /etc/sysctl.d /usr/lib/sysctl.d /run/sysctl.d"
        ));
        if per_netns {
            fix.push(format!(
                "{} is per network namespace: this is the value of the namespace tcpdoctor read. A container starts from the kernel default, not from the host's files, so set it per container where needed (Kubernetes securityContext.sysctls, docker run --sysctl).",
                self.key
            ));
        }
        let mut data = Map::new();
        data.insert("sysctl".into(), json!(self.key));
        data.insert("value".into(), json!(self.value));
        data.insert("default".into(), json!(self.default));
        data.insert("per_netns".into(), json!(per_netns));
        data.extend(self.data);
        Finding {
            rule_id: ID,
            namespaces: Vec::new(),
            nature: Nature::Config,
            severity: self.severity,
            title: self.title,
            evidence,
            why: self.why,
            fix: fix.into_iter().map(FixStep::from).collect(),
            proposed: Vec::new(),
            data: Value::Object(data),
        }
    }
}

fn time_wait_total(s: &Snapshot) -> u64 {
    s.summary.total().get(TcpState::TimeWait)
}

/// Seconds until a handshake is abandoned, assuming the initial RTO of 1 s: the first
/// `linear` retransmissions wait 1 s each (tcp_syn_linear_timeouts, SYN only), later
/// ones double, every wait capped at TCP_RTO_MAX (120 s). Default SYN: 6 retries and 4
/// linear give 131 s; without linear timeouts 127 s. SYN-ACK with 5: 63 s.
fn handshake_give_up_s(retries: u64, linear: u64) -> u64 {
    (0..=retries.saturating_add(linear))
        .map(|i| {
            if i <= linear {
                1
            } else {
                (1u64 << (i - linear).min(16)).min(120)
            }
        })
        .sum()
}

fn tw_recycle(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_tw_recycle")?;
    let on = v != 0;
    let mut p = Problem::new(
        s,
        "net.ipv4.tcp_tw_recycle",
        if on {
            Severity::Warning
        } else {
            Severity::Info
        },
    );
    p.default = Some("0 (and the key is gone since Linux 4.12)".into());
    let paws_passive = s
        .counters
        .as_ref()
        .and_then(|c| c.total("TcpExt.PAWSPassive"));
    if let Some(n) = paws_passive {
        p.evidence
            .push(Evidence::new("SYNs dropped by timestamp (PAWSPassive)", n));
    }
    if on {
        p.title = "tcp_tw_recycle is on: SYNs from clients behind NAT are dropped at random".into();
        p.why = "tcp_tw_recycle made the kernel remember the newest TCP timestamp of each peer address and silently drop SYNs that carry an older one. Clients behind one NAT address have unrelated timestamp clocks, so some of their connection attempts vanish (counted as PAWSPassive in netstat -s). Linux 4.12 removed the option for that reason; this kernel is older.".into();
        p.fix
            .push("Turn it off now: sysctl -w net.ipv4.tcp_tw_recycle=0".into());
    } else {
        p.title = "tcp_tw_recycle still exists on this kernel (older than 4.12); it is off".into();
        p.why = "The key exists only on kernels before 4.12, which removed it because it dropped connections from clients behind NAT. It is off here, which is right; a sysctl file that still sets it will make sysctl report an unknown key at boot after the next kernel upgrade.".into();
    }
    p.fix.push("Delete every tcp_tw_recycle line from sysctl files: on 4.12 and later the key does not exist, so tcpdoctor cannot see such a leftover line, but sysctl reports it as an error at boot.".into());
    p.fix.push("For TIME_WAIT on the connecting side use connection reuse (keep-alive, pools) and tcp_tw_reuse, which is safe; nothing needs tcp_tw_recycle.".into());
    p.data.insert("paws_passive".into(), json!(paws_passive));
    Some(p)
}

fn timestamps(s: &Snapshot) -> Option<Problem> {
    if s.sysctl_i64("net.ipv4.tcp_timestamps")? != 0 {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_timestamps", Severity::Warning);
    p.default = Some("1".into());
    let client_tw = s.sockets.time_wait.client_side;
    p.evidence
        .push(Evidence::new("client-side TIME_WAIT sockets", client_tw));
    p.title = "tcp_timestamps=0: no PAWS protection and tcp_tw_reuse cannot work".into();
    p.why = "Without TCP timestamps the kernel loses PAWS, the check that rejects stale segments from an earlier connection on the same ports. tcp_tw_reuse only hands out a TIME_WAIT port again when the old connection carried timestamps, so with them off every outgoing connection's TIME_WAIT holds its port for the full 60 s and ephemeral ports run out sooner.".into();
    p.fix
        .push("Turn them back on: sysctl -w net.ipv4.tcp_timestamps=1".into());
    p.data
        .insert("client_side_time_wait".into(), json!(client_tw));
    Some(p)
}

/// The kernel default for tcp_max_tw_buckets: half the established hash. A negative
/// tcp_ehash_entries means a namespace sharing the host's table of that size.
fn max_tw_buckets(s: &Snapshot) -> Option<Problem> {
    let v = u64::try_from(s.sysctl_i64("net.ipv4.tcp_max_tw_buckets")?).ok()?;
    // Without tcp_ehash_entries the default (memory-dependent) is unknown: say nothing.
    let default = s.tw_buckets_default()?;
    if v >= default {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_max_tw_buckets", Severity::Warning);
    p.default = Some(format!("{default} (tcp_ehash_entries / 2)"));
    let tw = s
        .sockstat
        .map(|st| st.tw)
        .unwrap_or_else(|| time_wait_total(s));
    p.evidence.push(Evidence::new(
        "TIME_WAIT + FIN_WAIT2 entries now",
        format!("{tw} ({:.0}% of the limit)", pct(tw, v)),
    ));
    let overflow = s.counters.as_ref().and_then(|c| {
        Some((
            c.total("TcpExt.TCPTimeWaitOverflow")?,
            c.delta("TcpExt.TCPTimeWaitOverflow").unwrap_or(0),
        ))
    });
    if let Some((total, delta)) = overflow {
        p.evidence.push(Evidence::new(
            "TIME_WAIT entries destroyed early (TCPTimeWaitOverflow)",
            format!("{total} since boot, +{delta} during the sample"),
        ));
    }
    p.title = format!("tcp_max_tw_buckets lowered to {v} (default {default})");
    p.why = "This limit is only a guard against attacks; the kernel documentation says it must not be lowered. When it is reached, a closing connection skips TIME_WAIT (counted in TcpExtTCPTimeWaitOverflow, nothing is logged on current kernels), which removes the protection against late segments of an old connection landing in a new one with the same ports. A TIME_WAIT entry costs about 256 bytes, so the default is cheap.".into();
    p.fix.push(format!(
        "Restore the default: sysctl -w net.ipv4.tcp_max_tw_buckets={default}"
    ));
    p.fix.push("To have fewer TIME_WAIT entries, reuse connections (HTTP keep-alive, connection pools) on the side that closes first.".into());
    p.data.insert("default_value".into(), json!(default));
    p.data.insert("tw_now".into(), json!(tw));
    p.data.insert(
        "time_wait_overflow_total".into(),
        json!(overflow.map(|o| o.0)),
    );
    Some(p)
}

fn syn_retries(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_syn_retries")?;
    if v >= 3 {
        return None;
    }
    let v = u64::try_from(v).ok()?;
    let linear = s
        .sysctl_i64("net.ipv4.tcp_syn_linear_timeouts")
        .and_then(|l| u64::try_from(l).ok());
    let l = linear.unwrap_or(0);
    let now = handshake_give_up_s(v, l);
    let default = handshake_give_up_s(SYN_RETRIES_DEFAULT as u64, l);
    let mut p = Problem::new(s, "net.ipv4.tcp_syn_retries", Severity::Warning);
    p.default = Some(SYN_RETRIES_DEFAULT.to_string());
    if let Some(l) = linear {
        p.evidence.push(Evidence::new("tcp_syn_linear_timeouts", l));
    }
    p.evidence.push(Evidence::new(
        "connect() gives up after",
        format!("about {now} s (default: {default} s)"),
    ));
    p.title = format!("tcp_syn_retries={v}: connect() fails after about {now} s");
    let linear_text = match linear {
        Some(l) if l > 0 => format!(
            " (this kernel also retries {l} more times at a fixed 1 s first, tcp_syn_linear_timeouts)"
        ),
        _ => String::new(),
    };
    p.why = format!(
        "A connect() resends its SYN tcp_syn_retries times with a doubling wait{linear_text} and then fails with ETIMEDOUT. At {v} that happens after about {now} s instead of {default} s, so a single lost packet or a server that is briefly slow to answer becomes a hard connection failure. How long to wait is a per-application decision, better made with a connect timeout or the TCP_SYNCNT / TCP_USER_TIMEOUT socket options."
    );
    p.fix.push(format!(
        "Restore the default: sysctl -w net.ipv4.tcp_syn_retries={SYN_RETRIES_DEFAULT}"
    ));
    p.fix.push("Give latency-sensitive clients their own connect timeout (or setsockopt TCP_SYNCNT) instead of a host-wide value.".into());
    p.data.insert("give_up_s".into(), json!(now));
    p.data.insert("default_give_up_s".into(), json!(default));
    p.data.insert("syn_linear_timeouts".into(), json!(linear));
    Some(p)
}

fn synack_retries(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_synack_retries")?;
    let severity = match v {
        0 | 1 => Severity::Warning,
        2 => Severity::Info,
        _ => return None,
    };
    let v = u64::try_from(v).ok()?;
    let now = handshake_give_up_s(v, 0);
    let default = handshake_give_up_s(SYNACK_RETRIES_DEFAULT as u64, 0);
    let cookies = s.sysctl_i64("net.ipv4.tcp_syncookies");
    let mut p = Problem::new(s, "net.ipv4.tcp_synack_retries", severity);
    p.default = Some(SYNACK_RETRIES_DEFAULT.to_string());
    p.evidence.push(Evidence::new(
        "half-open connection dropped after",
        format!("about {now} s (default: {default} s)"),
    ));
    p.title =
        format!("tcp_synack_retries={v}: slow or lossy clients give up connecting after {now} s");
    p.why = format!(
        "A listening socket resends its SYN-ACK up to tcp_synack_retries times while the client's final ACK is missing, then forgets the connection attempt. At {v} that happens after about {now} s instead of {default} s, so clients on lossy links fail to connect. A low value is sometimes set against SYN floods, but syncookies (on by default) already keep a flood from filling the queue."
    );
    p.fix.push(format!(
        "Restore the default: sysctl -w net.ipv4.tcp_synack_retries={SYNACK_RETRIES_DEFAULT}"
    ));
    p.data.insert("give_up_s".into(), json!(now));
    p.data.insert("syncookies".into(), json!(cookies));
    Some(p)
}

fn syncookies(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_syncookies")?;
    let mut p = Problem::new(s, "net.ipv4.tcp_syncookies", Severity::Warning);
    p.default = Some("1".into());
    match v {
        0 => {
            p.title = "tcp_syncookies=0: a full SYN queue drops new connections".into();
            p.why = "With syncookies off, a listener whose SYN queue is full (a SYN flood, or just a burst) drops new connection attempts, and once the queue is three quarters full it drops SYNs from peers it has not talked to before (tcp_max_syn_backlog). Syncookies are the fallback that keeps legitimate clients getting in while the queue is full; with the default 1 they are only used then.".into();
        }
        2 => {
            p.title = "tcp_syncookies=2: every connection is answered with a cookie".into();
            p.why = "With 2 the kernel answers every SYN with a cookie, even when nothing is overloaded. Cookies can only encode a few MSS values, and for clients that do not send TCP timestamps the kernel also drops window scaling and SACK, so those connections are slower. The default 1 uses cookies only while a listener's SYN queue is full.".into();
        }
        _ => return None,
    }
    p.fix
        .push("Use the default: sysctl -w net.ipv4.tcp_syncookies=1".into());
    Some(p)
}

fn abort_on_overflow(s: &Snapshot) -> Option<Problem> {
    if s.sysctl_i64("net.ipv4.tcp_abort_on_overflow")? != 1 {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_abort_on_overflow", Severity::Warning);
    p.default = Some("0".into());
    let overflows = s
        .counters
        .as_ref()
        .and_then(|c| c.total("TcpExt.ListenOverflows"));
    if let Some(n) = overflows {
        p.evidence
            .push(Evidence::new("accept queue overflows since boot", n));
    }
    p.title = "tcp_abort_on_overflow=1: clients are reset whenever an accept queue is full".into();
    p.why = "Normally, when a handshake completes while the accept queue is full, the kernel ignores the client's final ACK; the client resends it and gets in a moment later, once the application has accepted some connections. With this option the kernel answers with RST instead, so every short burst turns into \"connection reset by peer\" errors; the kernel documentation warns it can harm clients.".into();
    p.fix
        .push("Turn it off: sysctl -w net.ipv4.tcp_abort_on_overflow=0".into());
    p.fix.push("If the accept queue really overflows, raise the application's listen backlog together with net.core.somaxconn and make it accept faster (see listen_overflow).".into());
    p.data.insert("listen_overflows".into(), json!(overflows));
    Some(p)
}

fn port_range_overlap(s: &Snapshot) -> Option<Problem> {
    let PortRange { low: lo, high: hi } = s.port_range()?;
    let inside = unreserved_listeners_in(s, PortRange { low: lo, high: hi });
    if inside.is_empty() {
        return None;
    }
    // A range that starts below the default was widened by hand and now covers service
    // ports; inside the default range a listener often got its port from bind(0).
    let severity = if lo < PortRange::KERNEL_DEFAULT.low {
        Severity::Warning
    } else {
        Severity::Info
    };
    let mut p = Problem::new(s, "net.ipv4.ip_local_port_range", severity);
    p.default = Some(format!(
        "{} {}",
        PortRange::KERNEL_DEFAULT.low,
        PortRange::KERNEL_DEFAULT.high
    ));
    for (port, who) in inside.iter().take(10) {
        p.evidence.push(Evidence::new(
            "listening inside the range",
            format!("port {port}: {who}"),
        ));
    }
    let ports: Vec<u16> = inside.keys().copied().collect();
    let merged = merged_reserved(s, &ports);
    p.title = format!(
        "ip_local_port_range {lo}-{hi} contains {} listening port(s) that are not reserved: {}",
        ports.len(),
        ports
            .iter()
            .take(8)
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    p.why = "connect() and bind(0) take local ports from this range, so a service that starts (or restarts) after an outgoing connection took its port fails with EADDRINUSE. Listeners that got their port from bind(0) are expected here; fixed service ports should either be outside the range or listed in ip_local_reserved_ports, which keeps automatic assignment away from them.".into();
    p.fix.push(format!(
        "Reserve the fixed ones (the list replaces the old one, so keep its entries): sysctl -w net.ipv4.ip_local_reserved_ports={merged}"
    ));
    if lo < PortRange::KERNEL_DEFAULT.low {
        p.fix.push(format!(
            "Or start the range at the kernel default, above the ports services are configured with: sysctl -w net.ipv4.ip_local_port_range=\"{} {}\"",
            PortRange::KERNEL_DEFAULT.low,
            if hi % 2 == 0 { hi.saturating_sub(1) } else { hi }
        ));
    }
    p.data.insert("range".into(), json!([lo, hi]));
    p.data
        .insert("listening_ports_in_range".into(), json!(ports));
    p.data
        .insert("proposed_reserved_ports".into(), json!(merged));
    Some(p)
}

fn port_range_parity(s: &Snapshot) -> Option<Problem> {
    let PortRange { low: lo, high: hi } = s.port_range()?;
    if lo % 2 != hi % 2 {
        return None;
    }
    let (nlo, nhi) = if lo % 2 == 1 {
        (lo.saturating_add(1), hi)
    } else if hi < u16::MAX {
        (lo, hi + 1)
    } else {
        (lo, hi - 1)
    };
    let mut p = Problem::new(s, "net.ipv4.ip_local_port_range", Severity::Info);
    p.default = Some(format!(
        "{} {}",
        PortRange::KERNEL_DEFAULT.low,
        PortRange::KERNEL_DEFAULT.high
    ));
    p.title = format!("ip_local_port_range {lo}-{hi}: start and end have the same parity");
    p.why = "Since 4.2 the kernel splits the range by parity: connect() starts with ports of the start's parity and bind(0) with the other, so the two compete less for the same ports. The kernel documentation asks for a start and end of different parity and prints a warning when they are not; it is a sign of a hand-edited range rather than a failure.".into();
    p.fix.push(format!(
        "Use an end of the other parity: sysctl -w net.ipv4.ip_local_port_range=\"{nlo} {nhi}\""
    ));
    p.data.insert("range".into(), json!([lo, hi]));
    p.data.insert("proposed_range".into(), json!([nlo, nhi]));
    Some(p)
}

fn somaxconn(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.core.somaxconn")?;
    if v >= SOMAXCONN_DEFAULT {
        return None;
    }
    // listen() silently cuts the backlog down to somaxconn, so a listener showing a
    // backlog equal to somaxconn most likely asked for more.
    let capped: Vec<_> = s
        .sockets
        .listeners
        .iter()
        .filter(|l| l.backlog_known && i64::from(l.backlog) == v)
        .collect();
    let severity = if capped.is_empty() {
        Severity::Info
    } else {
        Severity::Warning
    };
    let mut p = Problem::new(s, "net.core.somaxconn", severity);
    p.default = Some(format!("{SOMAXCONN_DEFAULT} (128 before Linux 5.4)"));
    for l in capped.iter().take(10) {
        p.evidence.push(Evidence::new(
            "listener capped at somaxconn",
            format!(
                "{} ({}): backlog {}, {} waiting to be accepted",
                l.local,
                owner_label(s, l.owner),
                l.backlog,
                l.accept_queue
            ),
        ));
    }
    p.title = if capped.is_empty() {
        format!("net.core.somaxconn={v}, below the default {SOMAXCONN_DEFAULT}")
    } else {
        format!(
            "net.core.somaxconn={v} caps the accept queue of {} listener(s)",
            capped.len()
        )
    };
    p.why = format!(
        "listen() silently reduces any backlog larger than somaxconn to somaxconn, so no listener here can queue more than {v} connections waiting for accept(); when the queue is full new connections are dropped. The default has been {SOMAXCONN_DEFAULT} since Linux 5.4 (128 before), so on a 5.4 or newer kernel someone lowered it."
    );
    p.fix.push(format!(
        "Raise it: sysctl -w net.core.somaxconn={SOMAXCONN_DEFAULT}"
    ));
    p.fix.push("Raise the application's own backlog too, since it is the smaller of the two that counts (e.g. nginx: listen 80 backlog=4096; many daemons pass 511 or 128), then restart the service: the backlog is read at listen() time.".into());
    p.data.insert(
        "capped_listeners".into(),
        json!(capped
            .iter()
            .map(|l| json!({
                "local": l.local.to_string(),
                "port": l.local.port,
                "backlog": l.backlog,
                "accept_queue": l.accept_queue,
                "pid": l.owner.map(|o| o.pid),
            }))
            .collect::<Vec<_>>()),
    );
    Some(p)
}

fn fin_timeout(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_fin_timeout")?;
    if v >= FIN_TIMEOUT_DEFAULT {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_fin_timeout", Severity::Info);
    p.default = Some(FIN_TIMEOUT_DEFAULT.to_string());
    let tw = time_wait_total(s);
    p.evidence.push(Evidence::new("TIME_WAIT sockets now", tw));
    p.title = format!("tcp_fin_timeout lowered to {v} s: it does not shorten TIME_WAIT");
    p.why = "tcp_fin_timeout only limits how long a socket that the application already closed waits in FIN_WAIT2 for the peer's FIN. TIME_WAIT is a fixed 60 s on upstream Linux and no sysctl changes it, so a lowered value does not reduce the TIME_WAIT count; it is harmless, but it is not doing what it is usually set for.".into();
    p.fix.push(format!(
        "Optional: restore the default with sysctl -w net.ipv4.tcp_fin_timeout={FIN_TIMEOUT_DEFAULT}"
    ));
    p.fix.push("To have fewer TIME_WAIT sockets, reuse connections (HTTP keep-alive, pools) on the side that closes first; on the connecting side tcp_tw_reuse also helps.".into());
    p.data.insert("time_wait".into(), json!(tw));
    Some(p)
}

fn keepalive_time(s: &Snapshot) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_keepalive_time")?;
    if v >= KEEPALIVE_TIME_DEFAULT {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_keepalive_time", Severity::Info);
    p.default = Some(format!("{KEEPALIVE_TIME_DEFAULT} (intvl 75, probes 9)"));
    for k in [
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ] {
        if let Some(x) = s.sysctl(k) {
            p.evidence.push(Evidence::new(k, x));
        }
    }
    p.title = format!("tcp_keepalive_time lowered to {v} s: only sockets with SO_KEEPALIVE notice");
    p.why = "Keep-alive probes are sent only on sockets that enabled SO_KEEPALIVE, so this value does nothing for applications that never set it, and it does not clean up CLOSE_WAIT. Where it does apply, it adds probe traffic on every idle connection on the host.".into();
    p.fix.push("If the goal is to keep connections alive through a NAT or load balancer idle timeout, enable keep-alive in the application with per-socket TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT below that timeout.".into());
    Some(p)
}

fn tw_reuse_on_a_server(s: &Snapshot) -> Option<Problem> {
    if s.sysctl_i64("net.ipv4.tcp_tw_reuse")? != 1 {
        return None;
    }
    let tw = &s.sockets.time_wait;
    // Only worth a word when all the TIME_WAIT seen is server side.
    if tw.client_side > 0 || tw.server_side == 0 {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_tw_reuse", Severity::Info);
    p.default = Some("2 (loopback only, since 4.18)".into());
    p.evidence.push(Evidence::new(
        "TIME_WAIT on listening ports (server side)",
        tw.server_side,
    ));
    p.evidence
        .push(Evidence::new("TIME_WAIT on outgoing connections", 0));
    p.title =
        "tcp_tw_reuse=1 does nothing for this host's TIME_WAIT, which is all server side".into();
    p.why = "tcp_tw_reuse lets connect() take over a local port held by a TIME_WAIT socket; it is fine on clients, but it never affects accepted connections or bind(). All TIME_WAIT here sits on listening ports, where it costs no ports; the sensible lever is to let clients close first or to keep connections open longer (HTTP keep-alive).".into();
    p.data.insert("server_side".into(), json!(tw.server_side));
    Some(p)
}

/// The existing ip_local_reserved_ports plus `ports`, as one sorted list with runs
/// merged (`8080,9000-9002`).
fn merged_reserved(s: &Snapshot, ports: &[u16]) -> String {
    let mut all: BTreeSet<u16> = ports.iter().copied().collect();
    for (a, b) in s
        .sysctl("net.ipv4.ip_local_reserved_ports")
        .map(parse_port_list)
        .unwrap_or_default()
    {
        all.extend(a..=b);
    }
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for p in all {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    runs.iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A proposed /etc/sysctl.d file for this host: only settings that fix something found
/// in the snapshot, each with a comment saying why. Nothing is written anywhere.
pub fn emit_sysctl(s: &Snapshot) -> String {
    let mut out = String::from(
        "# /etc/sysctl.d/90-tcpdoctor.conf\n\
         # Proposed by tcpdoctor from what it saw on this host. Read it before installing;\n\
         # load it with: sysctl -p /etc/sysctl.d/90-tcpdoctor.conf\n\
         # Remove older lines that set the same keys (grep -rn KEY /etc/sysctl.conf\n\
         # /etc/sysctl.d): when two files set a key, the one read last wins.\n\
         # The net.* keys here are per network namespace: this file sets the host's\n\
         # values; containers start from kernel defaults and need their own.\n",
    );
    let mut settings = 0usize;
    let mut add = |out: &mut String, comment: &[String], line: String| {
        out.push('\n');
        for c in comment {
            out.push_str("# ");
            out.push_str(c);
            out.push('\n');
        }
        out.push_str(&line);
        out.push('\n');
        settings += 1;
    };

    if s.sysctl_i64("net.ipv4.tcp_timestamps") == Some(0) {
        add(
            &mut out,
            &[
                "Timestamps back on: they give PAWS protection against stale segments and".into(),
                "are what tcp_tw_reuse needs to hand out a TIME_WAIT port again.".into(),
            ],
            "net.ipv4.tcp_timestamps = 1".into(),
        );
    }
    if let (Some(v), Some(default)) = (
        s.sysctl_i64("net.ipv4.tcp_max_tw_buckets"),
        s.tw_buckets_default(),
    ) {
        if v >= 0 && (v as u64) < default {
            add(
                &mut out,
                &[
                    format!(
                        "Was {v}. Back to the kernel default (tcp_ehash_entries / 2). The limit is"
                    ),
                    "an attack guard only; below it, closing connections skip TIME_WAIT.".into(),
                ],
                format!("net.ipv4.tcp_max_tw_buckets = {default}"),
            );
        }
    }
    if let Some(v) = s.sysctl_i64("net.ipv4.tcp_fin_timeout") {
        if v < FIN_TIMEOUT_DEFAULT {
            add(
                &mut out,
                &[
                    format!(
                        "Was {v}. It only times out orphaned FIN_WAIT2 sockets; TIME_WAIT stays"
                    ),
                    "60 s whatever this says, so keep the default.".into(),
                ],
                format!("net.ipv4.tcp_fin_timeout = {FIN_TIMEOUT_DEFAULT}"),
            );
        }
    }
    let client_tw = s.sockets.time_wait.client_side;
    if client_tw > 0 && s.sysctl_i64("net.ipv4.tcp_tw_reuse") != Some(1) {
        add(
            &mut out,
            &[
                format!(
                    "This host opens outgoing connections ({client_tw} TIME_WAIT on them). Let"
                ),
                "connect() reuse a TIME_WAIT port after about a second; it affects outgoing".into(),
                "connections only and needs timestamps at both ends. (The default 2 does".into(),
                "this for loopback only.)".into(),
            ],
            "net.ipv4.tcp_tw_reuse = 1".into(),
        );
    }
    emit_port_range(s, &mut out, &mut add);
    if let Some(v) = s.sysctl_i64("net.core.somaxconn") {
        if v < SOMAXCONN_DEFAULT {
            add(
                &mut out,
                &[
                    format!("Was {v}. listen() caps every backlog at this; 4096 is the default since 5.4."),
                    "The application's own backlog must be raised too.".into(),
                ],
                format!("net.core.somaxconn = {SOMAXCONN_DEFAULT}"),
            );
        }
    }
    if let Some(v @ (0 | 2)) = s.sysctl_i64("net.ipv4.tcp_syncookies") {
        add(
            &mut out,
            &[format!(
                "Was {v}. Cookies only while a SYN queue is full: a fallback under floods that leaves normal handshakes alone."
            )],
            "net.ipv4.tcp_syncookies = 1".into(),
        );
    }
    if s.sysctl_i64("net.ipv4.tcp_abort_on_overflow") == Some(1) {
        add(
            &mut out,
            &["Was 1. Let clients retry when an accept queue is briefly full instead of resetting them.".into()],
            "net.ipv4.tcp_abort_on_overflow = 0".into(),
        );
    }
    if let Some(v @ 0..=2) = s.sysctl_i64("net.ipv4.tcp_syn_retries") {
        add(
            &mut out,
            &[format!(
                "Was {v}. Keep the default so one lost SYN does not fail a connect(); set short timeouts per application."
            )],
            format!("net.ipv4.tcp_syn_retries = {SYN_RETRIES_DEFAULT}"),
        );
    }
    if let Some(v @ 0..=1) = s.sysctl_i64("net.ipv4.tcp_synack_retries") {
        add(
            &mut out,
            &[format!(
                "Was {v}. Give slow clients the default {} s to finish the handshake.",
                handshake_give_up_s(SYNACK_RETRIES_DEFAULT as u64, 0)
            )],
            format!("net.ipv4.tcp_synack_retries = {SYNACK_RETRIES_DEFAULT}"),
        );
    }

    if settings == 0 {
        out.push_str("\n# Nothing to change: no setting tcpdoctor checks needs fixing here.\n");
    }
    out.push_str(
        "\n# Not here on purpose: net.ipv4.tcp_tw_recycle. Linux 4.12 removed it; before that it\n\
         # dropped connections from clients behind NAT. Delete any line that sets it.\n",
    );
    if s.sysctl_i64("net.ipv4.tcp_tw_recycle")
        .is_some_and(|v| v != 0)
    {
        out.push_str(
            "# It is on right now on this (pre-4.12) kernel: sysctl -w net.ipv4.tcp_tw_recycle=0\n",
        );
    }
    out
}

/// The ephemeral range and reserved ports: widen the range when this host makes outgoing
/// connections or the range is badly chosen, with ends of different parity, and reserve
/// the listening ports that fall inside it.
fn emit_port_range(
    s: &Snapshot,
    out: &mut String,
    add: &mut impl FnMut(&mut String, &[String], String),
) {
    let Some(PortRange { low: lo, high: hi }) = s.port_range() else {
        return;
    };
    let outgoing = s.sockets.time_wait.client_side > 0 || !s.sockets.port_use.is_empty();
    let badly_chosen = lo % 2 == hi % 2;
    let (mut nlo, mut nhi) = (lo, hi);
    if outgoing || badly_chosen {
        if let Some(w) = widened_port_range(PortRange { low: lo, high: hi }) {
            (nlo, nhi) = (w.low, w.high);
        }
    }
    if (nlo, nhi) != (lo, hi) {
        let mut comment = vec![format!(
            "Was {lo} {hi} ({} ports). Local ports for outgoing connections: {} ports.",
            u32::from(hi - lo) + 1,
            u32::from(nhi - nlo) + 1,
        )];
        if nlo > lo {
            comment.push(format!(
                "Starts at {nlo} to stay clear of the ports services listen on."
            ));
        }
        comment.push("Start and end have different parity, as the kernel prefers.".into());
        add(
            out,
            &comment,
            format!("net.ipv4.ip_local_port_range = {nlo} {nhi}"),
        );
    }
    let inside = unreserved_listeners_in(
        s,
        PortRange {
            low: nlo,
            high: nhi,
        },
    );
    if !inside.is_empty() {
        let ports: Vec<u16> = inside.keys().copied().collect();
        let names: Vec<String> = inside
            .iter()
            .take(6)
            .map(|(p, who)| format!("{who} on {p}"))
            .collect();
        add(
            out,
            &[
                "Listening ports inside that range; reserved so no outgoing connection takes"
                    .into(),
                format!("them while the service is down: {}.", names.join(", ")),
                "Keeps the existing entries: writing this key replaces the whole list.".into(),
            ],
            format!(
                "net.ipv4.ip_local_reserved_ports = {}",
                merged_reserved(s, &ports)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ListenerSocket, Owner, ProcessFacts, Sockstat};

    /// A host with the live 6.18 defaults from kernel-facts.md, Appendix A.
    fn defaults() -> Snapshot {
        let mut s = Snapshot::default();
        for (k, v) in [
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_keepalive_time", "7200"),
            ("net.ipv4.tcp_max_tw_buckets", "131072"),
            ("net.ipv4.tcp_orphan_retries", "0"),
            ("net.ipv4.tcp_syn_linear_timeouts", "4"),
            ("net.ipv4.tcp_syn_retries", "6"),
            ("net.ipv4.tcp_synack_retries", "5"),
            ("net.ipv4.tcp_syncookies", "1"),
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.ip_local_port_range", "32768 60999"),
            ("net.ipv4.ip_local_reserved_ports", ""),
            ("net.ipv4.tcp_timestamps", "1"),
            ("net.ipv4.tcp_rfc1337", "0"),
            ("net.ipv4.tcp_abort_on_overflow", "0"),
            ("net.ipv4.tcp_ehash_entries", "262144"),
            ("net.core.somaxconn", "4096"),
        ] {
            s.sysctls.insert(k.into(), v.into());
        }
        s
    }

    fn set(s: &mut Snapshot, k: &str, v: &str) {
        s.sysctls.insert(k.into(), v.into());
    }

    fn listener(port: u16, backlog: u32, pid: u32) -> ListenerSocket {
        ListenerSocket {
            local: Endpoint::new("0.0.0.0".parse().expect("ip"), port),
            accept_queue: 3,
            backlog,
            backlog_known: true,
            inode: u64::from(port),
            owner: Some(Owner { pid, fd: 5 }),
        }
    }

    /// The folklore tuning found on many hosts.
    fn folklore() -> Snapshot {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_tw_recycle", "1");
        set(&mut s, "net.ipv4.tcp_fin_timeout", "15");
        set(&mut s, "net.ipv4.tcp_timestamps", "0");
        set(&mut s, "net.ipv4.tcp_max_tw_buckets", "5000");
        set(&mut s, "net.ipv4.tcp_syn_retries", "2");
        set(&mut s, "net.ipv4.tcp_synack_retries", "1");
        set(&mut s, "net.ipv4.ip_local_port_range", "1024 65000");
        set(&mut s, "net.ipv4.ip_local_reserved_ports", "9100");
        set(&mut s, "net.core.somaxconn", "1024");
        set(&mut s, "net.ipv4.tcp_keepalive_time", "600");
        set(&mut s, "net.ipv4.tcp_syncookies", "0");
        set(&mut s, "net.ipv4.tcp_abort_on_overflow", "1");
        s.processes.insert(
            7,
            ProcessFacts {
                pid: 7,
                comm: "redis-server".into(),
                uid: 0,
                cmdline: String::new(),
                open_fds: 10,
                nofile_soft: None,
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        s.sockets.listeners = vec![
            listener(22, 128, 1),
            listener(6379, 511, 7),
            listener(11211, 1024, 8),
            listener(9100, 128, 9),
        ];
        s.sockets.time_wait.client_side = 4000;
        s.sockstat = Some(Sockstat {
            tw: 4990,
            ..Default::default()
        });
        s
    }

    fn by_key<'a>(f: &'a [Finding], key: &str) -> Vec<&'a Finding> {
        f.iter().filter(|x| x.data["sysctl"] == key).collect()
    }

    #[test]
    fn defaults_raise_nothing() {
        assert!(check(&defaults(), &Thresholds::default()).is_empty());
        assert!(check(&Snapshot::default(), &Thresholds::default()).is_empty());
    }

    #[test]
    fn folklore_tuning_is_flagged_one_finding_per_problem() {
        let f = check(&folklore(), &Thresholds::default());
        let keys: Vec<&str> = f
            .iter()
            .map(|x| x.data["sysctl"].as_str().expect("key"))
            .collect();
        for k in [
            "net.ipv4.tcp_tw_recycle",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_timestamps",
            "net.ipv4.tcp_max_tw_buckets",
            "net.ipv4.tcp_syn_retries",
            "net.ipv4.tcp_synack_retries",
            "net.core.somaxconn",
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.tcp_abort_on_overflow",
        ] {
            assert_eq!(keys.iter().filter(|x| **x == k).count(), 1, "{k}: {keys:?}");
        }
        // Overlap and parity are two problems with one key.
        assert_eq!(by_key(&f, "net.ipv4.ip_local_port_range").len(), 2);
        // Worst first.
        assert!(f.windows(2).all(|w| w[0].severity >= w[1].severity));

        let tw = by_key(&f, "net.ipv4.tcp_max_tw_buckets")[0];
        assert_eq!(tw.severity, Severity::Warning);
        assert_eq!(tw.data["default_value"], 131072);
        assert_eq!(tw.data["tw_now"], 4990);

        let syn = by_key(&f, "net.ipv4.tcp_syn_retries")[0];
        assert_eq!(syn.severity, Severity::Warning);
        assert_eq!(syn.data["give_up_s"], 11);
        assert_eq!(syn.data["default_give_up_s"], 131);

        let synack = by_key(&f, "net.ipv4.tcp_synack_retries")[0];
        assert_eq!(synack.data["give_up_s"], 3);

        let fin = by_key(&f, "net.ipv4.tcp_fin_timeout")[0];
        assert_eq!(fin.severity, Severity::Info);

        let overlap = by_key(&f, "net.ipv4.ip_local_port_range")
            .into_iter()
            .find(|x| x.data.get("listening_ports_in_range").is_some())
            .expect("overlap finding");
        assert_eq!(overlap.severity, Severity::Warning);
        // 22 is below the range, 9100 is already reserved.
        assert_eq!(
            overlap.data["listening_ports_in_range"],
            json!([6379, 11211])
        );
        assert_eq!(overlap.data["proposed_reserved_ports"], "6379,9100,11211");
        assert!(overlap
            .evidence
            .iter()
            .any(|e| e.value.contains("redis-server (pid 7)")));

        let sc = by_key(&f, "net.core.somaxconn")[0];
        assert_eq!(sc.severity, Severity::Warning);
        assert_eq!(sc.data["capped_listeners"][0]["port"], 11211);

        let recycle = by_key(&f, "net.ipv4.tcp_tw_recycle")[0];
        assert_eq!(recycle.severity, Severity::Warning);
        assert!(recycle.fix.iter().any(|l| l.mentions("/etc/sysctl.d")));
        assert!(sc.fix.iter().any(|l| l.mentions("per network namespace")));
    }

    #[test]
    fn handshake_timing_matches_the_kernel_documentation() {
        assert_eq!(handshake_give_up_s(6, 4), 131);
        assert_eq!(handshake_give_up_s(6, 0), 127);
        assert_eq!(handshake_give_up_s(2, 0), 7);
        assert_eq!(handshake_give_up_s(2, 4), 11);
        assert_eq!(handshake_give_up_s(5, 0), 63);
    }

    #[test]
    fn recycle_present_but_off_is_info_and_tw_reuse_only_flagged_on_servers() {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_tw_recycle", "0");
        set(&mut s, "net.ipv4.tcp_tw_reuse", "1");
        s.sockets.time_wait.server_side = 500;
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f.iter().all(|x| x.severity == Severity::Info));
        s.sockets.time_wait.client_side = 10;
        let f = check(&s, &Thresholds::default());
        assert!(by_key(&f, "net.ipv4.tcp_tw_reuse").is_empty());
    }

    #[test]
    fn lowered_tw_buckets_is_silent_without_a_reference_and_in_shared_ehash_namespaces() {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_max_tw_buckets", "5000");
        s.sysctls.remove("net.ipv4.tcp_ehash_entries");
        assert!(check(&s, &Thresholds::default()).is_empty());
        // A child namespace sharing the host's table reports it negative.
        set(&mut s, "net.ipv4.tcp_ehash_entries", "-262144");
        let f = check(&s, &Thresholds::default());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].data["default_value"], 131072);
    }

    #[test]
    fn emitted_file_fixes_what_was_found_and_never_sets_recycle() {
        let text = emit_sysctl(&folklore());
        for line in [
            "net.ipv4.tcp_timestamps = 1",
            "net.ipv4.tcp_max_tw_buckets = 131072",
            "net.ipv4.tcp_fin_timeout = 60",
            "net.ipv4.tcp_tw_reuse = 1",
            "net.ipv4.ip_local_reserved_ports = 6379,9100,11211",
            "net.core.somaxconn = 4096",
            "net.ipv4.tcp_syncookies = 1",
            "net.ipv4.tcp_abort_on_overflow = 0",
            "net.ipv4.tcp_syn_retries = 6",
            "net.ipv4.tcp_synack_retries = 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every setting line has a comment right above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.is_empty() && !l.starts_with('#') {
                assert!(lines[i - 1].starts_with('#'), "{l} has no comment");
                assert!(!l.contains("tcp_tw_recycle"), "{l}");
            }
        }
        assert!(text.contains("# Not here on purpose: net.ipv4.tcp_tw_recycle"));
        // 1024-65535 already ends at 65535; tcpdoctor never proposes a start below
        // 32768 the host did not have.
        assert!(!text.contains("net.ipv4.ip_local_port_range ="), "{text}");
    }

    #[test]
    fn emitted_file_for_a_healthy_server_changes_nothing() {
        let mut s = defaults();
        s.sockets.listeners = vec![listener(443, 511, 1)];
        s.sockets.time_wait.server_side = 100;
        let text = emit_sysctl(&s);
        assert!(text.contains("Nothing to change"), "{text}");
        assert!(!text.lines().any(|l| !l.is_empty() && !l.starts_with('#')));
    }

    #[test]
    fn emitted_range_for_a_client_widens_and_reserves_listeners_inside() {
        let mut s = defaults();
        s.sockets.time_wait.client_side = 20_000;
        s.sockets.listeners = vec![listener(61000, 4096, 3)];
        let text = emit_sysctl(&s);
        assert!(text
            .lines()
            .any(|l| l == "net.ipv4.ip_local_port_range = 32768 65535"));
        assert!(text
            .lines()
            .any(|l| l == "net.ipv4.ip_local_reserved_ports = 61000"));
    }
}
