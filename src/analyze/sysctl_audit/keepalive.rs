//! Keep-alive: a lowered tcp_keepalive_time, explained. Nothing is proposed: the value
//! may be deliberate (a NAT idle timeout), and per-socket options are the better tool.

use super::{Problem, Thresholds};
use crate::model::kernel::defaults;
use crate::model::{Evidence, FixStep, Severity, Snapshot};

pub(super) fn keepalive_time(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let v = s.sysctl_i64("net.ipv4.tcp_keepalive_time")?;
    if v >= defaults::KEEPALIVE_TIME_S {
        return None;
    }
    let mut p = Problem::new(s, "net.ipv4.tcp_keepalive_time", Severity::Info);
    p.default = Some(format!(
        "{} (intvl 75, probes 9)",
        defaults::KEEPALIVE_TIME_S
    ));
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
    p.fix.push(FixStep::say("If the goal is to keep connections alive through a NAT or load balancer idle timeout, enable keep-alive in the application with per-socket TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT below that timeout."));
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, Thresholds};
    use crate::model::Severity;

    #[test]
    fn lowered_keepalive_time_is_info_without_a_proposal() {
        let mut s = defaults();
        set(&mut s, "net.ipv4.tcp_keepalive_time", "600");
        let f = check(&s, &Thresholds::default());
        let k = about(&f, "net.ipv4.tcp_keepalive_time");
        assert_eq!(k.severity, Severity::Info);
        assert!(k.proposed.is_empty());
        set(&mut s, "net.ipv4.tcp_keepalive_time", "7200");
        assert!(check(&s, &Thresholds::default()).is_empty());
    }
}
