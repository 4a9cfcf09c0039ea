//! The build plan: checks the flags against the host's limits (RLIMIT_NOFILE,
//! ephemeral port range, somaxconn, tcp_max_tw_buckets) and decides which worker
//! makes which connection to which listener from which source address. Pure
//! arithmetic: no I/O, so every rule here has a unit test.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::cli::Args;
use crate::sys::{fail, Result};

/// Longest --hold-secs accepted.
pub const MAX_HOLD_SECS: u64 = 3600;
/// Most worker processes accepted.
pub const MAX_PROCESSES: u32 = 1024;
/// A worker never plans to hold more descriptors than this, even when
/// RLIMIT_NOFILE would allow more (keeps one worker's exit and fd scans short).
pub const MAX_FDS_PER_WORKER: u64 = 19_000;
/// Descriptors a worker needs besides its sockets: stdio, pipes, slack.
const FD_OVERHEAD: u64 = 32;
/// Upper bound on connections a worker makes before it accepts them.
const MAX_BATCH: u64 = 128;
/// TIME_WAIT connections one worker makes in well under the 1 s after which
/// tcp_tw_reuse may take over their 4-tuples (about 50,000 per second).
const TW_SAFE: u64 = 20_000;

/// The build steps, in the order every worker runs them. TIME_WAIT comes last
/// because those sockets start expiring (60 s) as soon as they are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Established,
    CloseWait,
    CloseWaitRead,
    Unaccepted,
    TimeWait,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Established,
        Phase::CloseWait,
        Phase::CloseWaitRead,
        Phase::Unaccepted,
        Phase::TimeWait,
    ];

    /// One-byte code sent from the parent to the workers over the control pipe.
    pub fn code(self) -> u8 {
        match self {
            Phase::Established => b'E',
            Phase::CloseWait => b'C',
            Phase::CloseWaitRead => b'R',
            Phase::Unaccepted => b'U',
            Phase::TimeWait => b'T',
        }
    }

    pub fn from_code(code: u8) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.code() == code)
    }

    /// The flag without dashes and with underscores, as used in JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Established => "established",
            Phase::CloseWait => "close_wait",
            Phase::CloseWaitRead => "close_wait_read",
            Phase::Unaccepted => "unaccepted",
            Phase::TimeWait => "time_wait",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Phase::Established => "--established",
            Phase::CloseWait => "--close-wait",
            Phase::CloseWaitRead => "--close-wait-read",
            Phase::Unaccepted => "--unaccepted",
            Phase::TimeWait => "--time-wait",
        }
    }

    /// Descriptors a worker keeps per connection of this phase.
    fn held_fds(self) -> u64 {
        match self {
            Phase::Established | Phase::CloseWait | Phase::CloseWaitRead => 2,
            Phase::Unaccepted => 1,
            Phase::TimeWait => 0,
        }
    }
}

/// Values read from the host (or netns) that bound what can be built.
#[derive(Clone, Debug)]
pub struct HostLimits {
    /// RLIMIT_NOFILE soft limit after raising it to the hard limit.
    pub nofile: u64,
    /// net.ipv4.ip_local_port_range (inclusive).
    pub port_range: (u32, u32),
    /// net.core.somaxconn: listen() truncates every backlog to it.
    pub somaxconn: u32,
    /// net.ipv4.tcp_max_tw_buckets.
    pub max_tw_buckets: u64,
    /// TIME_WAIT/FIN_WAIT2 minisockets already present (/proc/net/sockstat `tw`).
    pub tw_in_use: u64,
    /// net.ipv4.tcp_tw_reuse (0, 1, or 2 = loopback only).
    pub tw_reuse: u64,
}

/// Most CLOSE_WAIT connections --grow-close-wait may add in all (two descriptors each,
/// held by the parent).
pub const MAX_GROWTH: u64 = 10_000;

/// --grow-close-wait: connections added per step, the pause between steps, and steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    pub per_step: u64,
    pub every: Duration,
    pub steps: u64,
}

/// The flags, checked on their own (before anything is read from the host).
#[derive(Clone, Debug)]
pub struct Request {
    pub listen: Vec<SocketAddr>,
    pub backlog_listen: Vec<SocketAddr>,
    pub backlog: Option<u32>,
    pub counts: [u64; 5],
    pub processes: u32,
    pub hold: Duration,
    pub ignore_stdin: bool,
    pub source_ips: Vec<IpAddr>,
    pub quiet_fds: bool,
    pub widen_port_range: bool,
    pub max_tw_buckets: Option<u64>,
    pub exact_time_wait: bool,
    pub give_up: bool,
    /// --reset-close-wait: the --close-wait connections end detached.
    pub reset_close_wait: bool,
    pub overflow: u64,
    pub growth: Option<Growth>,
}

impl Request {
    pub fn from_args(args: Args) -> Result<Request> {
        if args.hold_secs > MAX_HOLD_SECS {
            return fail(format!(
                "--hold-secs {} is too long; the most is {MAX_HOLD_SECS}",
                args.hold_secs
            ));
        }
        if args.processes == 0 || args.processes > MAX_PROCESSES {
            return fail(format!(
                "--processes {} is out of range; use 1 to {MAX_PROCESSES}",
                args.processes
            ));
        }
        // Loopback only: the farm must never put traffic on a real link.
        for addr in args.listen.iter().chain(&args.backlog_listen) {
            if !addr.ip().is_loopback() {
                return fail(format!(
                    "listener \"{addr}\" is not a loopback address; use 127.0.0.0/8 or [::1]"
                ));
            }
        }
        for ip in &args.source_ips {
            if !ip.is_loopback() {
                return fail(format!(
                    "--source-ips \"{ip}\" is not a loopback address; use 127.0.0.0/8 or ::1"
                ));
            }
        }
        let mut seen = HashSet::new();
        for addr in args.listen.iter().chain(&args.backlog_listen) {
            if addr.port() != 0 && !seen.insert(*addr) {
                return fail(format!("listener \"{addr}\" is given twice"));
            }
        }
        let mut unique_sources = HashSet::new();
        for ip in &args.source_ips {
            if !unique_sources.insert(*ip) {
                return fail(format!("--source-ips \"{ip}\" is given twice"));
            }
        }
        if let Some(0) = args.backlog {
            return fail("--backlog 0 would refuse every connection; use 1 or more");
        }
        let counts = [
            args.established,
            args.close_wait,
            args.close_wait_read,
            args.unaccepted,
            args.time_wait,
        ];
        let accepted = args.established + args.close_wait + args.close_wait_read + args.time_wait;
        if accepted > 0 && args.listen.is_empty() {
            return fail(
                "--established/--close-wait/--close-wait-read/--time-wait need at least one --listen ADDR:PORT",
            );
        }
        if args.reset_close_wait && args.close_wait == 0 {
            return fail("--reset-close-wait needs --close-wait N");
        }
        if (args.give_up || args.overflow > 0) && args.unaccepted == 0 {
            return fail("--give-up and --overflow need --unaccepted N and a --backlog-listen");
        }
        if args.overflow > 0 && args.backlog_listen.len() != 1 {
            return fail("--overflow needs exactly one --backlog-listen ADDR:PORT");
        }
        if args.unaccepted > 0 && args.backlog_listen.is_empty() {
            return fail("--unaccepted needs at least one --backlog-listen ADDR:PORT");
        }
        if args.listen.is_empty() && args.backlog_listen.is_empty() {
            return fail("nothing to build: give at least one --listen or --backlog-listen");
        }
        let growth = if args.grow_close_wait == 0 {
            None
        } else {
            if args.listen.is_empty() {
                return fail("--grow-close-wait needs at least one --listen ADDR:PORT");
            }
            if !(100..=60_000).contains(&args.grow_every_ms) {
                return fail(format!(
                    "--grow-every-ms {} is out of range; use 100 to 60000",
                    args.grow_every_ms
                ));
            }
            if args.grow_steps == 0
                || args.grow_close_wait.saturating_mul(args.grow_steps) > MAX_GROWTH
            {
                return fail(format!(
                    "--grow-close-wait {} x --grow-steps {} must be 1 to {MAX_GROWTH} connections",
                    args.grow_close_wait, args.grow_steps
                ));
            }
            Some(Growth {
                per_step: args.grow_close_wait,
                every: Duration::from_millis(args.grow_every_ms),
                steps: args.grow_steps,
            })
        };
        Ok(Request {
            listen: args.listen,
            backlog_listen: args.backlog_listen,
            backlog: args.backlog,
            counts,
            processes: args.processes,
            hold: Duration::from_secs(args.hold_secs),
            ignore_stdin: args.ignore_stdin,
            source_ips: args.source_ips,
            quiet_fds: args.quiet_fds,
            widen_port_range: args.widen_port_range,
            max_tw_buckets: args.max_tw_buckets,
            exact_time_wait: args.exact_time_wait,
            give_up: args.give_up,
            reset_close_wait: args.reset_close_wait,
            overflow: args.overflow,
            growth,
        })
    }

    pub fn count(&self, phase: Phase) -> u64 {
        self.counts[phase_index(phase)]
    }
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Established => 0,
        Phase::CloseWait => 1,
        Phase::CloseWaitRead => 2,
        Phase::Unaccepted => 3,
        Phase::TimeWait => 4,
    }
}

/// A listener plus the client source addresses used towards it (`None` = let
/// the kernel choose).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub sources: Vec<Option<IpAddr>>,
}

/// The checked plan every process (parent and workers) follows.
#[derive(Clone, Debug)]
pub struct Plan {
    pub request: Request,
    pub limits: HostLimits,
    /// listen() backlog of the accepting listeners.
    pub listen_backlog: u32,
    /// listen() backlog of the never-accepting listeners.
    pub unaccepted_backlog: u32,
    /// Connections a worker makes before it accepts them.
    pub batch: u64,
    pub main_targets: Vec<Target>,
    pub backlog_targets: Vec<Target>,
}

impl Plan {
    /// Checks the request against the host. Listener ports may still be 0 here;
    /// `set_bound_addrs` fills in the real ones after bind().
    pub fn resolve(request: Request, limits: HostLimits) -> Result<Plan> {
        let k = u64::from(request.processes);
        let somaxconn = limits.somaxconn.max(1);
        let batch = (u64::from(somaxconn) / (2 * k)).clamp(1, MAX_BATCH);
        // Every worker connects at most `batch` sockets before accepting as many,
        // so an accept queue never holds more than processes * batch children.
        if k * batch > u64::from(somaxconn) {
            return fail(format!(
                "net.core.somaxconn {somaxconn} is too small for --processes {k}; use at most {} processes",
                somaxconn
            ));
        }
        let unaccepted_backlog = request.backlog.unwrap_or(somaxconn).min(somaxconn);
        let main_targets = targets_for(&request.listen, &request.source_ips);
        let backlog_targets = targets_for(&request.backlog_listen, &request.source_ips);
        let plan = Plan {
            listen_backlog: somaxconn,
            unaccepted_backlog,
            batch,
            main_targets,
            backlog_targets,
            request,
            limits,
        };
        plan.check_fd_budget()?;
        plan.check_ports()?;
        plan.check_backlog()?;
        plan.check_tw_buckets()?;
        Ok(plan)
    }

    /// Replaces the listener addresses with the bound ones (port 0 resolved).
    pub fn set_bound_addrs(&mut self, main: &[SocketAddr], backlog: &[SocketAddr]) {
        for (t, a) in self.main_targets.iter_mut().zip(main) {
            t.addr = *a;
        }
        for (t, a) in self.backlog_targets.iter_mut().zip(backlog) {
            t.addr = *a;
        }
    }

    pub fn processes(&self) -> u32 {
        self.request.processes
    }

    /// The slice `[start, start+len)` of a phase's connections that worker `w` makes.
    ///
    /// Worker 0 makes all TIME_WAIT connections (they hold no descriptor). A
    /// single worker answers each client FIN within microseconds; with more
    /// workers than CPUs a preempted worker lets the server's delayed-ACK timer
    /// fire, which can end in an RST that kills the fresh TIME_WAIT socket (see
    /// `worker.rs`).
    pub fn share(&self, phase: Phase, worker: u32) -> (u64, u64) {
        let count = self.request.count(phase);
        match phase {
            Phase::TimeWait if worker == 0 => (0, count),
            Phase::TimeWait => (0, 0),
            _ => split(count, self.processes(), worker),
        }
    }

    /// Listener index and source address of connection `index` of `phase`.
    /// Accepting phases share one index space, so round-robin continues across them.
    pub fn target_of(&self, phase: Phase, index: u64) -> (usize, Option<IpAddr>) {
        let (targets, global) = match phase {
            Phase::Unaccepted => (&self.backlog_targets, index),
            _ => (&self.main_targets, self.main_offset(phase) + index),
        };
        let l = targets.len() as u64;
        let listener = (global % l) as usize;
        let sources = &targets[listener].sources;
        let source = sources[((global / l) % sources.len() as u64) as usize];
        (listener, source)
    }

    fn main_offset(&self, phase: Phase) -> u64 {
        let mut offset = 0;
        for p in [
            Phase::Established,
            Phase::CloseWait,
            Phase::CloseWaitRead,
            Phase::TimeWait,
        ] {
            if p == phase {
                break;
            }
            offset += self.request.count(p);
        }
        offset
    }

    /// Most descriptors worker `w` holds at once.
    pub fn worker_fds(&self, worker: u32) -> u64 {
        let listeners = (self.main_targets.len() + self.backlog_targets.len()) as u64;
        let held: u64 = Phase::ALL
            .iter()
            .map(|&p| self.share(p, worker).1 * p.held_fds())
            .sum();
        held + 2 * self.batch + listeners + FD_OVERHEAD
    }

    fn fd_budget(&self) -> u64 {
        MAX_FDS_PER_WORKER.min(self.limits.nofile.saturating_sub(FD_OVERHEAD))
    }

    fn check_fd_budget(&self) -> Result<()> {
        let budget = self.fd_budget();
        let worst = self.worker_fds(0);
        if worst <= budget {
            return Ok(());
        }
        let mut needed = None;
        for k in self.processes() + 1..=MAX_PROCESSES {
            let mut trial = self.request.clone();
            trial.processes = k;
            let plan = Plan {
                request: trial,
                batch: (u64::from(self.limits.somaxconn.max(1)) / (2 * u64::from(k)))
                    .clamp(1, MAX_BATCH),
                ..self.clone()
            };
            if plan.worker_fds(0) <= budget {
                needed = Some(k);
                break;
            }
        }
        let advice = match needed {
            Some(k) => format!("use --processes {k} or more"),
            None => format!("that needs more than {MAX_PROCESSES} processes; build fewer sockets"),
        };
        fail(format!(
            "--processes {} is too few: a worker would hold {worst} file descriptors but may hold at most {budget} (RLIMIT_NOFILE {}); {advice}",
            self.processes(),
            self.limits.nofile
        ))
    }

    /// Connections that may share one (source ip, destination ip, destination
    /// port): 7/8 of the ephemeral range, leaving room for other users.
    pub fn port_limit(&self) -> u64 {
        let (lo, hi) = self.limits.port_range;
        let size = u64::from(hi.saturating_sub(lo)) + 1;
        size - size / 8
    }

    /// Connections per (source, destination ip, destination port) above which
    /// connect() gets slow: it tries the ports of one parity first (the half
    /// of the range that connect() prefers since 4.2, commit 07f4c90062f8) and
    /// once those are taken scans all of them on every call.
    pub fn fast_port_limit(&self) -> u64 {
        let (lo, hi) = self.limits.port_range;
        let size = u64::from(hi.saturating_sub(lo)) + 1;
        size / 2
    }

    /// The busiest (source, destination) pair: (connections, source, destination).
    fn busiest_pair(&self) -> Option<(u64, Option<IpAddr>, SocketAddr)> {
        let main_total = self.request.count(Phase::Established)
            + self.request.count(Phase::CloseWait)
            + self.request.count(Phase::CloseWaitRead)
            + self.request.count(Phase::TimeWait);
        let groups = [
            (&self.main_targets, main_total),
            (&self.backlog_targets, self.request.count(Phase::Unaccepted)),
        ];
        let mut busiest = None;
        for (targets, total) in groups {
            for (l, target) in targets.iter().enumerate() {
                let per_listener = split(total, targets.len() as u32, l as u32).1;
                let per_source = split(per_listener, target.sources.len() as u32, 0).1;
                if busiest.is_none_or(|(n, _, _)| per_source > n) {
                    busiest = Some((per_source, target.sources[0], target.addr));
                }
            }
        }
        busiest
    }

    fn check_ports(&self) -> Result<()> {
        let limit = self.port_limit();
        if let Some((n, source, dst)) = self.busiest_pair() {
            if n > limit {
                let (lo, hi) = self.limits.port_range;
                let source = match source {
                    Some(ip) => format!("source {ip}"),
                    None => "one source address".to_string(),
                };
                return fail(format!(
                    "{n} connections would go from {source} to {dst}, but ip_local_port_range {lo} {hi} allows about {limit} per (source, destination); add --listen addresses or --source-ips, or pass --widen-port-range inside a throwaway netns"
                ));
            }
        }
        Ok(())
    }

    /// Things that work but that the user probably does not want.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let tw = self.request.count(Phase::TimeWait);
        // connect() advances its port cursor by a random step per call, wraps
        // around the preferred half of the range long before that half is full
        // and, with tcp_tw_reuse on, takes over the farm's own TIME_WAIT
        // 4-tuples once they are older than 1 s (TcpExt TWRecycled).
        if tw > TW_SAFE && self.limits.tw_reuse != 0 {
            out.push(format!(
                "--time-wait {tw} with net.ipv4.tcp_tw_reuse={}: later connect() calls may take over the farm's own TIME_WAIT sockets once they are 1 s old (the build then fails its exactness check); pass --exact-time-wait inside a throwaway netns",
                self.limits.tw_reuse
            ));
        }
        if let Some((n, _, dst)) = self.busiest_pair() {
            let fast = self.fast_port_limit();
            if n > fast {
                out.push(format!(
                    "{n} connections to {dst} from one source exceed half of ip_local_port_range ({fast}); connect() then scans the used half on every call and the build becomes much slower; add --listen addresses or --source-ips, or use --widen-port-range"
                ));
            }
        }
        out
    }

    fn check_backlog(&self) -> Result<()> {
        let unaccepted = self.request.count(Phase::Unaccepted);
        let n = self.backlog_targets.len() as u32;
        if n == 0 {
            return Ok(());
        }
        let per_listener = split(unaccepted, n, 0).1;
        // The kernel queues one more than the backlog (sk_acceptq_is_full() is
        // `>`), and --overflow needs the queue exactly full.
        let full = u64::from(self.unaccepted_backlog) + 1;
        if self.request.overflow > 0 && per_listener != full {
            return fail(format!(
                "--overflow needs a full accept queue: pass --unaccepted {full} (backlog {} + 1)",
                self.unaccepted_backlog
            ));
        }
        if self.request.overflow == 0 && per_listener > u64::from(self.unaccepted_backlog) {
            return fail(format!(
                "{per_listener} unaccepted connections per --backlog-listen exceed the accept queue ({} = min(--backlog, net.core.somaxconn {})); add --backlog-listen addresses or raise --backlog",
                self.unaccepted_backlog, self.limits.somaxconn
            ));
        }
        Ok(())
    }

    fn check_tw_buckets(&self) -> Result<()> {
        let tw = self.request.count(Phase::TimeWait);
        if tw == 0 {
            return Ok(());
        }
        // While a TIME_WAIT connection is being closed its client is briefly an
        // orphaned FIN_WAIT2 minisocket, which also takes a bucket (one worker,
        // one connection at a time; keep some slack).
        let transient = 16;
        let needed = tw + transient + self.limits.tw_in_use;
        if needed > self.limits.max_tw_buckets {
            return fail(format!(
                "--time-wait {tw} needs net.ipv4.tcp_max_tw_buckets >= {needed} (it is {}); pass --max-tw-buckets {needed} inside a throwaway netns",
                self.limits.max_tw_buckets
            ));
        }
        Ok(())
    }

    /// How long the parent waits for one phase before giving up.
    pub fn phase_deadline(&self, phase: Phase) -> Duration {
        let n = self.request.count(phase);
        Duration::from_secs(60) + Duration::from_micros(200u64.saturating_mul(n))
    }
}

fn targets_for(listeners: &[SocketAddr], source_ips: &[IpAddr]) -> Vec<Target> {
    listeners
        .iter()
        .map(|addr| {
            let same_family: Vec<Option<IpAddr>> = source_ips
                .iter()
                .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
                .map(|ip| Some(*ip))
                .collect();
            let sources = if same_family.is_empty() {
                vec![None]
            } else {
                same_family
            };
            Target {
                addr: *addr,
                sources,
            }
        })
        .collect()
}

/// Splits `total` items over `parts`: part `i` gets `[start, start+len)`, the
/// first `total % parts` parts one more than the rest.
pub fn split(total: u64, parts: u32, i: u32) -> (u64, u64) {
    let parts = u64::from(parts.max(1));
    let i = u64::from(i);
    let base = total / parts;
    let extra = total % parts;
    let len = base + u64::from(i < extra);
    let start = i * base + i.min(extra);
    (start, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn limits() -> HostLimits {
        HostLimits {
            nofile: 20_000,
            port_range: (32768, 60999),
            somaxconn: 4096,
            max_tw_buckets: 131_072,
            tw_in_use: 0,
            tw_reuse: 2,
        }
    }

    fn plan(args: &[&str]) -> Result<Plan> {
        let mut argv = vec!["sockfarm"];
        argv.extend_from_slice(args);
        let args = Args::try_parse_from(argv).map_err(|e| crate::sys::FarmError(e.to_string()))?;
        Plan::resolve(Request::from_args(args)?, limits())
    }

    #[test]
    fn split_covers_everything_once() {
        let mut next = 0;
        for i in 0..7 {
            let (start, len) = split(100, 7, i);
            assert_eq!(start, next);
            next += len;
        }
        assert_eq!(next, 100);
    }

    #[test]
    fn growth_is_bounded_and_needs_a_listener() {
        let p = plan(&[
            "--listen",
            "127.0.0.1:0",
            "--grow-close-wait",
            "3",
            "--grow-every-ms",
            "500",
            "--grow-steps",
            "4",
        ])
        .expect("valid");
        assert_eq!(
            p.request.growth,
            Some(Growth {
                per_step: 3,
                every: Duration::from_millis(500),
                steps: 4
            })
        );
        let none = plan(&["--listen", "127.0.0.1:0"]).expect("valid");
        assert_eq!(none.request.growth, None);
        let err = plan(&[
            "--listen",
            "127.0.0.1:0",
            "--grow-close-wait",
            "100",
            "--grow-steps",
            "101",
        ])
        .unwrap_err();
        assert!(err.0.contains("10000"), "{err}");
        let err = plan(&[
            "--listen",
            "127.0.0.1:0",
            "--grow-close-wait",
            "1",
            "--grow-every-ms",
            "5",
        ])
        .unwrap_err();
        assert!(err.0.contains("--grow-every-ms 5"), "{err}");
        let err = plan(&["--backlog-listen", "127.0.0.1:0", "--grow-close-wait", "1"]).unwrap_err();
        assert!(err.0.contains("--listen"), "{err}");
    }

    #[test]
    fn too_many_fds_names_the_process_count() {
        let err = plan(&["--listen", "127.0.0.1:0", "--established", "20000"]).unwrap_err();
        assert!(err.0.contains("--processes 3"), "{err}");
    }

    #[test]
    fn reset_close_wait_needs_close_wait_connections() {
        let err = plan(&["--listen", "127.0.0.1:0", "--reset-close-wait"]).unwrap_err();
        assert!(err.0.contains("--close-wait N"), "{err}");
        let p = plan(&[
            "--listen",
            "127.0.0.1:0",
            "--close-wait",
            "3",
            "--reset-close-wait",
        ])
        .expect("valid");
        assert!(p.request.reset_close_wait);
    }

    #[test]
    fn non_loopback_listener_is_refused() {
        let err = plan(&["--listen", "10.0.0.1:80"]).unwrap_err();
        assert!(err.0.contains("not a loopback"), "{err}");
    }

    #[test]
    fn one_destination_cannot_take_the_whole_port_range() {
        let err = plan(&[
            "--listen",
            "127.0.0.1:1",
            "--time-wait",
            "30000",
            "--processes",
            "4",
        ])
        .unwrap_err();
        assert!(err.0.contains("ip_local_port_range"), "{err}");
        assert!(plan(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:2",
            "--time-wait",
            "30000",
        ])
        .is_ok());
    }

    #[test]
    fn round_robin_spreads_over_listeners_and_sources() {
        let p = plan(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--source-ips",
            "127.0.0.2,127.0.0.3",
            "--established",
            "8",
        ])
        .unwrap();
        let picks: Vec<_> = (0..4).map(|i| p.target_of(Phase::Established, i)).collect();
        assert_eq!(picks[0], (0, Some("127.0.0.2".parse().unwrap())));
        assert_eq!(picks[1], (1, None));
        assert_eq!(picks[2], (0, Some("127.0.0.3".parse().unwrap())));
    }

    #[test]
    fn time_wait_beyond_buckets_is_refused() {
        let err = plan(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "127.0.0.1:2",
            "--listen",
            "127.0.0.1:3",
            "--listen",
            "127.0.0.1:4",
            "--listen",
            "127.0.0.1:5",
            "--listen",
            "127.0.0.1:6",
            "--time-wait",
            "140000",
        ])
        .unwrap_err();
        assert!(err.0.contains("--max-tw-buckets"), "{err}");
    }
}
