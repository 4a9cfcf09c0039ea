//! Raw command-line flags of sockfarm (clap). Checking and resolving them into a
//! build plan happens in `plan.rs`; nothing else sees these types.

use std::net::{IpAddr, SocketAddr};

use clap::{Parser, ValueEnum};

/// Build real TCP sockets in known states (LISTEN, ESTABLISHED, CLOSE_WAIT,
/// FIN_WAIT2, TIME_WAIT) on loopback for tcpdoctor's tests and benchmarks.
///
/// Run it inside a throwaway network namespace. When every socket is in place it
/// prints one JSON line on stdout, then holds the sockets until --hold-secs pass,
/// stdin reaches EOF, or SIGTERM/SIGINT arrives. TIME_WAIT sockets expire 60 s
/// after they were made, so counts that include them are exact only until
/// `time_wait_valid_until_unix_ms`.
#[derive(Debug, Parser)]
#[command(name = "sockfarm", version)]
pub struct Args {
    /// Listener that the connections go to, round-robin (repeatable):
    /// 127.0.0.1:5000 or [::1]:5000; port 0 picks a free port.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Listener that --unaccepted connections go to; it never calls accept()
    /// (repeatable).
    #[arg(long = "backlog-listen", value_name = "ADDR:PORT")]
    pub backlog_listen: Vec<SocketAddr>,

    /// listen() backlog of --backlog-listen sockets [default: net.core.somaxconn].
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,

    /// N connections kept open at both ends (2N ESTABLISHED sockets).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub established: u64,

    /// N connections whose client did shutdown(SHUT_WR): client FIN_WAIT2, server
    /// CLOSE_WAIT with the EOF unread (Recv-Q 1).
    #[arg(long = "close-wait", value_name = "N", default_value_t = 0)]
    pub close_wait: u64,

    /// Then reset the --close-wait connections: each client closes with SO_LINGER
    /// {1, 0}, and the RST takes the server end out of CLOSE_WAIT into CLOSE, out of
    /// every socket table (`ss` and sock_diag no longer list it), while the worker
    /// keeps its descriptor: a leaked descriptor of a closed socket ("detached").
    #[arg(long = "reset-close-wait")]
    pub reset_close_wait: bool,

    /// Like --close-wait, but the server read the EOF (CLOSE_WAIT with Recv-Q 0).
    #[arg(long = "close-wait-read", value_name = "N", default_value_t = 0)]
    pub close_wait_read: u64,

    /// N connections closed client-first; each leaves one client TIME_WAIT.
    #[arg(long = "time-wait", value_name = "N", default_value_t = 0)]
    pub time_wait: u64,

    /// N connections to a --backlog-listen socket that are never accepted (client
    /// ESTABLISHED with an fd, server child ESTABLISHED in the accept queue).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub unaccepted: u64,

    /// The --unaccepted clients give up: each shuts down its sending side right
    /// after connecting, so the child waiting in the accept queue turns CLOSE_WAIT
    /// with no descriptor (inode 0) and the client FIN_WAIT2.
    #[arg(long = "give-up")]
    pub give_up: bool,

    /// After the --unaccepted connections fill the accept queue of the first
    /// --backlog-listen socket (--unaccepted = backlog + 1, the kernel's limit),
    /// N more clients connect without waiting: their SYNs are dropped
    /// (TcpExt ListenOverflows rises on every retry) and they stay SYN_SENT.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub overflow: u64,

    /// A CLOSE_WAIT leak that grows while tests watch: after the ready line, the parent
    /// process (pid in the ready line) makes N more --close-wait style connections every
    /// --grow-every-ms, --grow-steps times, and holds both ends (server CLOSE_WAIT with
    /// the EOF unread, client FIN_WAIT2). Needs --listen; at most 10000 in all.
    #[arg(long = "grow-close-wait", value_name = "N", default_value_t = 0)]
    pub grow_close_wait: u64,

    /// Milliseconds between --grow-close-wait steps (100 to 60000).
    #[arg(long = "grow-every-ms", value_name = "MS", default_value_t = 1000)]
    pub grow_every_ms: u64,

    /// Number of --grow-close-wait steps.
    #[arg(long = "grow-steps", value_name = "K", default_value_t = 10)]
    pub grow_steps: u64,

    /// Worker processes that hold the sockets (each stays below RLIMIT_NOFILE).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub processes: u32,

    /// Hold the sockets this long, then exit (at most 3600).
    #[arg(long = "hold-secs", value_name = "S", default_value_t = 600)]
    pub hold_secs: u64,

    /// Keep holding when stdin reaches EOF (for runs with stdin at /dev/null).
    #[arg(long = "ignore-stdin")]
    pub ignore_stdin: bool,

    /// Client source addresses, spread round-robin per listener of the same
    /// family (bind with IP_BIND_ADDRESS_NO_PORT before connect).
    #[arg(long = "source-ips", value_name = "IP,IP,...", value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,

    /// Omit the per-socket lists from the ready line (for large farms).
    #[arg(long = "quiet-fds")]
    pub quiet_fds: bool,

    /// Set net.ipv4.ip_local_port_range to "1024 65000" (only inside a non-initial
    /// network namespace).
    #[arg(long = "widen-port-range")]
    pub widen_port_range: bool,

    /// Set net.ipv4.tcp_max_tw_buckets (only inside a non-initial network namespace).
    #[arg(long = "max-tw-buckets", value_name = "N")]
    pub max_tw_buckets: Option<u64>,

    /// Set net.ipv4.tcp_tw_reuse=0 and net.ipv4.tcp_rfc1337=1 (only inside a
    /// non-initial network namespace) so large --time-wait farms stay exact: with
    /// the defaults a later connect() may take over a TIME_WAIT 4-tuple older than
    /// 1 s, and a stray RST kills a TIME_WAIT socket. Restore them afterwards if
    /// a test depends on the defaults.
    #[arg(long = "exact-time-wait")]
    pub exact_time_wait: bool,

    /// Churn mode (see churn.rs): serve short connections on ADDR:PORT (port 0 picks
    /// one), print {"pid","listen"}, and run until stdin EOF or --hold-secs.
    #[arg(long = "churn-serve", value_name = "ADDR:PORT")]
    pub churn_serve: Option<SocketAddr>,

    /// Churn mode: make --churn-count short connections to ADDR:PORT at --churn-rate,
    /// then print one result line.
    #[arg(long = "churn-connect", value_name = "ADDR:PORT")]
    pub churn_connect: Option<SocketAddr>,

    /// Churn mode: connections to make (or keep-alive exchanges).
    #[arg(long = "churn-count", value_name = "N", default_value_t = 0)]
    pub churn_count: u64,

    /// Churn mode: connections (or exchanges) per second; 0 = as fast as possible.
    #[arg(long = "churn-rate", value_name = "PER_S", default_value_t = 0.0)]
    pub churn_rate: f64,

    /// Churn mode: which side closes each connection first.
    #[arg(long = "churn-closer", value_enum, default_value_t = ChurnCloser::Client)]
    pub churn_closer: ChurnCloser,

    /// Churn mode: the closing side sets SO_LINGER {1,0}, so its close sends a reset.
    #[arg(long = "churn-linger0")]
    pub churn_linger0: bool,

    /// Churn mode: the client keeps every connection open until stdin EOF. With
    /// `--churn-closer server` it sends its one-byte request first, so the server
    /// closes and each held client end stays in CLOSE_WAIT (a client-side leak).
    #[arg(long = "churn-hold")]
    pub churn_hold: bool,

    /// Churn mode, server with `--churn-closer client`: close each connection MS
    /// milliseconds after reading the client's EOF (0 to 60000), so its end stays in
    /// CLOSE_WAIT that long: a slow closer, not a leak.
    #[arg(long = "churn-close-delay-ms", value_name = "MS", default_value_t = 0)]
    pub churn_close_delay_ms: u64,

    /// Churn mode: the client makes one connection and --churn-count request/replies.
    #[arg(long = "churn-keepalive")]
    pub churn_keepalive: bool,

    /// Churn mode: threads that connect (client) or accept (server).
    #[arg(long = "churn-threads", value_name = "N", default_value_t = 1)]
    pub churn_threads: u32,

    /// Fork mode (see forks.rs): listen on ADDR:PORT (port 0 picks one) and fork
    /// --fork-workers workers that share the listener.
    #[arg(long = "fork-listen", value_name = "ADDR:PORT")]
    pub fork_listen: Option<SocketAddr>,

    /// Fork mode: listen() backlog.
    #[arg(long = "fork-backlog", value_name = "N", default_value_t = 4096)]
    pub fork_backlog: u32,

    /// Fork mode: workers forked after listen(), each holding the listener.
    #[arg(long = "fork-workers", value_name = "N", default_value_t = 2)]
    pub fork_workers: u32,

    /// Fork mode: the workers never accept.
    #[arg(long = "fork-idle")]
    pub fork_idle: bool,

    /// Fork mode: client connections the parent makes and holds before the ready line.
    #[arg(long = "fork-queued", value_name = "N", default_value_t = 0)]
    pub fork_queued: u32,

    /// Fork mode: short-lived processes forked per second after the ready line (0: none).
    #[arg(long = "fork-rate", value_name = "PER_S", default_value_t = 0)]
    pub fork_rate: u32,

    /// Fork mode: seconds of churn.
    #[arg(long = "fork-secs", value_name = "S", default_value_t = 0)]
    pub fork_secs: u64,

    /// Fork mode: connections each short-lived process makes to the listener.
    #[arg(long = "fork-conns", value_name = "N", default_value_t = 2)]
    pub fork_conns: u32,

    /// Fork mode: how long each short-lived process holds its connections.
    #[arg(long = "fork-hold-ms", value_name = "MS", default_value_t = 20)]
    pub fork_hold_ms: u64,
}

/// Which side of a churn connection closes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChurnCloser {
    Client,
    Server,
}
