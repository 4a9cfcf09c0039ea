//! Network namespaces: finding every one on the host and running code inside one.
//!
//! Namespaces are found from `/proc/*/ns/net` (one per process, deduplicated by inode)
//! and from the bind mounts under `/run/netns` that `ip netns add` makes. To read a
//! namespace, a worker thread joins it with `setns(2)`: sock_diag sockets opened by that
//! thread, `/proc/thread-self/net/*` and the `net.*` sysctls under `/proc/sys` then all
//! answer for that namespace. Only worker threads ever change namespace, and they end
//! when their work is done, so the process's own threads never leave theirs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::procfs::status;
use super::sockets::CollectError;
use crate::model::{text, NetnsInfo, Notice, NoticeCode};

/// One namespace found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Inode of the namespace (`net:[INODE]`).
    pub inode: u64,
    /// Processes in it, ascending.
    pub pids: Vec<u32>,
    /// Names under /run/netns bound to it.
    pub ip_netns: Vec<String>,
    /// Files that refer to it, tried in order to enter it: /run/netns/NAME first
    /// (cannot be reused by another namespace), then /proc/PID/ns/net.
    pub paths: Vec<PathBuf>,
}

/// Every namespace that could be seen, plus what could not.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Ascending by inode.
    pub namespaces: Vec<Discovered>,
    /// The namespace this process runs in.
    pub current: Option<u64>,
    /// Processes whose namespace could not be read (not root).
    pub denied: u64,
}

impl Discovery {
    pub fn get(&self, inode: u64) -> Option<&Discovered> {
        self.namespaces.iter().find(|d| d.inode == inode)
    }
}

/// `net:[4026531840]` -> 4026531840.
pub fn parse_ns_link(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"net:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The namespace a link such as `/proc/PID/ns/net` points to; `Ok(None)` when the link
/// is not a network namespace.
pub fn ns_link_inode(path: &Path) -> io::Result<Option<u64>> {
    let target = std::fs::read_link(path)?;
    Ok(parse_ns_link(target.as_os_str().as_bytes()))
}

/// `PF_KTHREAD` in the flags field of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `pid` under `proc_root` is a kernel thread, from its world-readable `stat`.
fn is_kernel_thread(proc_root: &Path, pid: u32) -> bool {
    let Ok(stat) = super::bounded::read(
        &proc_root.join(pid.to_string()).join("stat"),
        super::bounded::SMALL,
    ) else {
        return false;
    };
    // "2 (kthreadd) S 0 0 0 0 -1 2129984 ...": the name may hold spaces and parentheses,
    // so count fields after the last ')'; flags is the 7th of them (field 9).
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    std::str::from_utf8(&stat[close + 1..])
        .ok()
        .and_then(|rest| rest.split_ascii_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Whether the network namespace whose `/proc/sys` `proc_root` shows is the initial one:
/// a few sysctls are registered for the initial namespace only (`ipv4_table` in
/// net/ipv4/sysctl_net_ipv4.c: tcp_max_orphans, tcp_mem), so they exist there and
/// nowhere else. Needs no privilege; also works on a captured host.
pub fn sysctls_look_initial(proc_root: &Path) -> bool {
    ["tcp_max_orphans", "tcp_mem"]
        .iter()
        .any(|k| proc_root.join("sys/net/ipv4").join(k).exists())
}

/// The inode of the initial network namespace (the host's own), when it can be told:
/// kthreadd's namespace (kernel threads always live in init_net); else ours, when our
/// `/proc/sys` holds the initial-only sysctls; else pid 1's, unless it is ours (in a
/// container with its own pid namespace, pid 1 is the container's init). Without root
/// and outside the initial namespace it cannot be told: `None`.
pub fn initial_inode(proc_root: &Path, current: Option<u64>) -> Option<u64> {
    if is_kernel_thread(proc_root, 2) {
        if let Ok(Some(inode)) = ns_link_inode(&proc_root.join("2/ns/net")) {
            return Some(inode);
        }
    }
    if sysctls_look_initial(proc_root) {
        return current;
    }
    match ns_link_inode(&proc_root.join("1/ns/net")) {
        Ok(Some(inode)) if Some(inode) != current => Some(inode),
        _ => None,
    }
}

fn entry(by_inode: &mut BTreeMap<u64, Discovered>, inode: u64) -> &mut Discovered {
    by_inode.entry(inode).or_insert_with(|| Discovered {
        inode,
        pids: Vec::new(),
        ip_netns: Vec::new(),
        paths: Vec::new(),
    })
}

/// Lists the namespaces of every process under `proc_root` and every name under
/// `run_netns` (normally /run/netns). Processes that exit meanwhile are skipped.
pub fn discover(proc_root: &Path, run_netns: &Path) -> Discovery {
    let mut by_inode: BTreeMap<u64, Discovered> = BTreeMap::new();
    let mut out = Discovery {
        current: ns_link_inode(&proc_root.join("self/ns/net")).ok().flatten(),
        ..Discovery::default()
    };

    if let Ok(rd) = std::fs::read_dir(proc_root) {
        let mut pids: Vec<u32> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let link = proc_root.join(pid.to_string()).join("ns/net");
            match ns_link_inode(&link) {
                Ok(Some(inode)) => {
                    let d = entry(&mut by_inode, inode);
                    d.pids.push(pid);
                    // A few paths are enough: if the first processes all exit, the
                    // namespace most likely went with them.
                    if d.paths.len() < 3 {
                        d.paths.push(link);
                    }
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => out.denied += 1,
                Err(_) => {} // exited, or a kernel thread without the link
            }
        }
    }

    // /run/netns/NAME is a bind mount of an nsfs file; a plain file left behind by a
    // failed `ip netns add` is not, and is told apart by its device.
    let nsfs_dev = std::fs::metadata(proc_root.join("self/ns/net"))
        .ok()
        .map(|m| m.dev());
    if let Ok(rd) = std::fs::read_dir(run_netns) {
        let mut names: Vec<(String, PathBuf)> = rd
            .filter_map(|e| e.ok())
            // The name is printed and put in fix commands: no control characters.
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                Some((text::clean(&name, text::NETNS_NAME_MAX), e.path()))
            })
            .collect();
        names.sort();
        for (name, path) in names {
            let Ok(m) = std::fs::metadata(&path) else {
                continue;
            };
            if nsfs_dev.is_some() && Some(m.dev()) != nsfs_dev {
                continue;
            }
            let d = entry(&mut by_inode, m.ino());
            d.ip_netns.push(name);
            d.paths.insert(0, path);
        }
    }
    out.namespaces = by_inode.into_values().collect();
    out
}

/// Whether this process may enter other network namespaces: CAP_SYS_ADMIN in its
/// effective set (`setns(2)` on a network namespace needs it).
pub fn may_enter_others(proc_root: &Path) -> bool {
    super::bounded::read(&proc_root.join("self/status"), super::bounded::SMALL)
        .is_ok_and(|st| status::has_cap(&st, status::CAP_SYS_ADMIN))
}

/// Why a file given as a namespace is not one.
#[derive(Debug, thiserror::Error)]
pub enum NsFileError {
    #[error("'{}': {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{}' is not a network namespace file (use /run/netns/NAME or /proc/PID/ns/net)", path.display())]
    NotNsfs { path: PathBuf },
}

/// The inode of the namespace a file such as /run/netns/NAME or /proc/PID/ns/net
/// refers to. nsfs files share one device, that of our own /proc/self/ns/net: a file
/// on another device cannot be entered.
pub fn nsfs_file_inode(proc_root: &Path, path: &Path) -> Result<u64, NsFileError> {
    let m = std::fs::metadata(path).map_err(|source| NsFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let nsfs = std::fs::metadata(proc_root.join("self/ns/net")).map(|n| n.dev());
    if nsfs.is_ok_and(|dev| dev != m.dev()) {
        return Err(NsFileError::NotNsfs {
            path: path.to_path_buf(),
        });
    }
    Ok(m.ino())
}

/// The short name of a process (`/proc/PID/comm`), to name a namespace after it.
pub fn comm_of(proc_root: &Path, pid: u32) -> Option<String> {
    super::procfs::process::read_comm(&proc_root.join(pid.to_string()))
}

/// Why a namespace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("it no longer exists (its processes exited or its name was removed)")]
    Vanished,
    #[error("cannot open '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter it: {0} (entering another network namespace needs CAP_SYS_ADMIN: run as root)")]
    Enter(io::Error),
    #[error("cannot start a thread to read it: {0}")]
    Thread(io::Error),
    #[error("reading it failed: internal error (panic)")]
    Panicked,
}

/// An open handle on a namespace, checked to be the one that was discovered (a pid can
/// be reused by a process in another namespace between discovery and opening).
#[derive(Debug)]
pub struct NetnsHandle {
    file: File,
    pub inode: u64,
}

impl NetnsHandle {
    pub fn open(d: &Discovered) -> Result<NetnsHandle, NetnsError> {
        let mut last_err = None;
        for path in &d.paths {
            match File::open(path) {
                Ok(file) => match file.metadata() {
                    Ok(m) if m.ino() == d.inode => {
                        return Ok(NetnsHandle {
                            file,
                            inode: d.inode,
                        })
                    }
                    Ok(_) => {} // reused pid, other namespace
                    Err(e) => last_err = Some((path.clone(), e)),
                },
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => last_err = Some((path.clone(), e)),
            }
        }
        match last_err {
            Some((path, source)) if source.kind() == io::ErrorKind::PermissionDenied => {
                Err(NetnsError::Open { path, source })
            }
            _ => Err(NetnsError::Vanished),
        }
    }

    /// Moves the calling thread into this namespace. Only for worker threads that end
    /// afterwards.
    fn enter(&self) -> Result<(), NetnsError> {
        // SAFETY: setns on a valid, open nsfs descriptor; it changes only the calling
        // thread's network namespace.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                // The file no longer refers to a live namespace.
                Err(NetnsError::Vanished)
            } else {
                Err(NetnsError::Enter(e))
            }
        }
    }
}

/// Where the per-namespace files of the namespace a closure runs in are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsRoots {
    /// Holds `net/tcp`, `net/netstat`, `net/sockstat`...: /proc/thread-self inside a
    /// joined namespace, else the proc root.
    pub net: PathBuf,
    /// Holds `sys/net/...`: /proc (resolved per thread by the kernel).
    pub sys: PathBuf,
}

impl NsRoots {
    /// The roots for code that runs where it is (the current namespace or a replay).
    pub fn here(proc_root: &Path) -> NsRoots {
        NsRoots {
            net: proc_root.to_path_buf(),
            sys: proc_root.to_path_buf(),
        }
    }

    fn joined() -> NsRoots {
        NsRoots {
            net: PathBuf::from("/proc/thread-self"),
            sys: PathBuf::from("/proc"),
        }
    }
}

/// A namespace to read: what it is, and how to get there (nothing to enter for the
/// namespace tcpdoctor runs in, or for a replayed capture).
#[derive(Debug)]
pub struct NsTarget {
    pub info: NetnsInfo,
    handle: Option<NetnsHandle>,
}

impl NsTarget {
    /// Read where the caller is: the current namespace, or a replayed capture.
    pub fn here(info: NetnsInfo) -> NsTarget {
        NsTarget { info, handle: None }
    }

    /// Opens a discovered namespace to enter it later.
    pub fn open(d: &Discovered, info: NetnsInfo) -> Result<NsTarget, NetnsError> {
        Ok(NsTarget {
            info,
            handle: Some(NetnsHandle::open(d)?),
        })
    }

    /// Read without entering anything.
    pub fn is_here(&self) -> bool {
        self.handle.is_none()
    }
}

impl AsRef<NsTarget> for NsTarget {
    fn as_ref(&self) -> &NsTarget {
        self
    }
}

/// Runs `work` once per target on up to `workers` threads; each thread enters the
/// target's namespace first and hands `work` only that namespace's roots. Results come
/// back in target order. A target that cannot be entered gets its error; the others
/// are unaffected. Targets read "here" read files below `here` (the live /proc, or a
/// replayed capture).
pub fn for_each<T, R, F>(
    targets: &[T],
    here: &Path,
    workers: usize,
    work: F,
) -> Vec<Result<R, NetnsError>>
where
    T: AsRef<NsTarget> + Sync,
    R: Send,
    F: Fn(&NsTarget, &NsRoots) -> R + Sync,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R, NetnsError>>>> =
        Mutex::new((0..targets.len()).map(|_| None).collect());
    let workers = workers.clamp(1, 64).min(targets.len().max(1));
    // A worker that entered another namespace and then gets a target read "here" must
    // go back to where the caller is first.
    let home = File::open("/proc/thread-self/ns/net").ok();
    let run_one = |i: usize, entered: &mut bool| -> Result<R, NetnsError> {
        let target = targets[i].as_ref();
        let roots = match &target.handle {
            Some(h) => {
                *entered = true;
                h.enter()?;
                NsRoots::joined()
            }
            None => {
                if *entered {
                    let home = home.as_ref().ok_or(NetnsError::Vanished)?;
                    // SAFETY: setns on an open nsfs descriptor, calling thread only.
                    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(NetnsError::Enter(io::Error::last_os_error()));
                    }
                    *entered = false;
                }
                NsRoots::here(here)
            }
        };
        Ok(work(target, &roots))
    };
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("netns-{w}"))
                .spawn_scoped(s, || {
                    let mut entered = false;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= targets.len() {
                            break;
                        }
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_one(i, &mut entered)
                        }))
                        .unwrap_or(Err(NetnsError::Panicked));
                        if let Ok(mut g) = results.lock() {
                            g[i] = Some(r);
                        }
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(_) if !handles.is_empty() => break, // fewer workers will do
                Err(e) => {
                    if let Ok(mut g) = results.lock() {
                        for slot in g.iter_mut() {
                            *slot = Some(Err(NetnsError::Thread(io::Error::new(
                                e.kind(),
                                e.to_string(),
                            ))));
                        }
                    }
                    return;
                }
            }
        }
        for h in handles {
            let _ = h.join();
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or(Err(NetnsError::Panicked)))
        .collect()
}

/// A namespace whose failure ends the command: the only one asked for.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error("netns {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: NetnsError,
    },
}

/// One namespace's result as a reader of several uses it: the value; or, when several
/// namespaces are read, a `netns_unreadable` notice and `None`. When it was the only
/// one, its failure is the caller's.
pub fn settle<R>(
    result: Result<Result<R, CollectError>, NetnsError>,
    info: &NetnsInfo,
    single: bool,
    notices: &mut Vec<Notice>,
) -> Result<Option<R>, NamespaceError> {
    let vanished = matches!(result, Err(NetnsError::Vanished));
    let why = match result {
        Ok(Ok(v)) => return Ok(Some(v)),
        Ok(Err(e)) if single => return Err(e.into()),
        Err(source) if single => {
            return Err(NamespaceError::Enter {
                name: info.name.clone(),
                source,
            })
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    notices.push(Notice::new(
        if vanished {
            NoticeCode::NetnsVanished
        } else {
            NoticeCode::NetnsUnreadable
        },
        format!("netns {} (net:[{}]) skipped: {why}", info.name, info.inode),
    ));
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_links_parse() {
        assert_eq!(parse_ns_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link(b"net:[]"), None);
        assert_eq!(parse_ns_link(b"mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link(b"net:[12x]"), None);
        assert_eq!(parse_ns_link(b"net:[999999999999999999999999]"), None);
    }

    #[test]
    fn discovery_finds_our_own_namespace() {
        let d = discover(Path::new("/proc"), Path::new("/nonexistent/run/netns"));
        let cur = d.current.expect("own namespace readable");
        let ours = d.get(cur).expect("own namespace listed");
        assert!(ours.pids.contains(&std::process::id()));
        assert!(d.namespaces.windows(2).all(|w| w[0].inode < w[1].inode));
    }

    /// A namespace made with `ip netns add` for one test, deleted on drop.
    struct TempNetns(String);

    impl TempNetns {
        fn new(tag: &str) -> TempNetns {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                panic!("needs root (ip netns add, setns); as root, run: cargo test --features sockfarm -- --include-ignored, or bash .ci/run");
            }
            let name = format!("tdt-unit-{tag}-{}", std::process::id());
            let ok = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns add {name}");
            TempNetns(name)
        }

        fn run(&self, args: &[&str]) {
            let ok = std::process::Command::new("ip")
                .args(["netns", "exec", &self.0])
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns exec {} {args:?}", self.0);
        }

        fn discovered(&self) -> Discovered {
            let d = discover(Path::new("/proc"), Path::new("/run/netns"));
            d.namespaces
                .into_iter()
                .find(|n| n.ip_netns.contains(&self.0))
                .expect("our namespace is discovered")
        }
    }

    impl Drop for TempNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    fn thread_netns() -> u64 {
        ns_link_inode(Path::new("/proc/thread-self/ns/net"))
            .ok()
            .flatten()
            .expect("own netns")
    }

    fn info(inode: u64) -> NetnsInfo {
        NetnsInfo {
            inode,
            name: format!("ns{inode}"),
            kind: crate::model::NetnsKind::Unnamed,
            current: false,
            initial: false,
            container: None,
            ip_netns: Vec::new(),
            processes: 0,
            first_pid: None,
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn workers_read_the_target_namespace_and_callers_never_move() {
        let ns = TempNetns::new("enter");
        ns.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40099"]);
        let d = ns.discovered();
        let home = thread_netns();
        let host_range =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("host range");
        // One worker: it enters the namespace, then must come back for the one "here".
        let targets = vec![
            NsTarget::open(&d, info(d.inode)).expect("open"),
            NsTarget::here(info(home)),
            NsTarget::open(&d, info(d.inode)).expect("open"),
        ];
        let r = for_each(&targets, Path::new("/proc"), 1, |t, roots| {
            let range = std::fs::read_to_string(roots.sys.join("sys/net/ipv4/ip_local_port_range"))
                .expect("range");
            let snmp = std::fs::read_to_string(roots.net.join("net/snmp")).is_ok();
            (t.info.inode, thread_netns(), range, snmp)
        });
        let r: Vec<_> = r.into_iter().map(|x| x.expect("ran")).collect();
        assert_eq!((r[0].0, r[0].1), (d.inode, d.inode));
        assert_eq!(
            r[0].2.split_whitespace().collect::<Vec<_>>(),
            ["40000", "40099"]
        );
        assert!(r[0].3);
        assert_eq!(r[1].1, home, "a target read here runs where the caller is");
        assert_eq!(r[1].2, host_range);
        assert_eq!(r[2].1, d.inode);
        assert_eq!(thread_netns(), home, "the calling thread never moved");
        assert!(!targets[0].is_here() && targets[1].is_here());
    }

    #[test]
    #[ignore = "needs root"]
    fn the_initial_namespace_is_kthreadds_and_a_child_namespace_lacks_global_sysctls() {
        let root = Path::new("/proc");
        assert!(is_kernel_thread(root, 2), "pid 2 is kthreadd");
        assert!(!is_kernel_thread(root, std::process::id()));
        let initial = initial_inode(root, None).expect("visible as root");
        let ns = TempNetns::new("initial");
        let d = ns.discovered();
        assert_ne!(initial, d.inode);
        // Inside the child namespace the global-only sysctls are gone.
        let targets = vec![NsTarget::open(&d, info(d.inode)).expect("open")];
        let seen = for_each(&targets, root, 1, |_, roots| {
            sysctls_look_initial(&roots.sys)
        });
        assert_eq!(seen[0].as_ref().ok(), Some(&false));
        if thread_netns() == initial {
            assert!(sysctls_look_initial(root));
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn a_namespace_deleted_after_discovery_is_vanished() {
        let ns = TempNetns::new("gone");
        let d = ns.discovered();
        drop(ns);
        assert!(matches!(NetnsHandle::open(&d), Err(NetnsError::Vanished)));
    }

    #[test]
    fn current_target_runs_without_entering() {
        let targets: Vec<NsTarget> = [1u64, 2, 3]
            .into_iter()
            .map(|i| NsTarget::here(info(i)))
            .collect();
        let r = for_each(&targets, Path::new("/proc"), 2, |t, roots| {
            assert_eq!(roots.net, Path::new("/proc"));
            t.info.inode * 10
        });
        let r: Vec<u64> = r.into_iter().map(|x| x.expect("ran")).collect();
        assert_eq!(r, vec![10, 20, 30]);
    }

    #[test]
    fn a_panicking_target_is_an_error_not_a_crash() {
        let targets = vec![NsTarget::here(info(0)), NsTarget::here(info(1))];
        let r = for_each(&targets, Path::new("/proc"), 1, |t, _| {
            if t.info.inode == 0 {
                panic!("boom");
            }
            t.info.inode
        });
        assert!(matches!(r[0], Err(NetnsError::Panicked)));
        assert_eq!(r[1].as_ref().ok(), Some(&1));
    }
}
