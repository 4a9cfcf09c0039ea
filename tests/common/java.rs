//! A JVM that leaks connections the classic Apache HttpClient 4.x way, in a test's
//! network namespace (issue 13): `tests/fixtures/java/LeakyFetcher.java` against
//! `NotFoundServer.java`, both compiled by the test with Debian's `javac` and
//! `libhttpclient-java`. Each 404 leaves a pooled connection leased and unread; the
//! server closes it after 1 s idle, and the JVM's socket sits in CLOSE_WAIT. The JVM
//! runs with frame pointers kept (`-XX:+PreserveFramePointer`) and can write its perf
//! map on demand (`jcmd PID Compiler.perfmap`).
//!
//! Both JVMs are killed by their own pid when dropped (and exit by themselves when
//! their stdin closes or after 300 s); the perf map a test had written is removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::fixtures::{repo_path, TempDir};
use super::netns::Netns;
use super::run::{must_run, run_bounded, wait_for};
use super::tools::tool;

/// The jars `LeakyFetcher` needs (Debian's `libhttpclient-java` and its dependencies).
pub const HTTPCLIENT_JARS: [&str; 3] = [
    "/usr/share/java/httpclient.jar",
    "/usr/share/java/httpcore.jar",
    "/usr/share/java/commons-logging.jar",
];

/// The names of the pool threads that open the leaked connections, digits folded to
/// `*` the way a call-site group lists them: `Executors.newFixedThreadPool` names its
/// threads `pool-N-thread-M`, and HotSpot gives each Java thread its name as the
/// kernel's `comm` (15 bytes at most) when it starts.
pub const LEAKING_THREADS: &str = "pool-*-thread-*";

/// The leaking method, as a JDK perf map names it once compiled.
pub const LEAKING_METHOD: &str = "LeakyFetcher.fetch";

/// How long the server keeps an idle keep-alive connection, in ms.
const SERVER_IDLE_MS: &str = "1000";
/// Requests made (and answered 200, so nothing leaks) before leaking, so that the JIT
/// compiles `fetch` and a perf map names it.
const WARMUP_REQUESTS: &str = "3000";
/// How long a JVM may take to print the line it owes.
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

/// `javac`, or `None` (a SKIP line) outside CI when the JDK is missing.
pub fn javac() -> Option<&'static str> {
    let javac = tool(
        "javac",
        "-version",
        "Debian package default-jdk-headless",
        "the Java leak tests",
    )?;
    for jar in HTTPCLIENT_JARS {
        if !Path::new(jar).is_file() {
            assert!(
                !super::in_ci(),
                "{jar} is missing (Debian package libhttpclient-java; .ci/run installs it)"
            );
            eprintln!("SKIP: the Java leak tests: {jar} is missing (libhttpclient-java)");
            return None;
        }
    }
    Some(javac)
}

/// The fixture programs compiled into a scratch folder.
pub fn compile() -> Option<TempDir> {
    let javac = javac()?;
    let out = TempDir::new("java");
    let sources = repo_path("tests/fixtures/java");
    must_run(Command::new(javac).args([
        "-g",
        "-d",
        &out.path().to_string_lossy(),
        "-cp",
        &HTTPCLIENT_JARS.join(":"),
        &sources.join("LeakyFetcher.java").to_string_lossy(),
        &sources.join("NotFoundServer.java").to_string_lossy(),
    ]));
    Some(out)
}

/// A child JVM whose stdout lines arrive on a channel; killed by pid when dropped.
struct Jvm {
    proc: super::churn::Lines,
    what: &'static str,
}

impl Jvm {
    fn spawn(cmd: Command, what: &'static str) -> Jvm {
        Jvm {
            proc: super::churn::Lines::spawn(cmd, what),
            what,
        }
    }

    fn next_line(&mut self) -> String {
        self.proc
            .rx
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{}: no line within {LINE_TIMEOUT:?} ({e})", self.what))
    }
}

/// A running leaking JVM and its server, in one network namespace.
pub struct LeakingJvm {
    jvm: Jvm,
    _server: Jvm,
    _classes: TempDir,
    /// The JVM's pid (`ip netns exec` keeps it).
    pub pid: u32,
    /// Connections it leaked (each a 404 response left leased).
    pub leaked: u64,
    /// The server's port on 127.0.0.1 in the namespace.
    pub port: u16,
    /// [`LEAKING_THREADS`]: the threads that opened the leaked connections.
    pub threads: &'static str,
    perf_map: Option<PathBuf>,
}

/// Starts the server and the leaking JVM in `ns`: `threads` pool threads leak
/// `per_thread` connections each. Returns once the JVM has leaked them all (its result
/// line); the sockets reach CLOSE_WAIT about a second later ([`LeakingJvm::await_close_wait`]).
/// `None` (a SKIP line) outside CI when the JDK or HttpClient is missing.
pub fn start_leaking_jvm(ns: &Netns, threads: u32, per_thread: u32) -> Option<LeakingJvm> {
    let classes = compile()?;
    let dir = classes.path().to_string_lossy().into_owned();
    let mut server = Jvm::spawn(
        ns.command("java", &["-cp", &dir, "NotFoundServer", SERVER_IDLE_MS]),
        "NotFoundServer",
    );
    let line = server.next_line();
    let port: u16 = line
        .strip_prefix("port ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("NotFoundServer: not a port line: {line:?}"));
    let classpath = format!("{dir}:{}", HTTPCLIENT_JARS.join(":"));
    let base = format!("http://127.0.0.1:{port}");
    let (threads_arg, per_thread_arg) = (threads.to_string(), per_thread.to_string());
    let mut jvm = Jvm::spawn(
        ns.command(
            "java",
            &[
                // Compiled Java frames keep rbp as a frame pointer: a stack walk from the
                // kernel gets through them.
                "-XX:+PreserveFramePointer",
                // `fetch` stays a frame of its own, not inlined into its caller.
                "-XX:CompileCommand=quiet",
                "-XX:CompileCommand=dontinline,LeakyFetcher::fetch",
                "-cp",
                &classpath,
                "LeakyFetcher",
                &base,
                &threads_arg,
                &per_thread_arg,
                WARMUP_REQUESTS,
            ],
        ),
        "LeakyFetcher",
    );
    let line = jvm.next_line();
    let result: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("LeakyFetcher: not JSON ({e}): {line}"));
    let pid = jvm.proc.pid();
    assert_eq!(result["pid"], pid, "the JVM is the child itself: {result}");
    assert_eq!(result["failed"], 0, "{result}");
    let leaked = result["leaked"]
        .as_u64()
        .unwrap_or_else(|| panic!("LeakyFetcher: no leaked count: {result}"));
    Some(LeakingJvm {
        jvm,
        _server: server,
        _classes: classes,
        pid,
        leaked,
        port,
        threads: LEAKING_THREADS,
        perf_map: None,
    })
}

impl LeakingJvm {
    /// Waits (up to 30 s) until `ss` in `ns` shows at least `want` CLOSE_WAIT sockets
    /// owned by the JVM, and returns how many it shows then.
    pub fn await_close_wait(&self, ns: &Netns, want: u64) -> u64 {
        let mut last = 0;
        let seen = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
            last = self.close_wait_now(ns);
            (last >= want).then_some(last)
        });
        seen.unwrap_or(last)
    }

    /// CLOSE_WAIT sockets of the JVM, from `ss -tanp` in `ns`, to the server's port.
    pub fn close_wait_now(&self, ns: &Netns) -> u64 {
        ns.ss_rows_with_pids()
            .iter()
            .filter(|(row, pids)| {
                row.kernel_state() == Some("CLOSE_WAIT")
                    && pids.contains(&self.pid)
                    && row.peer.ends_with(&format!(":{}", self.port))
            })
            .count() as u64
    }

    /// The kernel names (`comm`) of the JVM's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim_end().to_string())
            .collect()
    }

    /// Has the JVM write its perf map now (`jcmd PID Compiler.perfmap`, JDK 17+) and
    /// returns its path (`/tmp/perf-PID.map`, removed when this is dropped).
    pub fn write_perf_map(&mut self) -> PathBuf {
        let jcmd = tool(
            "jcmd",
            "-h",
            "Debian package default-jdk-headless",
            "the perf map",
        )
        .unwrap_or_else(|| panic!("jcmd is missing (default-jdk-headless)"));
        let out = run_bounded(
            Command::new(jcmd).args([&self.pid.to_string(), "Compiler.perfmap"]),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("jcmd {} Compiler.perfmap: {e}", self.pid));
        assert!(
            out.status.success(),
            "jcmd {} Compiler.perfmap: {}{}",
            self.pid,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(format!("/tmp/perf-{}.map", self.pid));
        assert!(path.is_file(), "jcmd wrote no {}", path.display());
        self.perf_map = Some(path.clone());
        path
    }

    /// Whether the JVM is still running.
    pub fn running(&mut self) -> bool {
        self.jvm.proc.running()
    }
}

impl Drop for LeakingJvm {
    fn drop(&mut self) {
        if let Some(p) = self.perf_map.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
