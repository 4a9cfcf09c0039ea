//! Ephemeral ports per (network namespace, source ip, destination ip:port): how many are
//! in use, how many connect() may use there, and how many are left.
//!
//! connect() picks a local port that makes the 4-tuple unique, so the ports run out per
//! (source ip, destination) and per namespace, against that namespace's own
//! `ip_local_port_range` minus `ip_local_reserved_ports`. So every series here is one
//! namespace's (its `netns` label) and `usable` carries exactly the labels `headroom`
//! has: `headroom / usable` divides numbers of one namespace and one destination. The
//! same destination in two namespaces is two series, never the tighter of the two
//! against a third namespace's range.

use std::cmp::Ordering;
use std::net::IpAddr;

use super::namespaces::NetnsLabels;
use super::{Kind, Text, OTHER};
use crate::model::rank::top_n;
use crate::model::{Endpoint, HostSnapshot, PortUse};

/// What is left of one destination's ports, as the model computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PortsLeft {
    pub headroom: u64,
    pub usable: u64,
}

impl PortsLeft {
    pub(super) fn of(p: &PortUse) -> PortsLeft {
        PortsLeft {
            headroom: p.headroom(),
            usable: p.usable,
        }
    }
}

/// Orders by the share of usable ports left (what the alerts compare), smallest first;
/// then by ports left. Integer cross-multiplication, so equal shares compare equal.
pub(super) fn tighter(a: &PortsLeft, b: &PortsLeft) -> Ordering {
    let lhs = u128::from(a.headroom) * u128::from(b.usable);
    let rhs = u128::from(b.headroom) * u128::from(a.usable);
    lhs.cmp(&rhs).then(a.headroom.cmp(&b.headroom))
}

/// One destination of one namespace: (namespace index, source ip, destination).
type Key = (usize, IpAddr, Endpoint);

fn sample(t: &mut Text, netns: &NetnsLabels, name: &str, key: &Key, v: u64) {
    let (i, local, remote) = key;
    t.sample(
        name,
        &[
            ("netns", netns.of(*i)),
            ("local_ip", &local.to_string()),
            ("destination", &remote.to_string()),
        ],
        v,
    );
}

pub(super) fn write(t: &mut Text, h: &HostSnapshot, netns: &NetnsLabels, top: usize) {
    let rows: Vec<(Key, &PortUse)> = h
        .namespaces
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.sockets
                .port_use
                .iter()
                .map(move |p| ((i, p.local_ip, p.remote), p))
        })
        .collect();
    // Headroom and usable: the N destinations with the smallest share left, whichever
    // namespace they are in.
    let mut tight: Vec<&(Key, &PortUse)> = rows.iter().collect();
    tight.sort_by(|a, b| tighter(&PortsLeft::of(a.1), &PortsLeft::of(b.1)).then(a.0.cmp(&b.0)));
    tight.truncate(top);
    let usable = "tcpdoctor_ephemeral_ports_usable";
    t.family(
        usable,
        Kind::Gauge,
        "Local ports connect() may use towards the destination in its network namespace (ip_local_port_range minus ip_local_reserved_ports there); same series as tcpdoctor_ephemeral_ports_headroom.",
    );
    for (key, p) in &tight {
        sample(t, netns, usable, key, p.usable);
    }

    // Used: the N busiest destinations, the rest summed into one `other`.
    let used = "tcpdoctor_ephemeral_ports_used";
    t.family(
        used,
        Kind::Gauge,
        "Ephemeral ports in use (any state, TIME_WAIT included) per network namespace, source ip and destination ip:port (top N across namespaces; \"other\" folds the rest).",
    );
    let busiest = top_n(rows.iter().map(|(key, p)| (*key, p.used())), top);
    for (key, n) in &busiest.top {
        sample(t, netns, used, key, *n);
    }
    t.sample(
        used,
        &[
            ("netns", OTHER),
            ("local_ip", OTHER),
            ("destination", OTHER),
        ],
        busiest.rest,
    );

    let headroom = "tcpdoctor_ephemeral_ports_headroom";
    t.family(
        headroom,
        Kind::Gauge,
        "Ephemeral ports left per network namespace, source ip and destination ip:port (usable there - used), for the N destinations with the smallest share left across namespaces.",
    );
    for (key, p) in &tight {
        sample(t, netns, headroom, key, p.headroom());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_unique_series, family, host_of, label_sets, namespace, snapshot, use_ports,
    };
    use super::*;

    fn written(h: &HostSnapshot, top: usize) -> String {
        let mut t = Text::default();
        write(&mut t, h, &NetnsLabels::new(h), top);
        t.buf
    }

    /// The value of one sample line, looked up by its exact series text.
    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn usable_reserved_ports_and_headroom_follow_the_model() {
        // 100 ports in the range, 10 reserved: 90 usable, 30 used, 60 left.
        let text = written(&host_of(vec![snapshot()]), 2);
        let at = "{netns=\"host\",local_ip=\"10.0.0.1\",destination=\"10.0.0.7:5432\"}";
        assert_eq!(
            value(&text, &format!("tcpdoctor_ephemeral_ports_usable{at}")),
            Some(90)
        );
        assert_eq!(
            value(&text, &format!("tcpdoctor_ephemeral_ports_used{at}")),
            Some(30)
        );
        assert_eq!(
            value(&text, &format!("tcpdoctor_ephemeral_ports_headroom{at}")),
            Some(60)
        );
        assert!(text.contains(
            "tcpdoctor_ephemeral_ports_used{netns=\"other\",local_ip=\"other\",destination=\"other\"} 0\n"
        ));
    }

    /// Issue 9 item 3: a namespace with 1,000 ports, half of them used, next to the
    /// host's 28,232. Headroom 500 over the host's usable read "1.8% left"; over its own
    /// 1,000 it is 50%.
    #[test]
    fn each_namespace_is_judged_against_its_own_range() {
        let mut hostns = namespace("host", 1, "32768 60999");
        use_ports(&mut hostns, "127.0.0.1", "127.0.0.1:5000", 10);
        let mut small = namespace("small", 2, "40000 40999");
        use_ports(&mut small, "127.0.0.1", "127.0.0.1:5000", 500);
        let text = written(&host_of(vec![hostns, small]), 10);
        let at = |ns: &str| {
            format!("{{netns=\"{ns}\",local_ip=\"127.0.0.1\",destination=\"127.0.0.1:5000\"}}")
        };
        for (ns, usable, used) in [("host", 28_232, 10), ("small", 1_000, 500)] {
            let get = |m: &str| value(&text, &format!("{m}{}", at(ns))).expect(m);
            assert_eq!(get("tcpdoctor_ephemeral_ports_usable"), usable, "{ns}");
            assert_eq!(get("tcpdoctor_ephemeral_ports_used"), used, "{ns}");
            assert_eq!(
                get("tcpdoctor_ephemeral_ports_headroom"),
                usable - used,
                "{ns}"
            );
        }
        // One destination, two namespaces: two series in each family, no merge.
        assert_eq!(family(&text, "tcpdoctor_ephemeral_ports_headroom").len(), 2);
        assert_eq!(family(&text, "tcpdoctor_ephemeral_ports_usable").len(), 2);
        // The smaller share left first: 50% before 99.96%.
        assert!(family(&text, "tcpdoctor_ephemeral_ports_headroom")[0].contains("small"));
        assert_unique_series(&text);
    }

    #[test]
    fn usable_has_exactly_the_series_headroom_has() {
        let mut a = namespace("a", 1, "40000 40099");
        let mut b = namespace("b", 2, "32768 60999");
        for (i, n) in [(1, 90), (2, 10), (3, 50)] {
            use_ports(&mut a, "10.0.0.1", &format!("10.0.0.{i}:80"), n);
            use_ports(&mut b, "10.0.0.1", &format!("10.0.0.{i}:80"), n * 300);
        }
        let text = written(&host_of(vec![a, b]), 3);
        let headroom = label_sets(&text, "tcpdoctor_ephemeral_ports_headroom");
        assert_eq!(headroom.len(), 3);
        assert_eq!(
            label_sets(&text, "tcpdoctor_ephemeral_ports_usable"),
            headroom
        );
        // Shares left: b/.1 1,232 of 28,232 (4.4%), a/.1 10 of 100, b/.3 13,232 of
        // 28,232 (46.9%); then a/.3 (50%), b/.2 and a/.2 are cut.
        assert_eq!(
            headroom,
            vec![
                "{netns=\"b\",local_ip=\"10.0.0.1\",destination=\"10.0.0.1:80\"}",
                "{netns=\"a\",local_ip=\"10.0.0.1\",destination=\"10.0.0.1:80\"}",
                "{netns=\"b\",local_ip=\"10.0.0.1\",destination=\"10.0.0.3:80\"}",
            ]
        );
    }

    #[test]
    fn used_is_the_busiest_across_namespaces_and_the_rest_is_folded() {
        let mut a = namespace("a", 1, "40000 40099");
        let mut b = namespace("b", 2, "32768 60999");
        use_ports(&mut a, "10.0.0.1", "10.0.0.1:80", 90);
        use_ports(&mut a, "10.0.0.1", "10.0.0.2:80", 5);
        use_ports(&mut b, "10.0.0.1", "10.0.0.1:80", 700);
        use_ports(&mut b, "10.0.0.2", "10.0.0.1:80", 3);
        let text = written(&host_of(vec![a, b]), 2);
        assert_eq!(
            family(&text, "tcpdoctor_ephemeral_ports_used"),
            vec![
                "tcpdoctor_ephemeral_ports_used{netns=\"b\",local_ip=\"10.0.0.1\",destination=\"10.0.0.1:80\"} 700",
                "tcpdoctor_ephemeral_ports_used{netns=\"a\",local_ip=\"10.0.0.1\",destination=\"10.0.0.1:80\"} 90",
                "tcpdoctor_ephemeral_ports_used{netns=\"other\",local_ip=\"other\",destination=\"other\"} 8",
            ]
        );
    }

    #[test]
    fn shares_compare_exactly() {
        let l = |headroom, usable| PortsLeft { headroom, usable };
        assert_eq!(
            tighter(&l(1, 10), &l(10, 100)),
            Ordering::Less,
            "same share, fewer left"
        );
        assert_eq!(tighter(&l(50, 100), &l(1232, 28232)), Ordering::Greater);
        assert_eq!(tighter(&l(0, 0), &l(0, 5)), Ordering::Equal);
        assert_eq!(tighter(&l(u64::MAX, u64::MAX), &l(1, 2)), Ordering::Greater);
    }
}
