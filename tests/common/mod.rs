//! Shared harness for real-socket integration tests: throwaway network
//! namespaces (`Netns`), socket farms built by the `sockfarm` helper (`Farm`,
//! `FarmReady`), and bounded runs of tcpdoctor and `ss` inside a namespace.
//! Every child process and every wait here is bounded in time; nothing sends
//! traffic outside the namespace's loopback.

// Each integration test binary compiles this module and uses a different part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How to run the tests that need root and the `sockfarm` helper.
pub const HOW_TO_RUN: &str = "cargo test --features sockfarm -- --include-ignored, or bash .ci/run";

/// The `sockfarm` helper binary. Cargo builds it only with `--features sockfarm`, so the
/// suite still compiles without the feature, and a test that needs the helper then
/// fails saying how to run it. The feature is checked, not just the path: cargo sets
/// `CARGO_BIN_EXE_sockfarm` without the feature too, and the file there may be a stale
/// build from an earlier run with it.
pub fn sockfarm() -> &'static str {
    match option_env!("CARGO_BIN_EXE_sockfarm") {
        Some(path) if cfg!(feature = "sockfarm") => path,
        _ => panic!(
            "needs the sockfarm helper, built only with the `sockfarm` feature; run: {HOW_TO_RUN}"
        ),
    }
}

/// The tcpdoctor binary under test.
pub const TCPDOCTOR: &str = env!("CARGO_BIN_EXE_tcpdoctor");
/// uid/gid of the unprivileged runs (nobody/nogroup on Debian).
pub const NOBODY: u32 = 65534;

/// How long a farm may take to print its ready line unless told otherwise.
pub const FARM_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a farm may take to exit after its stdin is closed.
const FARM_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tcpdoctor or ss run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `ip` and `sh` helper commands may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The 11 TCP states in kernel spelling, in state-code order (tcp_states.h).
pub const KERNEL_STATES: [&str; 11] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// Kernel spelling of a state as `ss` prints it (`ESTAB`, `CLOSE-WAIT`, ...).
pub fn kernel_state_from_ss(ss_state: &str) -> Option<&'static str> {
    Some(match ss_state {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "UNCONN" | "CLOSE" => "CLOSE",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        "LISTEN" => "LISTEN",
        "CLOSING" => "CLOSING",
        _ => return None,
    })
}

/// Fails the test unless it runs as root. Every test that calls it is marked
/// `#[ignore = "needs root"]`, so a plain `cargo test` lists it as ignored instead of
/// passing it unseen, and `--include-ignored` as another user fails here, saying why.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "needs root (network namespaces, cgroups, BPF, other processes' sockets, setpriv); as root, run: {HOW_TO_RUN}"
        );
    }
}

/// Runs `cmd` with stdout and stderr captured; kills it (by its own pid) if it
/// has not finished after `timeout`. Returns `Err` with what was captured on
/// timeout or spawn failure.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {shown}: {e}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => break None,
            Err(e) => return Err(format!("wait for {shown}: {e}")),
        }
    };
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&join_drain(err)).into_owned();
            return Err(format!(
                "{shown} did not finish within {timeout:?}; stderr: {stderr}"
            ));
        }
    };
    Ok(Output {
        status,
        stdout: join_drain(out),
        stderr: join_drain(err),
    })
}

type Drain = Option<thread::JoinHandle<Vec<u8>>>;

/// Reads a pipe to EOF on a thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

fn join_drain(d: Drain) -> Vec<u8> {
    d.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Runs a setup command and panics with its stderr if it fails.
fn must_run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_bounded(cmd, SETUP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

static NETNS_COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

/// Deletes `tdt-<tag>-<pid>-<n>` namespaces whose creating process is gone
/// (left over from a crashed run). Namespaces of live processes are kept.
fn delete_stale_namespaces() {
    let Ok(out) = run_bounded(Command::new("ip").args(["netns", "list"]), SETUP_TIMEOUT) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with("tdt-") {
            continue;
        }
        let mut parts = name.rsplitn(3, '-');
        let (_counter, pid) = (parts.next(), parts.next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = run_bounded(
            Command::new("ip").args(["netns", "delete", name]),
            SETUP_TIMEOUT,
        );
    }
}

/// A throwaway network namespace with `lo` up. Dropping it kills the farms
/// still running in it and deletes it.
pub struct Netns {
    name: String,
    /// pids of farms started here and not yet reaped by their `Farm`.
    farms: Arc<Mutex<Vec<u32>>>,
}

impl Netns {
    /// Creates `tdt-<tag>-<pid>-<n>`. Panics (failing the test) if `ip` fails.
    pub fn new(tag: &str) -> Netns {
        require_root();
        STALE_CLEANUP.call_once(delete_stale_namespaces);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect();
        let n = NETNS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tdt-{tag}-{}-{n}", std::process::id());
        must_run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            farms: Arc::new(Mutex::new(Vec::new())),
        };
        must_run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program args...` inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Writes a sysctl inside the namespace, e.g.
    /// `sysctl("net.ipv4.tcp_fin_timeout", "30")`. Panics on failure.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = sysctl_path(key);
        // The value and path are passed as arguments, never spliced into the script.
        must_run(&mut self.command(
            "sh",
            &["-c", "printf '%s\\n' \"$1\" > \"$2\"", "sh", value, &path],
        ));
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> String {
        let out = must_run(&mut self.command("cat", &[&sysctl_path(key)]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts `sockfarm args...` here and waits (60 s) for its ready line.
    /// Panics with the farm's stderr if it fails.
    pub fn spawn_farm(&self, args: &[&str]) -> Farm {
        self.spawn_farm_within(args, FARM_READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `spawn_farm`, but with a custom ready timeout and returning the
    /// farm's error (its stderr) instead of panicking, for tests of refusals.
    pub fn spawn_farm_within(&self, args: &[&str], timeout: Duration) -> Result<Farm, String> {
        let mut child = self
            .command(sockfarm(), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn sockfarm in {}: {e}", self.name))?;
        let pid = child.id();
        lock(&self.farms).push(pid);
        let stdin = child.stdin.take();
        let stderr = drain(child.stderr.take());
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                let mut line = String::new();
                let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
                let _ = tx.send(result);
            });
        }
        let mut farm = Farm {
            child,
            stdin,
            stderr,
            registry: Arc::clone(&self.farms),
            ready: FarmReady::default(),
            reaped: None,
        };
        let line = match rx.recv_timeout(timeout) {
            Ok(Ok(line)) if !line.is_empty() => line,
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                let what = match rx.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => format!("no ready line within {timeout:?}"),
                    _ => "exited without a ready line".to_string(),
                };
                let (status, stderr) = farm.finish();
                return Err(format!(
                    "sockfarm {args:?} in {}: {what} ({status}); stderr: {stderr}",
                    self.name
                ));
            }
        };
        farm.ready = serde_json::from_str(&line)
            .map_err(|e| format!("sockfarm ready line is not valid JSON ({e}): {line}"))?;
        Ok(farm)
    }

    /// Runs tcpdoctor as root inside the namespace, with NO_COLOR=1 (bounded). Adds
    /// `--netns current` unless `args` choose: as root, check/watch/serve would
    /// otherwise read every namespace on the machine, other tests' included.
    pub fn run_tcpdoctor(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = Vec::new();
        if !args.iter().any(|a| a.starts_with("--netns")) {
            all.extend(["--netns", "current"]);
        }
        all.extend_from_slice(args);
        let mut cmd = self.command(TCPDOCTOR, &all);
        cmd.env("NO_COLOR", "1");
        run_bounded(&mut cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs tcpdoctor inside the namespace as uid/gid 65534 with no groups and
    /// no capabilities (`ip netns exec` itself needs root, so the privileges are
    /// dropped after entering the namespace).
    pub fn run_tcpdoctor_unprivileged(&self, args: &[&str]) -> Output {
        assert_reachable_by_others(Path::new(TCPDOCTOR));
        let uid = NOBODY.to_string();
        let mut setpriv_args = vec![
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_string(),
            "--inh-caps=-all".to_string(),
            TCPDOCTOR.to_string(),
        ];
        setpriv_args.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = setpriv_args.iter().map(String::as_str).collect();
        let mut cmd = self.command("setpriv", &refs);
        cmd.env("NO_COLOR", "1");
        run_bounded(&mut cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `ss args...` inside the namespace (bounded), for cross-checks.
    pub fn run_ss(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.command("ss", args), RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Per-state TCP socket counts from `ss -tanH`, in kernel spelling; states
    /// with no sockets are absent.
    pub fn ss_state_counts(&self) -> BTreeMap<String, u64> {
        let out = self.run_ss(&["-tanH"]);
        assert!(
            out.status.success(),
            "ss -tanH failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut counts = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(first) = line.split_whitespace().next() else {
                continue;
            };
            let state = kernel_state_from_ss(first)
                .unwrap_or_else(|| panic!("unknown ss state {first:?} in line {line:?}"));
            *counts.entry(state.to_string()).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in lock(&self.farms).drain(..) {
            // SAFETY: plain syscall. The pid is our own unreaped child (its
            // `Farm` removes it from this list after reaping), so it cannot
            // have been reused by another process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        match run_bounded(
            Command::new("ip").args(["netns", "delete", &self.name]),
            SETUP_TIMEOUT,
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns delete {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sysctl_path(key: &str) -> String {
    assert!(
        !key.contains("..") && !key.contains('/'),
        "sysctl key {key:?} must be dotted, like net.ipv4.tcp_fin_timeout"
    );
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Panics unless uid 65534 can reach and execute `binary`: every directory on
/// the way needs o+x, the file o+rx.
pub fn assert_reachable_by_others(binary: &Path) {
    let meta = std::fs::metadata(binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    assert!(
        meta.permissions().mode() & 0o005 == 0o005,
        "{} is not readable and executable by others (mode {:o}); uid {NOBODY} cannot run it",
        binary.display(),
        meta.permissions().mode() & 0o7777
    );
    for dir in binary.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let mode = std::fs::metadata(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .permissions()
            .mode();
        assert!(
            mode & 0o001 != 0,
            "directory {} has mode {:o} (no o+x); uid {NOBODY} cannot reach {}",
            dir.display(),
            mode & 0o7777,
            binary.display()
        );
    }
}

/// A running sockfarm. Dropping it closes its stdin (the farm then exits and
/// its workers with it), waits up to 30 s, then kills it.
pub struct Farm {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Drain,
    registry: Arc<Mutex<Vec<u32>>>,
    /// The parsed ready line.
    pub ready: FarmReady,
    reaped: Option<ExitStatus>,
}

impl Farm {
    /// pid of the farm's parent process (owner of the listeners).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes stdin and waits for the farm to exit. Returns its exit status
    /// and stderr; the status is `None` if it had to be killed.
    pub fn stop(mut self) -> (Option<ExitStatus>, String) {
        let (status, stderr) = self.finish();
        (status.parse_ok(), stderr)
    }

    /// Closes stdin, waits (bounded), kills if needed, reaps; idempotent.
    fn finish(&mut self) -> (FarmStatus, String) {
        self.stdin = None;
        let mut status = FarmStatus::Killed;
        if let Some(s) = self.reaped {
            status = FarmStatus::Exited(s);
        } else {
            let deadline = Instant::now() + FARM_EXIT_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(s)) = self.child.try_wait() {
                    status = FarmStatus::Exited(s);
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
            if let FarmStatus::Killed = status {
                let _ = self.child.kill();
            }
            if let Ok(s) = self.child.wait() {
                self.reaped = Some(s);
            }
        }
        let pid = self.child.id();
        lock(&self.registry).retain(|&p| p != pid);
        let stderr = String::from_utf8_lossy(&join_drain(self.stderr.take())).into_owned();
        (status, stderr)
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        self.finish();
    }
}

enum FarmStatus {
    Exited(ExitStatus),
    Killed,
}

impl FarmStatus {
    fn parse_ok(self) -> Option<ExitStatus> {
        match self {
            FarmStatus::Exited(s) => Some(s),
            FarmStatus::Killed => None,
        }
    }
}

impl std::fmt::Display for FarmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FarmStatus::Exited(s) => write!(f, "{s}"),
            FarmStatus::Killed => f.write_str("killed after timeout"),
        }
    }
}

/// The JSON line sockfarm prints when every socket is in place.
#[derive(Debug, Default, Deserialize)]
pub struct FarmReady {
    pub pid: u32,
    /// e.g. "net:[4026532290]".
    pub netns: String,
    pub listeners: Vec<FarmListener>,
    pub workers: Vec<FarmWorker>,
    /// Exact count per TCP state (kernel spelling, all 11 states present).
    pub expected: BTreeMap<String, u64>,
    pub build_ms: u64,
    #[serde(default)]
    pub phase_ms: BTreeMap<String, u64>,
    /// Counts including TIME_WAIT are exact only before this time (Unix ms).
    pub time_wait_valid_until_unix_ms: Option<u64>,
}

impl FarmReady {
    /// Expected count of one state (kernel spelling); 0 if absent.
    pub fn expected(&self, state: &str) -> u64 {
        self.expected.get(state).copied().unwrap_or(0)
    }

    /// (worker pid, socket) for one list of every worker, e.g. `|w| &w.close_wait`.
    pub fn sockets<'a>(
        &'a self,
        pick: impl Fn(&'a FarmWorker) -> &'a Option<Vec<FarmSocket>>,
    ) -> Vec<(u32, &'a FarmSocket)> {
        self.workers
            .iter()
            .flat_map(|w| pick(w).iter().flatten().map(move |s| (w.pid, s)))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
pub struct FarmListener {
    /// "127.0.0.1:5000" or "[::1]:5000" (port 0 already resolved).
    pub addr: String,
    pub pid: u32,
    pub fd: i32,
    /// "accept" (--listen) or "backlog" (--backlog-listen, never accepts).
    pub role: String,
    pub backlog: u32,
    /// Children waiting in the accept queue at ready time.
    pub queued: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct FarmWorkerCounts {
    pub established: u64,
    pub close_wait: u64,
    pub close_wait_read: u64,
    pub fin_wait2: u64,
    pub unaccepted_clients: u64,
    pub time_wait_made: u64,
}

/// One worker process and the sockets it holds (lists absent with --quiet-fds).
#[derive(Debug, Deserialize)]
pub struct FarmWorker {
    pub pid: u32,
    pub counts: FarmWorkerCounts,
    #[serde(default)]
    pub established: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub close_wait: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub close_wait_read: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub fin_wait2: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub unaccepted_clients: Option<Vec<FarmSocket>>,
}

#[derive(Debug, Deserialize)]
pub struct FarmSocket {
    pub fd: i32,
    pub local: String,
    pub remote: String,
    /// "client" or "server".
    pub side: String,
}

/// Compares `actual` with the insta snapshot `tests/snapshots/NAME.snap` (one folder and
/// no test-file prefix, so a snapshot keeps its name when its test moves). On a
/// mismatch the test fails, and outside CI insta writes `NAME.snap.new` beside it for
/// review; `INSTA_UPDATE=always` accepts the new output instead (tests/README.md).
#[macro_export]
macro_rules! assert_golden {
    ($name:expr, $actual:expr) => {
        insta::with_settings!({prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!($name, $actual);
        })
    };
}

/// The body of the insta snapshot `tests/snapshots/NAME.snap` (its `---` header left
/// out), for tests that read what another test recorded.
pub fn snapshot_body(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.snap"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut parts = text.splitn(3, "---\n");
    match (parts.next(), parts.next(), parts.next()) {
        (Some(""), Some(_header), Some(body)) => body.to_string(),
        _ => panic!("{}: no insta header (---, metadata, ---)", path.display()),
    }
}
