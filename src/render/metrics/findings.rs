//! `tcpdoctor_finding`: the rules' findings of this collection per rule and severity,
//! every rule × severity present (0 when it does not fire), so `absent()` means the
//! exporter is gone, never that all is well.

use std::collections::BTreeMap;

use super::{Kind, Text};
use crate::analyze::{HOST_RULES, RULES};
use crate::model::{Finding, Severity};

pub(super) fn write(t: &mut Text, found: &[Finding]) {
    let mut counts: BTreeMap<(&str, Severity), u64> = BTreeMap::new();
    let mut rules: Vec<&str> = RULES
        .iter()
        .map(|r| r.id)
        .chain(HOST_RULES.iter().map(|r| r.id))
        .collect();
    for f in found {
        *counts.entry((f.rule_id, f.severity)).or_default() += 1;
        if !rules.contains(&f.rule_id) {
            rules.push(f.rule_id);
        }
    }
    t.family(
        "tcpdoctor_finding",
        Kind::Gauge,
        "Findings of this collection per rule and severity (usually 0 or 1); every rule and severity is present, zeros included.",
    );
    for rule in rules {
        for sev in [Severity::Info, Severity::Warning, Severity::Critical] {
            t.sample(
                "tcpdoctor_finding",
                &[("rule", rule), ("severity", sev.name())],
                counts.get(&(rule, sev)).copied().unwrap_or(0),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{family, snapshot};
    use super::*;
    use crate::analyze::Thresholds;

    #[test]
    fn every_rule_and_severity_is_present_and_findings_are_counted() {
        let f = crate::analyze::run(&snapshot(), &Thresholds::default());
        assert!(!f.is_empty(), "the fixture fires at least one rule");
        let mut t = Text::default();
        write(&mut t, &f);
        let text = t.buf;
        let ids: Vec<&str> = RULES
            .iter()
            .map(|r| r.id)
            .chain(HOST_RULES.iter().map(|r| r.id))
            .collect();
        assert_eq!(family(&text, "tcpdoctor_finding").len(), ids.len() * 3);
        for id in ids {
            for sev in [Severity::Info, Severity::Warning, Severity::Critical] {
                let fired = f
                    .iter()
                    .filter(|x| x.rule_id == id && x.severity == sev)
                    .count();
                let line = format!(
                    "tcpdoctor_finding{{rule=\"{id}\",severity=\"{}\"}} {fired}\n",
                    sev.name()
                );
                assert!(text.contains(&line), "{line}");
            }
        }
    }

    #[test]
    fn no_findings_is_all_zeros_not_nothing() {
        let mut t = Text::default();
        write(&mut t, &[]);
        let rows = family(&t.buf, "tcpdoctor_finding");
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|l| l.ends_with(" 0")));
    }
}
