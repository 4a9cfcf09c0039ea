//! The exporter's own health: build, collections made and failed, how long the last one
//! took, which sources it could read, and its partial-data notices. Written for every
//! scrape, also when the socket inventory failed and nothing else is.

use std::collections::BTreeMap;

use super::{CollectionStats, Kind, Text};
use crate::model::{Snapshot, Source};

/// Sources whose health `tcpdoctor_source_up` reports, in output order.
const SOURCES: &[&str] = &[
    "sockets",
    "owners",
    "counters",
    "sysctls",
    "sockstat",
    "kernel_log",
];

/// `snapshot`: every namespace folded into one, `None` when the collection failed.
pub(super) fn write(t: &mut Text, st: &CollectionStats, snapshot: Option<&Snapshot>) {
    t.family(
        "tcpdoctor_build_info",
        Kind::Gauge,
        "Always 1; the version label is the tcpdoctor version serving these metrics.",
    );
    t.sample(
        "tcpdoctor_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    t.single(
        "tcpdoctor_collections_total",
        Kind::Counter,
        "Collections made since the exporter started; concurrent and cached scrapes share one.",
        st.collections,
    );
    t.single(
        "tcpdoctor_collection_failures_total",
        Kind::Counter,
        "Collections that could not read the socket inventory at all.",
        st.failures,
    );
    t.single(
        "tcpdoctor_collection_duration_seconds",
        Kind::Gauge,
        "How long the collection behind this scrape took.",
        st.duration_s,
    );
    t.single(
        "tcpdoctor_collection_timestamp_seconds",
        Kind::Gauge,
        "Unix time the collection behind this scrape started (scrapes within --cache reuse it).",
        st.started_unix_ms as f64 / 1000.0,
    );

    t.family(
        "tcpdoctor_source_up",
        Kind::Gauge,
        "1 if the source was read in this collection (possibly partly, see tcpdoctor_partial_data_notices), 0 if not.",
    );
    for src in SOURCES {
        t.sample(
            "tcpdoctor_source_up",
            &[("source", src)],
            u64::from(source_up(snapshot, src)),
        );
    }

    t.family(
        "tcpdoctor_socket_reader_info",
        Kind::Gauge,
        "1 for the reader the socket inventory came from (netlink: sock_diag; proc: /proc/net/tcp fallback), 0 for the other.",
    );
    let reader = snapshot.and_then(|s| s.source);
    for (name, src) in [("netlink", Source::Netlink), ("proc", Source::Proc)] {
        t.sample(
            "tcpdoctor_socket_reader_info",
            &[("reader", name)],
            u64::from(reader == Some(src)),
        );
    }

    if let Some(s) = snapshot {
        let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
        for n in &s.missing {
            *codes.entry(n.code.as_str()).or_default() += 1;
        }
        t.family(
            "tcpdoctor_partial_data_notices",
            Kind::Gauge,
            "Partial-data notices of this collection by code (e.g. owners_partial); codes without a notice are absent.",
        );
        for (code, n) in codes {
            t.sample("tcpdoctor_partial_data_notices", &[("code", code)], n);
        }
    }
}

/// Whether `source` was read; derived from the snapshot fields each source fills (they
/// stay empty exactly when the collector recorded an `*_unavailable` notice).
fn source_up(snap: Option<&Snapshot>, source: &str) -> bool {
    let Some(s) = snap else {
        return false;
    };
    match source {
        "sockets" => true,
        "owners" => s.owners_known,
        "counters" => s.counters.is_some(),
        "sysctls" => !s.sysctls.is_empty(),
        "sockstat" => s.sockstat.is_some(),
        "kernel_log" => s.kernel_log.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{family, snapshot, stats};
    use super::*;
    use crate::model::{Notice, NoticeCode};

    fn written(snap: Option<&Snapshot>) -> String {
        let mut t = Text::default();
        write(&mut t, &stats(), snap);
        t.buf
    }

    #[test]
    fn health_of_a_collection_and_its_sources() {
        let mut s = snapshot();
        s.missing.push(Notice::new(NoticeCode::OwnersPartial, "a"));
        s.missing.push(Notice::new(NoticeCode::OwnersPartial, "b"));
        let text = written(Some(&s));
        assert!(text.contains("tcpdoctor_build_info{version=\""));
        assert!(text.contains("tcpdoctor_collections_total 3\n"));
        assert!(text.contains("tcpdoctor_collection_failures_total 1\n"));
        assert!(text.contains("tcpdoctor_collection_duration_seconds 0.25\n"));
        assert!(text.contains("tcpdoctor_collection_timestamp_seconds 1700000000.5\n"));
        assert_eq!(family(&text, "tcpdoctor_source_up").len(), SOURCES.len());
        for (src, up) in [
            ("sockets", 1),
            ("owners", 1),
            ("counters", 1),
            ("sysctls", 1),
            ("sockstat", 0),
            ("kernel_log", 0),
        ] {
            assert!(
                text.contains(&format!("tcpdoctor_source_up{{source=\"{src}\"}} {up}\n")),
                "{src}"
            );
        }
        assert!(text.contains("tcpdoctor_socket_reader_info{reader=\"netlink\"} 1\n"));
        assert!(text.contains("tcpdoctor_socket_reader_info{reader=\"proc\"} 0\n"));
        assert_eq!(
            family(&text, "tcpdoctor_partial_data_notices"),
            vec!["tcpdoctor_partial_data_notices{code=\"owners_partial\"} 2"]
        );
    }

    #[test]
    fn a_failed_collection_reports_every_source_down() {
        let text = written(None);
        assert!(family(&text, "tcpdoctor_source_up")
            .iter()
            .all(|l| l.ends_with(" 0")));
        assert!(family(&text, "tcpdoctor_socket_reader_info")
            .iter()
            .all(|l| l.ends_with(" 0")));
        assert!(!text.contains("# TYPE tcpdoctor_partial_data_notices"));
    }
}
