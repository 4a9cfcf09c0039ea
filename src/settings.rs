//! Resolved settings: what the commands run with, after flags are checked. Built from
//! [`crate::cli`] in one place so command code never sees clap types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::analyze::Thresholds;

use crate::cli::{self, ByArg, ColorArg, SourceArg, StateWord};
use crate::collect::bounded;
use crate::collect::owners::{BpfUse, OwnerScan, BPF_MIN_FILES};
use crate::collect::sockets::SourcePref;
use crate::model::{FlowFilter, GroupBy, SocketFilter, StateSet, TcpState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub source: SourcePref,
    pub proc_root: PathBuf,
    /// `proc_root` is not the live /proc but a captured host: read only the capture
    /// (sockets from its net/tcp{,6}, never from sock_diag), one reading, no namespaces.
    pub replay: bool,
    pub color: bool,
    /// Threads for reading namespaces.
    pub threads: usize,
    /// How to find socket owners (threads of the /proc pass, when to use BPF).
    pub owner_scan: OwnerScan,
    pub netns: NetnsChoice,
    /// `--from`: a recorded host (snapshot file or saved text) read instead of this
    /// one; empty: the live host.
    pub from: Vec<PathBuf>,
}

/// Which network namespaces to read (`--netns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsChoice {
    /// Not given: every namespace for check/watch/serve (with the privilege to enter
    /// them), the current one for states/sockets.
    Default,
    All,
    Current,
    /// An nsfs file: /run/netns/NAME, /proc/PID/ns/net, a bind mount elsewhere.
    Path(PathBuf),
    /// The namespace of this process.
    Pid(u32),
    /// An `ip netns` name, a container or pod name, or a container id prefix.
    Name(String),
}

impl NetnsChoice {
    pub fn parse(s: &str) -> Result<NetnsChoice, SettingsError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(SettingsError::Netns(s.to_string()));
        }
        Ok(match t {
            "all" => NetnsChoice::All,
            "current" | "self" => NetnsChoice::Current,
            _ if t.contains('/') => NetnsChoice::Path(PathBuf::from(t)),
            _ if t.bytes().all(|b| b.is_ascii_digit()) => match t.parse() {
                Ok(pid) if pid > 0 => NetnsChoice::Pid(pid),
                _ => return Err(SettingsError::Netns(s.to_string())),
            },
            _ => NetnsChoice::Name(t.to_string()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatesSettings {
    pub states: StateSet,
    pub by: Option<GroupBy>,
    pub top: usize,
    pub ipv4: bool,
    pub ipv6: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketsSettings {
    pub states: StateSet,
    pub filter: SocketFilter,
    pub limit: Option<usize>,
    pub tcp_info: bool,
    pub owners: bool,
    pub ipv4: bool,
    pub ipv6: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    pub interval: Duration,
    pub thresholds: Thresholds,
    pub verbose: bool,
    pub emit_sysctl: bool,
    /// Trace connections during the interval when the tracer can run (not
    /// `--no-trace`).
    pub trace: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchSettings {
    pub interval: Duration,
    pub top: usize,
    pub thresholds: Thresholds,
    /// One JSON line per sample on stdout instead of the terminal UI.
    pub headless: bool,
    /// Stop after this many samples.
    pub samples: Option<u64>,
    /// CPU budget of sampling as a fraction of one core (0.05 = 5%); `None`: no limit.
    pub cpu_budget: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    pub listen: std::net::SocketAddr,
    pub top: usize,
    /// Scrapes within this long of a collection reuse it.
    pub cache: Duration,
    pub thresholds: Thresholds,
    /// Where `thresholds` came from (`--config`, `--threshold`), read again on SIGHUP.
    pub config: Option<PathBuf>,
    pub threshold_overrides: Vec<String>,
}

/// `lint nginx [FILE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LintSettings {
    /// The main configuration file; `None`: the running or installed nginx's.
    pub file: Option<PathBuf>,
    /// `--nginx-version`.
    pub version: Option<crate::model::nginx::NginxVersion>,
    pub thresholds: Thresholds,
    pub verbose: bool,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub interval: Duration,
    /// Stop after this long; `None`: at Ctrl-C or SIGTERM.
    pub duration: Option<Duration>,
    /// Rows in the table (`usize::MAX`: all).
    pub top: usize,
    /// `--netns` is resolved by the command into `filter.netns`.
    pub filter: FlowFilter,
    /// Raw events, at most this many per second; `None`: no events.
    pub events: Option<u32>,
    /// `--leaks`: record origins and report leaked sockets by call site.
    pub leaks: Option<LeakSettings>,
    pub json: bool,
}

/// `trace --leaks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakSettings {
    /// CLOSE_WAIT idle this long counts as leaked.
    pub age: Duration,
    /// Between looks.
    pub every: Duration,
    /// Origins kept at once.
    pub table: u32,
}

/// `kill`: what to destroy and how to confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSettings {
    /// Never LISTEN; ESTABLISHED only when --force was given.
    pub states: StateSet,
    /// At least one of pids, ports, peer.
    pub filter: SocketFilter,
    /// Destroy without asking.
    pub yes: bool,
    pub dry_run: bool,
    pub json: bool,
}

/// `snapshot -o FILE`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSettings {
    pub output: PathBuf,
    pub interval: Duration,
    /// Trace connections during the interval, as check does (not `--no-trace`).
    pub trace: bool,
}

/// `diff BEFORE AFTER`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffSettings {
    pub before: PathBuf,
    pub after: PathBuf,
    /// Rows per table (`usize::MAX`: all).
    pub top: usize,
    pub thresholds: Thresholds,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Check(CheckSettings),
    Watch(WatchSettings),
    Serve(ServeSettings),
    States(StatesSettings),
    Sockets(SocketsSettings),
    Trace(TraceSettings),
    Lint(LintSettings),
    Kill(KillSettings),
    Snapshot(SnapshotSettings),
    Diff(DiffSettings),
    /// `completions SHELL`: print the completion script.
    Completions(crate::manual::Shell),
    /// `man [COMMAND...]` / `man --out-dir DIR`.
    Man(ManSettings),
}

/// Which manual pages to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManSettings {
    /// One page on stdout: the command's words (`["lint", "nginx"]`; none: tcpdoctor(1)).
    Print(Vec<String>),
    /// Every page, one file each, into this folder.
    WriteAll(PathBuf),
}

/// A setting that cannot be used; the message names the value and what to change.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("interval '{0}' is out of range (check and snapshot --interval: 0-60 s, watch --interval: 0.1-3600 s, serve --cache: 0-3600 s)")]
    Interval(f64),
    #[error("cannot read config file '{path}': {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file '{path}': {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("--threshold {0} must look like KEY=NUMBER, e.g. port_warn_pct=60")]
    ThresholdSyntax(String),
    #[error("--threshold {given}: {message}")]
    Threshold { given: String, message: String },
    #[error("thresholds: {0}")]
    Levels(String),
    #[error("check's flags (--json, --verbose, --interval, --threshold, --config, --emit-sysctl) go after the command they are for, e.g. tcpdoctor states --json; without a command they are check's")]
    CheckFlagsBeforeCommand,
    #[error("--max-cpu '{0}' is out of range: give a percentage of one core, above 0 and at most 100, or 0 for no limit")]
    MaxCpu(f64),
    #[error("--netns '{0}' is not a namespace: use all, current, a path such as /run/netns/NAME, a pid, or a name")]
    Netns(String),
    #[error("trace --{flag} '{value}' is out of range ({range})")]
    Trace {
        flag: &'static str,
        value: f64,
        range: &'static str,
    },
    #[error("--nginx-version '{0}' is not a version: give e.g. 1.24.0, nginx/1.29.7 or openresty/1.21.4.1")]
    NginxVersion(String),
    #[error("--source netlink reads the live kernel and cannot replay --proc-root '{}': use --source proc, or leave --source out", .0.display())]
    ReplayNetlink(PathBuf),
    #[error("TCPDOCTOR_BPF_MIN_FILES '{0}' is not a number of open files (0: use the BPF owner scan whatever the size)")]
    BpfMinFiles(String),
    #[error("kill needs a selector: --pid, --port or --peer (it never destroys every socket of a state)")]
    KillNoSelector,
    #[error("kill never destroys LISTEN sockets (the server would stop accepting connections); name connection states, e.g. --state close-wait")]
    KillListen,
    #[error("--state established resets live connections: add --force if that is what you want")]
    KillEstablished,
    #[error("kill asks before destroying, and stdin is not a terminal to ask on: add --yes to destroy without asking, or --dry-run to list only")]
    KillNoTerminal,
    #[error("kill acts on the running kernel through sock_diag: it cannot be used with {0}")]
    KillNotLive(&'static str),
    #[error("--from reads a recording, not {0}: give one or the other")]
    FromAndLive(&'static str),
    #[error("{0} reads this host as it is now and takes no --from; --from works with check, states and sockets (and diff takes its two recordings as arguments)")]
    FromNotHere(&'static str),
}

/// Facts about the terminal the caller knows (main owns stdout and the environment).
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    pub stdout_is_tty: bool,
    /// `kill` asks its question there.
    pub stdin_is_tty: bool,
    pub no_color_env: bool,
}

/// Debugging and benchmarking knobs from the environment (main reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// `TCPDOCTOR_NO_BPF` is set: always the /proc owner scan.
    pub no_bpf: bool,
    /// `TCPDOCTOR_BPF_MIN_FILES`: open files from which the BPF owner scan is used.
    pub bpf_min_files: Option<String>,
    /// `TCPDOCTOR_DEBUG` is set: say on stderr which owner scan ran.
    pub debug: bool,
}

impl Environment {
    /// Reads the variables; a variable counts as set whatever its value.
    pub fn from_process() -> Environment {
        Environment {
            no_bpf: std::env::var_os("TCPDOCTOR_NO_BPF").is_some(),
            bpf_min_files: std::env::var_os("TCPDOCTOR_BPF_MIN_FILES")
                .map(|v| v.to_string_lossy().into_owned()),
            debug: std::env::var_os("TCPDOCTOR_DEBUG").is_some(),
        }
    }
}

/// The owner scan as the environment shapes it.
fn owner_scan(env: &Environment, threads: usize) -> Result<OwnerScan, SettingsError> {
    let bpf = if env.no_bpf {
        BpfUse::Never
    } else {
        match &env.bpf_min_files {
            Some(v) => BpfUse::FromOpenFiles(
                v.trim()
                    .parse()
                    .map_err(|_| SettingsError::BpfMinFiles(v.clone()))?,
            ),
            None => BpfUse::FromOpenFiles(BPF_MIN_FILES),
        }
    };
    Ok(OwnerScan {
        bpf,
        debug: env.debug,
        threads,
    })
}

pub fn resolve(
    cli: cli::Cli,
    term: Terminal,
    env: &Environment,
) -> Result<(Common, Action), SettingsError> {
    let g = cli.global;
    let color = match g.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => term.stdout_is_tty && !term.no_color_env,
    };
    // Anything but the live /proc is a captured host (Path equality ignores a trailing
    // slash). A capture is read from its files only: sock_diag would answer for this
    // machine instead.
    let replay = g.proc_root != Path::new("/proc");
    let source = match (g.source, replay) {
        (SourceArg::Netlink, true) => return Err(SettingsError::ReplayNetlink(g.proc_root)),
        (SourceArg::Auto, true) | (SourceArg::Proc, _) => SourcePref::Proc,
        (SourceArg::Auto, false) => SourcePref::Auto,
        (SourceArg::Netlink, false) => SourcePref::Netlink,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    if !g.from.is_empty() {
        if replay {
            return Err(SettingsError::FromAndLive("--proc-root"));
        }
        if g.source != SourceArg::Auto {
            return Err(SettingsError::FromAndLive("--source"));
        }
        let live_only = match &cli.command {
            Some(cli::Command::Watch(_)) => Some("watch"),
            Some(cli::Command::Serve(_)) => Some("serve"),
            Some(cli::Command::Trace(_)) => Some("trace"),
            Some(cli::Command::Lint(_)) => Some("lint"),
            Some(cli::Command::Snapshot(_)) => Some("snapshot"),
            Some(cli::Command::Diff(_)) => Some("diff"),
            // It destroys live sockets: never on the strength of a recording.
            Some(cli::Command::Kill(_)) => Some("kill"),
            _ => None,
        };
        if let Some(cmd) = live_only {
            return Err(SettingsError::FromNotHere(cmd));
        }
    }
    let common = Common {
        source,
        proc_root: g.proc_root,
        replay,
        color,
        threads,
        owner_scan: owner_scan(env, threads)?,
        netns: match &g.netns {
            Some(v) => NetnsChoice::parse(v)?,
            None => NetnsChoice::Default,
        },
        from: g.from,
    };
    if cli.command.is_some() && cli.check.any_given() {
        return Err(SettingsError::CheckFlagsBeforeCommand);
    }
    let action = match cli.command {
        // No subcommand: the doctor, with the check flags given before it.
        None => Action::Check(check_settings(&cli.check)?),
        Some(cli::Command::Check(a)) => Action::Check(check_settings(&a)?),
        Some(cli::Command::Watch(a)) => {
            if !(0.1..=3600.0).contains(&a.interval) {
                return Err(SettingsError::Interval(a.interval));
            }
            Action::Watch(WatchSettings {
                interval: Duration::from_secs_f64(a.interval),
                top: a.top.max(1),
                thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
                headless: a.headless,
                samples: a.samples,
                cpu_budget: if a.max_cpu == 0.0 {
                    None
                } else if a.max_cpu > 0.0 && a.max_cpu <= 100.0 {
                    Some(a.max_cpu / 100.0)
                } else {
                    return Err(SettingsError::MaxCpu(a.max_cpu));
                },
            })
        }
        Some(cli::Command::Serve(a)) => {
            if !(0.0..=3600.0).contains(&a.cache) {
                return Err(SettingsError::Interval(a.cache));
            }
            Action::Serve(ServeSettings {
                listen: a.listen,
                top: a.top.max(1),
                cache: Duration::from_secs_f64(a.cache),
                thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
                config: a.config,
                threshold_overrides: a.threshold,
            })
        }
        Some(cli::Command::States(a)) => {
            let (ipv4, ipv6) = families(&a.family);
            Action::States(StatesSettings {
                states: state_set(&a.state),
                by: a.by.map(|b| match b {
                    ByArg::Process => GroupBy::Process,
                    ByArg::Peer => GroupBy::Peer,
                    ByArg::LocalPort => GroupBy::LocalPort,
                    ByArg::RemotePort => GroupBy::RemotePort,
                    ByArg::Netns => GroupBy::Netns,
                }),
                top: a.top,
                ipv4,
                ipv6,
                json: a.json,
            })
        }
        Some(cli::Command::Lint(cli::LintArgs {
            target: cli::LintTarget::Nginx(a),
        })) => Action::Lint(LintSettings {
            file: a.file,
            version: match &a.nginx_version {
                Some(v) => Some(nginx_version(v)?),
                None => None,
            },
            thresholds: Thresholds::default(),
            verbose: a.verbose,
            json: a.json,
        }),
        Some(cli::Command::Sockets(a)) => {
            let (ipv4, ipv6) = families(&a.family);
            Action::Sockets(SocketsSettings {
                states: state_set(&a.state),
                filter: SocketFilter {
                    ports: a.port,
                    local: a.local,
                    peer: a.peer,
                    pids: a.pid,
                    comms: a.comm,
                },
                limit: a.limit,
                tcp_info: a.info,
                owners: !a.no_owners,
                ipv4,
                ipv6,
                json: a.json,
            })
        }
        Some(cli::Command::Trace(a)) => Action::Trace(trace_settings(a)?),
        Some(cli::Command::Kill(a)) => Action::Kill(kill_settings(a, &common, term)?),
        Some(cli::Command::Snapshot(a)) => {
            if !(0.0..=60.0).contains(&a.interval) || a.interval.is_nan() {
                return Err(SettingsError::Interval(a.interval));
            }
            Action::Snapshot(SnapshotSettings {
                output: a.output,
                interval: Duration::from_secs_f64(a.interval),
                trace: !a.no_trace,
            })
        }
        Some(cli::Command::Diff(a)) => Action::Diff(DiffSettings {
            thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
            before: a.before,
            after: a.after,
            top: if a.top == 0 { usize::MAX } else { a.top },
            json: a.json,
        }),
        Some(cli::Command::Completions(a)) => Action::Completions(match a.shell {
            cli::ShellArg::Bash => crate::manual::Shell::Bash,
            cli::ShellArg::Zsh => crate::manual::Shell::Zsh,
            cli::ShellArg::Fish => crate::manual::Shell::Fish,
        }),
        Some(cli::Command::Man(a)) => Action::Man(match a.out_dir {
            Some(dir) => ManSettings::WriteAll(dir),
            None => ManSettings::Print(a.command),
        }),
    };
    Ok((common, action))
}

/// The safeguards of `kill`, checked before anything is read: a selector, no LISTEN,
/// ESTABLISHED only with --force, a terminal to ask on unless --yes or --dry-run, and
/// the live kernel.
fn kill_settings(
    a: cli::KillArgs,
    common: &Common,
    term: Terminal,
) -> Result<KillSettings, SettingsError> {
    if a.pid.is_empty() && a.port.is_empty() && a.peer.is_empty() {
        return Err(SettingsError::KillNoSelector);
    }
    let states = if a.state.is_empty() {
        [TcpState::CloseWait].into_iter().collect()
    } else {
        state_set(&a.state)
    };
    if states.contains(TcpState::Listen) {
        return Err(SettingsError::KillListen);
    }
    if states.contains(TcpState::Established) && !a.force {
        return Err(SettingsError::KillEstablished);
    }
    if common.replay {
        return Err(SettingsError::KillNotLive("--proc-root (a captured host)"));
    }
    if common.source == SourcePref::Proc {
        return Err(SettingsError::KillNotLive("--source proc"));
    }
    if !a.yes && !a.dry_run && !term.stdin_is_tty {
        return Err(SettingsError::KillNoTerminal);
    }
    Ok(KillSettings {
        states,
        filter: SocketFilter {
            ports: a.port,
            local: Vec::new(),
            peer: a.peer,
            pids: a.pid,
            comms: Vec::new(),
        },
        yes: a.yes,
        dry_run: a.dry_run,
        json: a.json,
    })
}

fn trace_settings(a: cli::TraceArgs) -> Result<TraceSettings, SettingsError> {
    let out_of_range = |flag, value, range| SettingsError::Trace { flag, value, range };
    if !(0.1..=3600.0).contains(&a.interval) {
        return Err(out_of_range("interval", a.interval, "0.1-3600 s"));
    }
    let duration = match a.duration {
        None => None,
        Some(d) if d > 0.0 && d <= 30.0 * 86400.0 => Some(Duration::from_secs_f64(d)),
        Some(d) => return Err(out_of_range("duration", d, "above 0, at most 30 days")),
    };
    if !(1..=1_000_000).contains(&a.events_limit) {
        return Err(out_of_range(
            "events-limit",
            f64::from(a.events_limit),
            "1-1000000 per second",
        ));
    }
    let leaks = if a.leaks {
        if !(0.0..=30.0 * 86400.0).contains(&a.leak_age) {
            return Err(out_of_range("leak-age", a.leak_age, "0-2592000 s"));
        }
        if !(0.1..=3600.0).contains(&a.leak_every) {
            return Err(out_of_range("leak-every", a.leak_every, "0.1-3600 s"));
        }
        if !(1024..=16_777_216).contains(&a.leak_table) {
            return Err(out_of_range(
                "leak-table",
                f64::from(a.leak_table),
                "1024-16777216 sockets",
            ));
        }
        Some(LeakSettings {
            age: Duration::from_secs_f64(a.leak_age),
            every: Duration::from_secs_f64(a.leak_every),
            table: a.leak_table,
        })
    } else {
        None
    };
    Ok(TraceSettings {
        interval: Duration::from_secs_f64(a.interval),
        duration,
        top: if a.top == 0 { usize::MAX } else { a.top },
        filter: FlowFilter {
            pids: a.pid,
            comms: a.comm,
            ports: a.port,
            peers: a.peer,
            netns: Vec::new(),
        },
        events: a.events.then_some(a.events_limit),
        leaks,
        json: a.json,
    })
}

fn check_settings(a: &cli::CheckArgs) -> Result<CheckSettings, SettingsError> {
    if !(0.0..=60.0).contains(&a.interval) || a.interval.is_nan() {
        return Err(SettingsError::Interval(a.interval));
    }
    Ok(CheckSettings {
        interval: Duration::from_secs_f64(a.interval),
        thresholds: thresholds(a.config.as_deref(), &a.threshold)?,
        verbose: a.verbose,
        emit_sysctl: a.emit_sysctl,
        trace: !a.no_trace,
        json: a.json,
    })
}

/// What a threshold counts: sockets or seconds (a whole number, at least 1), or a
/// percentage of a kernel or process limit (above 0, at most 100). No key takes 0 for
/// "off": a rule is quieted by raising its level to the top of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThresholdKind {
    Count,
    Percent,
}

/// The most a count may be (more than any host holds of sockets or seconds).
const COUNT_MAX: f64 = 1_000_000_000.0;

/// Every threshold key and what it counts; [`Thresholds`] has exactly these fields (a
/// test checks it).
const THRESHOLD_KEYS: &[(&str, ThresholdKind)] = &[
    ("close_wait_warn", ThresholdKind::Count),
    ("close_wait_critical", ThresholdKind::Count),
    ("close_wait_age_s", ThresholdKind::Count),
    ("time_wait_warn_pct", ThresholdKind::Percent),
    ("time_wait_critical_pct", ThresholdKind::Percent),
    ("port_warn_pct", ThresholdKind::Percent),
    ("port_critical_pct", ThresholdKind::Percent),
    ("fd_warn_pct", ThresholdKind::Percent),
    ("fd_critical_pct", ThresholdKind::Percent),
    ("accept_queue_warn_pct", ThresholdKind::Percent),
    ("orphan_warn_pct", ThresholdKind::Percent),
    ("orphan_critical_pct", ThresholdKind::Percent),
    ("conntrack_warn_pct", ThresholdKind::Percent),
    ("conntrack_critical_pct", ThresholdKind::Percent),
];

/// Warning levels that must not be above their critical level.
const THRESHOLD_PAIRS: &[(&str, &str)] = &[
    ("close_wait_warn", "close_wait_critical"),
    ("time_wait_warn_pct", "time_wait_critical_pct"),
    ("port_warn_pct", "port_critical_pct"),
    ("fd_warn_pct", "fd_critical_pct"),
    ("orphan_warn_pct", "orphan_critical_pct"),
    ("conntrack_warn_pct", "conntrack_critical_pct"),
];

/// Largest config file read (a full one is a few hundred bytes).
const CONFIG_MAX: u64 = 1 << 20;

/// Longest piece of user input quoted back in an error.
const QUOTED_MAX: usize = 32;

/// `text` quoted for an error message, cut to a short prefix when long.
fn quoted(text: &str) -> String {
    format!(
        "'{}'",
        crate::model::units::ellipsize(text.trim(), QUOTED_MAX)
    )
}

fn known_keys() -> String {
    THRESHOLD_KEYS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one value for `key`; `shown` is the value as the user wrote it. Returns the
/// TOML value to layer, or the reason it is refused.
fn threshold_value(key: &str, value: f64, shown: &str) -> Result<toml::Value, String> {
    let Some((_, kind)) = THRESHOLD_KEYS.iter().find(|(k, _)| *k == key) else {
        return Err(format!(
            "unknown threshold {}; known: {}",
            quoted(key),
            known_keys()
        ));
    };
    match kind {
        ThresholdKind::Percent if value.is_finite() && value > 0.0 && value <= 100.0 => {
            Ok(toml::Value::Float(value))
        }
        ThresholdKind::Percent => Err(format!(
            "{key} is {}: give a percentage above 0 and at most 100",
            quoted(shown)
        )),
        ThresholdKind::Count
            if value.is_finite() && value.fract() == 0.0 && (1.0..=COUNT_MAX).contains(&value) =>
        {
            Ok(toml::Value::Integer(value as i64))
        }
        ThresholdKind::Count => Err(format!(
            "{key} is {}: give a whole number from 1 to {}",
            quoted(shown),
            COUNT_MAX as u64
        )),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |i| &before[i + 1..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// Defaults, then the config file, then each `--threshold KEY=VALUE`. Every value is
/// checked against its range, and each warning level against its critical level; an
/// error is one line naming the key, where it was set (the flag, or the file's line and
/// column) and the allowed range.
pub fn thresholds(
    config: Option<&Path>,
    overrides: &[String],
) -> Result<Thresholds, SettingsError> {
    let mut table = toml::Table::new();
    // Where each key was set, for the warning-above-critical error.
    let mut origin: std::collections::BTreeMap<String, String> = Default::default();
    if let Some(path) = config {
        // A regular file of at most CONFIG_MAX bytes: a FIFO or a device given as the
        // config file is refused at once instead of blocking or filling memory.
        let text = bounded::read_to_string(path, CONFIG_MAX).map_err(|source| {
            SettingsError::ConfigRead {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let at = |offset: usize, message: String| {
            let (line, column) = line_column(&text, offset);
            SettingsError::ConfigParse {
                path: path.to_path_buf(),
                message: format!("line {line}, column {column}: {message}"),
            }
        };
        let doc: std::collections::BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(&text).map_err(|e| {
                let message = e.message().replace('\n', " ").trim().to_string();
                match e.span() {
                    Some(span) => at(span.start, message),
                    None => SettingsError::ConfigParse {
                        path: path.to_path_buf(),
                        message,
                    },
                }
            })?;
        for (key, spanned) in doc {
            let span = spanned.span();
            let written = text.get(span.clone()).unwrap_or_default();
            let number = match spanned.get_ref() {
                toml::Value::Integer(i) => *i as f64,
                toml::Value::Float(f) => *f,
                _ => {
                    return Err(at(
                        span.start,
                        format!("{key} is {}: give a number", quoted(written)),
                    ))
                }
            };
            let value = threshold_value(&key, number, written).map_err(|m| at(span.start, m))?;
            let (line, _) = line_column(&text, span.start);
            origin.insert(key.clone(), format!("line {line} of {}", path.display()));
            table.insert(key, value);
        }
    }
    for given in overrides {
        let syntax = || SettingsError::ThresholdSyntax(quoted(given));
        let (k, v) = given.split_once('=').ok_or_else(syntax)?;
        let (k, v) = (k.trim(), v.trim());
        let refused = |message: String| SettingsError::Threshold {
            given: quoted(given),
            message,
        };
        let number: f64 = v.parse().map_err(|_| {
            refused(match THRESHOLD_KEYS.iter().any(|(key, _)| *key == k) {
                true => format!("{k} is {}: give a number", quoted(v)),
                false => format!("unknown threshold {}; known: {}", quoted(k), known_keys()),
            })
        })?;
        let value = threshold_value(k, number, v).map_err(refused)?;
        origin.insert(k.to_string(), "--threshold".to_string());
        table.insert(k.to_string(), value);
    }
    // Every key and value was checked above: this cannot fail but for a bug.
    let t = Thresholds::deserialize(toml::Value::Table(table))
        .map_err(|e| SettingsError::Levels(e.to_string().replace('\n', " ").trim().to_string()))?;
    let levels = threshold_levels(&t);
    let level = |k: &str| {
        levels
            .iter()
            .find(|(n, _)| *n == k)
            .map_or(0.0, |(_, v)| *v)
    };
    for (warn, critical) in THRESHOLD_PAIRS {
        let (w, c) = (level(warn), level(critical));
        if w > c {
            let from = |k: &str| {
                origin
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| "the default".into())
            };
            return Err(SettingsError::Levels(format!(
                "{warn} ({w}, {}) is above {critical} ({c}, {}): a warning level must be at most its critical level",
                from(warn),
                from(critical)
            )));
        }
    }
    Ok(t)
}

/// Every threshold as a number, by key.
fn threshold_levels(t: &Thresholds) -> Vec<(&'static str, f64)> {
    vec![
        ("close_wait_warn", t.close_wait_warn as f64),
        ("close_wait_critical", t.close_wait_critical as f64),
        ("close_wait_age_s", t.close_wait_age_s as f64),
        ("time_wait_warn_pct", t.time_wait_warn_pct),
        ("time_wait_critical_pct", t.time_wait_critical_pct),
        ("port_warn_pct", t.port_warn_pct),
        ("port_critical_pct", t.port_critical_pct),
        ("fd_warn_pct", t.fd_warn_pct),
        ("fd_critical_pct", t.fd_critical_pct),
        ("accept_queue_warn_pct", t.accept_queue_warn_pct),
        ("orphan_warn_pct", t.orphan_warn_pct),
        ("orphan_critical_pct", t.orphan_critical_pct),
        ("conntrack_warn_pct", t.conntrack_warn_pct),
        ("conntrack_critical_pct", t.conntrack_critical_pct),
    ]
}

/// `1.24.0` means nginx 1.24.0; a banner (`openresty/1.21.4.1`) is taken as it is.
fn nginx_version(v: &str) -> Result<crate::model::nginx::NginxVersion, SettingsError> {
    let banner = if v.contains('/') {
        v.to_string()
    } else {
        format!("nginx/{v}")
    };
    crate::model::nginx::NginxVersion::parse(&banner)
        .filter(|n| n.core.is_some() || v.contains('/'))
        .ok_or_else(|| SettingsError::NginxVersion(v.to_string()))
}

fn families(f: &cli::FamilyArgs) -> (bool, bool) {
    match (f.ipv4, f.ipv6) {
        (true, false) => (true, false),
        (false, true) => (false, true),
        _ => (true, true),
    }
}

/// No `--state` means every state.
pub fn state_set(words: &[StateWord]) -> StateSet {
    if words.is_empty() {
        return StateSet::all();
    }
    let mut set = StateSet::empty();
    for w in words {
        match w {
            StateWord::One(s) => set.insert(*s),
            StateWord::All => set = StateSet::all(),
            StateWord::Connected => {
                for s in TcpState::ALL {
                    if s != TcpState::Listen && s != TcpState::Close {
                        set.insert(s);
                    }
                }
            }
        }
    }
    set
}

use serde::Deserialize;

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch config file holding `text`.
    struct ConfigFile(PathBuf);

    impl ConfigFile {
        fn new(name: &str, text: &str) -> ConfigFile {
            let dir = std::env::temp_dir().join(format!("tcpdoctor-cfg-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("tmp dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            ConfigFile(path)
        }
    }

    impl Drop for ConfigFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn flag(given: &str) -> Result<Thresholds, SettingsError> {
        thresholds(None, &[given.to_string()])
    }

    #[test]
    fn thresholds_layer_defaults_file_and_flags() {
        let file = ConfigFile::new("layer.toml", "port_warn_pct = 40\nclose_wait_warn = 3\n");
        let t = thresholds(Some(&file.0), &["port_warn_pct=45".to_string()]).expect("valid");
        assert_eq!(t.port_warn_pct, 45.0);
        assert_eq!(t.close_wait_warn, 3);
        assert_eq!(t.port_critical_pct, Thresholds::default().port_critical_pct);
        // Bounds are allowed; a whole percentage may be written either way.
        let t = flag("port_critical_pct=100").expect("100 is allowed");
        assert_eq!(t.port_critical_pct, 100.0);
        assert!(flag("fd_warn_pct=0.5").is_ok());
        assert!(flag("close_wait_warn=1").is_ok());
        assert!(flag("close_wait_warn=2.0").is_ok(), "2.0 is a whole number");
    }

    #[test]
    fn every_threshold_key_is_checked() {
        let fields: Vec<String> = match toml::Value::try_from(Thresholds::default()) {
            Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
            other => panic!("{other:?}"),
        };
        let mut keys: Vec<String> = THRESHOLD_KEYS.iter().map(|(k, _)| k.to_string()).collect();
        let mut levels: Vec<String> = threshold_levels(&Thresholds::default())
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        keys.sort();
        levels.sort();
        assert_eq!(keys, fields);
        assert_eq!(levels, fields);
        // The defaults pass their own checks.
        assert_eq!(
            thresholds(None, &[]).expect("defaults"),
            Thresholds::default()
        );
    }

    #[test]
    fn bad_threshold_flags_are_one_line_naming_key_and_range() {
        let pct = "give a percentage above 0 and at most 100";
        let count = "give a whole number from 1 to 1000000000";
        for (given, want) in [
            ("port_warn_pct=-1", pct),
            ("port_warn_pct=nan", pct),
            ("port_warn_pct=NaN", pct),
            ("port_warn_pct=inf", pct),
            ("port_warn_pct=-inf", pct),
            ("port_warn_pct=-1e308", pct),
            ("port_warn_pct=1e400", pct),
            ("port_warn_pct=150", pct),
            ("port_warn_pct=0", pct),
            ("accept_queue_warn_pct=100.5", pct),
            ("close_wait_warn=0", count),
            ("close_wait_warn=-5", count),
            ("close_wait_warn=2.5", count),
            ("close_wait_age_s=1e10", count),
            ("close_wait_critical=inf", count),
        ] {
            let e = flag(given).expect_err(given).to_string();
            let key = given.split('=').next().expect("key");
            assert!(e.contains(key) && e.contains(want), "{given}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = flag("close_wait_warn=lots")
            .expect_err("not a number")
            .to_string();
        assert!(
            e.contains("'close_wait_warn=lots'") && e.contains("give a number"),
            "{e}"
        );
        let e = flag("nope=1").expect_err("unknown key").to_string();
        assert!(
            e.contains("unknown threshold 'nope'") && e.contains("port_warn_pct"),
            "{e}"
        );
        let e = flag("port_warn_pct").expect_err("no =").to_string();
        assert!(e.contains("KEY=NUMBER"), "{e}");
    }

    #[test]
    fn warning_above_critical_is_refused_naming_both() {
        let e = flag("port_warn_pct=90")
            .expect_err("above the default 80")
            .to_string();
        assert_eq!(
            e,
            "thresholds: port_warn_pct (90, --threshold) is above port_critical_pct (80, the default): a warning level must be at most its critical level"
        );
        let e = thresholds(
            None,
            &[
                "close_wait_critical=5".to_string(),
                "close_wait_warn=6".to_string(),
            ],
        )
        .expect_err("warn above critical")
        .to_string();
        assert!(
            e.contains(
                "close_wait_warn (6, --threshold) is above close_wait_critical (5, --threshold)"
            ),
            "{e}"
        );
        // Equal is allowed: everything at that level is critical.
        assert!(flag("port_warn_pct=80").is_ok());
        // Levels are compared once every layer is in: raising both works in either order.
        for pair in [
            ["port_warn_pct=90", "port_critical_pct=95"],
            ["port_critical_pct=95", "port_warn_pct=90"],
        ] {
            let given: Vec<String> = pair.iter().map(|s| s.to_string()).collect();
            assert!(thresholds(None, &given).is_ok(), "{pair:?}");
        }
        let file = ConfigFile::new("levels.toml", "fd_warn_pct = 99\n");
        let e = thresholds(Some(&file.0), &[])
            .expect_err("above 95")
            .to_string();
        assert!(
            e.contains(&format!("fd_warn_pct (99, line 1 of {})", file.0.display())),
            "{e}"
        );
    }

    #[test]
    fn bad_config_files_give_line_and_column() {
        for (name, text, want) in [
            (
                "neg.toml",
                "close_wait_warn = 3\nport_warn_pct = -1\n",
                "line 2, column 17: port_warn_pct is '-1'",
            ),
            (
                "nan.toml",
                "port_warn_pct = nan\n",
                "line 1, column 17: port_warn_pct is 'nan'",
            ),
            (
                "inf.toml",
                "\n\n  fd_warn_pct = inf\n",
                "line 3, column 17: fd_warn_pct is 'inf'",
            ),
            (
                "big.toml",
                "port_warn_pct = 150\n",
                "line 1, column 17: port_warn_pct is '150': give a percentage",
            ),
            (
                "tiny.toml",
                "port_warn_pct = -1e308\n",
                "port_warn_pct is '-1e308'",
            ),
            (
                "zero.toml",
                "close_wait_warn = 0\n",
                "close_wait_warn is '0': give a whole number",
            ),
            (
                "str.toml",
                "port_warn_pct = \"50\"\n",
                "line 1, column 17: port_warn_pct is '\"50\"': give a number",
            ),
            (
                "key.toml",
                "port_warn = 40\n",
                "line 1, column 13: unknown threshold 'port_warn'",
            ),
            (
                "syntax.toml",
                "port_warn_pct = 40\nclose_wait_warn = = 3\n",
                "line 2, column 19:",
            ),
        ] {
            let file = ConfigFile::new(name, text);
            let e = thresholds(Some(&file.0), &[]).expect_err(name).to_string();
            assert!(
                e.starts_with(&format!("config file '{}': ", file.0.display())),
                "{e}"
            );
            assert!(e.contains(want), "{name}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn long_values_are_quoted_as_a_short_prefix() {
        let long = format!("port_warn_pct={}", "9".repeat(5000));
        let e = flag(&long).expect_err("too big").to_string();
        assert!(e.len() < 300, "{} chars: {e}", e.len());
        assert!(e.contains("'99999") && e.contains('…'), "{e}");
        let junk = format!("{}=1", "k".repeat(5000));
        let e = flag(&junk).expect_err("unknown").to_string();
        assert!(e.len() < 500, "{} chars", e.len());
        let file = ConfigFile::new(
            "long.toml",
            &format!("port_warn_pct = {}\n", "1".repeat(4000)),
        );
        let e = thresholds(Some(&file.0), &[])
            .expect_err("too big")
            .to_string();
        assert!(e.len() < 300, "{} chars: {e}", e.len());
        // A 10 MB config file: one value, or one line of garbage. Neither is echoed.
        for body in [
            format!("port_warn_pct = {}\n", "7".repeat(10 << 20)),
            format!("port_warn_pct = \"{}\"\n", "x".repeat(10 << 20)),
            "#".repeat(10 << 20),
        ] {
            let file = ConfigFile::new("huge.toml", &body);
            let e = thresholds(Some(&file.0), &[])
                .expect_err("10 MB")
                .to_string();
            assert!(e.len() < 300, "{} chars: {e}", e.len());
            assert!(e.contains("larger than the 1 MiB read per file"), "{e}");
        }
        // A value under the file bound but long: quoted as a prefix.
        let file = ConfigFile::new(
            "long2.toml",
            &format!("port_warn_pct = \"{}\"\n", "x".repeat(500_000)),
        );
        let e = thresholds(Some(&file.0), &[])
            .expect_err("a string")
            .to_string();
        assert!(
            e.len() < 300 && e.contains("give a number"),
            "{} chars: {e}",
            e.len()
        );
    }

    #[test]
    fn a_config_file_that_is_not_a_regular_file_is_refused_without_blocking() {
        let fifo =
            std::env::temp_dir().join(format!("tcpdoctor-config-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let e = thresholds(Some(&fifo), &[])
            .expect_err("a FIFO")
            .to_string();
        let _ = std::fs::remove_file(&fifo);
        assert!(e.contains("not a regular file (a FIFO)"), "{e}");
        let e = thresholds(Some(Path::new("/dev/zero")), &[])
            .expect_err("a device")
            .to_string();
        assert!(e.contains("not a regular file (a character device)"), "{e}");
    }

    fn cli(args: &[&str]) -> cli::Cli {
        use clap::Parser;
        cli::Cli::try_parse_from(std::iter::once("tcpdoctor").chain(args.iter().copied()))
            .expect("valid flags")
    }

    fn common(args: &[&str], env: &Environment) -> Result<Common, SettingsError> {
        let term = Terminal {
            stdout_is_tty: false,
            stdin_is_tty: false,
            no_color_env: false,
        };
        resolve(cli(args), term, env).map(|(c, _)| c)
    }

    #[test]
    fn a_proc_root_other_than_proc_is_a_replay_read_from_its_files() {
        let env = Environment::default();
        let live = common(&["states"], &env).expect("live");
        assert!(!live.replay);
        assert_eq!(live.source, SourcePref::Auto);
        let slash = common(&["--proc-root", "/proc/", "states"], &env).expect("live");
        assert!(!slash.replay, "a trailing slash is still the live /proc");
        let replay = common(&["--proc-root", "/tmp/cap", "states"], &env).expect("replay");
        assert!(replay.replay);
        assert_eq!(
            replay.source,
            SourcePref::Proc,
            "never sock_diag on a replay"
        );
        let e = common(
            &["--source", "netlink", "--proc-root", "/tmp/cap", "check"],
            &env,
        )
        .expect_err("netlink cannot replay");
        assert!(e.to_string().contains("'/tmp/cap'"), "{e}");
    }

    #[test]
    fn commands_that_act_on_the_live_host_refuse_a_recording() {
        let env = Environment::default();
        for cmd in [
            &["kill", "--pid", "999999", "--dry-run"][..],
            &["watch"],
            &["serve"],
            &["snapshot", "-o", "/tmp/x.tdsnap"],
        ] {
            let mut args = vec!["--from", "tests/fixtures/snapshot/v1-farm.tdsnap"];
            args.extend_from_slice(cmd);
            let e = common(&args, &env).expect_err("refused");
            assert!(
                matches!(e, SettingsError::FromNotHere(c) if c == cmd[0]),
                "{cmd:?}: {e}"
            );
        }
        assert!(common(
            &["--from", "tests/fixtures/snapshot/v1-farm.tdsnap", "check"],
            &env
        )
        .is_ok());
    }

    #[test]
    fn bpf_knobs_come_from_the_environment_once() {
        let scan = |env: Environment| common(&["states"], &env).map(|c| c.owner_scan);
        let default = scan(Environment::default()).expect("default");
        assert_eq!(default.bpf, BpfUse::FromOpenFiles(BPF_MIN_FILES));
        assert!(!default.debug);
        let off = scan(Environment {
            no_bpf: true,
            bpf_min_files: Some("0".into()),
            debug: true,
        })
        .expect("off");
        assert_eq!(off.bpf, BpfUse::Never, "TCPDOCTOR_NO_BPF wins");
        assert!(off.debug);
        let always = scan(Environment {
            bpf_min_files: Some(" 0 ".into()),
            ..Environment::default()
        })
        .expect("always");
        assert_eq!(always.bpf, BpfUse::FromOpenFiles(0));
        let e = scan(Environment {
            bpf_min_files: Some("lots".into()),
            ..Environment::default()
        })
        .expect_err("not a number");
        assert!(e.to_string().contains("'lots'"), "{e}");
    }

    #[test]
    fn netns_choices_parse() {
        assert_eq!(NetnsChoice::parse("all").ok(), Some(NetnsChoice::All));
        assert_eq!(
            NetnsChoice::parse("current").ok(),
            Some(NetnsChoice::Current)
        );
        assert_eq!(
            NetnsChoice::parse("1234").ok(),
            Some(NetnsChoice::Pid(1234))
        );
        assert_eq!(
            NetnsChoice::parse("/run/netns/blue").ok(),
            Some(NetnsChoice::Path(PathBuf::from("/run/netns/blue")))
        );
        assert_eq!(
            NetnsChoice::parse("blue").ok(),
            Some(NetnsChoice::Name("blue".into()))
        );
        assert!(NetnsChoice::parse("").is_err());
        assert!(NetnsChoice::parse("0").is_err());
        assert!(NetnsChoice::parse("99999999999999999999").is_err());
    }

    #[test]
    fn state_words_combine() {
        assert!(state_set(&[]).is_all());
        let cw = state_set(&[StateWord::One(TcpState::CloseWait)]);
        assert_eq!(cw.iter().collect::<Vec<_>>(), vec![TcpState::CloseWait]);
        let conn = state_set(&[StateWord::Connected]);
        assert!(!conn.contains(TcpState::Listen));
        assert!(conn.contains(TcpState::TimeWait));
        assert_eq!(conn.iter().count(), 9);
    }
}
