//! `collect::symbolize` on live processes (issue 13, leak provenance): a C program built
//! here with frame pointers and DWARF, and a stripped copy of it; a perf map reached
//! through another mount and PID namespace; a JVM leaking connections through Apache
//! HttpClient, its perf map written by `jcmd`. The library is called directly (no
//! user-facing command). Children are killed by their own pid; every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::fixtures::TempDir;
use common::netns::Netns;
use common::run::{must_run, wait_for};
use common::tools::tool;
use common::{java, require_root};
use tcpdoctor::collect::symbolize::{read_perf_map, Symbolizer};
use tcpdoctor::model::provenance::FrameKind;

/// The C program: opens nothing, but has the shape of one that does. `open_leaky` calls
/// a helper that records its own return address, on a line of its own, followed by a
/// line of other code, so the call's line and the next one differ. It prints the
/// addresses of two functions, that return address and libc's `read`, then waits for
/// its stdin to close.
const PROGRAM: &str = r#"#include <stdio.h>
#include <unistd.h>

static void *seen;
static volatile int after;

__attribute__((noinline)) static void remember_caller(void)
{
    seen = __builtin_return_address(0);
}

__attribute__((noinline)) int open_leaky(int x) {
    remember_caller(); /* CALL LINE */
    after = x + 1; /* NEXT LINE */
    return after;
}

__attribute__((noinline)) int close_properly(int x) {
    return x * 2;
}

int main(void)
{
    ssize_t (*reader)(int, void *, size_t) = read;
    int r = open_leaky(1) + close_properly(2);
    printf("open_leaky %p\nclose_properly %p\nreturn %p\nread %p\nresult %d\n",
           (void *)open_leaky, (void *)close_properly, seen, (void *)reader, r);
    fflush(stdout);
    char buf[16];
    while (reader(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
"#;

/// The 1-based line of `PROGRAM` holding `marker`.
fn line_of(marker: &str) -> u32 {
    let i = PROGRAM
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker:?} is not in the program"));
    u32::try_from(i + 1).expect("a short program")
}

/// A running copy of the program and the addresses it printed.
struct Running {
    child: Child,
    _stdin: Option<ChildStdin>,
    open_leaky: u64,
    close_properly: u64,
    ret: u64,
    read: u64,
}

impl Running {
    fn start(binary: &Path) -> Running {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped stdout");
        // The program prints its five lines at once and then blocks on stdin; a read
        // here cannot hang past that, and the child is bounded by our dropping stdin.
        let mut lines = BufReader::new(out).lines();
        let mut addr = |name: &str| -> u64 {
            let line = lines
                .next()
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("no {name} line"));
            let hex = line
                .strip_prefix(name)
                .map(str::trim)
                .and_then(|v| v.strip_prefix("0x"))
                .unwrap_or_else(|| panic!("not a {name} line: {line:?}"));
            u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{line:?}: {e}"))
        };
        let (open_leaky, close_properly, ret, read) = (
            addr("open_leaky"),
            addr("close_properly"),
            addr("return"),
            addr("read"),
        );
        Running {
            child,
            _stdin: stdin,
            open_leaky,
            close_properly,
            ret,
            read,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The program built with `cc -O0 -g -fno-omit-frame-pointer`, and a stripped copy;
/// `None` (a SKIP line) outside CI without a C compiler or strip.
fn build(dir: &TempDir) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let cc = tool(
        "cc",
        "--version",
        "Debian package gcc",
        "the C symbolizer test",
    )?;
    let strip = tool(
        "strip",
        "--version",
        "Debian package binutils",
        "the C symbolizer test",
    )?;
    let source = dir.path().join("leaky.c");
    std::fs::write(&source, PROGRAM).expect("write leaky.c");
    let binary = dir.path().join("leaky");
    must_run(Command::new(cc).args([
        "-O0",
        "-g",
        "-fno-omit-frame-pointer",
        "-o",
        &binary.to_string_lossy(),
        &source.to_string_lossy(),
    ]));
    let stripped = dir.path().join("leaky-stripped");
    must_run(Command::new(strip).args([
        "-o",
        &stripped.to_string_lossy(),
        &binary.to_string_lossy(),
    ]));
    Some((binary, stripped))
}

#[test]
fn a_c_program_built_with_symbols_resolves_to_function_file_and_line() {
    let dir = TempDir::new("symbolize-c");
    let Some((binary, _)) = build(&dir) else {
        return;
    };
    let p = Running::start(&binary);
    let mut s = Symbolizer::new();

    // Function entries are instruction addresses, looked up as they are.
    let frames = s.symbolize_exact(p.pid(), &[p.open_leaky, p.close_properly]);
    let module = binary.to_string_lossy().into_owned();
    for (frame, name, opening) in [
        (&frames[0], "open_leaky", "int open_leaky(int x)"),
        (&frames[1], "close_properly", "int close_properly(int x)"),
    ] {
        assert_eq!(frame.kind, FrameKind::Native, "{frame:?}");
        assert_eq!(frame.symbol.as_deref(), Some(name), "{frame:?}");
        assert!(
            frame
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with("leaky.c")),
            "{frame:?}"
        );
        // A function's first instruction is on the line of its opening brace, here the
        // line of its name.
        assert_eq!(frame.line, Some(line_of(opening)), "{frame:?}");
        assert_eq!(frame.module.as_deref(), Some(module.as_str()), "{frame:?}");
    }
    assert_eq!(
        (frames[0].addr, frames[1].addr),
        (p.open_leaky, p.close_properly)
    );

    // A return address: as a stack's frame it names the line of the call, one byte
    // before; looked up as is it would name the line after.
    let frame = &s.symbolize(p.pid(), &[p.ret])[0];
    assert_eq!(frame.symbol.as_deref(), Some("open_leaky"), "{frame:?}");
    assert_eq!(frame.line, Some(line_of("CALL LINE")), "{frame:?}");
    assert_eq!(frame.addr, p.ret);
    let exact = &s.symbolize_exact(p.pid(), &[p.ret])[0];
    assert_eq!(exact.line, Some(line_of("NEXT LINE")), "{exact:?}");

    // A stack as the tracer would take it, innermost first: libc, then the program.
    let frames = s.symbolize(p.pid(), &[p.read + 1, p.ret]);
    assert_eq!(frames[0].kind, FrameKind::Native, "{frames:?}");
    assert!(
        frames[0]
            .module
            .as_deref()
            .is_some_and(|m| m.contains("libc.so")),
        "{frames:?}"
    );
    let site = Symbolizer::call_site(&frames).expect("a call site");
    assert_eq!(site.symbol.as_deref(), Some("open_leaky"));
    assert_eq!(Symbolizer::hint(p.pid(), &frames), None);
}

#[test]
fn a_stripped_copy_gives_unresolved_frames_and_the_stripped_hint() {
    let dir = TempDir::new("symbolize-strip");
    let Some((_, stripped)) = build(&dir) else {
        return;
    };
    let p = Running::start(&stripped);
    let mut s = Symbolizer::new();
    let frames = s.symbolize(p.pid(), &[p.read + 1, p.ret, p.open_leaky + 1]);
    let module = stripped.to_string_lossy().into_owned();
    for f in &frames[1..] {
        assert_eq!(f.kind, FrameKind::Unresolved, "{f:?}");
        assert_eq!(f.symbol, None, "{f:?}");
        assert_eq!(f.module.as_deref(), Some(module.as_str()), "{f:?}");
    }
    // libc keeps its own symbols: the stack is not unreadable, the program is.
    assert_eq!(frames[0].kind, FrameKind::Native, "{frames:?}");
    assert_eq!(Symbolizer::call_site(&frames), None, "{frames:?}");
    let hint = Symbolizer::hint(p.pid(), &frames).expect("a hint");
    assert!(
        hint.contains(&format!("{module} has no symbol table")),
        "{hint}"
    );
    assert!(hint.contains("-dbgsym"), "{hint}");
}

#[test]
#[ignore = "needs root"]
fn a_perf_map_in_another_mount_and_pid_namespace_is_found_by_its_namespace_pid() {
    require_root();
    let Some(unshare) = tool(
        "unshare",
        "--version",
        "Debian package util-linux",
        "the namespaced perf map",
    ) else {
        return;
    };
    // A shell that is pid 1 of a new PID namespace, with its own /tmp (a tmpfs in a
    // private mount namespace), writes its perf map there as /tmp/perf-1.map and waits.
    // The map names an address that nothing maps (below mmap_min_addr), as JIT code
    // whose mapping is gone would be: only the perf map can name it.
    let script = "mount -t tmpfs tcpdoctor-test /tmp && \
                  printf '0x1000 0x100 fake.Jit.method(int)\\n' > /tmp/perf-$$.map && \
                  echo ready && exec cat";
    let mut child = Command::new(unshare)
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn unshare");
    let stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let guard = KillOnDrop(child);
    assert_eq!(line.trim(), "ready");
    // unshare --fork: the shell (now cat) is unshare's only child.
    let inner: u32 = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let pid = guard.0.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    })
    .expect("the namespaced child");
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "{status}"
    );
    // Not on the host's /tmp under either name: only through /proc/PID/root.
    assert!(!Path::new(&format!("/tmp/perf-{inner}.map")).exists());

    let mut s = Symbolizer::new();
    let frames = s.symbolize(inner, &[0x1010]);
    assert_eq!(frames[0].kind, FrameKind::Jit, "{frames:?}");
    assert_eq!(
        frames[0].symbol.as_deref(),
        Some("fake.Jit.method(int)"),
        "{frames:?}"
    );
    assert_eq!(frames[0].module, None, "unmapped: {frames:?}");
    drop(stdin);
    drop(guard);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Pool threads and leaked connections of the Java leak tests.
const THREADS: u32 = 4;
const PER_THREAD: u32 = 5;

#[test]
#[ignore = "needs root"]
fn a_jvm_leaking_through_httpclient_holds_close_wait_and_its_perf_map_names_fetch() {
    require_root();
    let ns = Netns::new("javaleak");
    let Some(mut jvm) = java::start_leaking_jvm(&ns, THREADS, PER_THREAD) else {
        return;
    };
    let want = u64::from(THREADS * PER_THREAD);
    assert_eq!(jvm.leaked, want, "every request got its 404");

    // (i) The server closed every idle connection; the JVM never will.
    let seen = jvm.await_close_wait(&ns, want);
    assert_eq!(
        seen, want,
        "CLOSE_WAIT sockets of pid {} to port {}",
        jvm.pid, jvm.port
    );
    let names = jvm.thread_names();
    for t in 1..=THREADS {
        let name = format!("pool-1-thread-{t}");
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert_eq!(jvm.threads, "pool-*-thread-*");

    // (ii) The perf map names the compiled `fetch`, and the symbolizer finds it there
    // for any address inside it.
    let path = jvm.write_perf_map();
    let map = read_perf_map(&path).expect("the JVM's perf map");
    assert_eq!(map.skipped, 0, "a JDK map parses whole");
    let fetch = map
        .entries()
        .iter()
        .find(|e| e.name.contains(&format!("{}(", java::LEAKING_METHOD)))
        .unwrap_or_else(|| panic!("{} is compiled after the warm-up", java::LEAKING_METHOD))
        .clone();
    let interpreter = map
        .entries()
        .iter()
        .find(|e| e.name == "Interpreter")
        .expect("the interpreter's blob")
        .clone();
    let mut s = Symbolizer::new();
    let inside = [
        fetch.start + 1,
        fetch.start + fetch.size / 2,
        fetch.start + fetch.size,
    ];
    let frames = s.symbolize(jvm.pid, &inside);
    for f in &frames {
        assert_eq!(f.kind, FrameKind::Jit, "{f:?}");
        assert_eq!(f.symbol.as_deref(), Some(fetch.name.as_str()), "{f:?}");
        assert_eq!(f.module.as_deref(), Some("[anon]"), "JIT code: {f:?}");
    }
    // One past its end (as a return address: its last byte + 2) is not `fetch`.
    let after = &s.symbolize(jvm.pid, &[fetch.start + fetch.size + 1])[0];
    assert_ne!(
        after.symbol.as_deref(),
        Some(fetch.name.as_str()),
        "{after:?}"
    );

    // A stack of the interpreter over `fetch`: the call site is `fetch`, no hint; the
    // interpreter alone names nothing, and the hint says why.
    let stack = [interpreter.start + 16, fetch.start + 16];
    let frames = s.symbolize(jvm.pid, &stack);
    assert_eq!(
        frames[0].symbol.as_deref(),
        Some("Interpreter"),
        "{frames:?}"
    );
    let site = Symbolizer::call_site(&frames).expect("fetch is the call site");
    assert_eq!(site.symbol.as_deref(), Some(fetch.name.as_str()));
    assert_eq!(Symbolizer::hint(jvm.pid, &frames), None);
    let hint = Symbolizer::hint(jvm.pid, &frames[..1]).expect("a hint");
    assert!(hint.contains("interpreted"), "{hint}");
    assert!(
        hint.contains(&format!("jcmd {} Compiler.perfmap", jvm.pid)),
        "{hint}"
    );

    // The JDK's native code (here the JNI side of a socket's connect) resolves from its
    // ELF symbols, and the call site passes over it to `fetch`.
    let (nio, connect0) = jdk_native_function(jvm.pid, "libnio.so", "Java_sun_nio_ch_Net_connect0");
    let frames = s.symbolize(jvm.pid, &[connect0 + 4, fetch.start + 16]);
    assert_eq!(frames[0].kind, FrameKind::Native, "{frames:?}");
    assert_eq!(
        frames[0].symbol.as_deref(),
        Some("Java_sun_nio_ch_Net_connect0"),
        "{frames:?}"
    );
    assert_eq!(frames[0].module.as_deref(), Some(nio.as_str()));
    let site = Symbolizer::call_site(&frames).expect("fetch is the call site");
    assert_eq!(site.symbol.as_deref(), Some(fetch.name.as_str()));
    assert!(jvm.running());
}

/// The path of the JDK library `lib` as the JVM `pid` mapped it, and the address of its
/// exported `function` there (its first mapping, at file offset 0, is where the ELF's
/// address 0 lies; `nm -D` gives the function's address in the ELF).
fn jdk_native_function(pid: u32, lib: &str, function: &str) -> (String, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let (base, path) = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = *f.get(5)?;
            (path.ends_with(&format!("/{lib}")) && f.get(2) == Some(&"00000000")).then(|| {
                let start = f[0].split('-').next().unwrap_or("");
                (
                    u64::from_str_radix(start, 16).expect("hex"),
                    path.to_string(),
                )
            })
        })
        .unwrap_or_else(|| panic!("{lib} is not mapped in pid {pid}"));
    let nm = tool(
        "nm",
        "--version",
        "Debian package binutils",
        "JDK native symbols",
    )
    .unwrap_or_else(|| panic!("nm is missing (binutils)"));
    let out = must_run(Command::new(nm).args(["-D", "--defined-only", &path]));
    let value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&function)).then(|| u64::from_str_radix(f[0], 16).ok())?
        })
        .unwrap_or_else(|| panic!("{function} is not exported by {path}"));
    (path, base + value)
}

/// `trace --leaks` groups the JVM's leaked sockets by call site (the leaking method,
/// from the perf map) and by thread name (`pool-*-thread-*`).
#[test]
#[ignore = "needs root"]
fn trace_leaks_groups_the_jvm_leak_by_pool_threads_and_fetch() {
    require_root();
    let ns = Netns::new("javatrace");
    let mut trace = Command::new(common::TCPDOCTOR);
    trace.args([
        "trace",
        "--leaks",
        "--json",
        "--interval",
        "0.25",
        "--leak-age",
        "1",
        "--leak-every",
        "1",
        "--netns",
        ns.name(),
    ]);
    let trace = common::churn::Lines::spawn(trace, "tcpdoctor trace --leaks");
    let first = trace.next_json();
    assert_eq!(first["record"], "interval", "attached: {first}");

    let Some(mut jvm) = java::start_leaking_jvm(&ns, THREADS, PER_THREAD) else {
        return;
    };
    let want = u64::from(THREADS * PER_THREAD);
    assert_eq!(jvm.await_close_wait(&ns, want), want);
    jvm.write_perf_map();
    // Past --leak-age, and a look after the perf map was written; then the last look
    // at SIGTERM.
    std::thread::sleep(Duration::from_millis(2500));
    let lines = trace.terminate();
    let leaks = lines
        .iter()
        .rev()
        .find(|l| l["record"] == "leaks")
        .unwrap_or_else(|| panic!("no leaks record in {lines:#?}"));
    let p = leaks["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == jvm.pid)
        .unwrap_or_else(|| panic!("pid {} among the leakers: {leaks:#}", jvm.pid));
    let ours = p["groups"].as_array().expect("groups");
    assert!(!ours.is_empty(), "a group of pid {}: {p:#}", jvm.pid);
    let total: u64 = ours.iter().filter_map(|g| g["count"].as_u64()).sum();
    // At least 95% of the leaked sockets are attributed (issue 13).
    assert!(total * 100 >= want * 95, "{total} of {want}: {p:#}");
    for g in ours {
        assert_eq!(g["via"], "connect", "{g:#}");
        assert_eq!(g["of"], want, "{g:#}");
        assert_eq!(g["threads"][0], jvm.threads, "{g:#}");
        assert!(
            g["first_unix_ms"].as_u64() <= g["last_unix_ms"].as_u64(),
            "{g:#}"
        );
    }
    // With the perf map written and `fetch` compiled before it leaked, the call site is
    // the program's method (else the group says what to enable).
    let biggest = ours
        .iter()
        .max_by_key(|g| g["count"].as_u64())
        .expect("a group");
    let site = biggest["call_site"]["symbol"].as_str().unwrap_or("");
    assert!(
        site.contains(java::LEAKING_METHOD),
        "call site {site:?}, hint {}: {biggest:#}",
        biggest["hint"]
    );
    assert!(biggest["frames"].as_array().is_some_and(|f| f.len() > 2));
}
