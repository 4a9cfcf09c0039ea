//! The /proc backend of the owner scan: one pass over `/proc/[pid]/fd`, split across
//! threads by process. Each descriptor costs one `readlinkat` relative to the already-open
//! fd directory (no path building, no allocation per fd); only names of the form
//! `socket:[N]` are kept. Works on any proc root, so a captured host (whose
//! `PID/fd/N` are plain symlinks to `socket:[INODE]`) is read the same way.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustc_hash::FxHashMap;

use super::{parse_u64, socket_inode, ScanStats, Wanted};
use crate::collect::procfs::process::read_process;
use crate::model::{Owner, Owners, Process, ProcessFds, SocketOwnerMap};

/// Every process under `proc_root`, split over `threads` threads.
pub fn scan(proc_root: &Path, wanted: Wanted<'_>, threads: usize) -> (Owners, ScanStats) {
    let pids = list_pids(proc_root);
    let threads = threads.clamp(1, 64).min(pids.len().max(1));
    let parts: Vec<ShardResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pids = &pids;
                s.spawn(move || {
                    scan_shard(
                        proc_root,
                        pids.iter().skip(t).step_by(threads).copied(),
                        wanted,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            // A panicking shard would be a bug in this file; degrade to "no owners" for
            // its processes rather than take the whole command down.
            .filter_map(|h| h.join().ok())
            .collect()
    });

    let total: usize = parts.iter().map(|p| p.found.len()).sum();
    let mut owners = Owners {
        map: SocketOwnerMap::with_capacity(total),
        processes: FxHashMap::default(),
        fd_counts: Vec::new(),
    };
    let mut stats = ScanStats::default();
    for part in parts {
        stats.merge(&part.stats);
        for (inode, owner) in part.found {
            owners.map.insert(inode, owner);
        }
        for p in part.processes {
            owners.processes.insert(p.pid, p);
        }
        owners.fd_counts.extend(part.fd_counts);
    }
    (owners, stats)
}

fn list_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .collect()
}

struct ShardResult {
    found: Vec<(u64, Owner)>,
    processes: Vec<Process>,
    fd_counts: Vec<ProcessFds>,
    stats: ScanStats,
}

fn scan_shard(
    proc_root: &Path,
    pids: impl Iterator<Item = u32>,
    wanted: Wanted<'_>,
) -> ShardResult {
    let mut out = ShardResult {
        found: Vec::new(),
        processes: Vec::new(),
        fd_counts: Vec::new(),
        stats: ScanStats::default(),
    };
    let mut link = [0u8; 64];
    for pid in pids {
        out.stats.processes += 1;
        let pid_dir = proc_root.join(pid.to_string());
        let Ok(fd_path) = CString::new(pid_dir.join("fd").as_os_str().as_bytes()) else {
            continue;
        };
        let dir = match FdDir::open(&fd_path) {
            Ok(d) => d,
            Err(e) => {
                match e.raw_os_error() {
                    // A process that is exiting can refuse too: once it is a zombie
                    // (or on its way there) it is gone for this scan, not hidden.
                    Some(libc::EACCES) | Some(libc::EPERM) if !exited(&pid_dir) => {
                        out.stats.denied += 1
                    }
                    _ => out.stats.vanished += 1,
                }
                continue;
            }
        };
        let before = out.found.len();
        let mut fds = 0u64;
        dir.for_each_entry(|name| {
            fds += 1;
            let Some(fd) = parse_u32(name.to_bytes()) else {
                return;
            };
            let Some(target) = dir.readlink(name, &mut link) else {
                return; // closed between readdir and readlink
            };
            if let Some(inode) = socket_inode(target) {
                out.stats.socket_fds += 1;
                if wanted.wants(inode) {
                    out.found.push((inode, Owner { pid, fd }));
                }
            }
        });
        out.stats.fds += fds;
        out.fd_counts.push(ProcessFds {
            pid,
            open_fds: fds,
            netns: crate::collect::netns::ns_link_inode(&pid_dir.join("ns/net"))
                .ok()
                .flatten(),
        });
        if out.found.len() > before {
            out.processes.push(read_process(&pid_dir, pid, fds));
        }
    }
    out
}

/// Whether the process of `pid_dir` has exited (its folder is gone, or it is a zombie
/// or dead: state `Z` or `X` in `stat`), so that a refusal to read its descriptors
/// means "exited during the scan", not "hidden from us".
fn exited(pid_dir: &Path) -> bool {
    let Ok(stat) = crate::collect::bounded::read(&pid_dir.join("stat"), 4096) else {
        return true;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .iter()
        .rposition(|b| *b == b')')
        .and_then(|i| stat.get(i + 2));
    matches!(state, Some(b'Z' | b'X' | b'x'))
}

fn parse_u32(b: &[u8]) -> Option<u32> {
    parse_u64(b).and_then(|v| u32::try_from(v).ok())
}

/// An open directory stream (`opendir`/`readdir`), used instead of `std::fs::read_dir`
/// because we need its fd for `readlinkat` and want no allocation per entry.
struct FdDir(*mut libc::DIR);

impl FdDir {
    fn open(path: &CStr) -> std::io::Result<FdDir> {
        // SAFETY: `path` is a valid NUL-terminated string.
        let dir = unsafe { libc::opendir(path.as_ptr()) };
        if dir.is_null() {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(FdDir(dir))
        }
    }

    /// Calls `f` with each entry name except `.` and `..`.
    fn for_each_entry(&self, mut f: impl FnMut(&CStr)) {
        loop {
            // SAFETY: self.0 is an open DIR*; readdir returns NULL at the end or on
            // error, otherwise a pointer valid until the next readdir on this stream.
            let ent = unsafe { libc::readdir(self.0) };
            if ent.is_null() {
                return;
            }
            // SAFETY: d_name is NUL-terminated within the dirent.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b == b"." || b == b".." {
                continue;
            }
            f(name);
        }
    }

    /// Reads the symlink `name` inside this directory into `buf`.
    fn readlink<'b>(&self, name: &CStr, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        // SAFETY: dirfd of an open stream; name is NUL-terminated; buf is writable for
        // buf.len() bytes and readlinkat writes at most that many.
        let n = unsafe {
            libc::readlinkat(
                libc::dirfd(self.0),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).ok()?;
        buf.get(..n)
    }
}

impl Drop for FdDir {
    fn drop(&mut self) {
        // SAFETY: self.0 came from opendir and is closed exactly once.
        unsafe {
            libc::closedir(self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_host_with_symlinked_descriptors_is_read() {
        // A capture keeps each /proc/PID/fd/N as a plain symlink to its target.
        let root = std::env::temp_dir().join(format!("tcpdoctor-fdcap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fd = root.join("4242/fd");
        std::fs::create_dir_all(&fd).expect("fd dir");
        std::fs::write(root.join("4242/comm"), "nginx\n").expect("comm");
        for (n, target) in [("0", "/dev/null"), ("3", "socket:[777]"), ("4", "pipe:[9]")] {
            std::os::unix::fs::symlink(target, fd.join(n)).expect("symlink");
        }
        let (owners, stats) = scan(&root, Wanted::All, 1);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(owners.map.first(777), Some(Owner { pid: 4242, fd: 3 }));
        assert_eq!(owners.map.len(), 1);
        assert_eq!((stats.fds, stats.socket_fds), (3, 1));
        assert_eq!(owners.process(4242).map(|p| p.comm.as_str()), Some("nginx"));
    }

    #[test]
    fn a_zombie_or_a_gone_process_has_exited_a_live_one_has_not() {
        let root = std::env::temp_dir().join(format!("tcpdoctor-exited-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (pid, stat) in [
            ("1", "1 (a) R 0"),
            ("2", "2 (x) y) Z 1"),
            ("3", "3 (b) X 1"),
        ] {
            std::fs::create_dir_all(root.join(pid)).expect("dir");
            std::fs::write(root.join(pid).join("stat"), stat).expect("stat");
        }
        assert!(!exited(&root.join("1")));
        assert!(exited(&root.join("2")));
        assert!(exited(&root.join("3")));
        assert!(exited(&root.join("4")), "no folder: gone");
        assert!(!exited(Path::new("/proc/self")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
