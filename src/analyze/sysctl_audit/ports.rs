//! The ephemeral port range: ip_local_port_range over listening ports, and a range whose
//! start and end have the same parity. The range is only ever widened by
//! ephemeral_port_exhaustion, when ports run short; never here.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Problem, Thresholds};
use crate::analyze::ephemeral_port_exhaustion;
use crate::analyze::util::unreserved_listeners_in;
use crate::model::kernel::parse_port_list;
use crate::model::units::count;
use crate::model::{Evidence, FixStep, PortRange, Severity, Snapshot};

const RANGE_KEY: &str = "net.ipv4.ip_local_port_range";
const RESERVED_KEY: &str = "net.ipv4.ip_local_reserved_ports";

fn default_text() -> String {
    format!(
        "{} {}",
        PortRange::KERNEL_DEFAULT.low,
        PortRange::KERNEL_DEFAULT.high
    )
}

pub(super) fn overlap(s: &Snapshot, _t: &Thresholds) -> Option<Problem> {
    let range = s.port_range()?;
    let PortRange { low: lo, high: hi } = range;
    let inside = unreserved_listeners_in(s, range);
    if inside.is_empty() {
        return None;
    }
    // A range that starts below the default was widened by hand and now covers the
    // ports services are configured with; inside the default range a listener usually
    // got its port from bind(0), which is expected and not worth a proposal.
    let widened_by_hand = lo < PortRange::KERNEL_DEFAULT.low;
    let severity = if widened_by_hand {
        Severity::Warning
    } else {
        Severity::Info
    };
    let mut p = Problem::new(s, RANGE_KEY, severity);
    p.default = Some(default_text());
    for (port, who) in inside.iter().take(10) {
        p.evidence.push(Evidence::new(
            "listening inside the range",
            format!("port {port}: {who}"),
        ));
    }
    let ports: Vec<u16> = inside.keys().copied().collect();
    let merged = merged_reserved(s, &ports);
    let n = ports.len() as u64;
    p.title = format!(
        "ip_local_port_range {lo}-{hi} contains {}: {}",
        count(
            n,
            "listening port that is not reserved",
            "listening ports that are not reserved"
        ),
        ports
            .iter()
            .take(8)
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    p.why = "Both connect() and bind(0) take local ports from this range, so a service that starts (or restarts) after an outgoing connection took its port fails with EADDRINUSE. Listeners that got their port from bind(0) are expected here; fixed service ports should either be outside the range or listed in ip_local_reserved_ports, which keeps automatic assignment away from them.".into();
    let was = s.sysctl(RESERVED_KEY).map(str::to_string);
    if widened_by_hand {
        p.propose_key(
            RESERVED_KEY,
            &merged,
            was,
            "Reserve them now; the list replaces the old one, so it keeps its entries",
            format!(
                "Listening ports inside ip_local_port_range {lo}-{hi}, reserved so that no outgoing connection takes them while their service is down ({}). Keeps the existing entries: writing this key replaces the whole list.",
                inside
                    .iter()
                    .take(6)
                    .map(|(port, who)| format!("{who} on {port}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let end = if hi % 2 == 0 {
            hi.saturating_sub(1)
        } else {
            hi
        };
        p.fix.push(FixStep::run(
            "Or instead start the range at the kernel default, above the ports services are configured with",
            format!(
                "sysctl -w {RANGE_KEY}=\"{} {end}\"",
                PortRange::KERNEL_DEFAULT.low
            ),
        ));
    } else {
        p.fix.push(FixStep::run(
            "If some of these are fixed service ports rather than ports a program got from bind(0), reserve those (edit the list: it replaces the old one, so keep its entries)",
            format!("sysctl -w {RESERVED_KEY}={merged}"),
        ));
    }
    p.data.insert("range".into(), json!([lo, hi]));
    p.data
        .insert("listening_ports_in_range".into(), json!(ports));
    p.data
        .insert("proposed_reserved_ports".into(), json!(merged));
    Some(p)
}

/// A range whose start and end have the same parity. Since 4.6 connect() tries ports of
/// the start's parity first and bind(0) the other parity (`__inet_hash_connect()`,
/// `inet_csk_find_open_port()`); set_local_port_range() logs a warning for such a range.
pub(super) fn parity(s: &Snapshot, t: &Thresholds) -> Option<Problem> {
    let range = s.port_range()?;
    let PortRange { low: lo, high: hi } = range;
    if range.parity_ok() {
        return None;
    }
    let mut p = Problem::new(s, RANGE_KEY, Severity::Info);
    p.default = Some(default_text());
    p.title = format!("ip_local_port_range {lo}-{hi}: start and end have the same parity");
    p.why = "Since Linux 4.6 connect() tries the ports of the same parity as the range start first and bind(0) the other parity, so the two compete less for the same ports (since 6.8 a socket that sets IP_LOCAL_PORT_RANGE skips this split in connect()). The kernel documentation asks for a start and end of different parity, and the kernel logs \"prefer different parity for start/end values\" when a range like this one is written. It is a sign of a hand-edited range rather than a failure.".into();
    if let Some(wider) = range_proposed_elsewhere(s, t) {
        // One key, one value: the range proposed for the port shortage is the fix.
        p.fix.push(FixStep::say(format!(
            "The range proposed for the port shortage ({wider}) has ends of different parity and fixes this too."
        )));
    } else if lo < PortRange::KERNEL_DEFAULT.low {
        // Never a proposed range that starts below 32768, where services listen.
        p.fix.push(FixStep::say(format!(
            "No range starting below {} is proposed: services listen there. When this range is next changed, start it at {} or above and end it on a port of the other parity.",
            PortRange::KERNEL_DEFAULT.low,
            PortRange::KERNEL_DEFAULT.low
        )));
    } else {
        // The same start, the end moved by one port: no fewer ports than now.
        let end = if hi < u16::MAX { hi + 1 } else { hi - 1 };
        p.propose(
            format!("{lo} {end}"),
            "Move the end by one port now",
            format!(
                "Was {lo} {hi}. Start and end of different parity, as the kernel documentation asks; the same start and {}.",
                if end > hi { "one port more" } else { "one port less" }
            ),
        );
        p.data.insert("proposed_range".into(), json!([lo, end]));
    }
    p.data.insert("range".into(), json!([lo, hi]));
    Some(p)
}

/// The ip_local_port_range another rule proposes for this namespace (the port shortage
/// widening), so that the parity finding does not propose a second value for the key.
fn range_proposed_elsewhere(s: &Snapshot, t: &Thresholds) -> Option<String> {
    ephemeral_port_exhaustion::check(s, t)
        .into_iter()
        .flat_map(|f| f.proposed)
        .find(|c| c.key == RANGE_KEY)
        .map(|c| c.value)
}

/// The existing ip_local_reserved_ports plus `ports`, as one sorted list with runs
/// merged (`8080,9000-9002`).
fn merged_reserved(s: &Snapshot, ports: &[u16]) -> String {
    let mut all: BTreeSet<u16> = ports.iter().copied().collect();
    for (a, b) in s
        .sysctl(RESERVED_KEY)
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, Thresholds};
    use super::*;

    fn audit(s: &Snapshot) -> Vec<crate::model::Finding> {
        check(s, &Thresholds::default())
    }

    #[test]
    fn hand_widened_range_over_services_proposes_reserving_them() {
        let f = audit(&folklore());
        let overlap = by_key(&f, RANGE_KEY)
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
            .title
            .contains("2 listening ports that are not reserved"));
        assert!(overlap
            .evidence
            .iter()
            .any(|e| e.value.contains("redis-server (pid 7)")));
        assert_eq!(overlap.proposed.len(), 1, "{overlap:#?}");
        let c = &overlap.proposed[0];
        assert_eq!(c.key, RESERVED_KEY);
        assert_eq!(c.value, "6379,9100,11211");
        assert_eq!(c.was.as_deref(), Some("9100"));
        // The alternative keeps 32768 as the start.
        assert!(overlap.fix.iter().any(|st| st.command.as_deref()
            == Some("sysctl -w net.ipv4.ip_local_port_range=\"32768 64999\"")));
    }

    #[test]
    fn listener_inside_the_default_range_is_info_without_a_proposal() {
        let mut s = defaults();
        s.sockets.listeners = vec![listener(45000, 128, 3)];
        let f = audit(&s);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].severity, Severity::Info);
        assert!(f[0].proposed.is_empty());
        assert!(f[0]
            .title
            .contains("1 listening port that is not reserved: 45000"));
        // Reserved or outside: nothing.
        set(&mut s, RESERVED_KEY, "45000");
        assert!(audit(&s).is_empty());
    }

    #[test]
    fn same_parity_range_gets_its_end_moved_by_one() {
        let mut s = defaults();
        set(&mut s, RANGE_KEY, "40000 50000");
        let f = audit(&s);
        let parity = about(&f, RANGE_KEY);
        assert_eq!(parity.severity, Severity::Info);
        assert!(parity.why.contains("Since Linux 4.6"), "{}", parity.why);
        assert!(parity.why.contains("IP_LOCAL_PORT_RANGE"));
        assert_eq!(parity.proposed[0].value, "40000 50001");
        set(&mut s, RANGE_KEY, "40001 65535");
        let f = audit(&s);
        assert_eq!(about(&f, RANGE_KEY).proposed[0].value, "40001 65534");
        // Different parity, as the default and 1024-65535: nothing.
        set(&mut s, RANGE_KEY, "1024 65535");
        assert!(audit(&s).is_empty());
    }

    #[test]
    fn same_parity_range_below_32768_is_never_proposed() {
        let f = audit(&folklore());
        let parity = by_key(&f, RANGE_KEY)
            .into_iter()
            .find(|x| x.data.get("listening_ports_in_range").is_none())
            .expect("parity finding");
        assert!(parity.proposed.is_empty(), "{parity:#?}");
        assert!(parity.fix.iter().any(|st| st.mentions("below 32768")));
    }

    #[test]
    fn reserved_lists_merge_runs() {
        let mut s = defaults();
        set(&mut s, RESERVED_KEY, "9000-9002,8080");
        assert_eq!(merged_reserved(&s, &[9003, 7000]), "7000,8080,9000-9003");
    }
}
