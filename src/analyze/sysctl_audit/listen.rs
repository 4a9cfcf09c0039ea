//! Listening sockets: tcp_syncookies, tcp_abort_on_overflow and net.core.somaxconn, the
//! settings that decide what happens when a listener's queues are full.

use serde_json::json;

use super::{Problem, Thresholds};
use crate::analyze::listen_overflow;
use crate::analyze::util::owner_label;
use crate::model::kernel::defaults;
use crate::model::units::count;
use crate::model::{Evidence, FixStep, Severity, Snapshot};

pub(super) fn syncookies(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_syncookies")?;
    let mut p = Problem::new(s, "net.ipv4.tcp_syncookies", Severity::Warning);
    p.default = Some(defaults::SYNCOOKIES.to_string());
    let why_back = match v {
        0 => {
            p.title = "tcp_syncookies=0: a full SYN queue drops new connections".into();
            // The SYN queue is bounded by the listen backlog since 4.4 (ef547f2ac16b);
            // tcp_max_syn_backlog is read only by the 3/4 test of tcp_conn_request(),
            // which runs with syncookies off.
            p.why = "A listener's SYN queue holds the handshakes still waiting for the client's final ACK; since Linux 4.4 it is bounded by the listen backlog, min(backlog, net.core.somaxconn). With syncookies off, a full SYN queue (a SYN flood, or just a burst) means new connection attempts are dropped; and even before that, SYNs from peers the kernel has no RTT record of are dropped once the queue holds more than three quarters of tcp_max_syn_backlog, the only case where that sysctl matters. Syncookies are the fallback that keeps legitimate clients getting in while the queue is full; with the default 1 they are used only then.".into();
            "Was 0. Cookies only while a SYN queue is full: a fallback under floods and bursts that leaves normal handshakes alone."
        }
        2 => {
            p.title = "tcp_syncookies=2: every connection is answered with a cookie".into();
            p.why = "With 2 the kernel answers every SYN with a cookie, even when nothing is overloaded. Cookies can only encode a few MSS values, and for clients that do not send TCP timestamps the kernel also drops window scaling and SACK, so those connections are slower. The default 1 uses cookies only while a listener's SYN queue is full.".into();
            "Was 2. Cookies only while a SYN queue is full, so normal handshakes keep their full TCP options."
        }
        _ => return None,
    };
    p.propose(defaults::SYNCOOKIES, "Use the default now", why_back);
    Some(p)
}

pub(super) fn abort_on_overflow(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
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
    // tcp_check_req() -> tcp_v4_syn_recv_sock(): with 0 the request stays in the SYN
    // queue and reqsk_timer_handler() resends the SYN-ACK; with 1 it falls through to
    // embryonic_reset (TcpExtEmbryonicRsts).
    p.why = "Normally, when a handshake's final ACK arrives while the accept queue is full, the kernel keeps the half-open connection and retransmits its SYN-ACK, which makes the client send its ACK again; once the application has accepted some connections, the next retry gets in. With this option that final ACK draws a reset instead, so a short burst turns into \"connection reset by peer\" errors for clients that already think they are connected; the kernel documentation warns it can harm clients. SYNs that arrive while the queue is full are dropped either way.".into();
    p.propose(
        0,
        "Turn it off now",
        "Was 1. Clients whose handshake meets a briefly full accept queue are retried (SYN-ACK retransmits) instead of reset.",
    );
    p.fix.push(FixStep::say("If the accept queue really overflows, raise the application's listen backlog together with net.core.somaxconn and make it accept faster (see listen_overflow)."));
    p.data.insert("listen_overflows".into(), json!(overflows));
    Some(p)
}

pub(super) fn somaxconn(s: &Snapshot, t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.core.somaxconn")?;
    if v >= defaults::SOMAXCONN {
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
    p.default = Some(format!("{} (128 before Linux 5.4)", defaults::SOMAXCONN));
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
        format!(
            "net.core.somaxconn={v}, below the default {}",
            defaults::SOMAXCONN
        )
    } else {
        format!(
            "net.core.somaxconn={v} caps the accept queue of {}",
            count(capped.len() as u64, "listener", "listeners")
        )
    };
    p.why = format!(
        "The kernel silently reduces any listen() backlog larger than somaxconn to somaxconn, so no listener here can queue more than {v} connections waiting for accept(); when the queue is full new connections are dropped. The default has been {} since Linux 5.4 (128 before), so on a 5.4 or newer kernel someone lowered it.",
        defaults::SOMAXCONN
    );
    // The same value listen_overflow proposes: one key, one value.
    let wanted = listen_overflow::wanted_somaxconn(s, t);
    let reason = if wanted > defaults::SOMAXCONN as u64 {
        format!(
            "{wanted}: room for twice the backlog of the fullest listener here (the kernel default is {})",
            defaults::SOMAXCONN
        )
    } else {
        format!("the kernel default {}", defaults::SOMAXCONN)
    };
    p.propose(
        wanted,
        "Raise it now",
        format!(
            "Was {v}. listen() cuts every backlog down to this value; {reason}. The application's own backlog must be raised too."
        ),
    );
    p.fix.push(FixStep::say("Raise the application's own backlog too, since it is the smaller of the two that counts (for example nginx: listen 80 backlog=4096; many daemons pass 511 or 128), then restart the service: the backlog is read at listen() time."));
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, Thresholds};
    use super::*;

    fn audit(s: &Snapshot) -> Vec<crate::model::Finding> {
        check(s, &Thresholds::default())
    }

    #[test]
    fn syncookies_off_or_always_fire_and_propose_one() {
        for v in ["0", "2"] {
            let mut s = defaults();
            set(&mut s, "net.ipv4.tcp_syncookies", v);
            let f = audit(&s);
            let c = about(&f, "net.ipv4.tcp_syncookies");
            assert_eq!(c.proposed[0].value, "1");
            assert_eq!(c.proposed[0].was.as_deref(), Some(v));
        }
        let f = audit(&folklore());
        let off = about(&f, "net.ipv4.tcp_syncookies");
        // The 3/4 test is against tcp_max_syn_backlog; the bound is the backlog.
        assert!(
            off.why.contains("three quarters of tcp_max_syn_backlog"),
            "{}",
            off.why
        );
        assert!(off.why.contains("since Linux 4.4"));
        assert!(audit(&defaults()).is_empty());
    }

    #[test]
    fn abort_on_overflow_fires_and_explains_the_synack_retry() {
        let f = audit(&folklore());
        let a = about(&f, "net.ipv4.tcp_abort_on_overflow");
        assert_eq!(a.severity, Severity::Warning);
        assert!(a.why.contains("retransmits its SYN-ACK"), "{}", a.why);
        assert_eq!(a.proposed[0].value, "0");
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_abort_on_overflow", "0");
        assert!(audit(&s).is_empty());
    }

    #[test]
    fn lowered_somaxconn_names_capped_listeners_and_proposes_the_default() {
        let f = audit(&folklore());
        let sc = about(&f, "net.core.somaxconn");
        assert_eq!(sc.severity, Severity::Warning);
        assert_eq!(sc.data["capped_listeners"][0]["port"], 11211);
        assert!(
            sc.title.ends_with("caps the accept queue of 1 listener"),
            "{}",
            sc.title
        );
        assert_eq!(sc.proposed[0].value, "4096");
        assert!(sc.why.starts_with("The kernel"), "{}", sc.why);

        let mut s = defaults();
        set(&mut s, "net.core.somaxconn", "128");
        let f = audit(&s);
        assert_eq!(about(&f, "net.core.somaxconn").severity, Severity::Info);
        set(&mut s, "net.core.somaxconn", "4096");
        assert!(audit(&s).is_empty());
    }

    /// A listener capped at a lowered somaxconn of 3000 and full: listen_overflow wants
    /// 8192, and the audit proposes the same, not 4096.
    #[test]
    fn somaxconn_proposal_is_the_one_listen_overflow_makes() {
        let mut s = defaults();
        set(&mut s, "net.core.somaxconn", "3000");
        let mut l = listener(8080, 3000, 1);
        l.accept_queue = 3001;
        s.sockets.listeners = vec![l];
        let t = Thresholds::default();
        let audit = check(&s, &t);
        let lo = crate::analyze::listen_overflow::check(&s, &t);
        let sc = about(&audit, "net.core.somaxconn");
        assert_eq!(sc.proposed[0].value, "8192");
        let lo_value = lo[0]
            .proposed
            .iter()
            .find(|c| c.key == "net.core.somaxconn")
            .map(|c| c.value.clone());
        assert_eq!(lo_value.as_deref(), Some("8192"), "{lo:#?}");
    }
}
