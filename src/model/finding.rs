//! A finding: what is wrong, the evidence from this host, why it happens, and the fix.

use serde::Serialize;

/// How bad a finding is. Ordered: `Critical` > `Warning` > `Info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One line of evidence: a label and a value measured on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub label: String,
    pub value: String,
}

impl Evidence {
    pub fn new(label: impl Into<String>, value: impl ToString) -> Evidence {
        Evidence {
            label: label.into(),
            value: value.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable identifier of the rule (`close_wait_leak`); never changes between versions.
    pub rule_id: &'static str,
    /// The network namespace the finding is about, when tcpdoctor looked at more than
    /// its own (`--netns`); `None` for host-wide findings and single-namespace runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<super::NetnsRef>,
    pub severity: Severity,
    /// One line: what is wrong, with the key number.
    pub title: String,
    /// Measured facts, most important first. The first few are shown by default.
    pub evidence: Vec<Evidence>,
    /// The mechanism, in two or three plain sentences.
    pub why: String,
    /// Concrete steps: commands, config lines, code changes.
    pub fix: Vec<String>,
    /// Rule-specific structured data for scripts (pids, ports, counts).
    pub data: serde_json::Value,
}
