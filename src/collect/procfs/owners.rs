//! One pass over `/proc/[pid]/fd`: socket inode -> (pid, fd), plus the name, uid and
//! command line of every process that owns a socket we care about.
//!
//! `scan` first tries the BPF iterator scan (`bpf_owners.rs`, same result, a fraction of
//! the system time) and falls back to the /proc pass below whenever that is unavailable.
//! The /proc pass is split across threads by process. Each descriptor costs one `readlinkat`
//! relative to the already-open fd directory (no path building, no allocation per fd);
//! only names of the form `socket:[N]` are kept. Processes that exit during the scan
//! or deny access are normal and counted, never errors.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustc_hash::{FxHashMap, FxHashSet};

use super::bpf_owners;
use crate::model::{Notice, NoticeCode, Owner, Owners, Process, ProcessFds, SocketOwnerMap};

/// What happened during a scan, for the partial-data notice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub processes: u64,
    /// `/proc/PID/fd` could not be opened for lack of permission.
    pub denied: u64,
    /// The process exited between listing and reading.
    pub vanished: u64,
    pub fds: u64,
    pub socket_fds: u64,
    /// Which scan produced the result.
    pub method: ScanMethod,
    /// BPF records that were short or inconsistent and were left out (never expected:
    /// nonzero means the kernel and `bpf/owners.bpf.c` disagree). Always 0 for /proc.
    pub skipped_records: u64,
}

/// How the owners were found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScanMethod {
    /// BPF task_file and task iterators (`bpf_owners.rs`).
    Bpf,
    /// readdir + readlink over `/proc/PID/fd`.
    #[default]
    Proc,
}

impl ScanStats {
    fn merge(&mut self, o: &ScanStats) {
        self.processes += o.processes;
        self.denied += o.denied;
        self.vanished += o.vanished;
        self.fds += o.fds;
        self.socket_fds += o.socket_fds;
        self.skipped_records += o.skipped_records;
    }
}

/// Which sockets to record.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// Every socket descriptor (needed when owners are looked up while streaming).
    All,
    /// Only these inodes (the sockets a command already has in hand).
    Inodes(&'a FxHashSet<u64>),
}

impl Wanted<'_> {
    pub fn wants(&self, inode: u64) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Inodes(set) => set.contains(&inode),
        }
    }
}

/// Environment variable that turns the BPF scan off (any value): for tests and
/// benchmarks of the /proc scan.
pub const NO_BPF_ENV: &str = "TCPDOCTOR_NO_BPF";
/// Environment variable that makes the scan say on stderr which method ran, and why BPF
/// did not (any value).
pub const DEBUG_ENV: &str = "TCPDOCTOR_DEBUG";
/// Environment variable that replaces `BPF_MIN_FILES` (0: use BPF whatever the size).
pub const BPF_MIN_FILES_ENV: &str = "TCPDOCTOR_BPF_MIN_FILES";
/// Open files on the host (`fs.file-nr`) from which the BPF scan is worth loading.
/// Loading costs a fixed ~80 ms of CPU (parsing the kernel's BTF, CO-RE relocation,
/// verification), the /proc pass ~2.5 us per descriptor and the BPF pass ~0.4 us: on
/// a small host the /proc pass is done before the programs are loaded. Once loaded
/// (`watch`, `serve`), BPF is used whatever the size.
pub const BPF_MIN_FILES: u64 = 50_000;

/// Finds the owners of sockets: with the BPF iterators when `proc_root` is the live
/// `/proc`, the host has many open files, and the programs can be loaded (root, a
/// kernel with BTF, tcpdoctor built with clang); else by the /proc pass with `threads`
/// threads (at least 1). Both give the same `Owners`; `ScanStats::method` says which
/// ran.
pub fn scan(proc_root: &Path, wanted: Wanted<'_>, threads: usize) -> (Owners, ScanStats) {
    let debug = std::env::var_os(DEBUG_ENV).is_some();
    let started = std::time::Instant::now();
    let bpf = bpf_worthwhile(proc_root)
        .and_then(|()| bpf_owners::scan(wanted).map_err(|e| e.to_string()));
    let (owners, stats) = match bpf {
        Ok(r) => r,
        Err(why) => {
            // Expected whenever tcpdoctor runs without root: silent unless asked.
            if debug {
                debug_line(&format!("BPF not used ({why}); scanning /proc"));
            }
            scan_proc(proc_root, wanted, threads)
        }
    };
    if debug {
        debug_line(&format!(
            "{:?} in {:.1} ms: {} processes, {} fds, {} socket fds, {} owned sockets, {} denied, {} vanished, {} records skipped",
            stats.method,
            started.elapsed().as_secs_f64() * 1e3,
            stats.processes,
            stats.fds,
            stats.socket_fds,
            owners.map.len(),
            stats.denied,
            stats.vanished,
            stats.skipped_records,
        ));
    }
    (owners, stats)
}

/// Whether to try the BPF scan; `Err` says why not.
fn bpf_worthwhile(proc_root: &Path) -> Result<(), String> {
    if proc_root != Path::new("/proc") {
        return Err(format!("proc root is {proc_root:?}, not the live /proc"));
    }
    if std::env::var_os(NO_BPF_ENV).is_some() {
        return Err(format!("{NO_BPF_ENV} is set"));
    }
    if bpf_owners::is_loaded() {
        return Ok(());
    }
    let min = match std::env::var(BPF_MIN_FILES_ENV) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{BPF_MIN_FILES_ENV}={v:?} is not a number"))?,
        Err(_) => BPF_MIN_FILES,
    };
    if min == 0 {
        return Ok(());
    }
    // Unreadable: assume a big host, where BPF matters.
    let Some(open) = std::fs::read_to_string(proc_root.join("sys/fs/file-nr"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
    else {
        return Ok(());
    };
    if open < min {
        return Err(format!(
            "{open} open files on this host, fewer than {min} ({BPF_MIN_FILES_ENV}): /proc is cheaper"
        ));
    }
    Ok(())
}

/// One `TCPDOCTOR_DEBUG` line on stderr.
fn debug_line(msg: &str) {
    eprintln!("tcpdoctor: owner scan: {msg}");
}

/// The /proc pass: every process under `proc_root`, split over `threads` threads.
pub fn scan_proc(proc_root: &Path, wanted: Wanted<'_>, threads: usize) -> (Owners, ScanStats) {
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
                    Some(libc::EACCES) | Some(libc::EPERM) => out.stats.denied += 1,
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

/// `socket:[12345]` -> 12345.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    parse_u64(digits)
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, c| {
        if c.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
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

/// The uid this process runs as, to explain missing owners.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The notice for sockets that hold a descriptor (inode != 0) but whose owner the scan
/// did not find. `unowned` counts such sockets among those the command looked at.
pub fn missing_owner_notice(unowned: u64, stats: &ScanStats, euid: u32) -> Option<Notice> {
    if unowned == 0 {
        return None;
    }
    let msg = if stats.denied > 0 && euid != 0 {
        format!(
            "run as root to see the owners of {unowned} sockets ({} of {} processes could not be read as uid {euid})",
            stats.denied, stats.processes
        )
    } else if stats.denied > 0 {
        format!(
            "{unowned} sockets have no owner: {} processes denied access to /proc/PID/fd even to root (hardened /proc or a security module)",
            stats.denied
        )
    } else {
        format!(
            "{unowned} sockets have no owner in /proc: their process exited during the scan, or lives in another PID namespace"
        )
    };
    Some(Notice::new(NoticeCode::OwnersPartial, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse_and_others_do_not() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999999]"), None);
    }

    #[test]
    fn scan_finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        use std::os::fd::AsRawFd;
        let fd = listener.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink");
        let inode = socket_inode(link.as_os_str().as_bytes()).expect("socket link");
        let (owners, stats) = scan(Path::new("/proc"), Wanted::All, 2);
        let me = std::process::id();
        assert!(owners
            .map
            .owners(inode)
            .any(|o| o.pid == me && o.fd == fd as u32));
        let p = owners.process(me).expect("own process recorded");
        assert!(p.open_fds >= 1);
        assert!(stats.processes >= 1);
    }

    #[test]
    fn wanted_set_limits_what_is_kept() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("readlink");
        let inode = socket_inode(link.as_os_str().as_bytes()).expect("socket link");
        let set: FxHashSet<u64> = [inode].into_iter().collect();
        let (owners, _) = scan(Path::new("/proc"), Wanted::Inodes(&set), 1);
        assert_eq!(owners.map.len(), 1);
        assert_eq!(owners.processes.len(), 1);
    }

    #[test]
    fn notice_tells_non_root_to_use_root() {
        let stats = ScanStats {
            processes: 10,
            denied: 4,
            ..ScanStats::default()
        };
        let n = missing_owner_notice(3, &stats, 65534).expect("notice");
        assert_eq!(n.code, NoticeCode::OwnersPartial);
        assert!(n
            .message
            .starts_with("run as root to see the owners of 3 sockets"));
        assert_eq!(missing_owner_notice(0, &stats, 65534), None);
        let root = missing_owner_notice(2, &ScanStats::default(), 0).expect("notice");
        assert!(root.message.contains("exited during the scan"));
    }

    #[test]
    fn missing_proc_root_gives_empty_result() {
        let (owners, stats) = scan(Path::new("/nonexistent/proc"), Wanted::All, 2);
        assert!(owners.map.is_empty());
        assert_eq!(stats.processes, 0);
        // A proc root other than the live /proc (a replayed host) is never scanned
        // with BPF: the iterators would describe this machine instead.
        assert_eq!(stats.method, ScanMethod::Proc);
    }
}
