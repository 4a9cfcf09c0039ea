//! The snapshot file format, version 1: what each line of a snapshot holds, and the
//! conversions between those lines and the model. These types are the file's schema,
//! kept apart from the model on purpose: the model may change, a file written today must
//! keep loading ([`SUPPORTED`]); a change that old readers would misread bumps
//! [`VERSION`].
//!
//! A file is zstd-compressed JSON Lines in three zstd frames (any zstd tool reads the
//! whole as one stream): the description of the host (header, namespaces, owners,
//! processes, kernel log, nginx, notices), then one line per socket, then a trailer
//! that counts the sockets, so a truncated file is told from a complete one.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    Container, Endpoint, Family, KernelLogEntry, Limit, NetnsInfo, NetnsKind, Notice, NoticeCode,
    Pod, ProcessFacts, Runtime, Socket, Sockstat, Source, TcpInfo, TcpState, Timer, TimerKind,
};

/// The `format` of the header line: what makes a file a tcpdoctor snapshot.
pub const FORMAT: &str = "tcpdoctor-snapshot";
/// The version this tcpdoctor writes.
pub const VERSION: u32 = 1;
/// The versions this tcpdoctor reads.
pub const SUPPORTED: std::ops::RangeInclusive<u32> = 1..=VERSION;
/// The first four bytes of a zstd frame (RFC 8878): how `--from` tells a snapshot from
/// a text capture.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Every line but the socket lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Header(Header),
    Namespace(Box<NamespaceRec>),
    /// Socket owners, in chunks: (inode, pid, fd).
    Owners {
        entries: Vec<(u64, u32, u32)>,
    },
    Process(ProcessRec),
    /// The kernel log lines the rules read, of the namespace `ns` (the primary).
    KernelLog {
        #[serde(default)]
        ns: u64,
        entries: Vec<KernelLogRec>,
    },
    Nginx(Box<NginxRec>),
    /// A host-level notice (namespaces not read, ...).
    Notice(NoticeRec),
    /// The socket lines follow.
    Sockets,
    /// The last line: how many socket lines came before it.
    End {
        sockets: u64,
    },
}

/// The first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The tcpdoctor that wrote it (`tcpdoctor 0.1.0`).
    #[serde(default)]
    pub tool: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub taken_at_unix_ms: u64,
    /// `uname -r` of the host.
    #[serde(default)]
    pub kernel: String,
    /// Every namespace of the host was read.
    #[serde(default)]
    pub all_namespaces: bool,
}

/// One network namespace: who it is, and what was read in it apart from sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRec {
    pub inode: u64,
    pub name: String,
    /// `host`, `container`, `ip-netns`, `process`, `unnamed`.
    pub name_kind: String,
    #[serde(default)]
    pub current: bool,
    #[serde(default)]
    pub initial: bool,
    #[serde(default)]
    pub container: Option<ContainerRec>,
    #[serde(default)]
    pub ip_netns: Vec<String>,
    #[serde(default)]
    pub processes: u64,
    #[serde(default)]
    pub first_pid: Option<u32>,
    /// `netlink` or `proc`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub taken_at_unix_ms: u64,
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// The two counter readings and the time between them.
    #[serde(default)]
    pub counters: Option<CountersRec>,
    #[serde(default)]
    pub sockstat: Option<SockstatRec>,
    /// When `check` looked at the CLOSE_WAIT sockets again, how long after.
    #[serde(default)]
    pub close_wait_recheck_ms: Option<u64>,
    /// The CLOSE_WAIT sockets gone at that second look (the others were still there).
    #[serde(default)]
    pub close_wait_gone: Vec<CloseWaitId>,
    #[serde(default)]
    pub owners_known: bool,
    #[serde(default)]
    pub missing: Vec<NoticeRec>,
    /// What the host's sysctl files apply at boot (the namespace the host boots with,
    /// when `check` read them); absent: not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted_sysctls: Option<super::config::PersistedRec>,
    /// Where the open-files limits of processes near theirs are set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nofile_origins: Vec<super::config::NofileOriginRec>,
    /// Connections traced during the interval; absent: not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<super::flows::FlowsRec>,
    /// Descriptors of CLOSE_WAIT holders counted again at the second reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descriptor_recheck: Vec<super::flows::RecheckRec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRec {
    pub runtime: String,
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub pod: Option<PodRec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRec {
    pub uid: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersRec {
    pub before: BTreeMap<String, i64>,
    pub after: BTreeMap<String, i64>,
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockstatRec {
    pub inuse: u64,
    pub orphan: u64,
    pub tw: u64,
    pub alloc: u64,
    pub mem_pages: u64,
}

/// A CLOSE_WAIT socket as the re-check identifies it: the kernel cookie where there is
/// one, else the addresses and inode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CloseWaitId {
    #[serde(default)]
    pub cookie: Option<u64>,
    pub local: String,
    pub remote: String,
    pub inode: u64,
}

impl CloseWaitId {
    /// The key of `c`, the same when written and when read back.
    pub fn of(c: &crate::model::CloseWaitSocket) -> CloseWaitId {
        CloseWaitId {
            cookie: c.cookie,
            local: endpoint_text(&c.local),
            remote: endpoint_text(&c.remote),
            inode: c.inode,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeRec {
    pub code: String,
    pub message: String,
}

/// A process: the facts `check` uses, and the namespace it is in (`None`: a socket
/// owner only, outside the namespaces read or not measured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRec {
    pub pid: u32,
    #[serde(default)]
    pub ns: Option<u64>,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub open_fds: u64,
    /// Whether `check` measured it (its namespace's report lists it).
    #[serde(default)]
    pub facts: bool,
    /// A number, or `unlimited`.
    #[serde(default)]
    pub nofile_soft: Option<String>,
    #[serde(default)]
    pub nofile_hard: Option<String>,
    #[serde(default)]
    pub detached_tcp_fds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLogRec {
    pub message: String,
    pub count: u64,
    pub last_seen_s: u64,
}

/// A running nginx and the configuration files it was read from: on loading, the
/// configuration is parsed again from these texts by the same code as a live run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NginxRec {
    #[serde(default)]
    pub master_pid: Option<u32>,
    #[serde(default)]
    pub worker_pids: Vec<u32>,
    #[serde(default)]
    pub netns: Option<u64>,
    #[serde(default)]
    pub binary: Option<String>,
    /// `nginx/1.22.1`
    #[serde(default)]
    pub version: Option<String>,
    pub root: String,
    pub config_file: String,
    /// `command_line`, `compiled_in`, `given`, `guessed`.
    pub origin: String,
    /// `-g` directives from the master's command line.
    #[serde(default)]
    pub globals: Option<String>,
    /// Why the configuration was not read, when it was not.
    #[serde(default)]
    pub error: Option<String>,
    /// Each file read: path as nginx sees it -> text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Each include glob -> the paths it matched.
    #[serde(default)]
    pub globs: BTreeMap<String, Vec<String>>,
}

/// One socket line. Short keys: a million of them are written and read per file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketRec {
    /// Namespace inode (first key: a line starting `{"s":` is a socket).
    pub s: u64,
    pub st: String,
    pub l: String,
    pub r: String,
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub rq: u32,
    #[serde(default)]
    pub sq: u32,
    /// Timer: (name as ss prints it, ms left, retransmits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tm: Option<(String, u64, u8)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ck: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ti: Option<TcpInfoRec>,
}

/// The prefix of every socket line.
pub const SOCKET_LINE_PREFIX: &[u8] = b"{\"s\":";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TcpInfoRec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcv: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rttvar: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrans: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minrtt: Option<u32>,
}

/// A line that does not describe what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRecord(pub String);

pub fn endpoint_text(e: &Endpoint) -> String {
    SocketAddr::new(e.address, e.port).to_string()
}

pub fn parse_endpoint(s: &str) -> Result<Endpoint, BadRecord> {
    s.parse::<SocketAddr>()
        .map(|a| Endpoint::new(a.ip(), a.port()))
        .map_err(|_| BadRecord(format!("'{s}' is not an address:port")))
}

impl SocketRec {
    pub fn from_socket(netns: u64, s: &Socket) -> SocketRec {
        SocketRec {
            s: netns,
            st: s.state.name().to_string(),
            l: endpoint_text(&s.local),
            r: endpoint_text(&s.remote),
            ino: s.inode,
            uid: s.uid,
            rq: s.recv_q,
            sq: s.send_q,
            tm: s
                .timer
                .map(|t| (t.kind.name().to_string(), t.remaining_ms, t.retransmits)),
            ck: s.cookie,
            ti: s.tcp_info.map(|i| TcpInfoRec {
                sent: i.last_data_sent_ms,
                rcv: i.last_data_recv_ms,
                ack: i.last_ack_recv_ms,
                rtt: i.rtt_us,
                rttvar: i.rtt_var_us,
                retrans: i.total_retrans,
                acked: i.bytes_acked,
                received: i.bytes_received,
                minrtt: i.min_rtt_us,
            }),
        }
    }

    /// The socket, or why the line does not describe one.
    pub fn to_socket(&self) -> Result<Socket, BadRecord> {
        let state: TcpState = self
            .st
            .parse()
            .map_err(|_| BadRecord(format!("unknown state '{}'", self.st)))?;
        let local = parse_endpoint(&self.l)?;
        let remote = parse_endpoint(&self.r)?;
        // The family is the local address's: an IPv4-mapped address stays IPv6.
        let family = match local.address {
            std::net::IpAddr::V4(_) => Family::V4,
            std::net::IpAddr::V6(_) => Family::V6,
        };
        if local.address.is_ipv4() != remote.address.is_ipv4() {
            return Err(BadRecord(format!(
                "local '{}' and remote '{}' are of different families",
                self.l, self.r
            )));
        }
        let timer = match &self.tm {
            None => None,
            Some((name, ms, rx)) => Some(Timer {
                kind: timer_kind(name)
                    .ok_or_else(|| BadRecord(format!("unknown timer '{name}'")))?,
                remaining_ms: *ms,
                retransmits: *rx,
            }),
        };
        Ok(Socket {
            family,
            state,
            local,
            remote,
            inode: self.ino,
            uid: self.uid,
            recv_q: self.rq,
            send_q: self.sq,
            timer,
            cookie: self.ck,
            tcp_info: self.ti.map(|i| TcpInfo {
                last_data_sent_ms: i.sent,
                last_data_recv_ms: i.rcv,
                last_ack_recv_ms: i.ack,
                rtt_us: i.rtt,
                rtt_var_us: i.rttvar,
                total_retrans: i.retrans,
                bytes_acked: i.acked,
                bytes_received: i.received,
                min_rtt_us: i.minrtt,
            }),
        })
    }
}

/// A timer by the name ss prints (`on`, `keepalive`, `timewait`, `persist`).
pub fn timer_kind(name: &str) -> Option<TimerKind> {
    Some(match name {
        "on" => TimerKind::Retransmit,
        "keepalive" => TimerKind::KeepAlive,
        "timewait" => TimerKind::TimeWait,
        "persist" => TimerKind::ZeroWindowProbe,
        "unknown" => TimerKind::Other(0),
        _ => return None,
    })
}

pub fn notice_rec(n: &Notice) -> NoticeRec {
    NoticeRec {
        code: n.code.as_str().to_string(),
        message: n.message.clone(),
    }
}

/// The notice; a code this version does not know is kept as `replay_missing`-free
/// text under `records_skipped`, so nothing is silently dropped.
pub fn notice(r: &NoticeRec) -> Notice {
    match NoticeCode::ALL.iter().find(|c| c.as_str() == r.code) {
        Some(c) => Notice::new(*c, r.message.clone()),
        None => Notice::new(
            NoticeCode::RecordsSkipped,
            format!("(notice '{}' of a newer tcpdoctor) {}", r.code, r.message),
        ),
    }
}

fn kind_name(k: NetnsKind) -> &'static str {
    match k {
        NetnsKind::Host => "host",
        NetnsKind::Container => "container",
        NetnsKind::IpNetns => "ip-netns",
        NetnsKind::Process => "process",
        NetnsKind::Unnamed => "unnamed",
    }
}

fn kind_of(s: &str) -> NetnsKind {
    match s {
        "host" => NetnsKind::Host,
        "container" => NetnsKind::Container,
        "ip-netns" => NetnsKind::IpNetns,
        "process" => NetnsKind::Process,
        _ => NetnsKind::Unnamed,
    }
}

fn runtime_of(s: &str) -> Option<Runtime> {
    [
        Runtime::Docker,
        Runtime::Containerd,
        Runtime::Crio,
        Runtime::Podman,
        Runtime::Nspawn,
        Runtime::Lxc,
    ]
    .into_iter()
    .find(|r| r.name() == s)
}

pub fn source_of(s: &str) -> Option<Source> {
    match s {
        "netlink" => Some(Source::Netlink),
        "proc" => Some(Source::Proc),
        _ => None,
    }
}

pub fn limit_text(l: Option<Limit>) -> Option<String> {
    l.map(|l| match l {
        Limit::Value(v) => v.to_string(),
        Limit::Unlimited => "unlimited".to_string(),
    })
}

pub fn limit_of(s: &Option<String>) -> Option<Limit> {
    match s.as_deref()? {
        "unlimited" => Some(Limit::Unlimited),
        v => v.trim().parse().ok().map(Limit::Value),
    }
}

impl NamespaceRec {
    /// The namespace's identity part; the rest is filled by the writer.
    pub fn from_info(info: &NetnsInfo) -> NamespaceRec {
        NamespaceRec {
            inode: info.inode,
            name: info.name.clone(),
            name_kind: kind_name(info.kind).to_string(),
            current: info.current,
            initial: info.initial,
            container: info.container.as_ref().map(|c| ContainerRec {
                runtime: c.runtime.name().to_string(),
                id: c.id.clone(),
                name: c.name.clone(),
                pod: c.pod.as_ref().map(|p| PodRec {
                    uid: p.uid.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                }),
            }),
            ip_netns: info.ip_netns.clone(),
            processes: info.processes,
            first_pid: info.first_pid,
            source: None,
            taken_at_unix_ms: 0,
            sysctls: BTreeMap::new(),
            counters: None,
            sockstat: None,
            close_wait_recheck_ms: None,
            close_wait_gone: Vec::new(),
            owners_known: false,
            missing: Vec::new(),
            persisted_sysctls: None,
            nofile_origins: Vec::new(),
            flows: None,
            descriptor_recheck: Vec::new(),
        }
    }

    pub fn info(&self) -> NetnsInfo {
        NetnsInfo {
            inode: self.inode,
            name: self.name.clone(),
            kind: kind_of(&self.name_kind),
            current: self.current,
            initial: self.initial,
            container: self.container.as_ref().and_then(|c| {
                Some(Container {
                    runtime: runtime_of(&c.runtime)?,
                    id: c.id.clone(),
                    name: c.name.clone(),
                    pod: c.pod.as_ref().map(|p| Pod {
                        uid: p.uid.clone(),
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    }),
                })
            }),
            ip_netns: self.ip_netns.clone(),
            processes: self.processes,
            first_pid: self.first_pid,
        }
    }

    pub fn sockstat(&self) -> Option<Sockstat> {
        self.sockstat.map(|s| Sockstat {
            inuse: s.inuse,
            orphan: s.orphan,
            tw: s.tw,
            alloc: s.alloc,
            mem_pages: s.mem_pages,
        })
    }
}

impl SockstatRec {
    pub fn from_model(s: &Sockstat) -> SockstatRec {
        SockstatRec {
            inuse: s.inuse,
            orphan: s.orphan,
            tw: s.tw,
            alloc: s.alloc,
            mem_pages: s.mem_pages,
        }
    }
}

impl ProcessRec {
    pub fn from_facts(ns: Option<u64>, f: &ProcessFacts) -> ProcessRec {
        ProcessRec {
            pid: f.pid,
            ns,
            comm: f.comm.clone(),
            uid: f.uid,
            cmdline: f.cmdline.clone(),
            open_fds: f.open_fds,
            facts: true,
            nofile_soft: limit_text(f.nofile_soft),
            nofile_hard: limit_text(f.nofile_hard),
            detached_tcp_fds: f.detached_tcp_fds,
        }
    }

    pub fn facts(&self) -> ProcessFacts {
        ProcessFacts {
            pid: self.pid,
            comm: self.comm.clone(),
            uid: self.uid,
            cmdline: self.cmdline.clone(),
            open_fds: self.open_fds,
            nofile_soft: limit_of(&self.nofile_soft),
            nofile_hard: limit_of(&self.nofile_hard),
            detached_tcp_fds: self.detached_tcp_fds,
        }
    }
}

impl KernelLogRec {
    pub fn entry(&self) -> KernelLogEntry {
        KernelLogEntry {
            message: self.message.clone(),
            count: self.count,
            last_seen_s: self.last_seen_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_survives_its_line() {
        let s = Socket {
            family: Family::V6,
            state: TcpState::TimeWait,
            local: Endpoint::new("::ffff:127.0.0.1".parse().expect("ip"), 40000),
            remote: Endpoint::new("::ffff:127.0.0.1".parse().expect("ip"), 8080),
            inode: 0,
            uid: 0,
            recv_q: 0,
            send_q: 0,
            timer: Some(Timer {
                kind: TimerKind::TimeWait,
                remaining_ms: 59_000,
                retransmits: 0,
            }),
            cookie: Some(77),
            tcp_info: Some(TcpInfo {
                rtt_us: Some(30),
                ..TcpInfo::default()
            }),
        };
        let line = serde_json::to_string(&SocketRec::from_socket(9, &s)).expect("json");
        assert!(line.as_bytes().starts_with(SOCKET_LINE_PREFIX), "{line}");
        let back: SocketRec = serde_json::from_str(&line).expect("parse");
        assert_eq!(back.to_socket().expect("socket"), s);
    }

    #[test]
    fn bad_socket_lines_say_what_is_wrong() {
        let rec = |st: &str, l: &str, r: &str| SocketRec {
            s: 0,
            st: st.into(),
            l: l.into(),
            r: r.into(),
            ino: 0,
            uid: 0,
            rq: 0,
            sq: 0,
            tm: None,
            ck: None,
            ti: None,
        };
        let e = rec("NOPE", "1.2.3.4:1", "1.2.3.4:2").to_socket();
        assert!(e.expect_err("state").0.contains("'NOPE'"));
        let e = rec("LISTEN", "1.2.3.4", "1.2.3.4:2").to_socket();
        assert!(e.expect_err("port").0.contains("'1.2.3.4'"));
        let e = rec("LISTEN", "1.2.3.4:1", "[::1]:2").to_socket();
        assert!(e.expect_err("family").0.contains("different families"));
    }
}
