//! One JSON line per sample for `tcpdoctor watch --headless` (a scripting and debug
//! mode): what the screen would show, as data. Writes to any `io::Write`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use super::app::{WatchApp, RATES};
use crate::analyze::trend::PidTrend;
use crate::model::{Notice, Severity, StateCounts};
use crate::render::JSON_SCHEMA_VERSION;

#[derive(Serialize)]
struct SampleLine<'a> {
    schema_version: u32,
    command: &'static str,
    /// 1 for the first sample.
    sample: u64,
    /// Milliseconds since the first sample started (the clock the trends use).
    at_ms: u64,
    taken_at_unix_ms: u64,
    /// What the rates cover; null on the first sample.
    counter_interval_ms: Option<u64>,
    counts: StateCounts,
    /// Per second, keyed like `Tcp.ActiveOpens`; null when not measured.
    rates: BTreeMap<&'static str, Option<f64>>,
    /// Per process with CLOSE_WAIT sockets now or within the trend window.
    close_wait: Vec<TrendLine<'a>>,
    /// Traced flows since the previous sample, most connections first; null when
    /// connections are not traced.
    churn: Option<Vec<ChurnLine<'a>>>,
    findings: Vec<FindingLine<'a>>,
    missing_evidence: &'a [Notice],
}

#[derive(Serialize)]
struct TrendLine<'a> {
    comm: Option<&'a str>,
    #[serde(flatten)]
    trend: PidTrend,
}

#[derive(Serialize)]
struct ChurnLine<'a> {
    pid: u32,
    comm: &'a str,
    /// `10.0.0.5:8080`, or `:8080 in` for connections accepted on that port.
    peer: &'a str,
    opened_per_s: f64,
    closer: &'a str,
    failed: u64,
    failed_errno: Option<&'static str>,
    resets: u64,
}

#[derive(Serialize)]
struct FindingLine<'a> {
    rule_id: &'static str,
    severity: Severity,
    title: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    namespaces: &'a [crate::model::NetnsRef],
}

/// Writes the app's latest sample as one line (nothing before the first sample).
/// `missing` is the sample's notes about evidence it could not gather.
pub fn write_sample_line(
    out: &mut impl Write,
    app: &WatchApp,
    missing: &[Notice],
) -> io::Result<()> {
    let Some(v) = app.view() else {
        return Ok(());
    };
    let line = SampleLine {
        schema_version: JSON_SCHEMA_VERSION,
        command: "watch",
        sample: app.samples(),
        at_ms: v.at_ms,
        taken_at_unix_ms: v.taken_at_unix_ms,
        counter_interval_ms: v.counter_interval_ms,
        counts: v.total,
        rates: RATES
            .iter()
            .zip(&v.rates)
            .map(|((_, key), r)| (*key, r.map(|r| (r * 100.0).round() / 100.0)))
            .collect(),
        close_wait: app
            .trends()
            .into_iter()
            .map(|t| TrendLine {
                comm: app.comm(t.pid),
                trend: t,
            })
            .collect(),
        churn: app.visible_churn().map(|rows| {
            rows.into_iter()
                .map(|r| ChurnLine {
                    pid: r.pid,
                    comm: &r.comm,
                    peer: &r.peer,
                    opened_per_s: (r.opened_per_s * 100.0).round() / 100.0,
                    closer: &r.closer,
                    failed: r.failed,
                    failed_errno: r.failed_errno,
                    resets: r.resets,
                })
                .collect()
        }),
        findings: v
            .findings
            .iter()
            .map(|f| FindingLine {
                rule_id: f.rule_id,
                severity: f.severity,
                title: &f.title,
                namespaces: &f.namespaces,
            })
            .collect(),
        missing_evidence: missing,
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::from)?;
    out.write_all(b"\n")
}
