//! Per network namespace: how many were read, the top N by sockets with every state,
//! and the N whose tightest destination has the least of its ports left. Also the
//! `netns` label every per-namespace family uses.

use super::ephemeral_ports::{tighter, PortsLeft};
use super::states::state_label;
use super::{Kind, Text, OTHER};
use crate::model::rank::top_n;
use crate::model::{HostSnapshot, StateCounts, TcpState};

/// The `netns` label of each namespace of one collection, by its index in
/// `HostSnapshot::namespaces`: the name the reports use (container, pod, `ip netns`
/// name, `host`, first process). A name that two namespaces share, or that is the fold
/// value `other`, gets the namespace's inode too (`(unnamed) net:[4026532290]`), so no
/// two namespaces, and no namespace and the fold series, share a label.
pub(super) struct NetnsLabels(Vec<String>);

impl NetnsLabels {
    pub(super) fn new(h: &HostSnapshot) -> NetnsLabels {
        let names: Vec<&str> = h
            .namespaces
            .iter()
            .map(|s| s.netns.as_ref().map_or("host", |n| n.name.as_str()))
            .collect();
        let labels = h
            .namespaces
            .iter()
            .zip(&names)
            .map(|(s, name)| {
                let shared = *name == OTHER || names.iter().filter(|x| *x == name).count() > 1;
                match &s.netns {
                    Some(n) if shared => format!("{name} net:[{}]", n.inode),
                    _ => name.to_string(),
                }
            })
            .collect();
        NetnsLabels(labels)
    }

    /// The label of the namespace at `index` in `HostSnapshot::namespaces`.
    pub(super) fn of(&self, index: usize) -> &str {
        self.0.get(index).map_or(OTHER, String::as_str)
    }
}

pub(super) fn write(t: &mut Text, h: &HostSnapshot, netns: &NetnsLabels, top: usize) {
    t.single(
        "tcpdoctor_netns_read",
        Kind::Gauge,
        "Network namespaces read in this collection (1 when only tcpdoctor's own was read).",
        h.namespaces.len() as u64,
    );

    let totals: Vec<StateCounts> = h.namespaces.iter().map(|s| s.summary.total()).collect();
    let ranked = top_n(totals.iter().map(StateCounts::total).enumerate(), top);
    let sockets = "tcpdoctor_netns_sockets";
    t.family(
        sockets,
        Kind::Gauge,
        "TCP sockets by state in the N network namespaces with the most sockets (netns: container, pod, ip netns name or first process); \"other\" folds the rest.",
    );
    let mut other = StateCounts::default();
    for (i, c) in totals.iter().enumerate() {
        if !ranked.top.iter().any(|(r, _)| *r == i) {
            other.merge(c);
        }
    }
    for (i, _) in &ranked.top {
        for st in TcpState::ALL {
            t.sample(
                sockets,
                &[("netns", netns.of(*i)), ("state", &state_label(st))],
                totals[*i].get(st),
            );
        }
    }
    for st in TcpState::ALL {
        t.sample(
            sockets,
            &[("netns", OTHER), ("state", &state_label(st))],
            other.get(st),
        );
    }

    // Each namespace's tightest destination (within a namespace every destination has
    // the same usable ports, so the one with the fewest left), then the N namespaces
    // with the smallest share left: the ones an alert on headroom / usable would name.
    let mut tight: Vec<(usize, PortsLeft)> = h
        .namespaces
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = s.sockets.port_use.iter().min_by_key(|p| p.headroom())?;
            Some((i, PortsLeft::of(p)))
        })
        .collect();
    tight.sort_by(|a, b| tighter(&a.1, &b.1).then(a.0.cmp(&b.0)));
    tight.truncate(top);
    let headroom = "tcpdoctor_netns_ephemeral_ports_headroom";
    t.family(
        headroom,
        Kind::Gauge,
        "Ephemeral ports left towards the tightest destination of each network namespace, against that namespace's own range, for the N namespaces with the smallest share left (absent: no outgoing connections).",
    );
    for (i, left) in &tight {
        t.sample(headroom, &[("netns", netns.of(*i))], left.headroom);
    }
    let usable = "tcpdoctor_netns_ephemeral_ports_usable";
    t.family(
        usable,
        Kind::Gauge,
        "Ephemeral ports connect() may use per destination in the same network namespaces (their ip_local_port_range minus ip_local_reserved_ports); same labels as tcpdoctor_netns_ephemeral_ports_headroom.",
    );
    for (i, left) in &tight {
        t.sample(usable, &[("netns", netns.of(*i))], left.usable);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_unique_series, family, host_of, label_sets, namespace, use_ports,
    };
    use super::*;
    use crate::model::Snapshot;

    fn written(h: &HostSnapshot, top: usize) -> String {
        let mut t = Text::default();
        write(&mut t, h, &NetnsLabels::new(h), top);
        t.buf
    }

    /// A namespace with `established` sockets, `used` of them towards one destination.
    fn ns(name: &str, inode: u64, established: u64, port_range: &str, used: u64) -> Snapshot {
        let mut s = namespace(name, inode, port_range);
        for _ in 0..established {
            s.summary.ipv4.add(TcpState::Established);
        }
        use_ports(&mut s, "10.0.0.1", "10.0.0.7:5432", used);
        s
    }

    #[test]
    fn namespaces_are_ranked_by_sockets_and_the_rest_folded() {
        let host = host_of(vec![
            ns("a", 1, 5, "40000 40099", 5),
            ns("bb", 2, 9, "32768 60999", 9),
            ns("ccc", 3, 2, "40000 40009", 2),
        ]);
        let text = written(&host, 2);
        assert!(text.contains("tcpdoctor_netns_read 3\n"));
        assert!(text.contains("tcpdoctor_netns_sockets{netns=\"bb\",state=\"established\"} 9\n"));
        assert!(text.contains("tcpdoctor_netns_sockets{netns=\"a\",state=\"established\"} 5\n"));
        assert!(text.contains("tcpdoctor_netns_sockets{netns=\"other\",state=\"established\"} 2\n"));
        assert!(!text.contains("netns=\"ccc\",state"));
        assert_eq!(family(&text, "tcpdoctor_netns_sockets").len(), 3 * 11);
        assert_unique_series(&text);
    }

    #[test]
    fn headroom_is_each_namespaces_own_with_its_own_usable() {
        let host = host_of(vec![
            // 100 ports, 95 left: 95%.
            ns("a", 1, 5, "40000 40099", 5),
            // 28,232 ports, 28,223 left: the most absolute headroom, the biggest share.
            ns("bb", 2, 9, "32768 60999", 9),
            // 10 ports, 8 left: 80%.
            ns("ccc", 3, 2, "40000 40009", 2),
        ]);
        let text = written(&host, 2);
        assert_eq!(
            family(&text, "tcpdoctor_netns_ephemeral_ports_headroom"),
            vec![
                "tcpdoctor_netns_ephemeral_ports_headroom{netns=\"ccc\"} 8",
                "tcpdoctor_netns_ephemeral_ports_headroom{netns=\"a\"} 95",
            ]
        );
        assert_eq!(
            family(&text, "tcpdoctor_netns_ephemeral_ports_usable"),
            vec![
                "tcpdoctor_netns_ephemeral_ports_usable{netns=\"ccc\"} 10",
                "tcpdoctor_netns_ephemeral_ports_usable{netns=\"a\"} 100",
            ]
        );
    }

    #[test]
    fn the_smallest_share_left_wins_over_the_fewest_ports_left() {
        // 50 of 100 left (50%) against 1,232 of 28,232 (4.4%): the second is the one
        // about to run out, although more ports are left there.
        let host = host_of(vec![
            ns("small", 1, 0, "40000 40099", 50),
            ns("busy", 2, 0, "32768 60999", 27_000),
        ]);
        let text = written(&host, 1);
        assert_eq!(
            family(&text, "tcpdoctor_netns_ephemeral_ports_headroom"),
            vec!["tcpdoctor_netns_ephemeral_ports_headroom{netns=\"busy\"} 1232"]
        );
        assert_eq!(
            label_sets(&text, "tcpdoctor_netns_ephemeral_ports_usable"),
            label_sets(&text, "tcpdoctor_netns_ephemeral_ports_headroom")
        );
    }

    #[test]
    fn labels_take_the_inode_when_names_collide_or_look_like_the_fold() {
        let host = host_of(vec![
            ns("(unnamed)", 7, 1, "40000 40099", 1),
            ns("(unnamed)", 8, 1, "40000 40099", 1),
            ns("other", 9, 1, "40000 40099", 1),
            ns("blue", 10, 1, "40000 40099", 1),
        ]);
        let labels = NetnsLabels::new(&host);
        let got: Vec<&str> = (0..4).map(|i| labels.of(i)).collect();
        assert_eq!(
            got,
            vec![
                "(unnamed) net:[7]",
                "(unnamed) net:[8]",
                "other net:[9]",
                "blue"
            ]
        );
        let text = written(&host, 10);
        assert_unique_series(&text);
        // Without a namespace record (one namespace read the simple way): "host".
        let mut plain = host_of(vec![ns("x", 1, 1, "40000 40099", 1)]);
        plain.namespaces[0].netns = None;
        assert_eq!(NetnsLabels::new(&plain).of(0), "host");
    }

    #[test]
    fn a_namespace_without_outgoing_connections_has_no_headroom_series() {
        let mut quiet = ns("quiet", 1, 3, "40000 40099", 0);
        quiet.sockets.port_use.clear();
        let text = written(&host_of(vec![quiet]), 2);
        assert!(family(&text, "tcpdoctor_netns_ephemeral_ports_headroom").is_empty());
        assert!(family(&text, "tcpdoctor_netns_ephemeral_ports_usable").is_empty());
        assert!(text.contains("# TYPE tcpdoctor_netns_ephemeral_ports_headroom gauge\n"));
    }
}
