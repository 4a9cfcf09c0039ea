//! Command-line flags as clap sees them. Nothing below `main` uses these types: they are
//! turned into [`crate::settings`] first, where values are checked and named in errors.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{AddrFilter, TcpState};

#[derive(Debug, Parser)]
#[command(
    name = "tcpdoctor",
    version,
    about = "Find, explain and fix TCP connection-state problems (TIME_WAIT, CLOSE_WAIT, port and fd exhaustion)",
    after_help = "Exit codes: 0 success; 1 warnings found (check); 2 critical findings (check); 3 error (bad flag or value, unreadable source); 4 no problem found in what could be seen, but the view is incomplete (check: not root, so other namespaces, owners or the kernel log were not seen; the report says which). kill: 0 every selected socket destroyed or already gone (or a dry run); 1 some not destroyed, or the answer was no; 3 none could be (kernel without CONFIG_INET_DIAG_DESTROY, no CAP_NET_ADMIN) or a refused request.\nColors: on a terminal only; NO_COLOR or --color never turns them off."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// `tcpdoctor` alone is `tcpdoctor check`, and takes its flags: `tcpdoctor --json`.
    /// Given before another command they are refused (settings).
    #[command(
        flatten,
        next_help_heading = "Check (the command run when none is given)"
    )]
    pub check: CheckArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where to read sockets from: sock_diag netlink (auto falls back to /proc/net/tcp).
    #[arg(long, global = true, value_enum, default_value_t = SourceArg::Auto)]
    pub source: SourceArg,
    /// Read /proc from this directory (to replay a host captured into a folder).
    #[arg(long, global = true, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// When to color output.
    #[arg(long, global = true, value_enum, default_value_t = ColorArg::Auto)]
    pub color: ColorArg,
    /// Network namespaces to look at: all, current, a path (/run/netns/NAME,
    /// /proc/PID/ns/net), a pid, or a name (ip netns, container, pod). Default: all for
    /// check, watch and serve when run as root; current for states, sockets
    /// and kill.
    #[arg(long, global = true, value_name = "NS")]
    pub netns: Option<String>,
    /// Read a recorded host instead of this one (check, states, sockets): a snapshot
    /// (tcpdoctor snapshot -o FILE), or saved output of ss, netstat, nstat, sysctl -a,
    /// /proc/net/tcp, or a sosreport folder. Repeat it for several files of one host.
    #[arg(long, global = true, value_name = "FILE|DIR")]
    pub from: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    Auto,
    Netlink,
    Proc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Diagnose this host: state summary, then findings ranked by severity, each with
    /// evidence, the mechanism and the fix. The default command.
    Check(CheckArgs),
    /// Live terminal view: state counts over time, top leakers, port headroom, counter
    /// rates and the current findings.
    #[command(
        after_help = "Ends with exit code 0 on q, Ctrl-C, SIGINT, SIGTERM and SIGHUP, and when its terminal goes away (end of file, an error or a hang-up: a dropped ssh session, a killed tmux pane), restoring the terminal as far as it can; 3 when it cannot start (no terminal)."
    )]
    Watch(WatchArgs),
    /// Prometheus / OpenMetrics endpoint for fleets (loopback by default).
    #[command(
        after_help = "Signals: SIGTERM and SIGINT finish the scrapes in flight (at most 5 s) and exit 0; SIGHUP reads the --config thresholds again and drops the cached result (a file that no longer parses is logged and the previous thresholds kept).\nLimits: request heads of at most 8 KiB and 100 header lines within 5 s (431, 414, 400; HTTP versions other than 1.0 and 1.1 get 505); idle kept-alive connections close after 10 s; at most 512 connections (the open-files limit minus 48 if lower), the one waiting longest for its request dropped to admit a new one. Exit code 3 if the listening socket cannot be opened or fails, so that a service manager restarts it."
    )]
    Serve(ServeArgs),
    /// Count TCP sockets per state (every state, zeros included), IPv4, IPv6 and total.
    States(StatesArgs),
    /// List TCP sockets with their owning process, like `ss -tanp` but fast.
    Sockets(SocketsArgs),
    /// Trace connections as they open and close (BPF, root): per process and
    /// destination, connections per second, lifetimes, who closes first, resets and
    /// failed connect() calls by errno. Every network namespace unless --netns says.
    Trace(TraceArgs),
    /// Check a configuration offline, without a running process: `lint nginx [FILE]`.
    Lint(LintArgs),
    /// Destroy leaked sockets from outside their process (SOCK_DESTROY, what `ss -K`
    /// does): CLOSE_WAIT by default, never LISTEN, ESTABLISHED only with --force. Needs a
    /// selector (--pid, --port, --peer); lists the sockets and asks before destroying
    /// unless --yes. The process keeps its descriptors until it closes them.
    Kill(KillArgs),
    /// Save everything check reads (sockets with owners, tcp_info and timers, counters
    /// sampled twice, sysctls, limits, namespaces, kernel log, nginx) into one
    /// compressed file, for `--from FILE` later or elsewhere, and for `diff`.
    Snapshot(SnapshotArgs),
    /// Compare two recordings of a host (snapshots or saved ss/netstat output): states
    /// per process and per destination, findings resolved, new and unchanged, and the
    /// rates that moved.
    Diff(DiffArgs),
    /// Print the Tab-completion script for bash, zsh or fish.
    ///
    /// The Debian package installs all three. By hand, as root: bash: `tcpdoctor
    /// completions bash > /usr/share/bash-completion/completions/tcpdoctor`; zsh: the
    /// output as a file named `_tcpdoctor` in a folder of $fpath; fish: `tcpdoctor
    /// completions fish > ~/.config/fish/completions/tcpdoctor.fish` (per user).
    Completions(CompletionsArgs),
    /// Print the manual page of tcpdoctor or of one command (roff), or write them all.
    ///
    /// Read one without installing it: `tcpdoctor man serve | man -l -`. Packages write
    /// them all with --out-dir; once installed: `man tcpdoctor`, `man tcpdoctor-serve`.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Sockets held by this process (comma-separated). Its network namespace is not
    /// implied: add --netns PID for a process in a container.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Sockets with this local or remote port (comma-separated).
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<u16>,
    /// Sockets whose remote end matches: address, CIDR and/or port (10.0.0.0/8,
    /// 10.1.2.3:443, [::1]:80, :443). Selectors of different kinds must all match.
    #[arg(long, value_name = "ADDR")]
    pub peer: Vec<AddrFilter>,
    /// States to destroy (comma-separated) [default: close-wait]. LISTEN never;
    /// ESTABLISHED only with --force.
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state_word)]
    pub state: Vec<StateWord>,
    /// Allow --state established: live connections are reset mid-conversation.
    #[arg(long)]
    pub force: bool,
    /// Destroy without asking (needed when there is no terminal to ask on).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// List what would be destroyed, destroy nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print JSON (schema: docs/json.md): each socket with its outcome.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The file to write (replaced if it exists).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Seconds between the two counter samples, as for check.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// Do not trace connections during the interval (by default, as root with BPF, the
    /// snapshot records what check's tracer counts: who opens and closes connections,
    /// failed connect() calls, resets).
    #[arg(long)]
    pub no_trace: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The recording before the change: a snapshot file, a saved capture, or a folder
    /// of captures (a sosreport).
    pub before: PathBuf,
    /// The recording after it.
    pub after: PathBuf,
    /// Rows per table (processes, destinations; 0 = all).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// TOML file with thresholds for the findings (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one threshold, e.g. --threshold close_wait_warn=5 (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub threshold: Vec<String>,
    /// Print JSON (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: ShellArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The command whose page to print, e.g. `serve` or `lint nginx`; none: tcpdoctor(1).
    #[arg(value_name = "COMMAND", conflicts_with = "out_dir")]
    pub command: Vec<String>,
    /// Write every page (tcpdoctor.1, tcpdoctor-check.1, ...) into this folder and print
    /// their paths.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    #[command(subcommand)]
    pub target: LintTarget,
}

#[derive(Debug, Subcommand)]
pub enum LintTarget {
    /// nginx: upstreams without keep-alive, keep-alive defeated by HTTP/1.0 or
    /// Connection: close, the proxy_set_header inheritance trap, client keep-alive,
    /// worker_connections against worker_rlimit_nofile. Each finding with file:line and
    /// the change as a diff.
    Nginx(LintNginxArgs),
}

#[derive(Debug, Args)]
pub struct LintNginxArgs {
    /// The main configuration file. Default: the running masters' configurations, else
    /// the path compiled into the installed nginx, else /etc/nginx/nginx.conf.
    pub file: Option<PathBuf>,
    /// Judge against this version (1.24.0, nginx/1.29.7, openresty/1.21.4.1) instead
    /// of the installed binary's; it decides the keep-alive defaults (1.29.7+).
    #[arg(long, value_name = "VERSION")]
    pub nginx_version: Option<String>,
    /// Show every piece of evidence.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print JSON (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FamilyArgs {
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

#[derive(Debug, Args)]
pub struct StatesArgs {
    /// One row per process, peer address, local port, remote port or network namespace,
    /// biggest first.
    #[arg(long, value_enum, value_name = "KEY")]
    pub by: Option<ByArg>,
    /// Only these states (comma-separated; close-wait, CLOSE_WAIT, close_wait all work;
    /// also `all` and `connected`).
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state_word)]
    pub state: Vec<StateWord>,
    /// Rows shown with --by (0 = all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Print JSON (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    Process,
    Peer,
    LocalPort,
    RemotePort,
    Netns,
}

#[derive(Debug, Args)]
pub struct SocketsArgs {
    /// Only these states (comma-separated; also `all` and `connected`).
    #[arg(long, value_name = "STATE", value_delimiter = ',', value_parser = parse_state_word)]
    pub state: Vec<StateWord>,
    /// Local or remote port (comma-separated).
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<u16>,
    /// Local address, CIDR and/or port: 10.0.0.1, 10.0.0.0/8:80, [::1]:80, :80.
    #[arg(long, value_name = "ADDR")]
    pub local: Vec<AddrFilter>,
    /// Remote address, CIDR and/or port: 10.0.0.1, 10.0.0.0/8:80, [::1]:80, :80.
    #[arg(long, value_name = "ADDR")]
    pub peer: Vec<AddrFilter>,
    /// Sockets owned by this process (comma-separated).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Sockets owned by processes with this exact name (/proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Show at most N sockets (the JSON still reports how many matched).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Add tcp_info: rtt, time since last receive and last ACK.
    #[arg(short = 'i', long)]
    pub info: bool,
    /// Skip the /proc scan for owning processes (faster).
    #[arg(long, conflicts_with_all = ["pid", "comm"])]
    pub no_owners: bool,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Print JSON (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,
}

/// A word given to `--state`: a state, or a group of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWord {
    One(TcpState),
    All,
    /// Every state but LISTEN and CLOSE (ss's `connected`).
    Connected,
}

fn parse_state_word(s: &str) -> Result<StateWord, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "all" => Ok(StateWord::All),
        "connected" => Ok(StateWord::Connected),
        _ => s
            .parse::<TcpState>()
            .map(StateWord::One)
            .map_err(|e| e.to_string()),
    }
}

#[derive(Debug, Args, PartialEq)]
pub struct CheckArgs {
    /// Seconds between the two counter samples (rates such as ListenOverflows/s).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// TOML file with thresholds (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one threshold, e.g. --threshold port_warn_pct=60 (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub threshold: Vec<String>,
    /// Show every piece of evidence and every fix step.
    #[arg(short, long)]
    pub verbose: bool,
    /// Print the kernel settings the findings propose, as a commented /etc/sysctl.d/
    /// file, instead of the report. Nothing is written to the system. Not with --json
    /// (the JSON report has them in each finding's "proposed").
    #[arg(long, conflicts_with = "json")]
    pub emit_sysctl: bool,
    /// Do not trace connections during the interval (by default, as root with BPF, the
    /// tracer names who opens short connections and counts failed connect() calls and
    /// resets).
    #[arg(long)]
    pub no_trace: bool,
    /// Print JSON (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    /// Whether any flag differs from its default (given on the command line).
    pub fn any_given(&self) -> bool {
        self.interval != 1.0
            || self.config.is_some()
            || !self.threshold.is_empty()
            || self.verbose
            || self.emit_sysctl
            || self.no_trace
            || self.json
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub interval: f64,
    /// Rows in the top-N panels.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Most CPU sampling may use, in percent of one core (0 = no limit). When one sample
    /// costs more than that allows at --interval (a few hundred thousand sockets), samples
    /// are spaced out to stay under it; the header shows the real spacing.
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    pub max_cpu: f64,
    /// TOML file with thresholds (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one threshold, e.g. --threshold port_warn_pct=60 (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub threshold: Vec<String>,
    /// Scripting and debug mode (hidden): no terminal UI; print one JSON line per sample
    /// (state counts, counter rates, CLOSE_WAIT trend per process, findings) on stdout.
    #[arg(long, hide = true)]
    pub headless: bool,
    /// Stop after N samples (hidden; for scripts and tests, with or without --headless).
    #[arg(long, value_name = "N", hide = true)]
    pub samples: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve /metrics on. Loopback unless you say otherwise.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9469")]
    pub listen: std::net::SocketAddr,
    /// Processes and destinations exported per top-N metric; the rest fold into `other`.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Scrapes within this many seconds of a collection reuse it.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub cache: f64,
    /// TOML file with thresholds (see docs/config.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one threshold, e.g. --threshold port_warn_pct=60 (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub threshold: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Seconds between refreshes of the live table (and JSON interval lines).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,
    /// Stop after this many seconds and print the summary (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Rows in the table (0 = all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Only connections of these processes (comma-separated).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Only connections of processes with this exact name (/proc/PID/comm).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Only connections to this remote port (outgoing) or on this listening port
    /// (incoming); comma-separated.
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    pub port: Vec<u16>,
    /// Only outgoing connections to this address, CIDR and/or port: 10.0.0.0/8,
    /// 10.1.2.3:443, [::1]:80.
    #[arg(long, value_name = "ADDR")]
    pub peer: Vec<AddrFilter>,
    /// Also print raw events (state changes, resets, failed connect() calls) as they
    /// happen, at most --events-limit per second (a hard limit in the kernel).
    #[arg(long)]
    pub events: bool,
    /// Events per second at most, in all.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "events")]
    pub events_limit: u32,
    /// Find where leaked sockets were opened: record who opens each socket (connect()
    /// or accept(): process, thread, time, destination, user-space stack) and, every
    /// --leak-every seconds and at the end, group the leaked ones (CLOSE_WAIT idle for
    /// --leak-age or longer, or still held after the kernel closed them) by call site.
    /// Only sockets opened while it runs are attributed: run it for a few minutes.
    #[arg(long)]
    pub leaks: bool,
    /// Seconds a CLOSE_WAIT socket must have been idle to count as leaked (check's
    /// close_wait_age_s).
    #[arg(long, value_name = "SECS", default_value_t = 300.0, requires = "leaks")]
    pub leak_age: f64,
    /// Seconds between looks at the leaks.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, requires = "leaks")]
    pub leak_every: f64,
    /// Sockets whose origin is kept at once (about 150 bytes of kernel memory each);
    /// when full the oldest unread records go, and a notice says how many.
    #[arg(long, value_name = "N", default_value_t = 65536, requires = "leaks")]
    pub leak_table: u32,
    /// Print JSON lines: one per interval, one per event, and a final summary
    /// (schema: docs/json.md).
    #[arg(long)]
    pub json: bool,
}
