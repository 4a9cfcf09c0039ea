//! Prometheus text exposition (format 0.0.4) of one `serve` collection: every namespace
//! read, the findings and the collector's own health. Pure: writes bytes, reads no
//! clock, no OS.
//!
//! One file per concept, each writing its families: collector health, states,
//! namespaces, processes, TIME_WAIT, ephemeral ports, file descriptors, listeners,
//! kernel counters, traced connections (counters kept across scrapes, see
//! [`FlowCounters`]), findings. This file holds what they share (the text builder,
//! escaping, the fold label values) and the order the families are written in.
//!
//! Two rules hold everywhere. Cardinality is bounded: per-process, per-namespace,
//! per-destination and per-listener families carry the `top` entries plus at most one
//! fold series, and processes are named by `comm` and `pid`, never by command line (it
//! can carry secrets). And no series mixes network namespaces where the kernel keeps
//! them apart: ports, port ranges, TIME_WAIT tables and accept queues are per namespace,
//! so the families about them carry a `netns` label and each series holds one
//! namespace's numbers, never a sum or a "tightest of" across namespaces. Names, types
//! and labels are documented in `deploy/README.md`.

mod collector;
mod counters;
mod ephemeral_ports;
mod file_descriptors;
mod findings;
mod flows;
mod listeners;
mod namespaces;
mod processes;
mod states;
mod time_wait;

#[cfg(test)]
mod testing;

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::model::{Finding, HostSnapshot};

pub use flows::FlowCounters;
use namespaces::NetnsLabels;

/// The `Content-Type` of what [`write`] produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label value of the series that folds every entry beyond the top N.
pub const OTHER: &str = "other";
/// Label value (`pid` and `comm`) for sockets with no visible process: no descriptor
/// (TIME_WAIT, orphans, unaccepted children) or an owner the scan could not see.
pub const UNOWNED: &str = "unowned";

/// Facts about the collection itself, kept by the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollectionStats {
    /// Collections made since the server started, this one included.
    pub collections: u64,
    /// Of those, collections that produced no snapshot at all.
    pub failures: u64,
    pub duration_s: f64,
    /// When this collection started (Unix time).
    pub started_unix_ms: u64,
    /// Entries per top-N family (at least 1).
    pub top: usize,
}

/// One collection as exported.
#[derive(Debug, Clone, Copy)]
pub struct Exposition<'a> {
    /// Every namespace read; `None` when the socket inventory itself could not be read
    /// (then only the collector's health is exported).
    pub host: Option<&'a HostSnapshot>,
    pub findings: &'a [Finding],
    pub stats: CollectionStats,
    /// Connection counters kept across collections while the tracer is attached;
    /// `None` when the exporter does not trace.
    pub flows: Option<&'a FlowCounters>,
}

/// Writes the whole exposition.
pub fn write(out: &mut impl Write, e: &Exposition<'_>) -> io::Result<()> {
    out.write_all(render(e).as_bytes())
}

/// The exposition as text.
pub fn render(e: &Exposition<'_>) -> String {
    let mut t = Text::default();
    // Host-wide totals (states, processes, descriptors) read the namespaces folded into
    // one; the per-namespace families read each namespace on its own.
    let merged = e.host.map(HostSnapshot::merged);
    collector::write(&mut t, &e.stats, merged.as_ref());
    let (Some(host), Some(s)) = (e.host, merged.as_ref()) else {
        return t.buf;
    };
    let top = e.stats.top.max(1);
    let netns = NetnsLabels::new(host);
    states::write(&mut t, s);
    namespaces::write(&mut t, host, &netns, top);
    processes::write(&mut t, s, top);
    time_wait::write(&mut t, s, host, &netns, top);
    ephemeral_ports::write(&mut t, host, &netns, top);
    file_descriptors::write(&mut t, s, top);
    listeners::write(&mut t, host, &netns, top);
    // Counters of one namespace only (tcpdoctor's own, the primary): a sum over
    // namespaces would go down whenever a container exits, which Prometheus reads as a
    // counter reset.
    counters::write(&mut t, host.primary().unwrap_or(s));
    if let Some(f) = e.flows {
        flows::write(&mut t, f);
    }
    findings::write(&mut t, e.findings);
    t.buf
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// A sample value: integers print exactly, floats in Rust's shortest round-trip form.
#[derive(Debug, Clone, Copy)]
enum Value {
    U(u64),
    I(i64),
    F(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::U(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::I(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::F(v)
    }
}

/// Writes families into a string; the caller writes the string out once.
struct Text {
    buf: String,
}

impl Default for Text {
    fn default() -> Text {
        // A scrape is a few hundred lines, about 20 kB.
        Text {
            buf: String::with_capacity(32 * 1024),
        }
    }
}

impl Text {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.buf,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.name()
        );
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl Into<Value>) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                self.buf.push_str(k);
                self.buf.push_str("=\"");
                escape_label_into(&mut self.buf, val);
                self.buf.push('"');
            }
            self.buf.push('}');
        }
        let _ = match v.into() {
            Value::U(u) => writeln!(self.buf, " {u}"),
            Value::I(i) => writeln!(self.buf, " {i}"),
            Value::F(f) if f.is_nan() => writeln!(self.buf, " NaN"),
            Value::F(f) if f.is_infinite() => {
                writeln!(self.buf, " {}", if f > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::F(f) => writeln!(self.buf, " {f}"),
        };
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, v: impl Into<Value>) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// Label values escape backslash, double quote and newline (exposition format).
fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::testing::{assert_unique_series, host_of, namespace, snapshot, stats};
    use super::*;

    fn label(v: &str) -> String {
        let mut s = String::new();
        escape_label_into(&mut s, v);
        s
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        let mut t = Text::default();
        t.single("m", Kind::Gauge, "two\nlines", f64::NAN);
        t.sample("m", &[("k", "q\"")], f64::NEG_INFINITY);
        t.sample("m", &[("a", "1"), ("b", "2")], -3i64);
        assert_eq!(
            t.buf,
            "# HELP m two\\nlines\n# TYPE m gauge\nm NaN\nm{k=\"q\\\"\"} -Inf\nm{a=\"1\",b=\"2\"} -3\n"
        );
    }

    #[test]
    fn failed_collection_exports_health_only() {
        let text = render(&Exposition {
            host: None,
            findings: &[],
            stats: stats(),
            flows: None,
        });
        assert!(text.contains("tcpdoctor_source_up{source=\"sockets\"} 0\n"));
        assert!(text.contains("tcpdoctor_collection_failures_total 1\n"));
        assert!(!text.contains("tcpdoctor_sockets{"));
        assert!(!text.contains("tcpdoctor_finding{"));
    }

    #[test]
    fn a_whole_exposition_of_several_namespaces_has_unique_series() {
        // Three namespaces with the same sockets (destinations, listeners, processes),
        // two of them with the same name: every family stays one series per label set.
        let named = |name: &str, inode: u64| {
            let mut s = snapshot();
            s.netns = namespace(name, inode, "40000 40099").netns;
            s
        };
        let host = host_of(vec![
            snapshot(),
            named("(unnamed)", 7),
            named("(unnamed)", 8),
        ]);
        let f = crate::analyze::run_host(&host, &crate::analyze::Thresholds::default());
        let text = render(&Exposition {
            host: Some(&host),
            findings: &f,
            stats: stats(),
            flows: None,
        });
        assert_unique_series(&text);
        assert!(text.contains("netns=\"(unnamed) net:[7]\""), "{text}");
        assert!(text.contains("# TYPE tcpdoctor_finding gauge\n"));
        assert_eq!(
            super::testing::family(&text, "tcpdoctor_listener_accept_queue").len(),
            2
        );
    }
}
