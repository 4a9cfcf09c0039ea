//! The host's configuration as evidence (issue 12), through the CLI: a captured host's
//! sysctl files replayed (`--proc-root` with `etc/`), a capture without them (never the
//! live /etc instead), and, as root, a real process in a cgroup named like a systemd
//! service whose open-files limit `check` traces to the unit file's line.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::cgroup::{cgroup2_mount, CgroupDirs};
use common::fixtures::{repo_path, TempDir, NETNS_MIXED};
use common::report::findings;
use common::require_root;
use common::run::{
    code_and_json, run_bounded, run_tcpdoctor, wait_for, RUN_TIMEOUT, SETUP_TIMEOUT,
};

const OVERRIDES: &str = "tests/fixtures/persisted/overrides";

fn replay(dir: &str) -> (i32, Value) {
    let root = repo_path(dir);
    let root = root.to_str().expect("utf-8 path");
    code_and_json(&run_tcpdoctor(&[
        "--source",
        "proc",
        "--proc-root",
        root,
        "check",
        "--json",
        "--interval",
        "0",
    ]))
}

fn about<'a>(v: &'a Value, rule: &str, key: &str) -> Vec<&'a Value> {
    findings(v, rule)
        .into_iter()
        .filter(|f| f["data"]["sysctl"] == key)
        .collect()
}

fn patches(f: &Value) -> Vec<&str> {
    f["fix"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["patch"].as_str()).collect())
        .unwrap_or_default()
}

/// persisted/overrides replayed: what comes back at boot, what the kernel lacks, and
/// the live problem's line in the audit's finding, each with file and line.
#[test]
fn replayed_sysctl_files_give_file_and_line() {
    let (code, v) = replay(OVERRIDES);
    assert_eq!(code, 1, "warnings found: {v:#}");
    let tw = about(&v, "sysctl_persisted", "net.ipv4.tcp_max_tw_buckets");
    assert_eq!(tw.len(), 1, "{v:#}");
    assert_eq!(tw[0]["severity"], "warning");
    assert_eq!(tw[0]["data"]["at"]["file"], "/etc/sysctl.d/10-network.conf");
    assert_eq!(tw[0]["data"]["at"]["line"], 2);
    assert_eq!(tw[0]["data"]["live"], "131072");
    assert!(patches(tw[0])[0].contains("+net/ipv4/tcp_max_tw_buckets = 131072"));

    let fin = about(&v, "sysctl_persisted", "net.ipv4.tcp_fin_timeout");
    assert_eq!(
        fin[0]["data"]["at"]["file"],
        "/etc/sysctl.d/99-zz-late.conf"
    );

    let cookies = about(&v, "sysctl_audit", "net.ipv4.tcp_syncookies");
    assert_eq!(cookies.len(), 1);
    assert_eq!(
        cookies[0]["data"]["persisted"]["file"],
        "/etc/sysctl.d/10-network.conf"
    );
    assert_eq!(cookies[0]["data"]["persisted"]["line"], 4);
    assert!(about(&v, "sysctl_persisted", "net.ipv4.tcp_syncookies").is_empty());

    let missing: Vec<&Value> = findings(&v, "sysctl_persisted")
        .into_iter()
        .filter(|f| f["data"].get("keys").is_some())
        .collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(
        missing[0]["data"]["keys"][0]["sysctl"],
        "net.ipv4.tcp_tw_recycle"
    );
    assert_eq!(
        missing[0]["data"]["keys"][0]["at"]["file"],
        "/etc/sysctl.conf"
    );

    // The malformed line is a notice, not a failure.
    let notices = v["missing_evidence"].as_array().expect("notices");
    assert!(notices.iter().any(|n| n["code"] == "records_skipped"
        && n["message"]
            .as_str()
            .is_some_and(|m| m.contains("/run/sysctl.d/60-runtime.conf:2"))));
}

/// Findings as the report gives them, with every fix step (patches included).
fn findings_and_fixes(v: &Value) -> Vec<(String, String, Value)> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["rule_id"].as_str().unwrap_or("").to_string(),
                f["title"].as_str().unwrap_or("").to_string(),
                f["fix"].clone(),
            )
        })
        .collect()
}

/// A snapshot of that host records its sysctl files: `check --from` gives the same
/// findings, titles and patches as the replay it was taken from.
#[test]
fn a_snapshot_keeps_the_sysctl_files_and_check_from_it_agrees() {
    let (_, live) = replay(OVERRIDES);
    assert!(!findings(&live, "sysctl_persisted").is_empty(), "{live:#}");
    let tmp = TempDir::new("persisted-snap");
    let file = tmp.path().join("overrides.tdsnap");
    let root = repo_path(OVERRIDES);
    let out = run_tcpdoctor(&[
        "--source",
        "proc",
        "--proc-root",
        root.to_str().expect("utf-8 path"),
        "snapshot",
        "--interval",
        "0",
        "-o",
        file.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let (code, from) = code_and_json(&run_tcpdoctor(&[
        "--from",
        file.to_str().expect("utf-8 path"),
        "check",
        "--json",
    ]));
    assert_eq!(code, 1, "{from:#}");
    assert_eq!(findings_and_fixes(&from), findings_and_fixes(&live));
}

/// A capture without etc/ says so, and this machine's own /etc is never read in its
/// place (its /usr/lib/sysctl.d sets kernel.pid_max, which the capture lacks: reading
/// it would report that key).
#[test]
fn a_capture_without_etc_says_so_and_reads_no_live_file() {
    let (_, v) = replay(NETNS_MIXED);
    assert!(findings(&v, "sysctl_persisted").is_empty(), "{v:#}");
    let notices = v["missing_evidence"].as_array().expect("notices");
    assert!(
        notices.iter().any(|n| n["code"] == "replay_missing"
            && n["message"]
                .as_str()
                .is_some_and(|m| m.contains("has no etc/"))),
        "{notices:#?}"
    );
    assert_eq!(v["complete"], false);
}

fn skip(why: &str) {
    eprintln!("SKIP: persisted_config: {why}");
}

/// What the root test made, undone on drop (also when an assertion fails): the child
/// is killed by its pid and reaped, then the cgroup (now empty) and the scratch root go.
#[derive(Default)]
struct Scene {
    child: Option<Child>,
    cgroups: CgroupDirs,
    root: Option<TempDir>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A process near its open-files limit (43 or more of 48) in a cgroup named like a service: `check`
/// names the unit file and the line that sets the limit (read from the files under
/// TCPDOCTOR_HOST_ROOT; no systemd runs it) and patches that line.
#[test]
#[ignore = "needs root"]
fn a_service_process_near_its_limit_names_the_unit_line() {
    require_root();
    let Some(mount) = cgroup2_mount() else {
        skip("no cgroup2 filesystem in /proc/self/mountinfo");
        return;
    };
    let unit = format!("tdtest-nofile-{}.service", std::process::id());
    let mut scene = Scene::default();
    if let Err(e) = scene.cgroups.create(mount.join(&unit)) {
        skip(&format!(
            "cgroup2 at {} is not writable: {e}",
            mount.display()
        ));
        return;
    }
    let root = scene
        .root
        .insert(TempDir::new("persisted"))
        .path()
        .to_path_buf();
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units).expect("scratch unit dir");
    fs::copy(
        repo_path("tests/fixtures/persisted/live/etc/systemd/system/tdtest-nofile.service"),
        units.join(&unit),
    )
    .expect("copy the unit file");

    // 40 descriptors on /dev/null plus stdin, stdout and stderr, kept across exec.
    let child = Command::new("bash")
        .args([
            "-c",
            "for i in $(seq 3 42); do eval \"exec $i</dev/null\"; done; exec sleep 60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bash");
    let pid = child.id();
    scene.child = Some(child);
    if let Err(e) = fs::write(mount.join(&unit).join("cgroup.procs"), pid.to_string()) {
        skip(&format!("cannot move pid {pid} into {unit}: {e}"));
        return;
    }
    wait_for(SETUP_TIMEOUT, Duration::from_millis(20), || {
        (open_fds(pid) >= 43
            && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("pid {pid} did not open its descriptors"));
    let out = run_bounded(
        Command::new("prlimit").args(["--pid", &pid.to_string(), "--nofile=48:48"]),
        SETUP_TIMEOUT,
    )
    .expect("prlimit");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("child's cgroup");
    assert!(cgroup.contains(&format!("/{unit}")), "{cgroup}");

    let mut cmd = Command::new(common::TCPDOCTOR);
    cmd.args(["check", "--json", "--interval", "0", "--netns", "current"])
        .env("NO_COLOR", "1")
        .env("TCPDOCTOR_HOST_ROOT", &root);
    let (_, v) = code_and_json(&run_bounded(&mut cmd, RUN_TIMEOUT).expect("tcpdoctor"));
    let ours: Vec<&Value> = findings(&v, "fd_exhaustion")
        .into_iter()
        .filter(|f| {
            f["data"]["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == pid))
        })
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "no fd_exhaustion finding for pid {pid}: {v:#}"
    );
    let f = ours[0];
    let file = format!("/etc/systemd/system/{unit}");
    let origin = &f["data"]["limit_origin"];
    assert_eq!(origin["source"], "unit", "{origin:#}");
    assert_eq!(origin["unit"]["name"], unit.as_str());
    assert_eq!(origin["at"]["file"], file.as_str());
    assert_eq!(origin["at"]["line"], 6);
    assert_eq!(origin["matches"], true);
    let p = f["data"]["processes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
        .expect("our process");
    // What /proc shows now (sleep holds them until killed): 0-42 and whatever bash
    // left open across exec.
    let held = open_fds(pid) as u64;
    assert!(held >= 43, "{held}");
    assert_eq!(
        (p["nofile_soft"].as_u64(), p["open_fds"].as_u64()),
        (Some(48), Some(held))
    );
    assert!(
        f["evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["label"] == "limit set by"
                && e["value"] == format!("LimitNOFILE=48 at {file}:6 (unit {unit})").as_str())),
        "{f:#}"
    );
    assert_eq!(
        patches(f),
        vec![format!(
            "--- {file}\n+++ {file}\n@@ -6 +6,1 @@\n-LimitNOFILE=48\n+LimitNOFILE=65536:65536\n"
        )
        .as_str()]
    );

    // A snapshot records where the limit is set: the same finding from the file.
    let snap_dir = TempDir::new("persisted-nofile-snap");
    let snap = snap_dir.path().join("host.tdsnap");
    let mut cmd = Command::new(common::TCPDOCTOR);
    cmd.args(["snapshot", "--interval", "0", "--netns", "current", "-o"])
        .arg(&snap)
        .env("NO_COLOR", "1")
        .env("TCPDOCTOR_HOST_ROOT", &root);
    let out = run_bounded(&mut cmd, RUN_TIMEOUT).expect("tcpdoctor snapshot");
    assert!(out.status.success(), "{out:?}");
    let (_, from) = code_and_json(&run_tcpdoctor(&[
        "--from",
        snap.to_str().expect("utf-8 path"),
        "check",
        "--json",
    ]));
    let again = findings(&from, "fd_exhaustion")
        .into_iter()
        .find(|f| {
            f["data"]["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == pid))
        })
        .unwrap_or_else(|| panic!("no fd_exhaustion for pid {pid} from the snapshot: {from:#}"));
    assert_eq!(again["data"]["limit_origin"], *origin, "{again:#}");
    assert_eq!(patches(again), patches(f));
}
