//! The BPF backend of the owner scan (`bpf/owners.bpf.c`): the same `Owners` as the
//! `/proc/PID/fd` backend in `proc.rs`, for about a fifth of its CPU time at a million
//! descriptors (most of what is left is the kernel's own walk of the descriptor tables).
//!
//! The kernel writes one 24-byte record per open file and one 16-byte record per
//! process; this file reads them, joins them on the global tgid and builds the maps.
//! It never falls back by itself: any problem is a `BpfScanError`, and `owners::scan`
//! decides to use the /proc backend instead.
//!
//! Why it is cheaper: for `/proc/PID/fd`, procfs instantiates a dentry and an inode for
//! every descriptor on readdir, and readlink formats `socket:[N]` for each one; the
//! iterator walks the descriptor tables directly and copies fixed-size records.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use rustc_hash::{FxHashMap, FxHashSet};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use super::{ScanMethod, ScanStats, Wanted};
#[cfg(not(tcpdoctor_no_bpf))]
use crate::collect::btf::chain;
use crate::collect::procfs::process::read_process;
use crate::collect::procfs::status::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};
use crate::model::{Owner, Owners, ProcessFds, SocketOwnerMap};

/// Whether build.rs compiled `bpf/owners.bpf.c` (it needs clang). Without it every
/// scan is a `BpfScanError::NotBuilt`.
pub const BUILT: bool = !cfg!(tcpdoctor_no_bpf);

/// Why the BPF scan could not run. Expected ones: not root (no CAP_BPF/CAP_PERFMON),
/// a kernel without BTF or BPF iterators (before 5.8), /proc from another pid namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BpfScanError {
    #[error("not built: clang was missing when tcpdoctor was compiled")]
    NotBuilt,
    #[error("cannot load the BPF iterators: {0}")]
    Load(String),
    #[error("cannot run the BPF iterator {program:?}: {reason}")]
    Run {
        program: &'static str,
        reason: String,
    },
    #[error("/proc does not show this process's pid namespace: {0}")]
    ForeignProc(String),
    #[error("no CAP_BPF and CAP_PERFMON (nor CAP_SYS_ADMIN): run as root")]
    NotPermitted,
    #[error("the BPF scan did not see this process (pid {0}) as expected")]
    SelfCheck(u32),
}

/// `struct file_record` in bpf/owners.bpf.c.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct FileRecord {
    ino: u64,
    tgid: u32,
    fd: u32,
    is_socket: u32,
    reserved: u32,
}

/// `struct process_record` in bpf/owners.bpf.c.
#[derive(Debug, Clone, Copy, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct ProcessRecord {
    tgid: u32,
    pid: u32,
    netns: u32,
    reserved: u32,
}

const FILE_PROGRAM: &str = "owner_files";
const PROCESS_PROGRAM: &str = "owner_processes";

/// Runs the scan: the files pass, then the processes pass, then the join.
pub fn scan(wanted: Wanted<'_>) -> Result<(Owners, ScanStats), BpfScanError> {
    let me = std::process::id();
    let status = crate::collect::bounded::read(
        Path::new("/proc/self/status"),
        crate::collect::bounded::SMALL,
    )
    .map_err(|e| BpfScanError::ForeignProc(format!("read /proc/self/status: {e}")))?;
    // Without the capabilities the load fails anyway, after ~60 ms spent parsing the
    // kernel's BTF: decide from the status file instead.
    if !may_load_tracing_programs(&status) {
        return Err(BpfScanError::NotPermitted);
    }
    check_proc_is_ours(&status, me)?;

    // A scan that panicked left nothing half-done in the loaded programs: go on.
    let mut loaded = programs()?
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    let mut stats = ScanStats {
        method: ScanMethod::Bpf,
        ..ScanStats::default()
    };
    // Files first, processes second: a process that has files in the first pass is
    // still there in the second unless it exited, and then it is counted as vanished,
    // as the /proc scan does.
    let mut files: FxHashMap<u32, ProcessFiles> = FxHashMap::default();
    read_records::<FileRecord>(&mut loaded, FILE_PROGRAM, |rec| match rec {
        Some(r) => add_file(&mut files, r, wanted, &mut stats),
        None => stats.skipped_records += 1,
    })?;
    let mut procs: Vec<ProcessRecord> = Vec::new();
    read_records::<ProcessRecord>(&mut loaded, PROCESS_PROGRAM, |rec| match rec {
        Some(r) => procs.push(*r),
        None => stats.skipped_records += 1,
    })?;
    drop(loaded);

    let owners = join(files, &procs, &mut stats);
    // The iterator file was open in this process during the files pass, so a scan that
    // does not show us with at least one descriptor, under the pid getpid() returns,
    // computed pids in the wrong namespace or lost records: /proc is the safer answer.
    if !owners
        .fd_counts
        .iter()
        .any(|p| p.pid == me && p.open_fds > 0)
    {
        return Err(BpfScanError::SelfCheck(me));
    }
    Ok((owners, stats))
}

/// Descriptors of one process (by global tgid) from the files pass.
#[derive(Debug, Default)]
struct ProcessFiles {
    fds: u64,
    socket_fds: u64,
    /// The iterator walks each table in ascending fd order; a record at or below the
    /// last one would be a duplicate.
    last_fd: Option<u32>,
    /// (inode, fd) of the wanted sockets.
    found: Vec<(u64, u32)>,
}

fn add_file(
    files: &mut FxHashMap<u32, ProcessFiles>,
    r: &FileRecord,
    wanted: Wanted<'_>,
    stats: &mut ScanStats,
) {
    if r.tgid == 0 || r.reserved != 0 || r.is_socket > 1 {
        stats.skipped_records += 1;
        return;
    }
    let p = files.entry(r.tgid).or_default();
    if p.last_fd.is_some_and(|last| r.fd <= last) {
        stats.skipped_records += 1;
        return;
    }
    p.last_fd = Some(r.fd);
    p.fds += 1;
    if r.is_socket == 1 {
        p.socket_fds += 1;
        if wanted.wants(r.ino) {
            p.found.push((r.ino, r.fd));
        }
    }
}

/// Puts each process's files under the pid its namespace shows.
fn join(
    mut files: FxHashMap<u32, ProcessFiles>,
    procs: &[ProcessRecord],
    stats: &mut ScanStats,
) -> Owners {
    let found: usize = files.values().map(|p| p.found.len()).sum();
    let mut owners = Owners {
        map: SocketOwnerMap::with_capacity(found),
        processes: FxHashMap::default(),
        fd_counts: Vec::with_capacity(procs.len()),
    };
    let proc_root = Path::new("/proc");
    let mut seen: FxHashSet<u32> = FxHashSet::default();
    for r in procs {
        if r.tgid == 0 || r.pid == 0 || r.reserved != 0 || !seen.insert(r.tgid) {
            stats.skipped_records += 1;
            continue;
        }
        let p = files.remove(&r.tgid).unwrap_or_default();
        stats.processes += 1;
        stats.fds += p.fds;
        stats.socket_fds += p.socket_fds;
        owners.fd_counts.push(ProcessFds {
            pid: r.pid,
            open_fds: p.fds,
            netns: (r.netns != 0).then_some(u64::from(r.netns)),
        });
        if p.found.is_empty() {
            continue;
        }
        for &(inode, fd) in &p.found {
            owners.map.insert(inode, Owner { pid: r.pid, fd });
        }
        let dir = proc_root.join(r.pid.to_string());
        owners
            .processes
            .insert(r.pid, read_process(&dir, r.pid, p.fds));
    }
    // Processes with files but no process record exited between the two passes.
    stats.vanished += files.len() as u64;
    owners
}

/// The pids the BPF scan reports are those of this process's pid namespace; the rest of
/// tcpdoctor reads `/proc/PID/...` with them. They agree when /proc was mounted for this
/// namespace, which is when `NSpid:` in /proc/self/status holds one number, getpid():
/// the line lists our pid from the /proc mount's namespace down to our own (not so
/// after `unshare --pid --fork` without `--mount-proc`, for instance).
fn check_proc_is_ours(status: &[u8], me: u32) -> Result<(), BpfScanError> {
    let nspid = status::nspid(status)
        .ok_or_else(|| BpfScanError::ForeignProc("no NSpid line in /proc/self/status".into()))?;
    if nspid != [me] {
        return Err(BpfScanError::ForeignProc(format!(
            "NSpid in /proc/self/status is {nspid:?}, getpid() is {me}"
        )));
    }
    Ok(())
}

/// Whether the effective capabilities (`CapEff:`) allow loading tracing programs that
/// read kernel memory: CAP_BPF and CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN.
/// Unknown (no such line): let the kernel decide.
pub(crate) fn may_load_tracing_programs(status: &[u8]) -> bool {
    let Some(eff) = status::effective_caps(status) else {
        return true;
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Attaches `program`, reads its iterator to the end and hands every record to `each`.
fn read_records<R: FromBytes + KnownLayout + Immutable>(
    loaded: &mut Loaded,
    program: &'static str,
    each: impl FnMut(Option<&R>),
) -> Result<(), BpfScanError> {
    let file = loaded.iterator(program)?;
    read_stream(file, each).map_err(|e| BpfScanError::Run {
        program,
        reason: format!("read: {e}"),
    })
}

/// Splits a stream of fixed-size records; `each` gets `None` for a trailing piece
/// shorter than a record (counted by the caller, never parsed).
fn read_stream<R: FromBytes + KnownLayout + Immutable>(
    mut input: impl Read,
    mut each: impl FnMut(Option<&R>),
) -> std::io::Result<()> {
    let size = std::mem::size_of::<R>();
    // The kernel fills at most its seq_file buffer (8 pages) per read() and stores only
    // whole records in it, but a read may still end inside one: keep the tail.
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0usize;
    while let Some(free) = buf.get_mut(have..) {
        let n = match input.read(free) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        have += n;
        let whole = have - have % size;
        for chunk in buf.get(..whole).unwrap_or_default().chunks_exact(size) {
            each(R::ref_from_bytes(chunk).ok());
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    if have > 0 {
        each(None);
    }
    Ok(())
}

/// The programs, loaded and verified once per tcpdoctor process (`watch` and `serve`
/// scan again and again); a load failure is remembered too.
static PROGRAMS: OnceLock<Result<Mutex<Loaded>, BpfScanError>> = OnceLock::new();

fn programs() -> Result<&'static Mutex<Loaded>, BpfScanError> {
    PROGRAMS
        .get_or_init(|| Loaded::load().map(Mutex::new))
        .as_ref()
        .map_err(Clone::clone)
}

/// Loads the programs if they are not yet (a failure is remembered, and reported by
/// the next scan).
pub fn load() {
    // Without the capabilities the load would fail after ~60 ms of BTF parsing.
    let status = crate::collect::bounded::read(
        Path::new("/proc/self/status"),
        crate::collect::bounded::SMALL,
    );
    if status.is_ok_and(|st| may_load_tracing_programs(&st)) {
        let _ = programs();
    }
}

/// True once this process has loaded the programs: later scans cost no load.
pub fn is_loaded() -> bool {
    PROGRAMS.get().is_some_and(|p| p.is_ok())
}

#[cfg(tcpdoctor_no_bpf)]
struct Loaded;

#[cfg(tcpdoctor_no_bpf)]
impl Loaded {
    fn load() -> Result<Loaded, BpfScanError> {
        Err(BpfScanError::NotBuilt)
    }

    fn iterator(&mut self, _program: &'static str) -> Result<File, BpfScanError> {
        Err(BpfScanError::NotBuilt)
    }
}

#[cfg(not(tcpdoctor_no_bpf))]
struct Loaded {
    ebpf: aya::Ebpf,
}

#[cfg(not(tcpdoctor_no_bpf))]
impl Loaded {
    fn load() -> Result<Loaded, BpfScanError> {
        use aya::programs::Iter;

        /// Compiled by build.rs; 8-byte aligned as the ELF parser wants.
        static OBJECT: &[u8] =
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/owners.bpf.o"));

        let btf = crate::collect::btf::kernel()
            .map_err(|e| BpfScanError::Load(format!("kernel BTF: {e}")))?;
        let mut ebpf = aya::EbpfLoader::new()
            .btf(Some(btf))
            .load(OBJECT)
            .map_err(|e| BpfScanError::Load(chain(&e)))?;
        for (program, iter_type) in [(FILE_PROGRAM, "task_file"), (PROCESS_PROGRAM, "task")] {
            let prog: &mut Iter = ebpf
                .program_mut(program)
                .ok_or_else(|| BpfScanError::Load(format!("no program {program:?} in object")))?
                .try_into()
                .map_err(|e| BpfScanError::Load(format!("{program}: {}", chain(&e))))?;
            prog.load(iter_type, btf)
                .map_err(|e| BpfScanError::Load(format!("{program}: {}", chain(&e))))?;
        }
        Ok(Loaded { ebpf })
    }

    /// A fresh iterator of `program`: a new link each time, closed once the iterator is
    /// created (the iterator keeps what it needs).
    fn iterator(&mut self, program: &'static str) -> Result<File, BpfScanError> {
        use aya::programs::Iter;

        let run = |reason: String| BpfScanError::Run { program, reason };
        let prog: &mut Iter = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| run("not in object".to_string()))?
            .try_into()
            .map_err(|e| run(chain(&e)))?;
        let id = prog.attach().map_err(|e| run(chain(&e)))?;
        let link = prog.take_link(id).map_err(|e| run(chain(&e)))?;
        link.into_file().map_err(|e| run(chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::owners::{proc::scan as scan_proc, socket_inode};
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;

    /// None (and a SKIP line) when built without clang; fails the test unless root (the
    /// tests that call it are `#[ignore = "needs root"]`).
    fn bpf_scan_or_skip(test: &str, wanted: Wanted<'_>) -> Option<(Owners, ScanStats)> {
        if !BUILT {
            eprintln!("SKIP: {test}: built without clang, no BPF object");
            return None;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("{test}: needs root (CAP_BPF, CAP_PERFMON); as root, run: cargo test --features sockfarm -- --include-ignored, or bash .ci/run");
        }
        match scan(wanted) {
            Ok(r) => Some(r),
            Err(e) => panic!("{test}: BPF scan failed as root: {e}"),
        }
    }

    fn inode_of(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink own fd");
        socket_inode(link.as_os_str().as_bytes()).expect("a socket link")
    }

    /// Our sockets: a listener, a connected pair, a UDP socket; plus a plain file.
    struct OwnSockets {
        _listener: std::net::TcpListener,
        _client: std::net::TcpStream,
        _server: std::net::TcpStream,
        _udp: std::net::UdpSocket,
        _file: File,
        fds: Vec<(u64, u32)>,
        file_fd: u32,
    }

    fn own_sockets() -> OwnSockets {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let client = std::net::TcpStream::connect(addr).expect("connect loopback");
        let (server, _) = listener.accept().expect("accept");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let file = File::open("/proc/self/status").expect("open a plain file");
        let fds = [
            listener.as_raw_fd(),
            client.as_raw_fd(),
            server.as_raw_fd(),
            udp.as_raw_fd(),
        ]
        .into_iter()
        .map(|fd| (inode_of(fd), fd as u32))
        .collect();
        let file_fd = file.as_raw_fd() as u32;
        OwnSockets {
            _listener: listener,
            _client: client,
            _server: server,
            _udp: udp,
            _file: file,
            fds,
            file_fd,
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn bpf_scan_finds_each_of_our_sockets_with_its_fd() {
        let own = own_sockets();
        let Some((owners, stats)) = bpf_scan_or_skip("bpf_scan_finds_each", Wanted::All) else {
            return;
        };
        let me = std::process::id();
        assert_eq!(stats.method, ScanMethod::Bpf);
        for &(inode, fd) in &own.fds {
            let found: Vec<Owner> = owners.map.owners(inode).collect();
            assert_eq!(found, vec![Owner { pid: me, fd }], "socket inode {inode}");
        }
        // The plain file is counted as a descriptor, never as a socket owner.
        assert!(!owners.map.owners(0).any(|o| o.fd == own.file_fd));
        let p = owners.process(me).expect("own process recorded");
        assert!(p.open_fds > own.fds.len() as u64); // and the plain file
        assert!(!p.comm.is_empty());
        let counts = owners
            .fd_counts
            .iter()
            .find(|f| f.pid == me)
            .expect("own fd count");
        assert_eq!(
            counts.netns,
            crate::collect::netns::ns_link_inode(Path::new("/proc/self/ns/net"))
                .ok()
                .flatten()
        );
        assert_eq!(stats.skipped_records, 0);
        assert!(stats.socket_fds >= own.fds.len() as u64);
    }

    #[test]
    #[ignore = "needs root"]
    fn bpf_and_proc_scans_agree_on_our_sockets() {
        let own = own_sockets();
        let wanted: FxHashSet<u64> = own.fds.iter().map(|&(inode, _)| inode).collect();
        let Some((bpf, bpf_stats)) =
            bpf_scan_or_skip("bpf_and_proc_agree", Wanted::Inodes(&wanted))
        else {
            return;
        };
        let (proc, proc_stats) = scan_proc(Path::new("/proc"), Wanted::Inodes(&wanted), 2);
        assert_eq!(proc_stats.method, ScanMethod::Proc);
        for &inode in &wanted {
            let a: Vec<Owner> = bpf.map.owners(inode).collect();
            let b: Vec<Owner> = proc.map.owners(inode).collect();
            assert_eq!(a, b, "owners of socket inode {inode}");
        }
        assert_eq!(bpf.map.len(), proc.map.len());
        let me = std::process::id();
        let (a, b) = (bpf.process(me), proc.process(me));
        let (a, b) = (a.expect("bpf: own process"), b.expect("proc: own process"));
        assert_eq!((&a.comm, a.uid, &a.cmdline), (&b.comm, b.uid, &b.cmdline));
        // Other test threads open and close descriptors meanwhile, and each scan holds
        // a few of its own: the counts agree only roughly.
        assert!(a.open_fds.abs_diff(b.open_fds) <= 64, "{a:?} vs {b:?}");
        assert_eq!(proc_stats.denied, 0);
        // Both saw (almost) the same processes; short-lived ones may come and go.
        assert!(
            bpf_stats.processes.abs_diff(proc_stats.processes) <= 16,
            "{bpf_stats:?} vs {proc_stats:?}"
        );
    }

    /// A child we start with a socket of ours as its stdin: a socket with two owners,
    /// and a process whose descriptors do not change while the scans run.
    struct SocketChild {
        child: std::process::Child,
        inode: u64,
        our_fd: u32,
        _listener: std::net::TcpListener,
    }

    impl Drop for SocketChild {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn socket_child() -> SocketChild {
        use std::process::{Command, Stdio};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let inode = inode_of(listener.as_raw_fd());
        let dup = std::os::fd::OwnedFd::from(listener.try_clone().expect("dup listener"));
        // `sleep` exits by itself if the test is killed before it can reap it.
        let child = Command::new("sleep")
            .arg("120")
            .stdin(Stdio::from(dup))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        SocketChild {
            child,
            inode,
            our_fd: listener.as_raw_fd() as u32,
            _listener: listener,
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn bpf_and_proc_agree_on_a_shared_socket_and_on_every_process() {
        let kid = socket_child();
        let Some((bpf, _)) = bpf_scan_or_skip("bpf_and_proc_every_process", Wanted::All) else {
            return;
        };
        let (proc, proc_stats) = scan_proc(Path::new("/proc"), Wanted::All, 2);
        let (bpf2, _) = scan(Wanted::All).expect("second BPF scan");
        let me = std::process::id();
        let pid = kid.child.id();

        let sorted = |o: &Owners| {
            let mut v: Vec<Owner> = o.map.owners(kid.inode).collect();
            v.sort_by_key(|o| (o.pid, o.fd));
            v
        };
        let mut expected = vec![
            Owner {
                pid: me,
                fd: kid.our_fd,
            },
            Owner { pid, fd: 0 },
        ];
        expected.sort_by_key(|o| (o.pid, o.fd));
        assert_eq!(sorted(&bpf), expected);
        assert_eq!(sorted(&proc), expected);

        let by_pid = |o: &Owners| -> FxHashMap<u32, ProcessFds> {
            o.fd_counts.iter().map(|p| (p.pid, *p)).collect()
        };
        let (before, during, after) = (by_pid(&bpf), by_pid(&proc), by_pid(&bpf2));
        // The child's descriptors do not change (0, 1, 2 and whatever the test harness
        // let it inherit): both scans must count them alike.
        assert_eq!(before.get(&pid), during.get(&pid));
        assert!(before.get(&pid).is_some_and(|p| p.open_fds >= 3));
        // Every process present in both BPF scans was there during the /proc scan,
        // which shows it unless /proc denied access (BPF needs no /proc permission).
        let mut missing = 0;
        for (pid, b) in &before {
            let Some(a) = after.get(pid) else { continue };
            match during.get(pid) {
                None => missing += 1,
                Some(p) if a.netns == b.netns => {
                    assert_eq!(p.netns, b.netns, "network namespace of process {pid}")
                }
                Some(_) => {}
            }
        }
        assert!(
            missing <= proc_stats.denied,
            "{missing} processes seen by BPF but not by /proc, {} denied",
            proc_stats.denied
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn o_path_descriptor_of_a_unix_socket_file_is_not_a_socket() {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let dir = std::env::temp_dir().join(format!("tcpdoctor-opath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("s.sock");
        let bound = std::os::unix::net::UnixListener::bind(&path).expect("bind unix path");
        let opath = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&path)
            .expect("O_PATH open of the socket file");
        let disk_ino = std::fs::metadata(&path).expect("stat socket file").ino();
        let fd = opath.as_raw_fd() as u32;
        let result = bpf_scan_or_skip("o_path_unix_socket_file", Wanted::All);
        let (proc, _) = scan_proc(Path::new("/proc"), Wanted::All, 1);
        let me = std::process::id();
        let holds = |o: &Owners| o.map.owners(disk_ino).any(|w| w == Owner { pid: me, fd });
        assert!(!holds(&proc), "/proc: O_PATH fd taken for a socket");
        if let Some((bpf, _)) = result {
            assert!(!holds(&bpf), "BPF: O_PATH fd taken for a socket");
            // The bound socket itself is one.
            let inode = inode_of(bound.as_raw_fd());
            assert!(bpf.map.owners(inode).any(|w| w.pid == me));
        }
        drop((opath, bound));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn capabilities_decide_whether_to_try_loading() {
        let caps = |v: &str| format!("Name:\tx\nCapEff:\t{v}\n").into_bytes();
        assert!(may_load_tracing_programs(&caps("000001ffffffffff"))); // root
        assert!(may_load_tracing_programs(&caps("0000000000200000"))); // CAP_SYS_ADMIN
        assert!(may_load_tracing_programs(&caps("000000c000000000"))); // CAP_BPF+PERFMON
        assert!(!may_load_tracing_programs(&caps("0000008000000000"))); // CAP_BPF only
        assert!(!may_load_tracing_programs(&caps("0000000000000000"))); // nobody
        assert!(may_load_tracing_programs(b"Name:\tx\n")); // unknown: try
    }

    #[test]
    fn records_split_across_reads_are_joined_and_a_short_tail_is_reported() {
        let recs: Vec<u8> = (1u32..=3)
            .flat_map(|i| {
                let mut r = [0u8; 16];
                r[..4].copy_from_slice(&i.to_ne_bytes());
                r[4..8].copy_from_slice(&(i * 10).to_ne_bytes());
                r
            })
            .chain([1u8, 2, 3]) // a short tail
            .collect();
        /// Hands out 5 bytes per read, so records straddle reads.
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(5).min(buf.len());
                let (head, rest) = self.0.split_at(n);
                buf[..n].copy_from_slice(head);
                self.0 = rest;
                Ok(n)
            }
        }
        let mut got = Vec::new();
        let mut short = 0;
        read_stream::<ProcessRecord>(Dribble(&recs), |r| match r {
            Some(r) => got.push((r.tgid, r.pid)),
            None => short += 1,
        })
        .expect("in-memory read");
        assert_eq!(got, vec![(1, 10), (2, 20), (3, 30)]);
        assert_eq!(short, 1);
    }

    #[test]
    fn duplicate_and_malformed_records_are_skipped_and_counted() {
        let mut stats = ScanStats::default();
        let mut files = FxHashMap::default();
        let rec = FileRecord {
            ino: 42,
            tgid: 7,
            fd: 3,
            is_socket: 1,
            reserved: 0,
        };
        add_file(&mut files, &rec, Wanted::All, &mut stats);
        add_file(&mut files, &rec, Wanted::All, &mut stats); // duplicate fd
        let bad = FileRecord { tgid: 0, ..rec };
        add_file(&mut files, &bad, Wanted::All, &mut stats);
        assert_eq!(stats.skipped_records, 2);
        let procs = [
            ProcessRecord {
                tgid: 7,
                pid: 1,
                netns: 99,
                reserved: 0,
            },
            ProcessRecord {
                tgid: 7,
                pid: 1,
                netns: 99,
                reserved: 0,
            },
        ];
        let owners = join(files, &procs, &mut stats);
        assert_eq!(stats.skipped_records, 3);
        assert_eq!(
            owners.map.owners(42).collect::<Vec<_>>(),
            vec![Owner { pid: 1, fd: 3 }]
        );
        assert_eq!(
            owners.fd_counts,
            vec![ProcessFds {
                pid: 1,
                open_fds: 1,
                netns: Some(99)
            }]
        );
        assert_eq!((stats.processes, stats.fds, stats.socket_fds), (1, 1, 1));
    }
}
