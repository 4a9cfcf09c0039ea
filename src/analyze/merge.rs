//! One finding per cause: the same finding made in several namespaces (a folklore
//! sysctl set in twelve containers) is reported once, naming them all. Evidence and data
//! that differ between them are kept per namespace; what they share is said once.

use serde_json::{Map, Value};

use crate::model::units::compact_list;
use crate::model::{Evidence, Finding, NetnsInfo};

/// Whether `a` and `b` (each about one namespace, commands not yet pointed) are the same
/// cause: the same rule says the same thing about it and proposes the same fix. What
/// was measured (evidence, data) may differ; where (the namespace) does.
pub fn same_cause(a: &Finding, b: &Finding) -> bool {
    a.rule_id == b.rule_id
        && a.severity == b.severity
        && a.nature == b.nature
        && a.title == b.title
        && a.why == b.why
        && a.fix == b.fix
        && a.proposed == b.proposed
}

/// Namespace names shown in a merged evidence value.
const NAMES_IN_VALUE: usize = 2;

/// One finding for `members`, the same cause in each of their namespaces (in report
/// order). Evidence lines with one value everywhere are kept as they are; the others
/// list each value with the namespaces that have it. `data` keeps the keys whose value
/// is the same everywhere and moves the others to `data.per_namespace[]`, one object per
/// namespace with its `netns` (inode, name).
pub fn merge(members: &[(Finding, &NetnsInfo)]) -> Finding {
    let Some((first, _)) = members.first() else {
        return Finding::new(
            "",
            crate::model::Severity::Info,
            crate::model::Nature::Config,
            "",
        );
    };
    let mut f = first.clone();
    f.namespaces = members.iter().map(|(_, ns)| ns.to_ref()).collect();
    f.evidence = merge_evidence(members);
    f.data = merge_data(members);
    f
}

/// Each evidence line of `f` with its key: its label and how many lines before it have
/// the same label (a finding may give several lines one label: one per call site).
fn keyed(f: &Finding) -> Vec<((&str, usize), &str)> {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    f.evidence
        .iter()
        .map(|e| {
            let nth = match seen.iter_mut().find(|(l, _)| *l == e.label) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((&e.label, 0));
                    0
                }
            };
            ((e.label.as_str(), nth), e.value.as_str())
        })
        .collect()
}

fn merge_evidence(members: &[(Finding, &NetnsInfo)]) -> Vec<Evidence> {
    let lines: Vec<Vec<((&str, usize), &str)>> = members.iter().map(|(f, _)| keyed(f)).collect();
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for key in lines.iter().flatten().map(|(k, _)| *k) {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|key| {
            // (value, namespaces that have it), in order of first appearance.
            let mut values: Vec<(&str, Vec<String>)> = Vec::new();
            let mut everywhere = true;
            for (mine, (_, ns)) in lines.iter().zip(members) {
                match mine.iter().find(|(k, _)| *k == key) {
                    Some((_, value)) => match values.iter_mut().find(|(v, _)| v == value) {
                        Some((_, names)) => names.push(ns.name.clone()),
                        None => values.push((value, vec![ns.name.clone()])),
                    },
                    None => everywhere = false,
                }
            }
            let value = match values.as_slice() {
                [(v, _)] if everywhere => (*v).to_string(),
                _ => values
                    .iter()
                    .map(|(v, names)| format!("{v} ({})", compact_list(names, NAMES_IN_VALUE)))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            Evidence::new(key.0, value)
        })
        .collect()
}

fn merge_data(members: &[(Finding, &NetnsInfo)]) -> Value {
    let first = &members[0].0.data;
    if members.iter().all(|(f, _)| f.data == *first) {
        return first.clone();
    }
    let objects: Vec<&Map<String, Value>> = members
        .iter()
        .filter_map(|(f, _)| f.data.as_object())
        .collect();
    let netns = |ns: &NetnsInfo| serde_json::json!({"inode": ns.inode, "name": ns.name});
    if objects.len() != members.len() {
        // Not objects: each namespace's data whole.
        let per: Vec<Value> = members
            .iter()
            .map(|(f, ns)| serde_json::json!({"netns": netns(ns), "data": f.data}))
            .collect();
        return serde_json::json!({ "per_namespace": per });
    }
    let shared = |k: &str, v: &Value| objects.iter().all(|o| o.get(k) == Some(v));
    let mut common = Map::new();
    for (k, v) in objects[0] {
        if shared(k, v) {
            common.insert(k.clone(), v.clone());
        }
    }
    let per: Vec<Value> = members
        .iter()
        .zip(&objects)
        .map(|((_, ns), o)| {
            let mut own = Map::new();
            own.insert("netns".into(), netns(ns));
            for (k, v) in o.iter().filter(|(k, _)| !common.contains_key(*k)) {
                own.insert(k.clone(), v.clone());
            }
            Value::Object(own)
        })
        .collect();
    common.insert("per_namespace".into(), Value::Array(per));
    Value::Object(common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nature, NetnsKind, Severity};
    use serde_json::json;

    fn ns(name: &str, inode: u64) -> NetnsInfo {
        NetnsInfo {
            inode,
            name: name.into(),
            kind: NetnsKind::IpNetns,
            current: false,
            initial: false,
            container: None,
            ip_netns: vec![name.into()],
            processes: 0,
            first_pid: None,
        }
    }

    fn audit(tw_now: u64) -> Finding {
        let mut f = Finding::new(
            "sysctl_audit",
            Severity::Warning,
            Nature::Config,
            "tcp_max_tw_buckets lowered to 5000 (default 131072)",
        );
        f.evidence = vec![
            Evidence::new("net.ipv4.tcp_max_tw_buckets", "5000"),
            Evidence::new("TIME_WAIT sockets now", tw_now),
        ];
        f.data =
            json!({"sysctl": "net.ipv4.tcp_max_tw_buckets", "value": "5000", "tw_now": tw_now});
        f
    }

    #[test]
    fn same_setting_in_several_namespaces_is_one_cause() {
        assert!(
            same_cause(&audit(1), &audit(900)),
            "measurements may differ"
        );
        let mut other = audit(1);
        other.title = "tcp_max_tw_buckets lowered to 4000 (default 131072)".into();
        assert!(!same_cause(&audit(1), &other));
        let mut worse = audit(1);
        worse.severity = Severity::Critical;
        assert!(!same_cause(&audit(1), &worse));
    }

    #[test]
    fn merged_finding_keeps_each_namespaces_numbers() {
        let (a, b, c) = (ns("a", 1), ns("b", 2), ns("c", 3));
        let m = merge(&[(audit(7), &a), (audit(7), &b), (audit(90), &c)]);
        assert_eq!(
            m.namespaces
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(m.evidence[0].value, "5000", "the same everywhere: once");
        assert_eq!(m.evidence[1].value, "7 (a and b); 90 (c)");
        assert_eq!(m.data["value"], "5000");
        assert!(m.data.get("tw_now").is_none(), "{}", m.data);
        assert_eq!(
            m.data["per_namespace"],
            json!([
                {"netns": {"inode": 1, "name": "a"}, "tw_now": 7},
                {"netns": {"inode": 2, "name": "b"}, "tw_now": 7},
                {"netns": {"inode": 3, "name": "c"}, "tw_now": 90},
            ])
        );
        let same = merge(&[(audit(7), &a), (audit(7), &b)]);
        assert_eq!(same.data, audit(7).data, "nothing differs: data as it was");
    }

    /// A leak finding gives one "opened" line per call site: merging (even a finding of
    /// one namespace) keeps every line, and lines up the n-th of each namespace.
    #[test]
    fn lines_sharing_a_label_are_all_kept() {
        let leak = |sites: &[&str]| {
            let mut f = Finding::new("close_wait_leak", Severity::Warning, Nature::Live, "t");
            f.evidence = std::iter::once(Evidence::new("to 10.0.0.7:5432", "22 sockets"))
                .chain(sites.iter().map(|s| Evidence::new("opened", s)))
                .collect();
            f
        };
        let (a, b) = (ns("a", 1), ns("b", 2));
        let one = merge(&[(leak(&["12 at f", "10 at g"]), &a)]);
        assert_eq!(one.evidence, leak(&["12 at f", "10 at g"]).evidence);

        let two = merge(&[
            (leak(&["12 at f", "10 at g"]), &a),
            (leak(&["12 at f", "9 at h"]), &b),
        ]);
        let values: Vec<(&str, &str)> = two
            .evidence
            .iter()
            .map(|e| (e.label.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            values,
            [
                ("to 10.0.0.7:5432", "22 sockets"),
                ("opened", "12 at f"),
                ("opened", "10 at g (a); 9 at h (b)"),
            ]
        );
        // A line only one namespace has names it.
        let uneven = merge(&[
            (leak(&["12 at f", "10 at g"]), &a),
            (leak(&["12 at f"]), &b),
        ]);
        assert_eq!(uneven.evidence[2].value, "10 at g (a)");
    }
}
