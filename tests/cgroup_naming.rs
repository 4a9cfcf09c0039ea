//! `collect::cgroup::identify` on a real process in a real cgroup: a cgroup v2 group named
//! the way runc's systemd driver names a Docker container
//! (`<slice>/docker-<64 hex>.scope`), with Docker's `config.v2.json` for that id in a
//! temporary folder. Needs root (`#[ignore]`d otherwise) and a writable cgroup2 mount
//! (prints `SKIP: ...` and passes without one). Everything it creates is removed by
//! [`Scene`]'s `Drop`, also when an assertion fails.

mod common;

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::cgroup::{cgroup2_mount, CgroupDirs};
use common::fixtures::TempDir;
use common::require_root;

use tcpdoctor::collect::cgroup::{identify, parse_proc_cgroup, RuntimeRoots};
use tcpdoctor::model::Runtime;

/// Made up for this test; any 64 lower-case hex digits are a valid container id.
const CONTAINER_ID: &str = "7cd0c0ffee5eed0fa11ab1e5ca1ab1e0d15ea5edba5eba11dec0de0fadedface";
const CONTAINER_NAME: &str = "tcpdoctor-naming-test";

fn skip(why: &str) {
    eprintln!("SKIP: cgroup_naming: {why}");
}

/// What the test made, undone on drop, also when an assertion fails: `Drop` kills the
/// child (by its pid) and reaps it; then the fields drop in order, the cgroups (removed
/// innermost first, now empty) and the temporary state folder.
#[derive(Default)]
struct Scene {
    child: Option<Child>,
    cgroups: CgroupDirs,
    state_dir: Option<TempDir>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Docker's per-container state, trimmed to the fields the naming reads plus a few that
/// show the shape (`config.v2.json` in `<data-root>/containers/<id>/`).
fn write_docker_state(root: &Path) -> io::Result<()> {
    let dir = root.join("var/lib/docker/containers").join(CONTAINER_ID);
    fs::create_dir_all(&dir)?;
    let config = serde_json::json!({
        "ID": CONTAINER_ID,
        "Created": "2024-05-01T10:00:00.000000000Z",
        "Path": "sleep",
        "Args": ["30"],
        "Config": { "Hostname": &CONTAINER_ID[..12], "Image": "busybox", "Labels": {} },
        "Name": format!("/{CONTAINER_NAME}"),
        "Driver": "overlay2",
    });
    fs::write(dir.join("config.v2.json"), config.to_string())
}

#[test]
#[ignore = "needs root"]
fn identify_names_a_process_in_a_docker_shaped_cgroup() {
    // Root creates cgroups and moves a process into one.
    require_root();
    let Some(mount) = cgroup2_mount() else {
        skip("no cgroup2 filesystem in /proc/self/mountinfo");
        return;
    };
    if !mount.join("cgroup.procs").exists() {
        skip(&format!("{} has no cgroup.procs", mount.display()));
        return;
    }

    let mut scene = Scene::default();
    let slice = mount.join(format!("tcpdoctor-test-{}.slice", std::process::id()));
    let scope = slice.join(format!("docker-{CONTAINER_ID}.scope"));
    for dir in [&slice, &scope] {
        if let Err(e) = scene.cgroups.create(dir.clone()) {
            skip(&format!(
                "cgroup2 at {} is not writable: {e}",
                mount.display()
            ));
            return;
        }
    }

    let state_dir = scene
        .state_dir
        .insert(TempDir::new("cgroup-naming"))
        .path()
        .to_path_buf();
    write_docker_state(&state_dir).expect("write Docker state into the temp folder");

    let child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    scene.child = Some(child);
    if let Err(e) = fs::write(scope.join("cgroup.procs"), pid.to_string()) {
        skip(&format!(
            "cannot move pid {pid} into {}: {e}",
            scope.display()
        ));
        return;
    }

    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read child's cgroup");
    let v2_line = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {text:?}"));
    assert!(
        v2_line.ends_with(&format!("/docker-{CONTAINER_ID}.scope")),
        "child not in the scope: {text:?}"
    );
    assert!(parse_proc_cgroup(&text).is_some(), "{text:?}");

    let roots = RuntimeRoots::under(&state_dir);
    let container = identify(Path::new("/proc"), pid, &roots)
        .unwrap_or_else(|| panic!("pid {pid} not identified; /proc/{pid}/cgroup: {text:?}"));
    assert_eq!(container.runtime, Runtime::Docker);
    assert_eq!(container.id, CONTAINER_ID);
    assert_eq!(container.name.as_deref(), Some(CONTAINER_NAME));
    assert_eq!(container.pod, None);
    assert_eq!(container.display(), format!("docker {CONTAINER_NAME}"));

    // Without the runtime state the container is still recognised, just unnamed.
    let bare = identify(
        Path::new("/proc"),
        pid,
        &RuntimeRoots::under(&state_dir.join("absent")),
    )
    .expect("recognised without state");
    assert_eq!(bare.name, None);
    assert_eq!(bare.display(), format!("docker {}", &CONTAINER_ID[..12]));
}
