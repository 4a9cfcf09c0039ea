//! A finding: what is wrong, the evidence from this host, why it happens, the fix, and
//! the kernel settings it proposes (the only source of `check --emit-sysctl`).

use serde::Serialize;

use super::NetnsRef;

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

/// Whether a finding is about something happening now or about how the host is set up.
/// Within one severity, live problems are listed first: they are what hurts today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Nature {
    /// Leaks, exhaustion, overflows and drops measured on this host now.
    Live,
    /// A setting or limit that will hurt, or that does not do what it was set for.
    Config,
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

/// One step of a fix: what to do, and the shell command that does it when there is
/// one. Commands are kept apart from the prose so that they can be pointed at the
/// namespace the finding is about and still work pasted into the user's shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixStep {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A change to a file as a unified diff (`--- file`, `+++ file`, `@@` hunks), shown
    /// as is; absent for steps that change no file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
}

impl FixStep {
    /// A step in words only (a code change, a config line to write).
    pub fn say(text: impl Into<String>) -> FixStep {
        FixStep {
            text: text.into(),
            command: None,
            patch: None,
        }
    }

    /// A step with a command to run.
    pub fn run(text: impl Into<String>, command: impl Into<String>) -> FixStep {
        FixStep {
            text: text.into(),
            command: Some(command.into()),
            patch: None,
        }
    }

    /// A step that changes a file: what and why in words, the change as a diff.
    pub fn patch(text: impl Into<String>, patch: impl Into<String>) -> FixStep {
        FixStep {
            text: text.into(),
            command: None,
            patch: Some(patch.into()),
        }
    }
}

impl FixStep {
    /// Whether the step's words or its command contain `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.text.contains(needle)
            || self.command.as_deref().is_some_and(|c| c.contains(needle))
            || self.patch.as_deref().is_some_and(|p| p.contains(needle))
    }
}

impl From<String> for FixStep {
    fn from(text: String) -> FixStep {
        FixStep::say(text)
    }
}

impl From<&str> for FixStep {
    fn from(text: &str) -> FixStep {
        FixStep::say(text)
    }
}

/// A kernel setting a finding proposes: `check --emit-sysctl` prints exactly these, so
/// the file can never disagree with the findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    /// Dotted name, `net.ipv4.tcp_fin_timeout`.
    pub key: String,
    /// The value to set, as the sysctl file takes it.
    pub value: String,
    /// The value now, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
    /// Why, in a line or two (the comment above the setting).
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable identifier of the rule (`close_wait_leak`); never changes between versions.
    pub rule_id: &'static str,
    /// The network namespaces the finding is about, when tcpdoctor looked at more than
    /// one or at another than its own; empty for host-wide findings and runs in one's
    /// own namespace only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NetnsRef>,
    pub severity: Severity,
    pub nature: Nature,
    /// One line: what is wrong, with the key number.
    pub title: String,
    /// Measured facts, most important first. The first few are shown by default.
    pub evidence: Vec<Evidence>,
    /// The mechanism, in two or three plain sentences.
    pub why: String,
    /// Concrete steps: commands, config lines, code changes.
    pub fix: Vec<FixStep>,
    /// Kernel settings that fix this finding (empty when the fix is elsewhere).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proposed: Vec<SysctlChange>,
    /// Rule-specific structured data for scripts (pids, ports, counts).
    pub data: serde_json::Value,
}

impl Finding {
    /// A finding with the parts every rule fills; evidence, fix, proposals and data are
    /// added by the rule.
    pub fn new(
        rule_id: &'static str,
        severity: Severity,
        nature: Nature,
        title: impl Into<String>,
    ) -> Finding {
        Finding {
            rule_id,
            namespaces: Vec::new(),
            severity,
            nature,
            title: title.into(),
            evidence: Vec::new(),
            why: String::new(),
            fix: Vec::new(),
            proposed: Vec::new(),
            data: serde_json::Value::Null,
        }
    }

    /// Report order: worst first; within a severity, live problems before settings.
    pub fn rank(&self) -> (std::cmp::Reverse<Severity>, Nature) {
        (std::cmp::Reverse(self.severity), self.nature)
    }
}
