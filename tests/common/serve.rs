//! A running `tcpdoctor serve` (`Served`) and plain HTTP/1.0 exchanges with it: start
//! it and wait for the address it prints, scrape `/metrics`, signal and stop it. Every
//! wait is bounded; an exporter still running when the test ends is killed by its pid.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::prom::Scrape;
use super::run::{kill_if_running, wait_exit};
use super::TCPDOCTOR;

/// How long the exporter may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the exporter may take to exit after SIGTERM or SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `tcpdoctor serve`; killed (by its pid) if the test did not stop it.
pub struct Served {
    child: Child,
    /// Where it listens (it was started with `--listen 127.0.0.1:0`).
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `cmd` (a `tcpdoctor ... serve --listen 127.0.0.1:0 ...` command) and waits
    /// for the address it prints.
    pub fn start(mut cmd: Command) -> Served {
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        if let Some(pipe) = child.stderr.take() {
            let log = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let (Some(t), Some(addr)) = (&tx, listening_addr(&line)) {
                        let _ = t.send(addr);
                        tx = None;
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                kill_if_running(&mut child);
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!("{shown}: no listening line within {START_TIMEOUT:?}; stderr: {err}");
            }
        };
        Served {
            child,
            addr,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends `signal` to the exporter.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain syscall on our own child's pid, not yet reaped (reaping takes
        // `&mut self`).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits (bounded) for it to exit. `None`: still running after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// SIGTERM, then a bounded wait. Returns the exit status (None: still running after
    /// STOP_TIMEOUT, then killed).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let status = self.wait(STOP_TIMEOUT);
        if status.is_none() {
            kill_if_running(&mut self.child);
        }
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_if_running(&mut self.child);
    }
}

/// `127.0.0.1:9469` from "tcpdoctor serve: listening on http://127.0.0.1:9469/metrics".
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// One HTTP/1.0 exchange (so the answer is never chunked): (status, headers, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read answer to {path}: {e}"));
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// `GET /metrics`: asserts a 200 in the Prometheus text format and returns the body.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// `tcpdoctor --proc-root ROOT --source proc serve --listen 127.0.0.1:0 EXTRA...`: the
/// exporter replaying a captured host (no root needed).
pub fn replay_command(root: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(TCPDOCTOR);
    cmd.arg("--proc-root")
        .arg(root)
        .args(["--source", "proc", "serve", "--listen", "127.0.0.1:0"])
        .args(extra);
    cmd
}

/// `tcpdoctor_collections_total` of a scrape body.
pub fn collections_total(body: &str) -> f64 {
    Scrape::parse(body).must("tcpdoctor_collections_total", &[])
}

/// Whether process `pid` has `path` open (a link in /proc/PID/fd points at it).
pub fn has_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
}

/// A number field of /proc/PID/status (`VmRSS` in kB, `Threads`); `None` once the
/// process is gone.
pub fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One GET on its own connection, every step within `timeout`: (status, body), or what
/// went wrong. For scrapes whose failure the test counts rather than panics on.
pub fn get_within(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&addr, left()).map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        s.set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read after {} bytes: {e}", raw.len())),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", &text[..text.len().min(200)]))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// How a connection that sent raw bytes ended.
#[derive(Debug)]
pub struct RawAnswer {
    /// What the server sent before closing.
    pub answer: Vec<u8>,
    /// The server closed the connection (end of file or reset) within the timeout.
    pub closed: bool,
}

impl RawAnswer {
    /// The status code of the answer, if one came.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.answer);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

/// Sends `request` (from a thread, so a server that answers before reading it all is
/// not deadlocked) and reads the answer until the server closes, within `timeout`.
pub fn raw_exchange(addr: SocketAddr, request: Vec<u8>, timeout: Duration) -> RawAnswer {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut w = s.try_clone().expect("clone the stream");
    w.set_write_timeout(Some(timeout)).expect("timeout");
    let writer = thread::spawn(move || {
        for chunk in request.chunks(64 * 1024) {
            if w.write_all(chunk).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut r = s;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break false;
        }
        r.set_read_timeout(Some(left)).expect("timeout");
        match r.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(e) => panic!("read from {addr}: {e}"),
        }
    };
    // The writer ends at its write timeout at the latest.
    let _ = r.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    RawAnswer { answer, closed }
}

/// Waits until the server closes `s` (end of file or reset; what it sends first is
/// discarded), at most until `deadline`. False: still open then.
pub fn closed_by_server(s: &mut TcpStream, deadline: std::time::Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// One HTTP/1.1 request on a kept-alive connection; reads exactly the answer (its
/// Content-Length) so the connection can carry the next one: (status, head, body).
pub fn keep_alive_get(s: &mut TcpStream, path: &str) -> (u16, String, Vec<u8>) {
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: tcpdoctor\r\n\r\n").expect("send request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read the answer");
        assert!(n > 0, "closed before the answer's head: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    while raw.len() < head_end + len {
        let n = s.read(&mut buf).expect("read the body");
        assert!(n > 0, "closed in the body");
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(raw.len(), head_end + len, "more than one answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head, raw[head_end..].to_vec())
}

/// The server's end of the connection `client`: the socket among process `pid`'s
/// descriptors whose peer is `client`'s local address, duplicated into this process
/// with pidfd_getfd(2) (Linux 5.6; the caller must be allowed to ptrace `pid`, as the
/// parent of its own child is). Lets a test read the server's socket options and
/// TCP_INFO counters without tracing it.
pub fn server_end_of(pid: u32, client: &TcpStream) -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, OwnedFd};
    let want = client.local_addr().expect("client address");
    // SAFETY: plain syscalls; every descriptor returned is owned and closed by OwnedFd.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open {pid}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor pidfd_open just returned.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's descriptors")
        .flatten()
    {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_getfd on a pidfd we own; the result is a new descriptor here.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: the descriptor pidfd_getfd just made for us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        // SAFETY: sockaddr_storage is plain data; getpeername fills at most `len` bytes.
        let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: as above.
        let rc = unsafe {
            libc::getpeername(
                fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if rc != 0 || sa.ss_family != libc::AF_INET as libc::sa_family_t {
            continue;
        }
        // SAFETY: an AF_INET address fills a sockaddr_in.
        let sin: libc::sockaddr_in =
            unsafe { std::ptr::read((&sa as *const libc::sockaddr_storage).cast()) };
        let peer = SocketAddr::from((
            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            u16::from_be(sin.sin_port),
        ));
        if peer == want {
            return fd;
        }
    }
    panic!("no socket of process {pid} is connected to {want}");
}

/// An integer socket option of `fd`.
pub fn sockopt_int(
    fd: &std::os::fd::OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
) -> libc::c_int {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    v
}

/// TCP_INFO of `fd`.
pub fn tcp_info(fd: &std::os::fd::OwnedFd) -> libc::tcp_info {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

/// A copy of the netns_mixed capture under `dir` whose net/tcp is 60 MB (its lines
/// repeated, which the parser passes on once), so that replaying it takes a second or
/// more: (the capture's root, its net/tcp as an absolute path, to find it among the
/// exporter's open files while a collection reads it).
pub fn slow_capture(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("proc");
    super::fixtures::copy_tree(
        &super::fixtures::repo_path(super::fixtures::NETNS_MIXED),
        &root,
    );
    let tcp = root.join("net/tcp");
    let text = std::fs::read_to_string(&tcp).expect("fixture net/tcp");
    let (header, body) = text.split_once('\n').expect("header line");
    let mut big = String::with_capacity(61 << 20);
    big.push_str(header);
    big.push('\n');
    while big.len() < 60 << 20 {
        big.push_str(body);
    }
    std::fs::write(&tcp, big).expect("write net/tcp");
    let tcp = tcp.canonicalize().expect("absolute path");
    (root, tcp)
}
