//! The socket owner scan: socket inode -> (pid, fd) for every process, plus the name,
//! uid and command line of every process that owns a socket we care about, and the
//! descriptor count and network namespace of every process.
//!
//! One vocabulary ([`Wanted`], [`ScanStats`], [`OwnerScan`]) and two backends that give
//! the same [`Owners`]: [`bpf`] (BPF task_file iterators, a fraction of the system time
//! on big hosts) and [`proc`] (readdir + readlink over `/proc/PID/fd`). [`scan`] picks
//! one; neither backend knows about the other. Processes that exit during the scan or
//! deny access are normal and counted, never errors.

pub mod bpf;
pub mod proc;

use std::path::Path;

use rustc_hash::FxHashSet;

use crate::model::units::count;
use crate::model::{Notice, NoticeCode, Owners};

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

/// How the owners were found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScanMethod {
    /// BPF task_file and task iterators ([`bpf`]).
    Bpf,
    /// readdir + readlink over `/proc/PID/fd` ([`proc`]).
    #[default]
    Proc,
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

/// Open files on the host (`fs.file-nr`) from which the BPF scan is worth loading.
/// Loading costs a fixed ~80 ms of CPU (parsing the kernel's BTF, CO-RE relocation,
/// verification), the /proc pass ~2.5 us per descriptor and the BPF pass ~0.4 us: on
/// a small host the /proc pass is done before the programs are loaded. Once loaded
/// (`watch`, `serve`), BPF is used whatever the size.
pub const BPF_MIN_FILES: u64 = 50_000;

/// When the BPF scan may run (resolved in `settings` from the environment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfUse {
    /// Never: always the /proc pass (`TCPDOCTOR_NO_BPF`).
    Never,
    /// When the host has at least this many open files (0: whatever the size), or the
    /// programs are already loaded.
    FromOpenFiles(u64),
}

/// How to scan for owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerScan {
    pub bpf: BpfUse,
    /// Say on stderr which backend ran, how long it took and why BPF did not run
    /// (`TCPDOCTOR_DEBUG`): a debugging aid the user asked for, the one place a
    /// collector writes to stderr.
    pub debug: bool,
    /// Threads for the /proc pass (at least 1).
    pub threads: usize,
}

impl Default for OwnerScan {
    fn default() -> OwnerScan {
        OwnerScan {
            bpf: BpfUse::FromOpenFiles(BPF_MIN_FILES),
            debug: false,
            threads: 2,
        }
    }
}

/// Finds the owners of sockets: with the BPF iterators when `proc_root` is the live
/// `/proc`, `how` allows it, and the programs can be loaded (root, a kernel with BTF,
/// tcpdoctor built with clang); else by the /proc pass. Both give the same `Owners`;
/// `ScanStats::method` says which ran.
pub fn scan(proc_root: &Path, wanted: Wanted<'_>, how: &OwnerScan) -> (Owners, ScanStats) {
    let started = std::time::Instant::now();
    let bpf = bpf_worthwhile(proc_root, how.bpf)
        .and_then(|()| bpf::scan(wanted).map_err(|e| e.to_string()));
    let (owners, stats) = match bpf {
        Ok(r) => r,
        Err(why) => {
            // Expected whenever tcpdoctor runs without root: silent unless asked.
            if how.debug {
                debug_line(&format!("BPF not used ({why}); scanning /proc"));
            }
            proc::scan(proc_root, wanted, how.threads)
        }
    };
    if how.debug {
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

/// Loads the BPF programs now if [`scan`] would use them, so that a command which
/// dumps sockets and scans owners at the same time (`sockets`) starts both together:
/// loading takes ~80 ms (more in a debug build), and every socket closed between its
/// dump and the scan has no owner. Cheap when BPF would not be used.
pub fn prepare(proc_root: &Path, how: &OwnerScan) {
    if bpf_worthwhile(proc_root, how.bpf).is_ok() {
        bpf::load();
    }
}

/// Whether to try the BPF scan; `Err` says why not.
fn bpf_worthwhile(proc_root: &Path, use_bpf: BpfUse) -> Result<(), String> {
    if proc_root != Path::new("/proc") {
        return Err(format!("proc root is {proc_root:?}, not the live /proc"));
    }
    let min = match use_bpf {
        BpfUse::Never => return Err("TCPDOCTOR_NO_BPF is set".to_string()),
        BpfUse::FromOpenFiles(min) => min,
    };
    if bpf::is_loaded() || min == 0 {
        return Ok(());
    }
    // Unreadable: assume a big host, where BPF matters.
    let Some(open) =
        super::bounded::read_to_string(&proc_root.join("sys/fs/file-nr"), super::bounded::SMALL)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
    else {
        return Ok(());
    };
    if open < min {
        return Err(format!(
            "{open} open files on this host, fewer than {min} (TCPDOCTOR_BPF_MIN_FILES): /proc is cheaper"
        ));
    }
    Ok(())
}

/// One `TCPDOCTOR_DEBUG` line on stderr. A failed write is ignored (`eprintln!` would
/// panic when stderr is a terminal that went away, as under `watch`).
fn debug_line(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tcpdoctor: owner scan: {msg}");
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

/// The uid this process runs as, to explain missing owners.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The notice for sockets that hold a descriptor (inode != 0) but whose owner the scan
/// did not find. `unowned` counts such sockets among those the command looked at;
/// `replay`: the scan read a captured host.
pub fn missing_owner_notice(
    unowned: u64,
    stats: &ScanStats,
    euid: u32,
    replay: bool,
) -> Option<Notice> {
    if unowned == 0 {
        return None;
    }
    let sockets = count(unowned, "socket", "sockets");
    let have = if unowned == 1 { "has" } else { "have" };
    let their = if unowned == 1 { "its" } else { "their" };
    let msg = if replay {
        format!(
            "{sockets} {have} no owner in the capture: no PID/fd/N link in it names {their} inode"
        )
    } else if stats.denied > 0 && euid != 0 {
        format!(
            "run as root to see the owners of {sockets} ({} of {} could not be read as uid {euid})",
            stats.denied,
            count(stats.processes, "process", "processes")
        )
    } else if stats.denied > 0 {
        format!(
            "{sockets} {have} no owner: {} denied access to /proc/PID/fd even to root (hardened /proc or a security module)",
            count(stats.denied, "process", "processes")
        )
    } else {
        // As root nothing is hidden: the socket outlived the process that held it
        // while the dump and the scan ran (they are not one atomic look), or its
        // process is in a PID namespace this /proc does not show.
        let exited = match stats.vanished {
            0 => String::new(),
            n => format!(
                "; {} exited during the scan",
                count(n, "process", "processes")
            ),
        };
        format!(
            "{sockets} {have} no owner: {their} process exited between the socket dump and the owner scan ({} scan{exited}), or lives in another PID namespace",
            match stats.method {
                ScanMethod::Bpf => "BPF",
                ScanMethod::Proc => "/proc",
            }
        )
    };
    Some(Notice::new(NoticeCode::OwnersPartial, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

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
        let fd = listener.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink");
        let inode = socket_inode(link.as_os_str().as_bytes()).expect("socket link");
        let (owners, stats) = scan(Path::new("/proc"), Wanted::All, &OwnerScan::default());
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
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("readlink");
        let inode = socket_inode(link.as_os_str().as_bytes()).expect("socket link");
        let set: FxHashSet<u64> = [inode].into_iter().collect();
        let how = OwnerScan {
            threads: 1,
            ..OwnerScan::default()
        };
        let (owners, _) = scan(Path::new("/proc"), Wanted::Inodes(&set), &how);
        assert_eq!(owners.map.len(), 1);
        assert_eq!(owners.processes.len(), 1);
    }

    #[test]
    fn bpf_is_never_tried_when_told_not_to_or_on_a_replay() {
        let never = bpf_worthwhile(Path::new("/proc"), BpfUse::Never).expect_err("off");
        assert!(never.contains("TCPDOCTOR_NO_BPF"), "{never}");
        let replay = bpf_worthwhile(Path::new("/tmp/capture"), BpfUse::FromOpenFiles(0))
            .expect_err("replay");
        assert!(replay.contains("not the live /proc"), "{replay}");
    }

    #[test]
    fn notice_tells_non_root_to_use_root() {
        let stats = ScanStats {
            processes: 10,
            denied: 4,
            ..ScanStats::default()
        };
        let n = missing_owner_notice(3, &stats, 65534, false).expect("notice");
        assert_eq!(n.code, NoticeCode::OwnersPartial);
        assert!(n
            .message
            .starts_with("run as root to see the owners of 3 sockets"));
        assert_eq!(missing_owner_notice(0, &stats, 65534, false), None);
        let root = missing_owner_notice(2, &ScanStats::default(), 0, false).expect("notice");
        assert_eq!(
            root.message,
            "2 sockets have no owner: their process exited between the socket dump and the owner scan (/proc scan), or lives in another PID namespace"
        );
        let churn = ScanStats {
            method: ScanMethod::Bpf,
            vanished: 7,
            ..ScanStats::default()
        };
        let n = missing_owner_notice(1, &churn, 0, false).expect("notice");
        assert_eq!(
            n.message,
            "1 socket has no owner: its process exited between the socket dump and the owner scan (BPF scan; 7 processes exited during the scan), or lives in another PID namespace"
        );
        let replay = missing_owner_notice(2, &ScanStats::default(), 0, true).expect("notice");
        assert!(
            replay.message.contains("in the capture"),
            "{}",
            replay.message
        );
    }

    #[test]
    fn missing_proc_root_gives_empty_result() {
        let (owners, stats) = scan(
            Path::new("/nonexistent/proc"),
            Wanted::All,
            &OwnerScan::default(),
        );
        assert!(owners.map.is_empty());
        assert_eq!(stats.processes, 0);
        // A proc root other than the live /proc (a replayed host) is never scanned
        // with BPF: the iterators would describe this machine instead.
        assert_eq!(stats.method, ScanMethod::Proc);
    }
}
