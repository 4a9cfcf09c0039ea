//! `tcpdoctor_sockets`: TCP sockets by state and address family, summed over every
//! namespace read; all 11 states of both families always present.

use super::{Kind, Text};
use crate::model::{Snapshot, TcpState};

/// `close_wait`: the kernel's name in lower case, as the `state` label spells it (and
/// as node_exporter's `node_tcp_connection_states` does).
pub(super) fn state_label(s: TcpState) -> String {
    s.name().to_ascii_lowercase()
}

/// `s`: every namespace folded into one.
pub(super) fn write(t: &mut Text, s: &Snapshot) {
    t.family(
        "tcpdoctor_sockets",
        Kind::Gauge,
        "TCP sockets by state (kernel names, lower case) and family; every state is present, zeros included.",
    );
    for (family, counts) in [("ipv4", &s.summary.ipv4), ("ipv6", &s.summary.ipv6)] {
        for st in TcpState::ALL {
            t.sample(
                "tcpdoctor_sockets",
                &[("state", &state_label(st)), ("family", family)],
                counts.get(st),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{family, snapshot};
    use super::*;

    #[test]
    fn every_state_and_family_is_present_with_zeros() {
        let mut t = Text::default();
        write(&mut t, &snapshot());
        let text = t.buf;
        assert_eq!(family(&text, "tcpdoctor_sockets").len(), 22);
        assert!(text.contains("tcpdoctor_sockets{state=\"close_wait\",family=\"ipv4\"} 10\n"));
        assert!(text.contains("tcpdoctor_sockets{state=\"listen\",family=\"ipv6\"} 1\n"));
        assert!(text.contains("tcpdoctor_sockets{state=\"syn_recv\",family=\"ipv6\"} 0\n"));
        assert!(text.contains("# TYPE tcpdoctor_sockets gauge\n"));
    }

    #[test]
    fn state_labels_are_the_kernel_names_in_lower_case() {
        assert_eq!(state_label(TcpState::FinWait1), "fin_wait1");
        assert_eq!(state_label(TcpState::SynRecv), "syn_recv");
        assert_eq!(state_label(TcpState::Close), "close");
    }
}
