//! Paths into the repository and its captured fixtures (tests/fixtures/, see the
//! README there), and scratch folders removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The captured namespace that the /proc replays use (tests/fixtures/proc/netns_mixed).
pub const NETNS_MIXED: &str = "tests/fixtures/proc/netns_mixed";

/// `rel` under the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A captured `/proc` tree: tests/fixtures/proc/NAME.
pub fn proc_fixture(name: &str) -> PathBuf {
    repo_path("tests/fixtures/proc").join(name)
}

/// One file of a captured sock_diag dump: tests/fixtures/netlink/DIR/FILE.
pub fn netlink_fixture(dir: &str, file: &str) -> Vec<u8> {
    let p = repo_path("tests/fixtures/netlink").join(dir).join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// A text file of the repository (a fixture, a deploy file), failing the test if it is
/// not readable.
pub fn read_repo_file(rel: &str) -> String {
    let p = repo_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory under the system temp folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = TMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("tcpdoctor-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a folder tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy fixture file");
        }
    }
}

/// The pid folder of the captured process in [`NETNS_MIXED`].
pub const NETNS_MIXED_PID: &str = "6326";

/// A copy of [`NETNS_MIXED`] in a scratch folder, with the captured process's
/// descriptors as a live capture keeps them: `PID/fd/N` symlinks made from its
/// `fd-links.txt`, so replays of the copy find socket owners.
pub fn netns_mixed_with_owners(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    copy_tree(&repo_path(NETNS_MIXED), dir.path());
    let pid = dir.path().join(NETNS_MIXED_PID);
    let links = std::fs::read_to_string(pid.join("fd-links.txt")).expect("fd-links.txt");
    std::fs::create_dir_all(pid.join("fd")).expect("fd dir");
    for line in links.lines() {
        let (fd, target) = line.split_once(' ').expect("'FD TARGET' lines");
        std::os::unix::fs::symlink(target, pid.join("fd").join(fd)).expect("fd link");
    }
    dir
}
