//! Cgroups made by a test (root): where cgroup v2 is mounted, and a guard that removes
//! the groups it made, innermost first, also when an assertion fails.

use std::io;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo` (proc(5): the
/// fields after ` - ` start with the filesystem type; field 5 is the mount point, with
/// spaces written as `\040`). Hybrid hosts mount it at `/sys/fs/cgroup/unified`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs_part) = line.split_once(" - ")?;
        if fs_part.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = mount.split_whitespace().nth(4)?;
        Some(PathBuf::from(point.replace("\\040", " ")))
    })
}

/// Cgroup directories made by a test, removed innermost first on drop. A cgroup can
/// only be removed once empty: move or kill its processes before this is dropped.
#[derive(Default)]
pub struct CgroupDirs(Vec<PathBuf>);

impl CgroupDirs {
    /// Creates `dir` (its parent must exist) and removes it on drop.
    pub fn create(&mut self, dir: PathBuf) -> io::Result<()> {
        std::fs::create_dir(&dir)?;
        self.0.push(dir);
        Ok(())
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // The kernel may take a moment to drop a just-reaped task from the group.
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        eprintln!("warning: cannot remove cgroup {}: {e}", dir.display());
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}
