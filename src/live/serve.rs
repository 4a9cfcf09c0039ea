//! `tcpdoctor serve`: a Prometheus endpoint. Serves `/metrics` (rendered by
//! [`crate::render::metrics`]), a small index on `/` and 404 elsewhere, until SIGTERM or
//! SIGINT. This is the daemon loop: it owns the listening socket, the connections, the
//! collecting thread and the signals, and logs to stderr; it never decides what a metric
//! means.
//!
//! Scrapes share collections ([`SharedCollection`]): at most one collection runs at a
//! time, a scrape that arrives during one waits for it and serves its result, and a
//! result younger than `--cache` is served as is. Slow or many scrapes therefore never
//! pile up work on the host.
//!
//! The sampler keeps the connection tracer attached (when it can run), and the server
//! keeps the connection counters across collections ([`FlowCounters`]): each collection
//! adds what the tracer counted since the previous one.
//!
//! Nothing a client does can starve it (issue 16). One thread multiplexes every
//! connection with poll(2) over non-blocking sockets, and one more thread collects, so
//! the number of threads never depends on the clients. Every resource a client can make
//! it hold is bounded:
//! - a request head: [`http::MAX_HEAD_BYTES`] and [`http::MAX_HEADER_LINES`], refused
//!   with 431, 414, 400 or 505 ([`super::http`]); bodies are never read;
//! - time: a head must be complete within [`HEAD_TIMEOUT`] of the connection being
//!   accepted or of its first byte, an idle keep-alive connection closes after
//!   [`IDLE_TIMEOUT`], an answer that makes no progress for [`WRITE_TIMEOUT`] is
//!   dropped;
//! - connections: at most [`MAX_CONNECTIONS`] (fewer under a low open-files limit);
//!   when full, the connection that has waited longest for its request is dropped to
//!   admit the new one, so a flood of slow clients cannot lock a scrape out;
//! - descriptors: "too many open files" on accept drops the oldest connection (or pauses
//!   accepting briefly) and never closes the listening socket; an error that means the
//!   listening socket itself is broken ends the process with an error, so the
//!   supervisor restarts it.
//!
//! Answers leave in one write (headers and body together) on sockets with TCP_NODELAY,
//! so a scrape on a kept-alive connection never waits for the scraper's delayed ACK.
//! SIGHUP reads the thresholds again (`--config`, `--threshold`) and drops the cached
//! result; a file that no longer parses is logged and the previous thresholds kept.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::http::{self, Method, Parse, Persist};
use crate::analyze::{self, Thresholds};
use crate::cmd::check::Sampler;
use crate::render::metrics::{self, CollectionStats, Exposition, FlowCounters};
use crate::settings::{Common, ServeSettings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The most connections served at once. Far more than any set of scrapers needs, far
/// fewer than the descriptors and memory a host can spare (each holds at most a request
/// head, 8 KiB).
const MAX_CONNECTIONS: usize = 512;
/// Descriptors kept free for the collection (netlink sockets, /proc files, the tracer's
/// BPF objects) when the open-files limit caps the connections.
const RESERVED_FDS: u64 = 48;
/// The fewest connections allowed, however low the open-files limit.
const MIN_CONNECTIONS: usize = 8;
/// How long a request head may take: from the accept, or from its first byte on a
/// kept-alive connection. Prometheus sends its head in one segment.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a kept-alive connection may sit without starting a new request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may make no progress (the client not reading) before it is
/// dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After an answer that closes the connection, how long what the client still sends is
/// read and discarded (so the close does not reset the answer away), and how much.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const DRAIN_MAX: usize = 1 << 20;
/// How long accepting pauses when the process is out of descriptors and no connection
/// can be dropped to free one.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Connections accepted per turn of the loop, so a flood of connects cannot keep it
/// from answering the connections it has.
const ACCEPTS_PER_TURN: usize = 64;
/// The accept queue asked for (the kernel caps it at net.core.somaxconn, 4096 by
/// default).
const LISTEN_BACKLOG: libc::c_int = 1024;
/// The longest the loop sleeps; it also wakes on every signal and finished collection.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long shutdown waits for requests in progress (a collection at a million sockets
/// takes about a second) before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the summary of dropped, timed-out and refused connections is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

const INDEX_HTML: &str = "<!DOCTYPE html>\n<html><head><title>tcpdoctor</title></head><body>\n<h1>tcpdoctor</h1>\n<p>TCP connection-state metrics: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";
const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

pub fn run(common: &Common, s: &ServeSettings) -> Result<(), BoxError> {
    let listener = TcpListener::bind(s.listen)
        .map_err(|e| format!("cannot listen on '{}' (--listen): {e}", s.listen))?;
    listener.set_nonblocking(true)?;
    // std listens with a backlog of 128; a burst of connects beyond it (a flood, or
    // the loop descheduled on a busy host) would have the kernel drop SYNs, and a scrape
    // among them waits a second for its retransmission. listen(2) again only raises
    // the queue (capped by net.core.somaxconn).
    // SAFETY: listen on a socket we own.
    unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    let shown = listener
        .local_addr()
        .map_or_else(|_| s.listen.to_string(), |a| a.to_string());

    // Signals set flags and write a byte to the loop's wake-up socket, so the loop
    // notices them at once. SIGTERM/SIGINT: finish the requests in flight (bounded by
    // SHUTDOWN_GRACE) and exit 0; repeated signals change nothing (timeout(1) sends
    // two). SIGHUP: read the thresholds again.
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    // Never closed: a signal handler may write to it until the process ends.
    let signal_fd = wake_tx.try_clone()?.into_raw_fd();
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag))?;
        signal_hook::low_level::pipe::register_raw(sig, signal_fd)?;
    }

    if !s.listen.ip().is_loopback() {
        eprintln!(
            "tcpdoctor serve: warning: listening on {shown}, not loopback: anyone who can reach it sees the names and pids of this host's processes"
        );
    }
    let (cap, nofile) = connection_cap();
    eprintln!(
        "tcpdoctor serve: at most {cap} connections at once (open-files limit {})",
        nofile.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
    );
    eprintln!("tcpdoctor serve: listening on http://{shown}/metrics");

    let exporter = Arc::new(Exporter::new(common.clone(), s));
    let collector = spawn_collector(Arc::clone(&exporter), wake_tx)?;
    let mut server = Server {
        listener: Some(listener),
        conns: Vec::new(),
        cap,
        accept_paused_until: None,
        collector,
        collecting: false,
        tally: Tally::default(),
    };
    let mut shutdown_by: Option<Instant> = None;
    loop {
        if hup.swap(false, Ordering::SeqCst) {
            exporter.reload();
        }
        if stop.load(Ordering::SeqCst) && shutdown_by.is_none() {
            eprintln!("tcpdoctor serve: shutting down");
            shutdown_by = Some(Instant::now() + SHUTDOWN_GRACE);
            server.listener = None;
        }
        if let Some(by) = shutdown_by {
            server.close_idle();
            if !server.busy() {
                break;
            }
            if Instant::now() >= by {
                eprintln!("tcpdoctor serve: requests still in progress after {SHUTDOWN_GRACE:?}; exiting anyway");
                break;
            }
        }
        server.turn(&wake_rx, shutdown_by)?;
    }
    server.tally.log(cap, true);
    Ok(())
}

/// The connection cap under this process's open-files limit, and that limit (`None`:
/// unlimited).
fn connection_cap() -> (usize, Option<u64>) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0
        && rl.rlim_cur != libc::RLIM_INFINITY
    {
        Some(rl.rlim_cur)
    } else {
        None
    };
    let room = soft.map_or(u64::MAX, |n| n.saturating_sub(RESERVED_FDS));
    let cap = usize::try_from(room)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
    (cap, soft)
}

/// The collecting thread: it takes a request, gets the shared collection (cached or
/// new), hands it back and wakes the loop.
struct CollectorHandle {
    want: mpsc::Sender<()>,
    got: mpsc::Receiver<Option<Arc<String>>>,
}

fn spawn_collector(exporter: Arc<Exporter>, wake: UnixStream) -> Result<CollectorHandle, BoxError> {
    let (want, want_rx) = mpsc::channel::<()>();
    let (got_tx, got) = mpsc::channel();
    std::thread::Builder::new()
        .name("serve-collect".into())
        .spawn(move || {
            for () in want_rx {
                // `collect` catches its own panics; this is for anything around it.
                let body = catch_unwind(AssertUnwindSafe(|| {
                    exporter.shared.get(exporter.cache, || exporter.collect())
                }))
                .ok();
                if got_tx.send(body).is_err() {
                    return;
                }
                let _ = (&wake).write(&[1]);
                // After the answer is on its way: the trim does not delay the scrape.
                super::release_free_memory();
            }
        })?;
    Ok(CollectorHandle { want, got })
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// When it became ready for its current request: accepted, or its last answer sent.
    /// At the cap, the oldest goes first.
    since: Instant,
    /// When it is dropped unless something happens (depends on the state).
    deadline: Instant,
    /// The request head read so far (at most MAX_HEAD_BYTES plus one read).
    input: Vec<u8>,
    /// The client shut its side down: answer what was read, then close.
    eof: bool,
    state: State,
}

enum State {
    /// Waiting for (the rest of) a request head.
    Reading,
    /// A `/metrics` request waiting for the collection.
    Collecting { head_only: bool, persist: Persist },
    /// Writing an answer.
    Writing(Outgoing),
    /// Answer sent and our side shut: discarding what the client still sends.
    Draining { discarded: usize },
    /// To be dropped.
    Closed,
}

struct Outgoing {
    head: Vec<u8>,
    body: Body,
    sent: usize,
    close: bool,
}

enum Body {
    Empty,
    Static(&'static str),
    Owned(String),
    Shared(Arc<String>),
}

impl Body {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Empty => b"",
            Body::Static(s) => s.as_bytes(),
            Body::Owned(s) => s.as_bytes(),
            Body::Shared(s) => s.as_bytes(),
        }
    }
}

impl Conn {
    fn evictable(&self) -> bool {
        !matches!(self.state, State::Collecting { .. } | State::Closed)
    }

    /// Starts an answer and writes what the socket takes now.
    fn answer(
        &mut self,
        status: u16,
        content_type: &str,
        body: Body,
        head_only: bool,
        persist: Persist,
        allow: Option<&str>,
    ) {
        let persist = if self.eof { Persist::Close } else { persist };
        let head = http::response_head(status, content_type, body.bytes().len(), persist, allow);
        self.state = State::Writing(Outgoing {
            head,
            body: if head_only { Body::Empty } else { body },
            sent: 0,
            close: persist == Persist::Close,
        });
        self.deadline = Instant::now() + WRITE_TIMEOUT;
        self.write_some();
    }

    /// Refuses what was read with `status` and closes after the answer.
    fn refuse(&mut self, status: u16, reason: &str) {
        self.input.clear();
        self.answer(
            status,
            TEXT,
            Body::Owned(format!("{reason}\n")),
            false,
            Persist::Close,
            None,
        );
    }

    /// Writes as much of the answer as the socket takes, headers and body in one
    /// writev(2); when it is all out, keeps the connection for the next request or
    /// closes it.
    fn write_some(&mut self) {
        let State::Writing(out) = &mut self.state else {
            return;
        };
        let finished = loop {
            let (head, body) = (&out.head, out.body.bytes());
            let total = head.len() + body.len();
            if out.sent >= total {
                break true;
            }
            let (h, b) = if out.sent < head.len() {
                (&head[out.sent..], body)
            } else {
                (&[][..], &body[out.sent - head.len()..])
            };
            match self
                .stream
                .write_vectored(&[IoSlice::new(h), IoSlice::new(b)])
            {
                Ok(0) => break false,
                Ok(n) => {
                    out.sent += n;
                    self.deadline = Instant::now() + WRITE_TIMEOUT;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client hung up before the answer: its own problem.
                Err(_) => break false,
            }
        };
        let close = out.close;
        if !finished || self.eof {
            self.state = State::Closed;
        } else if close {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.state = State::Draining { discarded: 0 };
            self.deadline = Instant::now() + DRAIN_TIMEOUT;
        } else {
            self.state = State::Reading;
            self.since = Instant::now();
            self.deadline = self.since + IDLE_TIMEOUT;
        }
    }

    /// Reads what the client sent: request bytes while reading a head (bounded), or
    /// bytes to discard while draining.
    fn read_some(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let reading = matches!(self.state, State::Reading);
            if reading && (self.eof || self.input.len() > http::MAX_HEAD_BYTES) {
                return;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    if !reading {
                        self.state = State::Closed;
                    }
                    return;
                }
                Ok(n) => match &mut self.state {
                    State::Reading => {
                        if self.input.is_empty() {
                            // A request starts: its head has HEAD_TIMEOUT, and an idle
                            // connection's deadline never moves later.
                            self.deadline = self.deadline.min(Instant::now() + HEAD_TIMEOUT);
                        }
                        self.input.extend_from_slice(&buf[..n]);
                    }
                    State::Draining { discarded } => {
                        *discarded += n;
                        if *discarded > DRAIN_MAX {
                            self.state = State::Closed;
                            return;
                        }
                    }
                    _ => return,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.state = State::Closed;
                    return;
                }
            }
        }
    }
}

/// Counts of what the server did to misbehaving connections, logged at most every
/// LOG_EVERY so a flood cannot flood the journal.
#[derive(Default)]
struct Tally {
    dropped_at_cap: u64,
    timed_out: u64,
    refused: u64,
    out_of_descriptors: u64,
    last_log: Option<Instant>,
}

impl Tally {
    fn log(&mut self, cap: usize, now_anyway: bool) {
        let due = self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        let any = self.dropped_at_cap + self.timed_out + self.refused + self.out_of_descriptors;
        if any == 0 || !(due || now_anyway) {
            return;
        }
        let mut parts = Vec::new();
        if self.dropped_at_cap > 0 {
            parts.push(format!(
                "{} dropped to admit new ones (at most {cap} at once)",
                crate::model::units::count(self.dropped_at_cap, "connection", "connections")
            ));
        }
        if self.timed_out > 0 {
            parts.push(format!(
                "{} timed out (unfinished request, idle or not reading)",
                crate::model::units::count(self.timed_out, "connection", "connections")
            ));
        }
        if self.refused > 0 {
            parts.push(format!(
                "{} refused (malformed, too large or not HTTP/1.x)",
                crate::model::units::count(self.refused, "request", "requests")
            ));
        }
        if self.out_of_descriptors > 0 {
            parts.push(format!(
                "accepting failed {} for lack of descriptors (the open-files limit); it goes on",
                crate::model::units::count(self.out_of_descriptors, "time", "times")
            ));
        }
        eprintln!("tcpdoctor serve: {}", parts.join("; "));
        *self = Tally {
            last_log: Some(Instant::now()),
            ..Tally::default()
        };
    }
}

struct Server {
    /// `None` once shutting down.
    listener: Option<TcpListener>,
    conns: Vec<Conn>,
    cap: usize,
    accept_paused_until: Option<Instant>,
    collector: CollectorHandle,
    /// A collection was asked for and its result has not come back.
    collecting: bool,
    tally: Tally,
}

impl Server {
    /// Whether answers are still owed (a collection awaited or an answer being written).
    fn busy(&self) -> bool {
        self.conns
            .iter()
            .any(|c| matches!(c.state, State::Collecting { .. } | State::Writing(_)))
    }

    /// Shutting down: drops the connections that owe nothing.
    fn close_idle(&mut self) {
        self.conns
            .retain(|c| matches!(c.state, State::Collecting { .. } | State::Writing(_)));
    }

    /// One turn of the loop: sleep in poll(2) until something happens or a deadline
    /// passes, then serve what is ready, expire what is late, accept what waits.
    fn turn(&mut self, wake: &UnixStream, shutdown_by: Option<Instant>) -> Result<(), BoxError> {
        let now = Instant::now();
        let accepting =
            self.listener.is_some() && self.accept_paused_until.is_none_or(|t| now >= t);
        let mut fds = Vec::with_capacity(self.conns.len() + 2);
        fds.push(pollfd(wake.as_raw_fd(), libc::POLLIN));
        fds.push(match (&self.listener, accepting) {
            (Some(l), true) => pollfd(l.as_raw_fd(), libc::POLLIN),
            _ => pollfd(-1, 0),
        });
        for c in &self.conns {
            let events = match c.state {
                State::Reading if !c.eof => libc::POLLIN,
                State::Draining { .. } => libc::POLLIN,
                State::Writing(_) => libc::POLLOUT,
                _ => 0,
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let mut wake_at = now + MAX_SLEEP;
        for c in &self.conns {
            if !matches!(c.state, State::Collecting { .. }) {
                wake_at = wake_at.min(c.deadline);
            }
        }
        if let Some(t) = self.accept_paused_until {
            wake_at = wake_at.min(t);
        }
        if let Some(t) = shutdown_by {
            wake_at = wake_at.min(t);
        }
        let sleep = wake_at.saturating_duration_since(now);
        // Round up, so a deadline is past when poll returns.
        let ms = sleep.as_millis() + u128::from(!sleep.subsec_nanos().is_multiple_of(1_000_000));
        let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of fds.len() pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(format!("poll(2) failed: {e}").into());
        }

        if fds[0].revents != 0 {
            let mut sink = [0u8; 64];
            while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        self.take_collection();

        for (c, fd) in self.conns.iter_mut().zip(&fds[2..]) {
            let r = fd.revents;
            if r == 0 {
                continue;
            }
            let broken = r & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
            match c.state {
                State::Reading | State::Draining { .. } => c.read_some(),
                State::Writing(_) => c.write_some(),
                State::Collecting { .. } if broken => c.state = State::Closed,
                _ => {}
            }
            if matches!(c.state, State::Reading) {
                self.collecting |=
                    serve_input(c, &self.collector, self.collecting, &mut self.tally);
            }
        }
        self.expire();
        self.conns.retain(|c| !matches!(c.state, State::Closed));
        if accepting {
            self.accept()?;
        }
        self.tally.log(self.cap, false);
        Ok(())
    }

    /// Answers the scrapes waiting for a collection that has come back.
    fn take_collection(&mut self) {
        while let Ok(body) = self.collector.got.try_recv() {
            self.collecting = false;
            for c in &mut self.conns {
                let State::Collecting { head_only, persist } = c.state else {
                    continue;
                };
                match &body {
                    Some(b) => c.answer(
                        200,
                        metrics::CONTENT_TYPE,
                        Body::Shared(Arc::clone(b)),
                        head_only,
                        persist,
                        None,
                    ),
                    None => c.answer(
                        500,
                        TEXT,
                        Body::Static("collection failed; see the exporter's log\n"),
                        head_only,
                        persist,
                        None,
                    ),
                }
                if matches!(c.state, State::Reading) {
                    self.collecting |=
                        serve_input(c, &self.collector, self.collecting, &mut self.tally);
                }
            }
        }
    }

    /// Drops the connections past their deadline; an unfinished request is told 408.
    fn expire(&mut self) {
        let now = Instant::now();
        for c in &mut self.conns {
            if now < c.deadline || matches!(c.state, State::Collecting { .. } | State::Closed) {
                continue;
            }
            if matches!(c.state, State::Reading) && !c.input.is_empty() {
                // Best effort, one non-blocking write; the connection closes either way.
                let head = http::response_head(408, TEXT, 0, Persist::Close, None);
                let _ = c.stream.write(&head);
            }
            if !matches!(c.state, State::Draining { .. }) {
                self.tally.timed_out += 1;
            }
            c.state = State::Closed;
        }
    }

    /// Accepts the connections waiting, within the cap. Out of descriptors: drop the
    /// oldest connection to free one, or pause accepting briefly; the listening socket
    /// stays. Any other error means the listening socket is broken: the process ends
    /// with an error so that its supervisor starts it again.
    fn accept(&mut self) -> Result<(), BoxError> {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else {
                return Ok(());
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    // Answers are written whole in one call; nothing to gain from
                    // Nagle's algorithm, and a kept-alive scrape would wait for the
                    // peer's delayed ACK.
                    let _ = stream.set_nodelay(true);
                    if self.conns.len() >= self.cap && !self.evict_oldest() {
                        // Every connection is waiting for the collection: refuse this one.
                        continue;
                    }
                    let now = Instant::now();
                    self.conns.push(Conn {
                        stream,
                        since: now,
                        deadline: now + HEAD_TIMEOUT,
                        input: Vec::new(),
                        eof: false,
                        state: State::Reading,
                    });
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => {}
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        self.tally.out_of_descriptors += 1;
                        if !self.evict_oldest() {
                            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                            return Ok(());
                        }
                    }
                    _ => {
                        return Err(format!(
                            "the listening socket failed ({e}); exiting so that the service manager restarts tcpdoctor serve"
                        )
                        .into())
                    }
                },
            }
        }
        Ok(())
    }

    /// Drops the connection that has waited longest for its request (or is slowest to
    /// take its answer); never one waiting for the collection. False if none could go.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.evictable())
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.conns.swap_remove(i);
                self.tally.dropped_at_cap += 1;
                true
            }
            None => false,
        }
    }
}

fn pollfd(fd: libc::c_int, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Serves the request heads a reading connection holds, one at a time: answers the
/// cheap ones at once, parks `/metrics` until the collection (asking for one unless one
/// is under way: returns true when it asked). Refuses a head that breaks the limits.
fn serve_input(
    c: &mut Conn,
    collector: &CollectorHandle,
    collecting: bool,
    tally: &mut Tally,
) -> bool {
    let mut asked = false;
    while matches!(c.state, State::Reading) {
        let (req, used) = match http::parse(&c.input) {
            Parse::Incomplete => {
                if c.eof {
                    c.state = State::Closed;
                }
                break;
            }
            Parse::Refused(r) => {
                tally.refused += 1;
                c.refuse(r.status, r.reason);
                return asked;
            }
            Parse::Done(req, used) => (req, used),
        };
        c.input.drain(..used);
        let persist = if req.close {
            Persist::Close
        } else if req.keep_alive_10 {
            Persist::KeepAlive10
        } else {
            Persist::KeepAlive11
        };
        let head_only = req.method == Method::Head;
        match (req.method, req.path.as_str()) {
            (Method::Other, _) => c.answer(
                405,
                TEXT,
                Body::Static("only GET and HEAD\n"),
                false,
                persist,
                Some("GET, HEAD"),
            ),
            (_, "/metrics") => {
                c.state = State::Collecting { head_only, persist };
                if !collecting && !asked {
                    // The thread only ends with the process.
                    let _ = collector.want.send(());
                    asked = true;
                }
            }
            (_, "/") => c.answer(
                200,
                HTML,
                Body::Static(INDEX_HTML),
                head_only,
                persist,
                None,
            ),
            _ => c.answer(
                404,
                TEXT,
                Body::Static("not found: try /metrics\n"),
                head_only,
                persist,
                None,
            ),
        }
    }
    asked
}

/// The collection every scrape shares, plus what renders it.
struct Exporter {
    common: Common,
    top: usize,
    cache: Duration,
    /// Read again on SIGHUP.
    thresholds: Mutex<Thresholds>,
    config: Option<PathBuf>,
    threshold_overrides: Vec<String>,
    shared: SharedCollection<String>,
    /// Only the thread running a collection locks this (one at a time by construction).
    collector: Mutex<Collector>,
}

struct Collector {
    sampler: Sampler,
    collections: u64,
    failures: u64,
    /// Connection counters since the exporter started (the sampler keeps the tracer
    /// attached and hands over each collection's flows).
    flows: FlowCounters,
}

/// The sampler `serve` collects with: sockets per process, and the connection tracer
/// kept attached (when it can run).
fn sampler() -> Sampler {
    Sampler::new().with_sockets_by_process().with_tracing()
}

impl Exporter {
    fn new(common: Common, s: &ServeSettings) -> Exporter {
        Exporter {
            common,
            top: s.top.max(1),
            cache: s.cache,
            thresholds: Mutex::new(s.thresholds.clone()),
            config: s.config.clone(),
            threshold_overrides: s.threshold_overrides.clone(),
            shared: SharedCollection::new(),
            collector: Mutex::new(Collector {
                sampler: sampler(),
                collections: 0,
                failures: 0,
                flows: FlowCounters::new(),
            }),
        }
    }

    /// SIGHUP: reads the thresholds again from `--config` and `--threshold`, and drops
    /// the cached result so the next scrape is judged by them. A file that no longer
    /// parses keeps the previous thresholds.
    fn reload(&self) {
        let Some(path) = &self.config else {
            self.shared.forget();
            eprintln!(
                "tcpdoctor serve: SIGHUP: no --config file to read again; thresholds unchanged"
            );
            return;
        };
        match crate::settings::thresholds(Some(path), &self.threshold_overrides) {
            Ok(t) => {
                *lock(&self.thresholds) = t;
                self.shared.forget();
                eprintln!(
                    "tcpdoctor serve: SIGHUP: thresholds read again from {}",
                    path.display()
                );
            }
            Err(e) => {
                eprintln!("tcpdoctor serve: SIGHUP: keeping the previous thresholds: {e}")
            }
        }
    }

    /// One collection, rendered. Never fails: a collection that produced nothing (or
    /// panicked) renders as `tcpdoctor_source_up{source="sockets"} 0` with the rest of
    /// the collector's health.
    fn collect(&self) -> String {
        let mut c = lock(&self.collector);
        let started = Instant::now();
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            c.sampler.sample(&self.common).map(|host| {
                let thresholds = lock(&self.thresholds).clone();
                let findings = analyze::run_host(&host, &thresholds);
                (host, findings)
            })
        }));
        c.collections += 1;
        let collected = match outcome {
            Ok(Ok(v)) => {
                c.flows.add(&v.0, self.top);
                Some(v)
            }
            Ok(Err(e)) => {
                c.failures += 1;
                eprintln!("tcpdoctor serve: collection failed: {e}");
                None
            }
            Err(_) => {
                c.failures += 1;
                // The sampler may be half-updated; start its counter baseline afresh.
                c.sampler = sampler();
                eprintln!("tcpdoctor serve: collection failed: internal error (panic); see above");
                None
            }
        };
        let stats = CollectionStats {
            collections: c.collections,
            failures: c.failures,
            duration_s: started.elapsed().as_secs_f64(),
            started_unix_ms,
            top: self.top,
        };
        let (host, findings) = match &collected {
            Some((host, f)) => (Some(host), f.as_slice()),
            None => (None, &[][..]),
        };
        metrics::render(&Exposition {
            host,
            findings,
            stats,
            // A replayed capture is not traced.
            flows: (!self.common.replay).then_some(&c.flows),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A value that many callers want and one of them makes at a time: callers that arrive
/// while it is being made wait for it and share it; a value younger than `max_age`
/// (measured from when making it started) is handed out without making a new one.
pub struct SharedCollection<T> {
    slot: Mutex<Slot<T>>,
    finished: Condvar,
}

struct Slot<T> {
    latest: Option<Latest<T>>,
    running: bool,
    /// Bumped each time a run ends, so waiters know theirs is over.
    generation: u64,
    /// Callers waiting for the running collection.
    waiting: usize,
    /// Bumped by [`SharedCollection::forget`]: a run that started before it does not
    /// become the kept value (it was made with what was forgotten, e.g. thresholds
    /// before a SIGHUP).
    forgotten: u64,
}

/// The last value made: when making it started, and the generation its run ended as.
struct Latest<T> {
    started: Instant,
    generation: u64,
    value: Arc<T>,
}

impl<T> Default for SharedCollection<T> {
    fn default() -> Self {
        SharedCollection::new()
    }
}

impl<T> SharedCollection<T> {
    pub fn new() -> SharedCollection<T> {
        SharedCollection {
            slot: Mutex::new(Slot {
                latest: None,
                running: false,
                generation: 0,
                waiting: 0,
                forgotten: 0,
            }),
            finished: Condvar::new(),
        }
    }

    /// The current value, made by `collect` when there is none young enough and no run
    /// in progress.
    pub fn get(&self, max_age: Duration, collect: impl FnOnce() -> T) -> Arc<T> {
        let mut slot = lock(&self.slot);
        // The generation of the run this caller waited for, if it waited.
        let mut waited_for: Option<u64> = None;
        loop {
            if let Some(l) = &slot.latest {
                // A run that ended after we started waiting is what we serve, however
                // old `max_age` would call it; otherwise only a young enough one.
                let ours = waited_for.is_some_and(|g| l.generation > g);
                if ours || (!slot.running && l.started.elapsed() < max_age) {
                    return Arc::clone(&l.value);
                }
            }
            if !slot.running {
                break;
            }
            let gen = slot.generation;
            slot.waiting += 1;
            while slot.running && slot.generation == gen {
                slot = self
                    .finished
                    .wait(slot)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            slot.waiting -= 1;
            waited_for = Some(gen);
            // The run ended without a value (it panicked), or another one started:
            // look again.
        }
        slot.running = true;
        let epoch = slot.forgotten;
        drop(slot);

        // Clears `running` and wakes the waiters even if `collect` panics.
        struct Running<'a, T> {
            shared: &'a SharedCollection<T>,
            started: Instant,
            epoch: u64,
            value: Option<Arc<T>>,
        }
        impl<T> Drop for Running<'_, T> {
            fn drop(&mut self) {
                let mut slot = lock(&self.shared.slot);
                slot.generation += 1;
                let value = self.value.take().filter(|_| slot.forgotten == self.epoch);
                if let Some(value) = value {
                    slot.latest = Some(Latest {
                        started: self.started,
                        generation: slot.generation,
                        value,
                    });
                }
                slot.running = false;
                drop(slot);
                self.shared.finished.notify_all();
            }
        }
        let mut running = Running {
            shared: self,
            started: Instant::now(),
            epoch,
            value: None,
        };
        let value = Arc::new(collect());
        running.value = Some(Arc::clone(&value));
        drop(running);
        value
    }

    /// Forgets the last value, and the one being made if any, so the next caller makes
    /// a new one.
    pub fn forget(&self) {
        let mut slot = lock(&self.slot);
        slot.latest = None;
        slot.forgotten += 1;
    }

    /// Callers currently waiting for a running collection.
    pub fn waiting(&self) -> usize {
        lock(&self.slot).waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_serve_help_states_the_limits_it_applies() {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for said in [
            format!("{} KiB", super::super::http::MAX_HEAD_BYTES / 1024),
            format!("{} header lines", super::super::http::MAX_HEADER_LINES),
            format!("within {} s", HEAD_TIMEOUT.as_secs()),
            format!("close after {} s", IDLE_TIMEOUT.as_secs()),
            format!("at most {MAX_CONNECTIONS} connections"),
            format!("minus {RESERVED_FDS}"),
            format!("at most {} s", SHUTDOWN_GRACE.as_secs()),
        ] {
            assert!(help.contains(&said), "serve --help lacks {said:?}: {help}");
        }
    }

    #[test]
    fn a_value_made_while_it_was_forgotten_is_not_kept() {
        let shared: SharedCollection<u32> = SharedCollection::new();
        // The run that is going on when forget() comes (a SIGHUP during a scrape).
        let v = shared.get(Duration::from_secs(3600), || {
            shared.forget();
            1
        });
        assert_eq!(*v, 1, "its caller still gets it");
        let again = shared.get(Duration::from_secs(3600), || 2);
        assert_eq!(*again, 2, "the next caller makes a new one");
        assert_eq!(*shared.get(Duration::from_secs(3600), || 3), 2, "kept");
    }

    /// Waits (bounded) until `cond` holds.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn concurrent_callers_share_one_collection() {
        let shared = Arc::new(SharedCollection::<u64>::new());
        let made = Arc::new(AtomicUsize::new(0));
        let callers = 4;
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                let (shared, made) = (Arc::clone(&shared), Arc::clone(&made));
                std::thread::spawn(move || {
                    let s2 = Arc::clone(&shared);
                    *shared.get(Duration::ZERO, move || {
                        let n = made.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                        // Hold the collection open until every other caller waits on it.
                        assert!(eventually(|| s2.waiting() == callers - 1));
                        n
                    })
                })
            })
            .collect();
        let got: Vec<u64> = handles
            .into_iter()
            .map(|h| h.join().expect("caller"))
            .collect();
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert_eq!(got, vec![1; callers]);
        // No cache: the next caller makes a new one.
        assert_eq!(*shared.get(Duration::ZERO, || 2), 2);
    }

    #[test]
    fn young_results_are_reused_old_ones_are_not() {
        let shared = SharedCollection::<u32>::new();
        assert_eq!(*shared.get(Duration::from_secs(3600), || 1), 1);
        assert_eq!(*shared.get(Duration::from_secs(3600), || 2), 1);
        assert_eq!(*shared.get(Duration::ZERO, || 3), 3);
    }

    #[test]
    fn waiters_of_a_panicked_run_collect_again() {
        let shared = Arc::new(SharedCollection::<u32>::new());
        let started = Arc::new(AtomicBool::new(false));
        let a = {
            let (shared, started) = (Arc::clone(&shared), Arc::clone(&started));
            std::thread::spawn(move || {
                let s2 = Arc::clone(&shared);
                shared.get(Duration::from_secs(60), move || {
                    started.store(true, Ordering::SeqCst);
                    assert!(eventually(|| s2.waiting() == 1));
                    panic!("collection failed hard")
                })
            })
        };
        assert!(eventually(|| started.load(Ordering::SeqCst)));
        let b = *shared.get(Duration::from_secs(60), || 5);
        assert!(a.join().is_err());
        assert_eq!(b, 5, "the waiter made its own value");
        assert_eq!(
            *shared.get(Duration::from_secs(60), || 6),
            5,
            "and it is cached"
        );
    }

    #[test]
    fn a_panicking_collection_releases_waiters() {
        let shared = SharedCollection::<u32>::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            shared.get(Duration::ZERO, || panic!("boom"))
        }));
        assert!(r.is_err());
        assert_eq!(*shared.get(Duration::from_secs(60), || 7), 7);
    }
}
