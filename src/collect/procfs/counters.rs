//! Parser for `/proc/net/netstat` and `/proc/net/snmp`: pairs of lines, a header line of
//! names and a line of values, both starting with the same `Group:` prefix.
//! Counters are keyed `Group.Name`, e.g. `TcpExt.ListenOverflows`, `Tcp.AttemptFails`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::{Notice, NoticeCode};

/// A header/value pair that did not line up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    #[error(
        "line {line}: '{group}' header has {names} names but its value line has {values} values"
    )]
    Mismatch {
        line: usize,
        group: String,
        names: usize,
        values: usize,
    },
    #[error("line {line}: header '{group}' is not followed by its value line")]
    Unpaired { line: usize, group: String },
}

/// A group name as an error quotes it: the file may be anything (a replayed capture),
/// so at most 48 printable characters.
fn shown(group: &str) -> String {
    crate::model::text::clean(group, 48)
}

/// Parses the text; pairs that are malformed are skipped and reported, the rest kept.
/// Values that are not integers (never seen, but the file is text) are skipped too.
pub fn parse(text: &str) -> (BTreeMap<String, i64>, Vec<CounterError>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut i = 0;
    while i < lines.len() {
        let Some((group, names)) = lines[i].split_once(':') else {
            i += 1;
            continue;
        };
        let Some((vgroup, values)) = lines.get(i + 1).and_then(|l| l.split_once(':')) else {
            errors.push(CounterError::Unpaired {
                line: i + 1,
                group: shown(group),
            });
            i += 1;
            continue;
        };
        if vgroup != group {
            errors.push(CounterError::Unpaired {
                line: i + 1,
                group: shown(group),
            });
            i += 1;
            continue;
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            errors.push(CounterError::Mismatch {
                line: i + 1,
                group: shown(group),
                names: names.len(),
                values: values.len(),
            });
        } else {
            for (n, v) in names.iter().zip(values) {
                if let Ok(v) = v.parse::<i64>() {
                    out.insert(format!("{group}.{n}"), v);
                }
            }
        }
        i += 2;
    }
    (out, errors)
}

/// Reads and parses `<net_root>/net/netstat` and `<net_root>/net/snmp` into one map.
/// `None` when neither could be read. A missing or malformed file is a notice; with
/// `missing_is_said` false a file that does not exist is left to the caller to report
/// (a replayed capture lists everything it lacks in one notice).
pub fn read(
    net_root: &Path,
    missing_is_said: bool,
    notices: &mut Vec<Notice>,
) -> Option<BTreeMap<String, i64>> {
    let mut all = BTreeMap::new();
    let mut any = false;
    for f in ["netstat", "snmp"] {
        let path = net_root.join("net").join(f);
        match crate::collect::bounded::read_to_string(&path, crate::collect::bounded::SMALL) {
            Ok(text) => {
                any = true;
                let (m, errors) = parse(&text);
                all.extend(m);
                if let Some(e) = errors.first() {
                    notices.push(Notice::new(
                        NoticeCode::CountersPartial,
                        format!(
                            "'{}': {} malformed lines skipped ({e})",
                            path.display(),
                            errors.len()
                        ),
                    ));
                }
            }
            Err(e) if !missing_is_said && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => notices.push(Notice::new(
                NoticeCode::CountersUnavailable,
                format!("cannot read '{}': {e}", path.display()),
            )),
        }
    }
    any.then_some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_netstat_fixture() {
        let text = include_str!("../../../tests/fixtures/proc/netns_mixed/net/netstat");
        let (m, errs) = parse(text);
        assert!(errs.is_empty(), "{errs:?}");
        assert!(m.contains_key("TcpExt.ListenOverflows"));
        assert!(m.contains_key("TcpExt.TCPTimeWaitOverflow"));
        assert!(m.contains_key("IpExt.InOctets"));
    }

    #[test]
    fn parses_real_snmp_fixture_with_negative_maxconn() {
        let text = include_str!("../../../tests/fixtures/proc/netns_mixed/net/snmp");
        let (m, errs) = parse(text);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(m.get("Tcp.MaxConn"), Some(&-1));
        assert!(m.contains_key("Tcp.AttemptFails"));
        assert!(m.contains_key("Tcp.ActiveOpens"));
    }

    #[test]
    fn mismatched_and_unpaired_lines_are_reported_not_fatal() {
        let text = "TcpExt: A B C\nTcpExt: 1 2\nIp: X\nTcp: Y Z\nTcp: 5 6\nUdp: Q\n";
        let (m, errs) = parse(text);
        assert_eq!(m.get("Tcp.Z"), Some(&6));
        assert!(!m.contains_key("TcpExt.A"));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0]
            .to_string()
            .contains("'TcpExt' header has 3 names but its value line has 2"));
    }
}
