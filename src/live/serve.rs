//! `tcpdoctor serve`: a Prometheus endpoint. Serves `/metrics` (rendered by
//! [`crate::render::metrics`]), a small index on `/` and 404 elsewhere, until SIGTERM or
//! SIGINT. This is the daemon loop: it owns the listening socket, its worker threads and
//! the signal flag, and logs to stderr; it never decides what a metric means.
//!
//! Scrapes share collections ([`SharedCollection`]): at most one collection runs at a
//! time, a scrape that arrives during one waits for it and serves its result, and a
//! result younger than `--cache` is served as is. Slow or many scrapes therefore never
//! pile up work on the host.
//!
//! The sampler keeps the connection tracer attached (when it can run), and the server
//! keeps the connection counters across collections ([`FlowCounters`]): each collection
//! adds what the tracer counted since the previous one.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tiny_http::{Header, Method, Request, Response, Server};

use crate::analyze::{self, Thresholds};
use crate::cmd::check::Sampler;
use crate::render::metrics::{self, CollectionStats, Exposition, FlowCounters};
use crate::settings::{Common, ServeSettings};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Threads answering requests. One may be collecting; the others serve the index, 404s
/// and cached results, or wait for the running collection.
const WORKERS: usize = 4;
/// How often an idle worker looks at the shutdown flag.
const POLL: Duration = Duration::from_millis(100);
/// How long shutdown waits for requests in progress (a collection at a million sockets
/// takes about a second) before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = "<!DOCTYPE html>\n<html><head><title>tcpdoctor</title></head><body>\n<h1>tcpdoctor</h1>\n<p>TCP connection-state metrics: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";

pub fn run(common: &Common, s: &ServeSettings) -> Result<(), BoxError> {
    // SIGTERM/SIGINT: finish the requests in flight (bounded by SHUTDOWN_GRACE) and exit
    // 0. Repeated signals change nothing: wrappers such as timeout(1) send two.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }

    let server = Server::http(s.listen)
        .map_err(|e| format!("cannot listen on '{}' (--listen): {e}", s.listen))?;
    let bound: Option<SocketAddr> = server.server_addr().to_ip();
    let shown = bound.map_or_else(|| s.listen.to_string(), |a| a.to_string());

    if !s.listen.ip().is_loopback() {
        eprintln!(
            "tcpdoctor serve: warning: listening on {shown}, not loopback: anyone who can reach it sees the names and pids of this host's processes"
        );
    }
    eprintln!("tcpdoctor serve: listening on http://{shown}/metrics");

    let exporter = Arc::new(Exporter::new(common.clone(), s));
    let server = Arc::new(server);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    for i in 0..WORKERS {
        let (server, exporter, stop, done) = (
            Arc::clone(&server),
            Arc::clone(&exporter),
            Arc::clone(&stop),
            done_tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                serve_requests(&server, &exporter, &stop);
                let _ = done.send(());
            })?;
    }
    drop(done_tx);

    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(POLL);
    }
    eprintln!("tcpdoctor serve: shutting down");
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    for _ in 0..WORKERS {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            eprintln!("tcpdoctor serve: requests still in progress after {SHUTDOWN_GRACE:?}; exiting anyway");
            break;
        }
    }
    Ok(())
}

fn serve_requests(server: &Server, exporter: &Exporter, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(POLL) {
            Ok(Some(req)) => exporter.respond(req),
            Ok(None) => {}
            Err(e) => {
                eprintln!("tcpdoctor serve: cannot accept a request: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// The collection every scrape shares, plus what renders it.
struct Exporter {
    common: Common,
    top: usize,
    cache: Duration,
    thresholds: Thresholds,
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
            thresholds: s.thresholds.clone(),
            shared: SharedCollection::new(),
            collector: Mutex::new(Collector {
                sampler: sampler(),
                collections: 0,
                failures: 0,
                flows: FlowCounters::new(),
            }),
        }
    }

    fn respond(&self, req: Request) {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let readable = matches!(req.method(), Method::Get | Method::Head);
        let result = match (readable, path.as_str()) {
            (true, "/metrics") => {
                let body = self.shared.get(self.cache, || self.collect());
                req.respond(with_type(
                    Response::from_string(body.as_str()),
                    metrics::CONTENT_TYPE,
                ))
            }
            (true, "/") => req.respond(with_type(
                Response::from_string(INDEX_HTML),
                "text/html; charset=utf-8",
            )),
            (true, _) => req.respond(with_type(
                Response::from_string("not found: try /metrics\n").with_status_code(404),
                "text/plain; charset=utf-8",
            )),
            (false, _) => {
                let mut r = Response::from_string("only GET and HEAD\n").with_status_code(405);
                if let Ok(h) = Header::from_bytes("Allow", "GET, HEAD") {
                    r = r.with_header(h);
                }
                req.respond(r)
            }
        };
        // A scraper that hung up before the answer is its own problem, not ours.
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::BrokenPipe && e.kind() != io::ErrorKind::ConnectionReset {
                eprintln!("tcpdoctor serve: cannot answer {path}: {e}");
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
                let findings = analyze::run_host(&host, &self.thresholds);
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

fn with_type<R: io::Read>(r: Response<R>, content_type: &str) -> Response<R> {
    match Header::from_bytes("Content-Type", content_type) {
        Ok(h) => r.with_header(h),
        Err(()) => r,
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
        drop(slot);

        // Clears `running` and wakes the waiters even if `collect` panics.
        struct Running<'a, T> {
            shared: &'a SharedCollection<T>,
            started: Instant,
            value: Option<Arc<T>>,
        }
        impl<T> Drop for Running<'_, T> {
            fn drop(&mut self) {
                let mut slot = lock(&self.shared.slot);
                slot.generation += 1;
                if let Some(value) = self.value.take() {
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
            value: None,
        };
        let value = Arc::new(collect());
        running.value = Some(Arc::clone(&value));
        drop(running);
        value
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
