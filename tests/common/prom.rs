//! The Prometheus text exposition format as tcpdoctor serves it, parsed strictly (HELP
//! before TYPE before samples, each once), and promtool's checks of scrapes and rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::in_ci;
use super::run::{run_bounded, run_bounded_with_input};
use super::snapshot::snapshot_body;

/// How long one promtool run may take.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name -> type, in output order.
    pub types: Vec<(String, String)>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(body: &str) -> Scrape {
        let mut s = Scrape::default();
        let mut helped = BTreeSet::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                assert!(helped.contains(name), "TYPE without HELP: {line}");
                s.types.push((name.to_string(), kind.to_string()));
            } else if !line.is_empty() {
                s.samples.push(parse_sample(line));
            }
        }
        for smp in &s.samples {
            assert!(
                s.types.iter().any(|(n, _)| *n == smp.name),
                "sample without TYPE: {}",
                smp.name
            );
        }
        s
    }

    pub fn family(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<_> = self
            .family(name)
            .into_iter()
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(hits.len() <= 1, "{name} {labels:?} matches {hits:?}");
        hits.first().map(|s| s.value)
    }

    pub fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// "name type label,label" per family, in output order: what a scrape promises
    /// regardless of this host's values.
    pub fn schema(&self) -> String {
        let mut out = String::new();
        for (name, kind) in &self.types {
            let labels = self
                .samples
                .iter()
                .find(|s| s.name == *name)
                .map(|s| s.labels.keys().cloned().collect::<Vec<_>>().join(","))
                // Families whose samples come and go with this host's state.
                .unwrap_or_else(|| match name.as_str() {
                    "tcpdoctor_partial_data_notices" => "code".to_string(),
                    _ => String::new(),
                });
            out.push_str(&format!("{name} {kind} {labels}\n"));
        }
        out
    }
}

/// `name{k="v",...} value` with the format's escapes in label values.
pub fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("malformed sample line {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bad();
            }
            let mut val = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, '\\')) => val.push('\\'),
                        Some((_, '"')) => val.push('"'),
                        _ => bad(),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => val.push(c),
                    None => bad(),
                }
            }
            assert!(
                labels.insert(key.clone(), val).is_none(),
                "label {key} twice in {line:?}"
            );
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                _ => bad(),
            }
        }
    }
    let value = match rest.trim() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| bad()),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// The body with every sample value replaced by `<v>`: names, types, help and label sets.
pub fn scrub_values(body: &str) -> String {
    body.lines()
        .map(|l| {
            if l.starts_with('#') {
                l.to_string()
            } else {
                match l.rfind(' ') {
                    Some(i) => format!("{} <v>", &l[..i]),
                    None => l.to_string(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The metric families (and their labels) the exporter serves, from the schema snapshot
/// that `serve_in_netns_reports_the_farm_exactly_over_http` checks.
pub fn known_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let text = snapshot_body("serve_metrics_schema");
    text.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let name = it.next()?.to_string();
            let _kind = it.next()?;
            let labels = it
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Some((name, labels))
        })
        .collect()
}

/// `promtool` when it is installed. Under CI (where .ci/run installs it) a missing
/// promtool fails the test; elsewhere this prints a SKIP line for `what` and the caller
/// leaves that check out.
pub fn promtool(what: &str) -> Option<&'static str> {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("promtool");
    }
    assert!(
        !in_ci(),
        "{what}: promtool is not installed (.ci/run installs Debian's prometheus package)"
    );
    eprintln!("SKIP: {what}: promtool is not installed (.ci/run installs it)");
    None
}

/// `promtool check rules FILE` or `promtool test rules FILE` (bounded); fails the test
/// with promtool's output unless it succeeds.
pub fn promtool_rules(promtool: &str, verb: &str, file: &Path) {
    let out = run_bounded(
        Command::new(promtool).args([verb, "rules"]).arg(file),
        PROMTOOL_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool {verb} rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `promtool check metrics` on a scrape body (bounded): valid exposition, and no lint
/// complaints.
pub fn promtool_check_metrics(body: &str) {
    let Some(promtool) = promtool("promtool check metrics") else {
        return;
    };
    let out = run_bounded_with_input(
        Command::new(promtool).args(["check", "metrics"]),
        body.as_bytes(),
        PROMTOOL_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
