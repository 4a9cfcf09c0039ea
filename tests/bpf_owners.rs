//! The BPF owner scan inside a private PID namespace (`unshare --pid --fork
//! --mount-proc`): the owner pids tcpdoctor prints must be the namespace's own pids (those
//! the socket holders see from getpid() and /proc shows there), not the host's, and the
//! BPF and /proc scans must print the same owners. Without `--mount-proc`, /proc belongs
//! to the parent namespace, and the BPF scan must step aside for the /proc scan.

mod common;

use std::collections::BTreeMap;
use std::process::Output;

use common::farm::FarmReady;
use common::netns::Netns;
use common::report::endpoint;
use common::run::{run_bounded, RUN_TIMEOUT};
use common::{require_root, sockfarm, TCPDOCTOR};
use serde_json::Value;
use tcpdoctor::collect::owners::bpf as bpf_owners;

/// Starts a farm (a listener and CLOSE_WAIT connections held by 2 worker processes) in
/// the namespace, prints its ready line, then the output of
/// `tcpdoctor sockets --json` with the BPF scan and with TCPDOCTOR_NO_BPF=1, each after
/// a marker line. Everything it starts dies with it: its shell is the namespace's pid 1.
const SCRIPT: &str = r#"
set -eu
farm=$1 doc=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkfifo "$dir/in" "$dir/out"
"$farm" --listen 127.0.0.1:0 --close-wait 6 --processes 2 --hold-secs 120 <"$dir/in" >"$dir/out" &
exec 3>"$dir/in"
IFS= read -r ready <"$dir/out"
echo '=== ready'
printf '%s\n' "$ready"
echo '=== bpf'
"$doc" sockets --json
echo '=== proc'
TCPDOCTOR_NO_BPF=1 "$doc" sockets --json
exec 3>&-
wait
"#;

/// True when this test can run: fails it unless root; prints why and returns false
/// when tcpdoctor was built without the BPF scan (no clang; never under CI, where
/// build.rs fails instead).
fn runnable(test: &str) -> bool {
    require_root();
    if !bpf_owners::BUILT {
        eprintln!("SKIP: {test}: built without clang, no BPF owner scan");
        return false;
    }
    true
}

/// Runs SCRIPT in a private PID namespace inside `ns`; `mount_proc` gives the
/// namespace its own /proc.
fn run_in_pid_namespace(ns: &Netns, mount_proc: bool) -> (BTreeMap<String, String>, String) {
    let mut args = vec!["--pid", "--fork"];
    if mount_proc {
        args.push("--mount-proc");
    }
    args.extend(["sh", "-c", SCRIPT, "sh", sockfarm(), TCPDOCTOR]);
    let mut cmd = ns.command("unshare", &args);
    // Small test hosts are below the size where BPF pays off: force it; and ask the
    // scan to say which method ran.
    cmd.env("TCPDOCTOR_BPF_MIN_FILES", "0")
        .env("TCPDOCTOR_DEBUG", "1")
        .env_remove("TCPDOCTOR_NO_BPF")
        .env("NO_COLOR", "1");
    let out: Output = run_bounded(&mut cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "namespace script failed ({}): {stderr}\n{stdout}",
        out.status
    );
    let mut parts = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("=== ") {
            current = Some(name.to_string());
            parts.insert(name.to_string(), String::new());
        } else if let Some(part) = current.as_ref().and_then(|c| parts.get_mut(c)) {
            part.push_str(line);
            part.push('\n');
        }
    }
    (parts, stderr)
}

/// (local, remote) -> sorted [(pid, fd)] of every socket in a `sockets --json` report.
fn owners_by_socket(json: &str) -> BTreeMap<(String, String), Vec<(u64, u64)>> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let mut out = BTreeMap::new();
    for s in v["sockets"].as_array().expect("sockets array") {
        let mut owners: Vec<(u64, u64)> = s["owners"]
            .as_array()
            .expect("owners array")
            .iter()
            .map(|o| {
                (
                    o["pid"].as_u64().unwrap_or(0),
                    o["fd"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        owners.sort_unstable();
        out.insert((endpoint(&s["local"]), endpoint(&s["remote"])), owners);
    }
    out
}

fn part<'a>(parts: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    parts
        .get(name)
        .unwrap_or_else(|| panic!("no {name:?} part in the output: {parts:?}"))
}

#[test]
#[ignore = "needs root"]
fn bpf_scan_in_a_private_pid_namespace_prints_the_namespace_pids() {
    if !runnable("bpf_scan_in_a_private_pid_namespace") {
        return;
    }
    let ns = Netns::new("bpfowners");
    let (parts, stderr) = run_in_pid_namespace(&ns, true);
    let ready: FarmReady =
        serde_json::from_str(part(&parts, "ready").trim()).expect("ready line is JSON");
    let bpf = owners_by_socket(part(&parts, "bpf"));
    let proc = owners_by_socket(part(&parts, "proc"));

    assert!(
        stderr.contains("owner scan: Bpf in"),
        "the BPF scan did not run: {stderr}"
    );
    assert!(
        stderr.contains("owner scan: Proc in"),
        "the /proc scan did not run: {stderr}"
    );

    let mut expected: Vec<((String, String), (u64, u64))> = Vec::new();
    for l in &ready.listeners {
        expected.push((
            (l.addr.clone(), "0.0.0.0:0".to_string()),
            (u64::from(l.pid), l.fd as u64),
        ));
    }
    for (pid, s) in ready.sockets(|w| &w.close_wait) {
        expected.push((
            (s.local.clone(), s.remote.clone()),
            (u64::from(pid), s.fd as u64),
        ));
    }
    assert_eq!(expected.len(), 7, "1 listener and 6 CLOSE_WAIT: {ready:?}");
    for (socket, owner) in &expected {
        let found = bpf.get(socket);
        assert!(
            found.is_some_and(|o| o.contains(owner)),
            "BPF: socket {socket:?} should be owned by (pid, fd) {owner:?} as the farm \
             sees it inside the namespace; tcpdoctor printed {found:?}"
        );
        // Namespace pids are small: the farm's parent is 2 (pid 1 is the shell).
        assert!(owner.0 < 1000, "{owner:?}");
    }
    assert_eq!(bpf, proc, "BPF and /proc scans disagree");
}

#[test]
#[ignore = "needs root"]
fn bpf_scan_steps_aside_when_proc_belongs_to_the_parent_namespace() {
    if !runnable("bpf_scan_steps_aside") {
        return;
    }
    let ns = Netns::new("bpfforeign");
    let (parts, stderr) = run_in_pid_namespace(&ns, false);
    assert!(
        !stderr.contains("owner scan: Bpf in"),
        "the BPF scan ran although /proc shows other pids: {stderr}"
    );
    assert!(
        stderr.contains("does not show this process's pid namespace"),
        "{stderr}"
    );
    // The /proc scan ran, and found owners under the pids that /proc shows.
    let bpf = owners_by_socket(part(&parts, "bpf"));
    let proc = owners_by_socket(part(&parts, "proc"));
    assert_eq!(bpf, proc);
    let owned = bpf.values().filter(|o| !o.is_empty()).count();
    assert!(owned >= 7, "owners not found: {bpf:?}");
}
