//! `tcpdoctor lint`: the configurations looked at, then the findings as `check` shows
//! them (with their diffs), and its JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{Paint, Style, JSON_SCHEMA_VERSION};
use crate::model::nginx::{ConfigOrigin, NginxInstance};
use crate::model::{Finding, LintReport, Notice, Severity};

fn origin(o: ConfigOrigin) -> &'static str {
    match o {
        ConfigOrigin::CommandLine => "from the master's -c",
        ConfigOrigin::CompiledIn => "compiled into the binary",
        ConfigOrigin::Given => "given",
        ConfigOrigin::Guessed => "the usual path; no nginx binary found",
    }
}

pub fn write_human(
    out: &mut impl Write,
    r: &LintReport,
    style: Style,
    verbose: bool,
) -> io::Result<()> {
    for c in &r.configs {
        let mut head = Vec::new();
        style.cell(
            &mut head,
            &format!("tcpdoctor lint {}", r.target),
            0,
            false,
            Some(Paint::Bold),
        )?;
        out.write_all(&head)?;
        let version = c
            .version
            .as_ref()
            .map_or_else(|| "version unknown".to_string(), |v| v.banner.clone());
        let files = c.config.as_ref().map_or(0, |k| k.files.len());
        let root = if c.in_container() {
            format!(", read through {}", c.root)
        } else {
            String::new()
        };
        writeln!(
            out,
            ": {} ({}; {version}{root}), {} file{}",
            c.config_file,
            origin(c.origin),
            files,
            if files == 1 { "" } else { "s" }
        )?;
        if let Some(e) = &c.error {
            style.cell(out, "ERROR", 8, false, Some(Paint::Red))?;
            writeln!(out, " {e}")?;
        }
    }
    out.write_all(b"\n")?;
    if r.findings.is_empty() && !r.failed() {
        writeln!(out, "No problems found.")?;
    }
    for f in &r.findings {
        super::check::write_finding(out, f, style, verbose)?;
    }
    let count = |s: Severity| r.findings.iter().filter(|f| f.severity == s).count();
    writeln!(
        out,
        "{} critical, {} warning, {} info.",
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    )?;
    for n in &r.notices {
        writeln!(out, "note: {}", n.message)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonConfig<'a> {
    config_file: &'a str,
    origin: ConfigOrigin,
    root: &'a str,
    binary: Option<&'a str>,
    version: Option<&'a str>,
    /// nginx core version the defaults were judged by; null when unknown.
    core_version: Option<String>,
    files: Vec<&'a str>,
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonLint<'a> {
    schema_version: u32,
    command: &'static str,
    target: &'static str,
    /// "error" when a configuration could not be read or parsed; else the worst finding.
    status: &'static str,
    configs: Vec<JsonConfig<'a>>,
    findings: &'a [Finding],
    notices: &'a [Notice],
}

fn config_json(c: &NginxInstance) -> JsonConfig<'_> {
    JsonConfig {
        config_file: &c.config_file,
        origin: c.origin,
        root: &c.root,
        binary: c.binary.as_deref(),
        version: c.version.as_ref().map(|v| v.banner.as_str()),
        core_version: c
            .version
            .as_ref()
            .and_then(|v| v.core)
            .map(|(a, b, d)| format!("{a}.{b}.{d}")),
        files: c
            .config
            .as_ref()
            .map(|k| k.files.iter().map(String::as_str).collect())
            .unwrap_or_default(),
        error: c.error.as_deref(),
    }
}

pub fn write_json(out: &mut impl Write, r: &LintReport) -> io::Result<()> {
    let doc = JsonLint {
        schema_version: JSON_SCHEMA_VERSION,
        command: "lint",
        target: r.target,
        status: if r.failed() {
            "error"
        } else {
            super::check::status(&r.findings).map_or("ok", |v| v.name())
        },
        configs: r.configs.iter().map(config_json).collect(),
        findings: &r.findings,
        notices: &r.notices,
    };
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::nginx_common::tests_support::{instance, snapshot_with};
    use crate::analyze::{nginx_upstream_keepalive, Thresholds};

    fn report(with_error: bool) -> LintReport {
        let inst = instance(
            None,
            "nginx/1.22.1",
            "http {\n    upstream b {\n        server 127.0.0.1:8080;\n    }\n    server {\n        location / { proxy_pass http://b; }\n    }\n}\n",
        );
        let findings =
            nginx_upstream_keepalive::check(&snapshot_with(inst.clone()), &Thresholds::default());
        let mut bad = inst.clone();
        bad.config = None;
        bad.error = Some("/etc/nginx/x.conf:3: unexpected \"}\"".into());
        LintReport {
            target: "nginx",
            configs: if with_error {
                vec![inst, bad]
            } else {
                vec![inst]
            },
            findings,
            notices: Vec::new(),
        }
    }

    #[test]
    fn human_output_shows_the_config_and_the_diff_verbatim() {
        let mut out = Vec::new();
        write_human(&mut out, &report(true), Style { color: false }, false).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("tcpdoctor lint nginx: /etc/nginx/nginx.conf (compiled into the binary; nginx/1.22.1), 1 file\n"), "{text}");
        assert!(
            text.contains("ERROR    /etc/nginx/x.conf:3: unexpected \"}\""),
            "{text}"
        );
        // Diff lines keep their own indentation.
        assert!(text.contains("              @@ -2 +2,2 @@\n                   upstream b {\n              +        keepalive 32;\n"), "{text}");
        assert!(text.ends_with("0 critical, 1 warning, 0 info.\n"), "{text}");
    }

    #[test]
    fn json_status_is_error_when_a_config_failed() {
        let mut out = Vec::new();
        write_json(&mut out, &report(true)).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["status"], "error");
        assert_eq!(
            v["configs"][1]["error"],
            "/etc/nginx/x.conf:3: unexpected \"}\""
        );
        assert_eq!(v["configs"][0]["core_version"], "1.22.1");
        let mut out = Vec::new();
        write_json(&mut out, &report(false)).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["status"], "warning");
        assert_eq!(
            v["findings"][0]["fix"][0]["patch"]
                .as_str()
                .map(|p| p.starts_with("--- /etc/nginx/nginx.conf\n")),
            Some(true)
        );
    }
}
