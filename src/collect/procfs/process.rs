//! What tcpdoctor shows about a process, read from `<proc-root>/PID`: name, uid,
//! command line and RLIMIT_NOFILE. A process that exits meanwhile leaves empty or
//! `None` fields, never an error.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::limits;
use crate::collect::bounded;
use crate::model::{text, Limit, Process};

/// Name, uid and command line. Any of them may be gone if the process just exited;
/// we keep what we got.
pub fn read_process(pid_dir: &Path, pid: u32, open_fds: u64) -> Process {
    let comm = read_comm(pid_dir).unwrap_or_default();
    let cmdline = bounded::read_prefix(&pid_dir.join("cmdline"), bounded::COMMAND_LINE)
        .map(|b| text::command_line(&b))
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

/// `PID/comm`, made safe to print ([`text::name`]): the kernel keeps 15 bytes, a
/// capture may hold anything. `None` when it cannot be read.
pub fn read_comm(pid_dir: &Path) -> Option<String> {
    // A little more than NAME_MAX characters of 4 bytes each; the rest is never read.
    let raw = bounded::read_prefix(&pid_dir.join("comm"), 4 * text::NAME_MAX as u64 + 4).ok()?;
    Some(text::name(raw.trim_ascii_end(), text::NAME_MAX))
}

/// Soft and hard RLIMIT_NOFILE of a process; `None` when `limits` is unreadable.
pub fn read_nofile(pid_dir: &Path) -> (Option<Limit>, Option<Limit>) {
    let n = bounded::read_to_string(&pid_dir.join("limits"), bounded::SMALL)
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

    #[test]
    fn names_from_a_capture_are_bounded_and_printable() {
        let dir = std::env::temp_dir().join(format!("tcpdoctor-comm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("comm"), "A".repeat(10 << 20)).expect("comm");
        let mut cmd = b"sh\0-c\0echo \x1b[2J\0".to_vec();
        cmd.extend(std::iter::repeat_n(b'x', 1 << 20));
        std::fs::write(dir.join("cmdline"), &cmd).expect("cmdline");
        let p = read_process(&dir, 1, 0);
        assert_eq!(p.comm.chars().count(), text::NAME_MAX);
        assert!(
            p.cmdline.starts_with("sh -c echo ?[2J "),
            "{}",
            &p.cmdline[..20]
        );
        assert_eq!(p.cmdline.chars().count(), text::COMMAND_LINE_MAX);
        std::fs::write(dir.join("comm"), b"\xff\x1b\n").expect("comm");
        assert_eq!(read_comm(&dir).as_deref(), Some("\u{fffd}?"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
