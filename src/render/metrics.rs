//! Prometheus text exposition (format 0.0.4) of one `serve` collection: a snapshot, its
//! findings and the collector's own health. Pure: writes bytes, reads no clock, no OS.
//!
//! Label cardinality is bounded by construction: per-process and per-destination
//! families carry the `top` biggest entries plus one `other` series; labels name
//! processes by `comm` and `pid` only, never by command line (it can carry secrets).
//! Metric names, types and labels are documented in `deploy/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use crate::analyze::{HOST_RULES, RULES};
use crate::model::{Finding, HostSnapshot, Limit, PortUse, Severity, Snapshot, Source, TcpState};

/// The `Content-Type` of what [`write`] produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Label value of the series that folds every entry beyond the top N.
pub const OTHER: &str = "other";
/// Label value (`pid` and `comm`) for sockets with no visible process: no descriptor
/// (TIME_WAIT, orphans, unaccepted children) or an owner the scan could not see.
pub const UNOWNED: &str = "unowned";

/// Kernel counters exported as Prometheus counters, from the snapshot's second reading:
/// (`Group.Name` as /proc/net/{netstat,snmp} spell it, help text).
pub const COUNTERS: &[(&str, &str)] = &[
    ("TcpExt.ListenOverflows", "Connections dropped because a listener's accept queue was full (TcpExt ListenOverflows)."),
    ("TcpExt.ListenDrops", "Every connection a listener dropped, overflows included (TcpExt ListenDrops)."),
    ("TcpExt.TCPTimeWaitOverflow", "Connections closed without TIME_WAIT because tcp_max_tw_buckets was reached (TcpExt TCPTimeWaitOverflow)."),
    ("TcpExt.TW", "Timewait entries (TIME_WAIT, short FIN_WAIT2) that expired on their normal timer (TcpExt TW)."),
    ("TcpExt.TWRecycled", "TIME_WAIT ports taken over by a new outgoing connection under tcp_tw_reuse (TcpExt TWRecycled)."),
    ("TcpExt.TWKilled", "Timewait entries that expired on a short timer of 4 s or less (TcpExt TWKilled)."),
    ("TcpExt.TCPAbortOnData", "Connections reset because data arrived after the application closed them (TcpExt TCPAbortOnData)."),
    ("TcpExt.TCPAbortOnClose", "Connections reset because the application closed with unread data (TcpExt TCPAbortOnClose)."),
    ("TcpExt.TCPAbortOnMemory", "Connections reset for lack of memory or too many orphans (TcpExt TCPAbortOnMemory)."),
    ("TcpExt.TCPAbortOnTimeout", "Connections dropped after retransmission, keepalive or zero-window probe timers gave up (TcpExt TCPAbortOnTimeout)."),
    ("TcpExt.TCPAbortOnLinger", "Connections reset on close because TCP_LINGER2 was negative (TcpExt TCPAbortOnLinger)."),
    ("TcpExt.TCPAbortFailed", "Resets the kernel wanted to send but could not (TcpExt TCPAbortFailed)."),
    ("TcpExt.TCPReqQFullDrop", "SYNs dropped because the SYN queue was full and syncookies were off (TcpExt TCPReqQFullDrop)."),
    ("TcpExt.TCPReqQFullDoCookies", "SYNs answered with a syncookie because the SYN queue was full (TcpExt TCPReqQFullDoCookies)."),
    ("TcpExt.SyncookiesSent", "Syncookies sent (TcpExt SyncookiesSent)."),
    ("TcpExt.SyncookiesFailed", "ACKs carrying an invalid syncookie (TcpExt SyncookiesFailed)."),
    ("TcpExt.TCPMemoryPressures", "Times TCP entered memory pressure (tcp_mem) (TcpExt TCPMemoryPressures)."),
    ("Tcp.ActiveOpens", "Outgoing connections started: SYN_SENT entered (Tcp ActiveOpens)."),
    ("Tcp.PassiveOpens", "Incoming connections started: SYN_RECV entered from LISTEN (Tcp PassiveOpens)."),
    ("Tcp.AttemptFails", "Connection attempts that failed after the SYN (Tcp AttemptFails)."),
    ("Tcp.EstabResets", "Connections that went from ESTABLISHED or CLOSE_WAIT straight to CLOSED, i.e. were reset (Tcp EstabResets)."),
    ("Tcp.OutRsts", "Segments sent with the RST flag (Tcp OutRsts)."),
    ("Tcp.InErrs", "Segments received in error (Tcp InErrs)."),
    ("Tcp.RetransSegs", "Segments retransmitted (Tcp RetransSegs)."),
];

/// Sources whose health `tcpdoctor_source_up` reports, in output order.
pub const SOURCES: &[&str] = &[
    "sockets",
    "owners",
    "counters",
    "sysctls",
    "sockstat",
    "kernel_log",
];

/// Facts about the collection itself, kept by the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollectionStats {
    /// Collections made since the server started, this one included.
    pub collections: u64,
    /// Of those, collections that produced no snapshot at all.
    pub failures: u64,
    pub duration_s: f64,
    /// When this collection started (Unix time).
    pub started_unix_ms: u64,
    /// Entries per top-N family (at least 1).
    pub top: usize,
}

/// One collection as exported: a snapshot and its findings, or nothing when the socket
/// inventory itself failed (then only the collector's health is exported).
#[derive(Debug, Clone, Copy)]
pub struct Exposition<'a> {
    /// Every namespace read, for the per-namespace families.
    pub host: Option<&'a HostSnapshot>,
    /// The namespaces folded into one ([`HostSnapshot::merged`]).
    pub snapshot: Option<&'a Snapshot>,
    pub findings: &'a [Finding],
    pub stats: CollectionStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// A sample value: integers print exactly, floats in Rust's shortest round-trip form.
#[derive(Debug, Clone, Copy)]
enum Value {
    U(u64),
    I(i64),
    F(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::U(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::I(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::F(v)
    }
}

/// Writes families into a string; the caller writes the string out once.
struct Text {
    buf: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.buf,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.name()
        );
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl Into<Value>) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                self.buf.push_str(k);
                self.buf.push_str("=\"");
                escape_label_into(&mut self.buf, val);
                self.buf.push('"');
            }
            self.buf.push('}');
        }
        let _ = match v.into() {
            Value::U(u) => writeln!(self.buf, " {u}"),
            Value::I(i) => writeln!(self.buf, " {i}"),
            Value::F(f) if f.is_nan() => writeln!(self.buf, " NaN"),
            Value::F(f) if f.is_infinite() => {
                writeln!(self.buf, " {}", if f > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::F(f) => writeln!(self.buf, " {f}"),
        };
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, v: impl Into<Value>) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// Label values escape backslash, double quote and newline (exposition format).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    escape_label_into(&mut s, v);
    s
}

fn escape_label_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `close_wait`: the kernel's name in lower case, as the `state` label spells it.
pub fn state_label(s: TcpState) -> String {
    s.name().to_ascii_lowercase()
}

/// `tcpdoctor_tcpext_listenoverflows_total` for `TcpExt.ListenOverflows`.
pub fn counter_metric_name(key: &str) -> String {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("tcpdoctor_{name}_total")
}

/// The `top` biggest (key, count) pairs, biggest first (ties by key), and the sum of
/// the rest.
fn rank<K: Ord>(items: impl IntoIterator<Item = (K, u64)>, top: usize) -> (Vec<(K, u64)>, u64) {
    let mut v: Vec<(K, u64)> = items.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest = v.iter().skip(top).map(|(_, c)| c).sum();
    v.truncate(top);
    (v, rest)
}

/// Writes the whole exposition.
pub fn write(out: &mut impl Write, e: &Exposition<'_>) -> io::Result<()> {
    out.write_all(render(e).as_bytes())
}

/// The exposition as text.
pub fn render(e: &Exposition<'_>) -> String {
    let mut t = Text {
        buf: String::with_capacity(32 * 1024),
    };
    collector(&mut t, e);
    if let Some(s) = e.snapshot {
        let top = e.stats.top.max(1);
        states(&mut t, s);
        if let Some(h) = e.host {
            namespaces(&mut t, h, top);
        }
        processes(&mut t, s, top);
        time_wait(&mut t, s, top);
        ephemeral_ports(&mut t, s, top);
        file_descriptors(&mut t, s, top);
        listeners(&mut t, s, top);
        // Counters of one namespace only (tcpdoctor's own, the primary): a sum over
        // namespaces would go down whenever a container exits, which Prometheus reads
        // as a counter reset.
        counters(&mut t, e.host.and_then(HostSnapshot::primary).unwrap_or(s));
        findings(&mut t, e.findings);
    }
    t.buf
}

fn collector(t: &mut Text, e: &Exposition<'_>) {
    let st = &e.stats;
    t.family(
        "tcpdoctor_build_info",
        Kind::Gauge,
        "Always 1; the version label is the tcpdoctor version serving these metrics.",
    );
    t.sample(
        "tcpdoctor_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    t.single(
        "tcpdoctor_collections_total",
        Kind::Counter,
        "Collections made since the exporter started; concurrent and cached scrapes share one.",
        st.collections,
    );
    t.single(
        "tcpdoctor_collection_failures_total",
        Kind::Counter,
        "Collections that could not read the socket inventory at all.",
        st.failures,
    );
    t.single(
        "tcpdoctor_collection_duration_seconds",
        Kind::Gauge,
        "How long the collection behind this scrape took.",
        st.duration_s,
    );
    t.single(
        "tcpdoctor_collection_timestamp_seconds",
        Kind::Gauge,
        "Unix time the collection behind this scrape started (scrapes within --cache reuse it).",
        st.started_unix_ms as f64 / 1000.0,
    );

    t.family(
        "tcpdoctor_source_up",
        Kind::Gauge,
        "1 if the source was read in this collection (possibly partly, see tcpdoctor_partial_data_notices), 0 if not.",
    );
    for src in SOURCES {
        t.sample(
            "tcpdoctor_source_up",
            &[("source", src)],
            u64::from(source_up(e.snapshot, src)),
        );
    }

    t.family(
        "tcpdoctor_socket_reader_info",
        Kind::Gauge,
        "1 for the reader the socket inventory came from (netlink: sock_diag; proc: /proc/net/tcp fallback), 0 for the other.",
    );
    let reader = e.snapshot.and_then(|s| s.source);
    for (name, src) in [("netlink", Source::Netlink), ("proc", Source::Proc)] {
        t.sample(
            "tcpdoctor_socket_reader_info",
            &[("reader", name)],
            u64::from(reader == Some(src)),
        );
    }

    if let Some(s) = e.snapshot {
        let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
        for n in &s.missing {
            *codes.entry(n.code.as_str()).or_default() += 1;
        }
        t.family(
            "tcpdoctor_partial_data_notices",
            Kind::Gauge,
            "Partial-data notices of this collection by code (e.g. owners_partial); codes without a notice are absent.",
        );
        for (code, n) in codes {
            t.sample("tcpdoctor_partial_data_notices", &[("code", code)], n);
        }
    }
}

/// Whether `source` was read; derived from the snapshot fields each source fills (they
/// stay empty exactly when the collector recorded an `*_unavailable` notice).
fn source_up(snap: Option<&Snapshot>, source: &str) -> bool {
    let Some(s) = snap else {
        return false;
    };
    match source {
        "sockets" => true,
        "owners" => s.owners_known,
        "counters" => s.counters.is_some(),
        "sysctls" => !s.sysctls.is_empty(),
        "sockstat" => s.sockstat.is_some(),
        "kernel_log" => s.kernel_log.is_some(),
        _ => false,
    }
}

fn states(t: &mut Text, s: &Snapshot) {
    t.family(
        "tcpdoctor_sockets",
        Kind::Gauge,
        "TCP sockets by state (kernel names, lower case) and family; every state is present, zeros included.",
    );
    for (family, counts) in [("ipv4", &s.summary.ipv4), ("ipv6", &s.summary.ipv6)] {
        for st in TcpState::ALL {
            t.sample(
                "tcpdoctor_sockets",
                &[("state", &state_label(st)), ("family", family)],
                counts.get(st),
            );
        }
    }
}

/// Per network namespace: how many were read, the top N by sockets with every state,
/// and the N with the least ephemeral-port headroom.
fn namespaces(t: &mut Text, h: &HostSnapshot, top: usize) {
    t.single(
        "tcpdoctor_netns_read",
        Kind::Gauge,
        "Network namespaces read in this collection (1 when only tcpdoctor's own was read).",
        h.namespaces.len() as u64,
    );
    // One label per namespace. Names can repeat (several "(unnamed)"): those get their
    // inode too, so no two series share a label set.
    let names: Vec<String> = h
        .namespaces
        .iter()
        .map(|s| {
            s.netns
                .as_ref()
                .map_or("host".to_string(), |n| n.name.clone())
        })
        .collect();
    let labels: Vec<String> = h
        .namespaces
        .iter()
        .zip(&names)
        .map(|(s, name)| match &s.netns {
            Some(n) if names.iter().filter(|x| *x == name).count() > 1 => {
                format!("{name} net:[{}]", n.inode)
            }
            _ => name.clone(),
        })
        .collect();

    let (rows, _) = rank(
        h.namespaces
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.summary.total().total())),
        top,
    );
    let sockets = "tcpdoctor_netns_sockets";
    t.family(
        sockets,
        Kind::Gauge,
        "TCP sockets by state in the N network namespaces with the most sockets (netns: container, pod, ip netns name or first process); \"other\" folds the rest.",
    );
    let mut other = crate::model::StateCounts::default();
    for (i, s) in h.namespaces.iter().enumerate() {
        if !rows.iter().any(|(r, _)| *r == i) {
            other.merge(&s.summary.total());
        }
    }
    for (i, _) in &rows {
        let c = h.namespaces[*i].summary.total();
        for st in TcpState::ALL {
            t.sample(
                sockets,
                &[("netns", &labels[*i]), ("state", &state_label(st))],
                c.get(st),
            );
        }
    }
    for st in TcpState::ALL {
        t.sample(
            sockets,
            &[("netns", OTHER), ("state", &state_label(st))],
            other.get(st),
        );
    }

    let headroom = "tcpdoctor_netns_ephemeral_ports_headroom";
    let mut tight: Vec<(u64, &str)> = h
        .namespaces
        .iter()
        .zip(&labels)
        .filter_map(|(s, label)| {
            s.sockets
                .port_use
                .iter()
                .map(PortUse::headroom)
                .min()
                .map(|left| (left, label.as_str()))
        })
        .collect();
    tight.sort();
    tight.truncate(top);
    t.family(
        headroom,
        Kind::Gauge,
        "Ephemeral ports left towards the tightest destination of each network namespace, for the N namespaces with the least (absent: no outgoing connections).",
    );
    for (left, label) in &tight {
        t.sample(headroom, &[("netns", label)], *left);
    }
}

fn comm_of(s: &Snapshot, pid: u32) -> &str {
    match s.process(pid) {
        Some(p) if !p.comm.is_empty() => &p.comm,
        _ => "unknown",
    }
}

/// Writes a per-process top-N family: the top entries, `other`, then `unowned`.
fn process_family(
    t: &mut Text,
    s: &Snapshot,
    name: &str,
    help: &str,
    ranked: (Vec<(u32, u64)>, u64),
    unowned: u64,
) {
    t.family(name, Kind::Gauge, help);
    let (rows, rest) = ranked;
    for (pid, n) in rows {
        t.sample(
            name,
            &[("comm", comm_of(s, pid)), ("pid", &pid.to_string())],
            n,
        );
    }
    t.sample(name, &[("comm", OTHER), ("pid", OTHER)], rest);
    t.sample(name, &[("comm", UNOWNED), ("pid", UNOWNED)], unowned);
}

fn processes(t: &mut Text, s: &Snapshot, top: usize) {
    let mut cw: BTreeMap<u32, u64> = BTreeMap::new();
    let mut cw_unowned = 0u64;
    for c in &s.sockets.close_wait {
        match c.owner {
            Some(o) => *cw.entry(o.pid).or_default() += 1,
            None => cw_unowned += 1,
        }
    }
    // The digest holds every CLOSE_WAIT socket the state counts do: nothing to add.
    process_family(
        t,
        s,
        "tcpdoctor_process_close_wait_sockets",
        "CLOSE_WAIT sockets per process (top N by count; pid=\"other\" folds the rest, pid=\"unowned\" has no visible process).",
        rank(cw, top),
        cw_unowned,
    );

    let held = s
        .sockets
        .by_process
        .iter()
        .map(|(pid, c)| (*pid, c.total()));
    let held_sum: u64 = s.sockets.by_process.values().map(|c| c.total()).sum();
    process_family(
        t,
        s,
        "tcpdoctor_process_sockets",
        "TCP sockets held per process, all states (top N; pid=\"other\" folds the rest, pid=\"unowned\": no descriptor such as TIME_WAIT, or no visible process).",
        rank(held, top),
        s.summary.total().total().saturating_sub(held_sum),
    );
}

fn time_wait(t: &mut Text, s: &Snapshot, top: usize) {
    let tw = &s.sockets.time_wait;
    t.family(
        "tcpdoctor_time_wait_sockets",
        Kind::Gauge,
        "TIME_WAIT sockets by who closed first: side=\"server\" on a local listening port, side=\"client\" on any other.",
    );
    t.sample(
        "tcpdoctor_time_wait_sockets",
        &[("side", "server")],
        tw.server_side,
    );
    t.sample(
        "tcpdoctor_time_wait_sockets",
        &[("side", "client")],
        tw.client_side,
    );

    let name = "tcpdoctor_time_wait_destination_sockets";
    t.family(
        name,
        Kind::Gauge,
        "Client-side TIME_WAIT sockets per destination ip:port (top N; destination=\"other\" folds the rest).",
    );
    let (rows, rest) = rank(tw.by_destination.iter().map(|(d, n)| (*d, *n)), top);
    for (dest, n) in rows {
        t.sample(name, &[("destination", &dest.to_string())], n);
    }
    t.sample(name, &[("destination", OTHER)], rest);
}

fn ephemeral_ports(t: &mut Text, s: &Snapshot, top: usize) {
    let usable = s.ephemeral_ports().usable();
    t.single(
        "tcpdoctor_ephemeral_ports_usable",
        Kind::Gauge,
        "Local ports connect() may use towards one destination: ip_local_port_range minus ip_local_reserved_ports.",
        usable,
    );
    // The top N by use; each destination's headroom is against its own namespace's
    // range (namespaces can differ), so the headroom series is ranked separately.
    let (rows, rest) = rank(
        s.sockets
            .port_use
            .iter()
            .map(|p| ((p.local_ip, p.remote), p.counts.total())),
        top,
    );
    let mut tight: Vec<(u64, (std::net::IpAddr, crate::model::Endpoint))> = s
        .sockets
        .port_use
        .iter()
        .map(|p| (p.headroom(), (p.local_ip, p.remote)))
        .collect();
    tight.sort();
    tight.truncate(top);
    let used = "tcpdoctor_ephemeral_ports_used";
    t.family(
        used,
        Kind::Gauge,
        "Ephemeral ports in use (any state, TIME_WAIT included) per source ip and destination ip:port (top N; \"other\" folds the rest).",
    );
    for ((local, remote), n) in &rows {
        t.sample(
            used,
            &[
                ("local_ip", &local.to_string()),
                ("destination", &remote.to_string()),
            ],
            *n,
        );
    }
    t.sample(used, &[("local_ip", OTHER), ("destination", OTHER)], rest);

    let headroom = "tcpdoctor_ephemeral_ports_headroom";
    t.family(
        headroom,
        Kind::Gauge,
        "Ephemeral ports left per source ip and destination ip:port (usable in its network namespace - used), for the N destinations with the least.",
    );
    for (left, (local, remote)) in &tight {
        t.sample(
            headroom,
            &[
                ("local_ip", &local.to_string()),
                ("destination", &remote.to_string()),
            ],
            *left,
        );
    }
}

fn file_descriptors(t: &mut Text, s: &Snapshot, top: usize) {
    if let Some(ft) = s.file_table() {
        t.single(
            "tcpdoctor_file_table_allocated",
            Kind::Gauge,
            "File handles allocated system-wide (first field of fs.file-nr).",
            ft.allocated,
        );
        t.single(
            "tcpdoctor_file_table_max",
            Kind::Gauge,
            "System-wide file handle limit (fs.file-max).",
            ft.max,
        );
        t.single(
            "tcpdoctor_file_table_headroom",
            Kind::Gauge,
            "File handles left system-wide (fs.file-max - allocated).",
            ft.max.saturating_sub(ft.allocated),
        );
    }

    // The processes closest to their soft RLIMIT_NOFILE; unlimited or unknown limits
    // cannot run out and are left out.
    let mut worst: Vec<(u32, u64, u64)> = s
        .processes
        .values()
        .filter_map(|p| match p.nofile_soft {
            Some(Limit::Value(soft)) if soft > 0 => Some((p.pid, p.open_fds, soft)),
            _ => None,
        })
        .collect();
    worst.sort_by(|a, b| {
        let (ra, rb) = (a.1 as f64 / a.2 as f64, b.1 as f64 / b.2 as f64);
        rb.total_cmp(&ra).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0))
    });
    worst.truncate(top);
    let fams: [(&str, &str); 3] = [
        (
            "tcpdoctor_process_open_fds",
            "Open file descriptors of the N processes closest to their soft RLIMIT_NOFILE.",
        ),
        (
            "tcpdoctor_process_fd_limit",
            "Soft RLIMIT_NOFILE of the same processes.",
        ),
        (
            "tcpdoctor_process_fd_headroom",
            "Descriptors left before EMFILE (soft RLIMIT_NOFILE - open fds) for the same processes.",
        ),
    ];
    for (i, (name, help)) in fams.iter().enumerate() {
        t.family(name, Kind::Gauge, help);
        for (pid, open, soft) in &worst {
            let v = match i {
                0 => *open,
                1 => *soft,
                _ => soft.saturating_sub(*open),
            };
            t.sample(
                name,
                &[("comm", comm_of(s, *pid)), ("pid", &pid.to_string())],
                v,
            );
        }
    }
}

fn listeners(t: &mut Text, s: &Snapshot, top: usize) {
    // Several sockets can listen on one address (SO_REUSEPORT): one series per address.
    let mut by_addr: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    for l in &s.sockets.listeners {
        let e = by_addr.entry(l.local.to_string()).or_insert((0, 0, true));
        e.0 += u64::from(l.accept_queue);
        e.1 += u64::from(l.backlog);
        e.2 &= l.backlog_known;
    }
    let mut rows: Vec<(String, (u64, u64, bool))> = by_addr.into_iter().collect();
    let fill = |q: u64, b: u64, known: bool| {
        if known && b > 0 {
            q as f64 / b as f64
        } else {
            0.0
        }
    };
    rows.sort_by(|a, b| {
        let (fa, fb) = (fill(a.1 .0, a.1 .1, a.1 .2), fill(b.1 .0, b.1 .1, b.1 .2));
        fb.total_cmp(&fa)
            .then(b.1 .0.cmp(&a.1 .0))
            .then(a.0.cmp(&b.0))
    });
    rows.truncate(top);
    let queue = "tcpdoctor_listener_accept_queue";
    t.family(
        queue,
        Kind::Gauge,
        "Connections waiting in the accept queue per listening address (the N fullest).",
    );
    for (addr, (q, _, _)) in &rows {
        t.sample(queue, &[("listen", addr)], *q);
    }
    let backlog = "tcpdoctor_listener_backlog";
    t.family(
        backlog,
        Kind::Gauge,
        "Accept queue limit (min(listen() backlog, somaxconn)) of the same listening addresses; absent when the source cannot tell (/proc/net/tcp).",
    );
    for (addr, (_, b, known)) in &rows {
        if *known {
            t.sample(backlog, &[("listen", addr)], *b);
        }
    }
}

fn counters(t: &mut Text, s: &Snapshot) {
    let Some(c) = &s.counters else {
        return;
    };
    for (key, help) in COUNTERS {
        // A counter this kernel does not have is absent, not zero.
        if let Some(v) = c.total(key) {
            let name = counter_metric_name(key);
            t.single(&name, Kind::Counter, help, v.max(0));
        }
    }
}

fn findings(t: &mut Text, found: &[Finding]) {
    let mut counts: BTreeMap<(&str, Severity), u64> = BTreeMap::new();
    let mut rules: Vec<&str> = RULES
        .iter()
        .map(|r| r.id)
        .chain(HOST_RULES.iter().map(|r| r.id))
        .collect();
    for f in found {
        *counts.entry((f.rule_id, f.severity)).or_default() += 1;
        if !rules.contains(&f.rule_id) {
            rules.push(f.rule_id);
        }
    }
    t.family(
        "tcpdoctor_finding",
        Kind::Gauge,
        "Findings of this collection per rule and severity (usually 0 or 1); every rule and severity is present, zeros included.",
    );
    for rule in rules {
        for sev in [Severity::Info, Severity::Warning, Severity::Critical] {
            t.sample(
                "tcpdoctor_finding",
                &[("rule", rule), ("severity", sev.name())],
                counts.get(&(rule, sev)).copied().unwrap_or(0),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        CloseWaitSocket, CounterSample, Endpoint, Owner, PortUse, ProcessFacts, StateCounts,
    };
    use std::net::IpAddr;

    /// One namespace's snapshot, no findings.
    fn render_one(s: &Snapshot) -> String {
        render(&Exposition {
            host: None,
            snapshot: Some(s),
            findings: &[],
            stats: stats(),
        })
    }

    fn stats() -> CollectionStats {
        CollectionStats {
            collections: 3,
            failures: 1,
            duration_s: 0.25,
            started_unix_ms: 1_700_000_000_500,
            top: 2,
        }
    }

    fn process(pid: u32, comm: &str, open: u64, soft: u64) -> ProcessFacts {
        ProcessFacts {
            pid,
            comm: comm.to_string(),
            uid: 0,
            cmdline: format!("/usr/bin/{comm} --password=hunter2"),
            open_fds: open,
            nofile_soft: Some(Limit::Value(soft)),
            nofile_hard: Some(Limit::Value(soft)),
            detached_tcp_fds: None,
        }
    }

    fn ep(s: &str) -> Endpoint {
        let a: std::net::SocketAddr = s.parse().expect("addr");
        Endpoint::new(a.ip(), a.port())
    }

    fn cw(pid: Option<u32>) -> CloseWaitSocket {
        CloseWaitSocket {
            local: ep("10.0.0.1:8080"),
            remote: ep("10.0.0.9:5000"),
            inode: if pid.is_some() { 1 } else { 0 },
            recv_q: 1,
            owner: pid.map(|pid| Owner { pid, fd: 3 }),
            idle_ms: None,
            cookie: None,
            still_there: None,
        }
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            source: Some(Source::Netlink),
            ..Snapshot::default()
        };
        for (pid, n) in [(10, 5), (11, 3), (12, 1)] {
            for _ in 0..n {
                s.sockets.close_wait.push(cw(Some(pid)));
                s.summary.ipv4.add(TcpState::CloseWait);
            }
        }
        s.sockets.close_wait.push(cw(None));
        s.summary.ipv4.add(TcpState::CloseWait);
        s.summary.ipv6.add(TcpState::Listen);
        s.processes.insert(10, process(10, "web\"app", 90, 100));
        s.processes.insert(11, process(11, "db", 10, 1000));
        s.processes.insert(12, process(12, "cron", 1, 1024));
        let mut held = StateCounts::default();
        held.add(TcpState::CloseWait);
        s.sockets.by_process.insert(10, held);
        s.sysctls
            .insert("net.ipv4.ip_local_port_range".into(), "40000 40099".into());
        s.sysctls.insert(
            "net.ipv4.ip_local_reserved_ports".into(),
            "40000-40009".into(),
        );
        let mut counts = StateCounts::default();
        for _ in 0..30 {
            counts.add(TcpState::TimeWait);
        }
        s.sockets.port_use.push(PortUse {
            local_ip: "10.0.0.1".parse::<IpAddr>().expect("ip"),
            remote: ep("10.0.0.7:5432"),
            counts,
            sample_owner: None,
            usable: 90,
        });
        s.sockets.time_wait.client_side = 30;
        s.sockets
            .time_wait
            .by_destination
            .insert(ep("10.0.0.7:5432"), 30);
        s.sysctls
            .insert("fs.file-nr".into(), "1000 0 9223372036854775807".into());
        let mut c = CounterSample::default();
        c.after.insert("TcpExt.ListenOverflows".into(), 7);
        c.after.insert("Tcp.ActiveOpens".into(), 100);
        s.counters = Some(c);
        s.owners_known = true;
        s
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_state_and_family_is_present_with_zeros() {
        let s = snapshot();
        let text = render_one(&s);
        let socket_lines: Vec<_> = lines(&text)
            .into_iter()
            .filter(|l| l.starts_with("tcpdoctor_sockets{"))
            .collect();
        assert_eq!(socket_lines.len(), 22);
        assert!(text.contains("tcpdoctor_sockets{state=\"close_wait\",family=\"ipv4\"} 10\n"));
        assert!(text.contains("tcpdoctor_sockets{state=\"syn_recv\",family=\"ipv6\"} 0\n"));
        assert!(text.contains("# TYPE tcpdoctor_sockets gauge\n"));
    }

    #[test]
    fn top_n_folds_the_rest_into_other_and_never_shows_command_lines() {
        let s = snapshot();
        let text = render_one(&s);
        assert!(text
            .contains("tcpdoctor_process_close_wait_sockets{comm=\"web\\\"app\",pid=\"10\"} 5\n"));
        assert!(text.contains("tcpdoctor_process_close_wait_sockets{comm=\"db\",pid=\"11\"} 3\n"));
        assert!(
            text.contains("tcpdoctor_process_close_wait_sockets{comm=\"other\",pid=\"other\"} 1\n")
        );
        assert!(text.contains(
            "tcpdoctor_process_close_wait_sockets{comm=\"unowned\",pid=\"unowned\"} 1\n"
        ));
        assert!(!text.contains("pid=\"12\""), "beyond top 2: {text}");
        assert!(!text.contains("hunter2") && !text.contains("/usr/bin"));
        // Sockets held: pid 10 holds 1; the other 10 sockets have no known process.
        assert!(text.contains("tcpdoctor_process_sockets{comm=\"web\\\"app\",pid=\"10\"} 1\n"));
        assert!(text.contains("tcpdoctor_process_sockets{comm=\"unowned\",pid=\"unowned\"} 10\n"));
    }

    #[test]
    fn port_and_fd_headroom_use_the_rule_math() {
        let s = snapshot();
        let text = render_one(&s);
        // 100 ports in the range, 10 reserved: 90 usable, 30 used.
        assert!(text.contains("tcpdoctor_ephemeral_ports_usable 90\n"));
        assert!(text.contains("tcpdoctor_ephemeral_ports_used{local_ip=\"10.0.0.1\",destination=\"10.0.0.7:5432\"} 30\n"));
        assert!(text.contains("tcpdoctor_ephemeral_ports_headroom{local_ip=\"10.0.0.1\",destination=\"10.0.0.7:5432\"} 60\n"));
        assert!(text.contains(
            "tcpdoctor_ephemeral_ports_used{local_ip=\"other\",destination=\"other\"} 0\n"
        ));
        assert!(text.contains(
            "tcpdoctor_time_wait_destination_sockets{destination=\"10.0.0.7:5432\"} 30\n"
        ));
        assert!(text.contains("tcpdoctor_file_table_max 9223372036854775807\n"));
        assert!(text.contains("tcpdoctor_file_table_headroom 9223372036854774807\n"));
        // Worst first: 90 of 100 beats 10 of 1000; cron (1 of 1024) is beyond top 2.
        let fd: Vec<_> = lines(&text)
            .into_iter()
            .filter(|l| l.starts_with("tcpdoctor_process_fd_headroom"))
            .collect();
        assert_eq!(
            fd,
            vec![
                "tcpdoctor_process_fd_headroom{comm=\"web\\\"app\",pid=\"10\"} 10",
                "tcpdoctor_process_fd_headroom{comm=\"db\",pid=\"11\"} 990",
            ]
        );
    }

    #[test]
    fn counters_findings_and_sources() {
        let s = snapshot();
        let f = crate::analyze::run(&s, &crate::analyze::Thresholds::default());
        let text = render(&Exposition {
            host: None,
            snapshot: Some(&s),
            findings: &f,
            stats: stats(),
        });
        assert!(text.contains("# TYPE tcpdoctor_tcpext_listenoverflows_total counter\n"));
        assert!(text.contains("tcpdoctor_tcpext_listenoverflows_total 7\n"));
        assert!(text.contains("tcpdoctor_tcp_activeopens_total 100\n"));
        assert!(
            !text.contains("tcpdoctor_tcp_outrsts_total"),
            "absent, not zero"
        );
        for id in RULES
            .iter()
            .map(|r| r.id)
            .chain(HOST_RULES.iter().map(|r| r.id))
        {
            for sev in ["info", "warning", "critical"] {
                assert!(
                    text.contains(&format!(
                        "tcpdoctor_finding{{rule=\"{id}\",severity=\"{sev}\"}} "
                    )),
                    "{id} {sev}"
                );
            }
        }
        assert!(text.contains("tcpdoctor_source_up{source=\"sockets\"} 1\n"));
        assert!(text.contains("tcpdoctor_source_up{source=\"kernel_log\"} 0\n"));
        assert!(text.contains("tcpdoctor_socket_reader_info{reader=\"netlink\"} 1\n"));
        assert!(text.contains("tcpdoctor_collections_total 3\n"));
        assert!(text.contains("tcpdoctor_collection_duration_seconds 0.25\n"));
        assert!(text.contains("tcpdoctor_collection_timestamp_seconds 1700000000.5\n"));
    }

    #[test]
    fn namespaces_are_ranked_folded_and_judged_against_their_own_range() {
        use crate::model::{NetnsInfo, NetnsKind};
        let ns = |name: &str, established: u64, port_range: &str, used: u64| {
            let mut s = Snapshot {
                netns: Some(NetnsInfo {
                    inode: name.len() as u64,
                    name: name.into(),
                    kind: NetnsKind::IpNetns,
                    current: false,
                    initial: false,
                    container: None,
                    ip_netns: vec![name.into()],
                    processes: 1,
                    first_pid: Some(1),
                }),
                ..Snapshot::default()
            };
            for _ in 0..established {
                s.summary.ipv4.add(TcpState::Established);
            }
            s.sysctls
                .insert("net.ipv4.ip_local_port_range".into(), port_range.into());
            let mut counts = StateCounts::default();
            for _ in 0..used {
                counts.add(TcpState::Established);
            }
            s.sockets.port_use.push(PortUse {
                local_ip: ep("10.0.0.1:0").address,
                remote: ep("10.0.0.7:5432"),
                counts,
                sample_owner: None,
                // As the digest fills it from the namespace's own range.
                usable: s.ephemeral_ports().usable(),
            });
            s
        };
        let host = HostSnapshot {
            namespaces: vec![
                ns("a", 5, "40000 40099", 5),
                ns("bb", 9, "32768 60999", 9),
                ns("ccc", 2, "40000 40009", 2),
            ],
            all_namespaces: true,
            missing: Vec::new(),
        };
        let merged = host.merged();
        let text = render(&Exposition {
            host: Some(&host),
            snapshot: Some(&merged),
            findings: &[],
            stats: stats(), // top 2
        });
        assert!(text.contains("tcpdoctor_netns_read 3\n"));
        assert!(text.contains("tcpdoctor_netns_sockets{netns=\"bb\",state=\"established\"} 9\n"));
        assert!(text.contains("tcpdoctor_netns_sockets{netns=\"a\",state=\"established\"} 5\n"));
        assert!(text.contains("tcpdoctor_netns_sockets{netns=\"other\",state=\"established\"} 2\n"));
        assert!(!text.contains("netns=\"ccc\",state"));
        // 10 - 2 and 100 - 5 are the least headroom; bb's 28232 - 9 is cut by top 2.
        assert!(text.contains("tcpdoctor_netns_ephemeral_ports_headroom{netns=\"ccc\"} 8\n"));
        assert!(text.contains("tcpdoctor_netns_ephemeral_ports_headroom{netns=\"a\"} 95\n"));
        assert!(!text.contains("tcpdoctor_netns_ephemeral_ports_headroom{netns=\"bb\"}"));
        // The three namespaces share one destination: one series for it (the tightest
        // namespace's), not one per namespace.
        assert_unique_series(&text);
        assert!(text.contains(
            "tcpdoctor_ephemeral_ports_headroom{local_ip=\"10.0.0.1\",destination=\"10.0.0.7:5432\"} 8\n"
        ));

        // Two namespaces with one name: each label gets its inode.
        let mut twins = host.clone();
        for s in &mut twins.namespaces[1..] {
            if let Some(n) = &mut s.netns {
                n.name = "(unnamed)".into();
            }
        }
        let text = render(&Exposition {
            host: Some(&twins),
            snapshot: Some(&twins.merged()),
            findings: &[],
            stats: stats(),
        });
        assert_unique_series(&text);
        assert!(text.contains("netns=\"(unnamed) net:[2]\""), "{text}");
    }

    /// No two samples of one exposition share a name and label set.
    fn assert_unique_series(text: &str) {
        let mut seen = std::collections::BTreeSet::new();
        for l in lines(text).into_iter().filter(|l| !l.starts_with('#')) {
            let series = l.rsplit_once(' ').map_or(l, |(k, _)| k);
            assert!(seen.insert(series.to_string()), "twice: {series}");
        }
    }

    #[test]
    fn kernel_counters_come_from_the_primary_namespace_only() {
        let mut a = snapshot();
        let mut b = snapshot();
        for (s, v) in [(&mut a, 7), (&mut b, 1000)] {
            let c = s.counters.get_or_insert_with(CounterSample::default);
            c.after.insert("TcpExt.ListenOverflows".into(), v);
        }
        let host = HostSnapshot {
            namespaces: vec![a, b],
            all_namespaces: true,
            missing: Vec::new(),
        };
        let text = render(&Exposition {
            host: Some(&host),
            snapshot: Some(&host.merged()),
            findings: &[],
            stats: stats(),
        });
        // Not 1007: a sum would drop when the second namespace goes away.
        assert!(
            text.contains("tcpdoctor_tcpext_listenoverflows_total 7\n"),
            "{text}"
        );
    }

    #[test]
    fn failed_collection_exports_health_only() {
        let text = render(&Exposition {
            host: None,
            snapshot: None,
            findings: &[],
            stats: stats(),
        });
        assert!(text.contains("tcpdoctor_source_up{source=\"sockets\"} 0\n"));
        assert!(text.contains("tcpdoctor_collection_failures_total 1\n"));
        assert!(!text.contains("tcpdoctor_sockets{"));
        assert!(!text.contains("tcpdoctor_finding{"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_help("x\\y\nz"), "x\\\\y\\nz");
        assert_eq!(
            counter_metric_name("TcpExt.TCPTimeWaitOverflow"),
            "tcpdoctor_tcpext_tcptimewaitoverflow_total"
        );
        assert_eq!(state_label(TcpState::FinWait1), "fin_wait1");
    }
}
