//! What tcpdoctor shows about a process, read from `<proc-root>/PID`: name, uid,
//! command line and RLIMIT_NOFILE. A process that exits meanwhile leaves empty or
//! `None` fields, never an error.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::limits;
use crate::model::{Limit, Process};

/// Name, uid and command line. Any of them may be gone if the process just exited;
/// we keep what we got.
pub fn read_process(pid_dir: &Path, pid: u32, open_fds: u64) -> Process {
    let comm = std::fs::read(pid_dir.join("comm"))
        .map(|b| String::from_utf8_lossy(b.trim_ascii_end()).into_owned())
        .unwrap_or_default();
    let cmdline = std::fs::read(pid_dir.join("cmdline"))
        .map(|mut b| {
            while b.last() == Some(&0) {
                b.pop();
            }
            for c in b.iter_mut() {
                if *c == 0 {
                    *c = b' ';
                }
            }
            String::from_utf8_lossy(&b).into_owned()
        })
        .unwrap_or_default();
    let uid = std::fs::metadata(pid_dir)
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    Process {
        pid,
        comm,
        uid,
        cmdline,
        open_fds,
    }
}

/// Soft and hard RLIMIT_NOFILE of a process; `None` when `limits` is unreadable.
pub fn read_nofile(pid_dir: &Path) -> (Option<Limit>, Option<Limit>) {
    let n = std::fs::read_to_string(pid_dir.join("limits"))
        .ok()
        .and_then(|t| limits::parse_nofile(&t));
    (n.map(|n| n.soft), n.map(|n| n.hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_captured_process() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/netns_mixed/6326");
        let p = read_process(&dir, 6326, 9);
        assert_eq!(p.comm, "python3");
        assert!(p.cmdline.contains("make_states.py"), "{}", p.cmdline);
        let (soft, hard) = read_nofile(&dir);
        assert!(soft.is_some() && hard.is_some());
        let (soft, _) = read_nofile(Path::new("/nonexistent/1"));
        assert_eq!(soft, None);
    }
}
