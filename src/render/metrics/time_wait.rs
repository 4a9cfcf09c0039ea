//! TIME_WAIT: by who closed first (host totals), and client-side TIME_WAIT per
//! (network namespace, destination), top N across namespaces plus `other`. Each
//! namespace has its own TIME_WAIT table and its own ports, so a destination's series
//! is one namespace's count.

use super::namespaces::NetnsLabels;
use super::{Kind, Text, OTHER};
use crate::model::rank::top_n;
use crate::model::{HostSnapshot, Snapshot};

/// `s`: every namespace folded into one (for the totals); `h`: each namespace.
pub(super) fn write(t: &mut Text, s: &Snapshot, h: &HostSnapshot, netns: &NetnsLabels, top: usize) {
    let tw = &s.sockets.time_wait;
    let sides = "tcpdoctor_time_wait_sockets";
    t.family(
        sides,
        Kind::Gauge,
        "TIME_WAIT sockets by who closed first: side=\"server\" on a local listening port, side=\"client\" on any other.",
    );
    t.sample(sides, &[("side", "server")], tw.server_side);
    t.sample(sides, &[("side", "client")], tw.client_side);

    let name = "tcpdoctor_time_wait_destination_sockets";
    t.family(
        name,
        Kind::Gauge,
        "Client-side TIME_WAIT sockets per network namespace and destination ip:port (top N across namespaces; \"other\" folds the rest).",
    );
    let ranked = top_n(
        h.namespaces.iter().enumerate().flat_map(|(i, s)| {
            s.sockets
                .time_wait
                .by_destination
                .iter()
                .map(move |(d, n)| ((i, *d), *n))
        }),
        top,
    );
    for ((i, dest), n) in ranked.top {
        t.sample(
            name,
            &[("netns", netns.of(i)), ("destination", &dest.to_string())],
            n,
        );
    }
    t.sample(
        name,
        &[("netns", OTHER), ("destination", OTHER)],
        ranked.rest,
    );
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ep, family, host_of, namespace, snapshot};
    use super::*;

    fn written(h: &HostSnapshot, top: usize) -> String {
        let mut t = Text::default();
        write(&mut t, &h.merged(), h, &NetnsLabels::new(h), top);
        t.buf
    }

    #[test]
    fn sides_are_host_totals() {
        let mut a = snapshot();
        a.sockets.time_wait.server_side = 4;
        let b = snapshot();
        let text = written(&host_of(vec![a, b]), 2);
        assert!(text.contains("tcpdoctor_time_wait_sockets{side=\"server\"} 4\n"));
        assert!(text.contains("tcpdoctor_time_wait_sockets{side=\"client\"} 60\n"));
    }

    #[test]
    fn destinations_are_counted_per_namespace_never_summed_across() {
        let mut a = namespace("a", 1, "40000 40099");
        let mut b = namespace("b", 2, "32768 60999");
        for (s, pairs) in [
            (&mut a, [("10.0.0.7:5432", 30), ("10.0.0.8:443", 2)]),
            (&mut b, [("10.0.0.7:5432", 20), ("10.0.0.9:80", 1)]),
        ] {
            for (d, n) in pairs {
                s.sockets.time_wait.by_destination.insert(ep(d), n);
            }
        }
        let text = written(&host_of(vec![a, b]), 2);
        assert_eq!(
            family(&text, "tcpdoctor_time_wait_destination_sockets"),
            vec![
                "tcpdoctor_time_wait_destination_sockets{netns=\"a\",destination=\"10.0.0.7:5432\"} 30",
                "tcpdoctor_time_wait_destination_sockets{netns=\"b\",destination=\"10.0.0.7:5432\"} 20",
                "tcpdoctor_time_wait_destination_sockets{netns=\"other\",destination=\"other\"} 3",
            ]
        );
    }
}
