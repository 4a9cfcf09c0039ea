//! Throwaway network namespaces (`Netns`, root only) and the socket farms started in
//! them (`Farm`): commands, sysctls, tcpdoctor and `ss` runs inside a namespace, and a
//! thread of the test that enters one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::Duration;

use super::farm::FarmReady;
use super::run::{
    assert_reachable_by_others, drain, join_drain, must_run, run_bounded, wait_exit, Drain, NOBODY,
    RUN_TIMEOUT, SETUP_TIMEOUT,
};
use super::ss::{self, SsRow};
use super::{require_root, sockfarm, TCPDOCTOR};

/// How long a farm may take to print its ready line unless told otherwise.
pub const FARM_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a farm may take to exit after its stdin is closed.
const FARM_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The inode of a namespace link text such as `net:[4026532290]`.
pub fn netns_link_inode(link: &str) -> u64 {
    link.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|_| panic!("not a netns link: {link:?}"))
}

/// The inode of the test's own network namespace.
pub fn own_netns_inode() -> u64 {
    let link = std::fs::read_link("/proc/self/ns/net").expect("own netns link");
    netns_link_inode(&link.to_string_lossy())
}

/// A throwaway network namespace with `lo` up. Dropping it kills the farms
/// still running in it and deletes it.
pub struct Netns {
    name: String,
    /// pids of farms started here and not yet reaped by their `Farm`.
    farms: Arc<Mutex<Vec<u32>>>,
}

impl Netns {
    /// Creates `tdt-<tag>-<pid>-<n>`. Panics (failing the test) unless root, or if
    /// `ip` fails.
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

    /// Runs `f` on a thread that has entered the namespace (setns on
    /// /run/netns/NAME): sockets it makes live there; the test's other threads are
    /// unaffected.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; setns affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread inside the namespace")
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
        self.start_farm(self.command(sockfarm(), args), args, timeout)
    }

    /// Like `spawn_farm`, with the farm running as uid and gid `uid`, no supplementary
    /// groups and no capabilities: another user's process, whose descriptors only a
    /// reader with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH can list.
    pub fn spawn_farm_as(&self, uid: u32, args: &[&str]) -> Farm {
        assert_reachable_by_others(Path::new(sockfarm()));
        let mut all = vec![
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_string(),
            "--inh-caps=-all".to_string(),
            sockfarm().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.start_farm(self.command("setpriv", &refs), args, FARM_READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn start_farm(
        &self,
        mut cmd: Command,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Farm, String> {
        let mut child = cmd
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

    /// The rows of `ss args...` here (pass `-H`; and no `state` filter: ss then drops
    /// the state column). Fails the test if ss fails.
    pub fn ss_rows(&self, args: &[&str]) -> Vec<SsRow> {
        let out = self.run_ss(args);
        assert!(
            out.status.success(),
            "ss {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ss::parse_rows(&String::from_utf8_lossy(&out.stdout))
    }

    /// Every TCP socket here from `ss -tanpH`, with the pids holding it.
    pub fn ss_rows_with_pids(&self) -> Vec<(SsRow, Vec<u32>)> {
        let out = self.run_ss(&["-tanpH"]);
        assert!(
            out.status.success(),
            "ss -tanpH: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ss::parse_rows_with_pids(&String::from_utf8_lossy(&out.stdout))
    }

    /// Per-state TCP socket counts from `ss -tanH EXTRA...` (e.g. `-4`), in kernel
    /// spelling; states with no sockets are absent. Fails the test on a state it does
    /// not know.
    pub fn ss_state_counts(&self, extra: &[&str]) -> BTreeMap<String, u64> {
        let mut args = vec!["-tanH"];
        args.extend_from_slice(extra);
        let out = self.run_ss(&args);
        assert!(
            out.status.success(),
            "ss {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ss::state_counts(&String::from_utf8_lossy(&out.stdout))
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
        let status = match self.reaped {
            Some(s) => FarmStatus::Exited(s),
            None => {
                let status = match wait_exit(&mut self.child, FARM_EXIT_TIMEOUT) {
                    Some(s) => FarmStatus::Exited(s),
                    None => {
                        let _ = self.child.kill();
                        FarmStatus::Killed
                    }
                };
                if let Ok(s) = self.child.wait() {
                    self.reaped = Some(s);
                }
                status
            }
        };
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
