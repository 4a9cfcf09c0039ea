//! Churn mode, for `tcpdoctor trace`'s tests and benchmark: short connections at a
//! known rate, between a server process (`--churn-serve`) and a client process
//! (`--churn-connect`), so that each end has its own pid.
//!
//! - The server listens, prints `{"pid":..,"listen":"127.0.0.1:PORT"}`, then accepts
//!   until stdin reaches EOF (or `--hold-secs`). Per connection it echoes what it reads
//!   until the client's EOF, then closes (`--churn-closer client`), or reads the
//!   client's one-byte request and closes (`--churn-closer server`). With
//!   `--churn-close-delay-ms MS` (client closes first) it closes each connection MS
//!   after the client's EOF, on a closer thread: a slow closer, each end in CLOSE_WAIT
//!   that long. Its last line: `{"pid":..,"accepted":N,..}`.
//! - The client makes `--churn-count` connections, connection i starting at i /
//!   `--churn-rate` seconds (0: as fast as it can), and closes each at once
//!   (`--churn-closer client`), or sends a one-byte request and closes after the
//!   server's EOF (`--churn-closer server`). `--churn-linger0`: the closing side sets
//!   SO_LINGER {1,0}, so its close sends a reset. `--churn-hold`: keeps every
//!   connection open and, after its result line, waits for stdin EOF (to run out of
//!   local ports); with `--churn-closer server` it sends its request first, so the
//!   server closes and every held end stays in CLOSE_WAIT. `--churn-keepalive`: one connection, `--churn-count` one-byte
//!   request/replies at the rate, then holds. The client prints one result line: `{"pid":..,"connected":N,"failed":{..},..}`.
//!
//! Every loop is bounded: by the count, by `--hold-secs`, and by 5 s socket timeouts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::{Args, ChurnCloser};
use crate::sys::{fail, FarmError, Result};

/// Bounds every blocking socket call.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the server looks at stdin and its stop flag.
const POLL_STEP: Duration = Duration::from_millis(100);
/// listen() backlog of the server (the kernel caps it at net.core.somaxconn).
const BACKLOG: u32 = 4096;
/// Most connections one client run makes.
const MAX_COUNT: u64 = 10_000_000;
/// Longest --churn-close-delay-ms.
const MAX_CLOSE_DELAY_MS: u64 = 60_000;
/// Connections waiting for their delayed close at most; beyond, they close at once.
const MAX_DELAYED: usize = 100_000;
/// How often the closer thread looks for connections due.
const CLOSER_STEP: Duration = Duration::from_millis(2);

/// One churn run, from the flags.
#[derive(Debug, Clone)]
pub struct Churn {
    role: Role,
    closer: ChurnCloser,
    linger0: bool,
    threads: u32,
    hold: Duration,
    ignore_stdin: bool,
    /// Server: how long after the client's EOF each connection is closed.
    close_delay: Duration,
}

#[derive(Debug, Clone)]
enum Role {
    Serve(SocketAddr),
    Connect {
        to: SocketAddr,
        count: u64,
        /// Connections per second; 0: no pacing.
        rate: f64,
        hold: bool,
        keepalive: bool,
    },
}

impl Churn {
    /// `None` when no churn flag was given (a normal farm run).
    pub fn from_args(a: &Args) -> Result<Option<Churn>> {
        let role = match (a.churn_serve, a.churn_connect) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return fail("--churn-serve and --churn-connect: give one"),
            (Some(addr), None) => Role::Serve(addr),
            (None, Some(to)) => {
                if a.churn_count == 0 || a.churn_count > MAX_COUNT {
                    return fail(format!(
                        "--churn-count {} is out of range (1-{MAX_COUNT})",
                        a.churn_count
                    ));
                }
                if !(0.0..=1_000_000.0).contains(&a.churn_rate) {
                    return fail(format!(
                        "--churn-rate {} is out of range (0-1000000 per second)",
                        a.churn_rate
                    ));
                }
                Role::Connect {
                    to,
                    count: a.churn_count,
                    rate: a.churn_rate,
                    hold: a.churn_hold,
                    keepalive: a.churn_keepalive,
                }
            }
        };
        if !(1..=64).contains(&a.churn_threads) {
            return fail(format!(
                "--churn-threads {} is out of range (1-64)",
                a.churn_threads
            ));
        }
        if a.hold_secs > 3600 {
            return fail("--hold-secs is at most 3600");
        }
        if a.churn_close_delay_ms > MAX_CLOSE_DELAY_MS {
            return fail(format!(
                "--churn-close-delay-ms {} is out of range (0-{MAX_CLOSE_DELAY_MS})",
                a.churn_close_delay_ms
            ));
        }
        if a.churn_close_delay_ms > 0
            && (!matches!(role, Role::Serve(_)) || a.churn_closer != ChurnCloser::Client)
        {
            return fail(
                "--churn-close-delay-ms is for --churn-serve with --churn-closer client (the server closes after the client's EOF)",
            );
        }
        Ok(Some(Churn {
            role,
            closer: a.churn_closer,
            linger0: a.churn_linger0,
            threads: a.churn_threads,
            hold: Duration::from_secs(a.hold_secs),
            ignore_stdin: a.ignore_stdin,
            close_delay: Duration::from_millis(a.churn_close_delay_ms),
        }))
    }
}

pub fn run(c: Churn) -> Result<()> {
    match c.role.clone() {
        Role::Serve(addr) => serve(&c, addr),
        Role::Connect {
            to,
            count,
            rate,
            hold,
            keepalive,
        } => {
            if keepalive {
                keep_alive(&c, to, count, rate)
            } else {
                connect_many(&c, to, count, rate, hold)
            }
        }
    }
}

fn print_line(v: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|()| out.flush())
        .map_err(|e| FarmError(format!("write to stdout: {e}")))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SO_LINGER {1, 0}: close() then aborts the connection with a reset.
fn set_linger0(s: &TcpStream) -> Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: l is a live linger struct and the length matches it.
    let ret = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return fail(format!(
            "setsockopt(SO_LINGER): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// CPU time of this process so far (all threads), in µs: (user, system).
fn rusage_us() -> (u64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// Waits until stdin reaches EOF (unless ignored), `stop` is set, or `limit` passes.
fn wait_for_stdin_eof(c: &Churn, stop: &AtomicBool, limit: Instant) {
    let mut stdin_open = !c.ignore_stdin;
    while Instant::now() < limit && !stop.load(Ordering::Relaxed) {
        if !stdin_open {
            thread::sleep(POLL_STEP);
            continue;
        }
        let mut p = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, POLL_STEP.as_millis() as i32) };
        if n > 0 {
            let mut buf = [0u8; 64];
            match std::io::stdin().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(_) => {}
            }
            if !stdin_open {
                return;
            }
        }
    }
}

fn serve(c: &Churn, addr: SocketAddr) -> Result<()> {
    // A deep accept queue: with std's default (128) a busy machine drops SYNs, and each
    // drop costs the client a one-second retransmission.
    let fd = crate::sys::tcp_socket(&addr.ip())?;
    crate::sys::bind(&fd, &addr)?;
    crate::sys::listen(&fd, BACKLOG, &addr)?;
    let listener = TcpListener::from(fd);
    let bound = listener
        .local_addr()
        .map_err(|e| FarmError(format!("getsockname: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| FarmError(format!("O_NONBLOCK on the listener: {e}")))?;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pid = std::process::id();
    print_line(&serde_json::json!({"pid": pid, "listen": bound.to_string()}))?;

    let delayed = (!c.close_delay.is_zero()).then(|| DelayedClose::start(c.close_delay, &stop));
    let mut workers = Vec::new();
    for _ in 0..c.threads {
        let (listener, stop, accepted, errors) = (
            Arc::clone(&listener),
            Arc::clone(&stop),
            Arc::clone(&accepted),
            Arc::clone(&errors),
        );
        let (closer, linger0) = (c.closer, c.linger0);
        let delayed = delayed.as_ref().map(DelayedClose::handle);
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        if handle(s, closer, linger0, delayed.as_ref()).is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let mut p = libc::pollfd {
                            fd: listener.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut p, 1, POLL_STEP.as_millis() as i32) };
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }));
    }
    wait_for_stdin_eof(c, &stop, Instant::now() + c.hold);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    if let Some(d) = delayed {
        d.finish();
    }
    let (utime_us, stime_us) = rusage_us();
    print_line(&serde_json::json!({
        "pid": pid,
        "accepted": accepted.load(Ordering::Relaxed),
        "errors": errors.load(Ordering::Relaxed),
        "utime_us": utime_us,
        "stime_us": stime_us,
    }))
}

/// Connections waiting to be closed some time after their client's EOF.
type CloseQueue = Arc<Mutex<std::collections::VecDeque<(Instant, TcpStream)>>>;

/// The server's slow close (`--churn-close-delay-ms`): accept threads queue each
/// connection at its EOF; one thread closes each when its delay has passed.
struct DelayedClose {
    queue: CloseQueue,
    delay: Duration,
    thread: thread::JoinHandle<()>,
}

/// What an accept thread needs to queue a connection.
struct DelayedHandle {
    queue: CloseQueue,
    delay: Duration,
}

impl DelayedClose {
    fn start(delay: Duration, stop: &Arc<AtomicBool>) -> DelayedClose {
        let queue: CloseQueue = Arc::default();
        let (q, stop) = (Arc::clone(&queue), Arc::clone(stop));
        let thread = thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
                // Queued in order of their EOF, so due ones are at the front.
                while q.front().is_some_and(|(due, _)| *due <= now) {
                    q.pop_front();
                }
                drop(q);
                thread::sleep(CLOSER_STEP);
            }
        });
        DelayedClose {
            queue,
            delay,
            thread,
        }
    }

    fn handle(&self) -> DelayedHandle {
        DelayedHandle {
            queue: Arc::clone(&self.queue),
            delay: self.delay,
        }
    }

    /// Waits for the closer thread (the stop flag is set) and closes what is left.
    fn finish(self) {
        let _ = self.thread.join();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl DelayedHandle {
    fn close_later(&self, s: TcpStream) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() < MAX_DELAYED {
            q.push_back((Instant::now() + self.delay, s));
        }
    }
}

/// One accepted connection.
fn handle(
    mut s: TcpStream,
    closer: ChurnCloser,
    linger0: bool,
    delayed: Option<&DelayedHandle>,
) -> std::io::Result<()> {
    // Accepted sockets inherit O_NONBLOCK from nothing on Linux (accept4 without
    // SOCK_NONBLOCK), but be explicit: the reads below block, bounded.
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    if closer == ChurnCloser::Server {
        // The client's one-byte request first: its connect() has returned by then,
        // so a reset cannot overtake it.
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        if linger0 {
            set_linger0(&s).map_err(|e| std::io::Error::other(e.0))?;
        }
        return Ok(()); // dropped: this side closes first
    }
    // The client closes first: echo until its EOF, then close.
    let mut buf = [0u8; 512];
    for _ in 0..100_000 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            if let Some(d) = delayed {
                d.close_later(s);
            }
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
    Ok(())
}

/// errno names the tests look for; others by number.
fn errno_key(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(n) => format!("errno {n}"),
        None => format!("{:?}", e.kind()),
    }
}

fn connect_many(c: &Churn, to: SocketAddr, count: u64, rate: f64, hold: bool) -> Result<()> {
    let pid = std::process::id();
    let failed: Arc<Mutex<BTreeMap<String, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let connected = Arc::new(AtomicU64::new(0));
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let start_unix_ms = unix_ms();
    let threads = u64::from(c.threads);
    let mut workers = Vec::new();
    for t in 0..threads {
        let (failed, connected, held) = (
            Arc::clone(&failed),
            Arc::clone(&connected),
            Arc::clone(&held),
        );
        let (closer, linger0) = (c.closer, c.linger0);
        workers.push(thread::spawn(move || {
            let mut i = t;
            while i < count {
                if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                }
                i += threads;
                let s = match TcpStream::connect_timeout(&to, IO_TIMEOUT) {
                    Ok(s) => s,
                    Err(e) => {
                        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                        *f.entry(errno_key(&e)).or_insert(0) += 1;
                        continue;
                    }
                };
                connected.fetch_add(1, Ordering::Relaxed);
                if hold {
                    // The request makes the server close: this end is left in
                    // CLOSE_WAIT for as long as it is held.
                    if closer == ChurnCloser::Server {
                        let mut s = &s;
                        if let Err(e) = s.write_all(b"x") {
                            let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                            *f.entry(errno_key(&e)).or_insert(0) += 1;
                        }
                    }
                    held.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    continue;
                }
                let _ = close_one(s, closer, linger0);
            }
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed();
    let (utime_us, stime_us) = rusage_us();
    let failed = failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    print_line(&serde_json::json!({
        "pid": pid,
        "attempted": count,
        "connected": connected.load(Ordering::Relaxed),
        "failed": failed,
        "start_unix_ms": start_unix_ms,
        "elapsed_ms": elapsed.as_millis() as u64,
        "utime_us": utime_us,
        "stime_us": stime_us,
    }))?;
    if hold {
        let stop = AtomicBool::new(false);
        wait_for_stdin_eof(c, &stop, Instant::now() + c.hold);
    }
    Ok(())
}

/// Ends one client connection the way the run asks.
fn close_one(mut s: TcpStream, closer: ChurnCloser, linger0: bool) -> std::io::Result<()> {
    match closer {
        ChurnCloser::Client => {
            if linger0 {
                set_linger0(&s).map_err(|e| std::io::Error::other(e.0))?;
            }
            Ok(()) // dropped: this side closes first
        }
        ChurnCloser::Server => {
            // A one-byte request, then wait for the server's FIN (or reset) and close.
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.write_all(b"x")?;
            let mut buf = [0u8; 64];
            for _ in 0..1024 {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// One connection, `count` one-byte exchanges at `rate`, then held until stdin EOF.
fn keep_alive(c: &Churn, to: SocketAddr, count: u64, rate: f64) -> Result<()> {
    let pid = std::process::id();
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)
        .map_err(|e| FarmError(format!("connect to {to}: {e}")))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| FarmError(format!("socket timeouts: {e}")))?;
    let mut exchanged = 0u64;
    for i in 0..count {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        let mut b = [0u8; 1];
        s.write_all(b"x")
            .and_then(|()| s.read_exact(&mut b))
            .map_err(|e| FarmError(format!("request {i} to {to}: {e}")))?;
        exchanged += 1;
    }
    print_line(&serde_json::json!({
        "pid": pid,
        "connected": 1,
        "exchanged": exchanged,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    }))?;
    let stop = AtomicBool::new(false);
    wait_for_stdin_eof(c, &stop, Instant::now() + c.hold);
    drop(s);
    Ok(())
}
