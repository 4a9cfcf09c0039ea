//! `tcpdoctor sockets`: the socket list as an aligned table or JSON.
//!
//! The table is written in two passes over the sockets (measure, then print) with one
//! reused scratch buffer, so a million rows cost no per-cell allocation.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use super::{fit, human_duration_ms, state_paint, Paint, Style, CELL_MAX, JSON_SCHEMA_VERSION};
use crate::model::text;
use crate::model::units::count;
use crate::model::{
    NetnsInfo, Owners, Process, Socket, SocketFilter, SocketsReport, TcpInfo, TcpState,
};

#[derive(Clone, Copy)]
enum Col {
    Netns,
    State,
    RecvQ,
    SendQ,
    Local,
    Peer,
    Timer,
    Rtt,
    LastRcv,
    LastAck,
    Process,
}

impl Col {
    fn header(self) -> &'static str {
        match self {
            Col::Netns => "NETNS",
            Col::State => "STATE",
            Col::RecvQ => "RECV-Q",
            Col::SendQ => "SEND-Q",
            Col::Local => "LOCAL",
            Col::Peer => "PEER",
            Col::Timer => "TIMER",
            Col::Rtt => "RTT",
            Col::LastRcv => "LASTRCV",
            Col::LastAck => "LASTACK",
            Col::Process => "PROCESS",
        }
    }

    fn right(self) -> bool {
        matches!(
            self,
            Col::RecvQ | Col::SendQ | Col::Rtt | Col::LastRcv | Col::LastAck
        )
    }
}

fn columns(r: &SocketsReport) -> Vec<Col> {
    let mut c = Vec::new();
    if !r.namespaces.is_empty() {
        c.push(Col::Netns);
    }
    c.extend([
        Col::State,
        Col::RecvQ,
        Col::SendQ,
        Col::Local,
        Col::Peer,
        Col::Timer,
    ]);
    if r.tcp_info {
        c.extend([Col::Rtt, Col::LastRcv, Col::LastAck]);
    }
    if r.owners.is_some() {
        c.push(Col::Process);
    }
    c
}

/// Writes one cell's text into `buf` (cleared first).
fn cell(
    buf: &mut String,
    col: Col,
    s: &Socket,
    ns: Option<&NetnsInfo>,
    owners: Option<&Owners>,
    filter: &SocketFilter,
) {
    buf.clear();
    let opt_ms = |buf: &mut String, v: Option<u32>| match v {
        Some(ms) => buf.push_str(&human_duration_ms(u64::from(ms))),
        None => buf.push('-'),
    };
    // Writing to a String cannot fail.
    let _ = match col {
        Col::Netns => {
            buf.push_str(&fit(ns.map_or("?", |n| n.name.as_str()), CELL_MAX));
            Ok(())
        }
        Col::State => {
            buf.push_str(s.state.name());
            Ok(())
        }
        Col::RecvQ => write!(buf, "{}", s.recv_q),
        Col::SendQ => write!(buf, "{}", s.send_q),
        Col::Local => write!(buf, "{}", s.local),
        Col::Peer => write!(buf, "{}", s.remote),
        Col::Timer => {
            match s.timer {
                Some(t) => {
                    let _ = write!(
                        buf,
                        "{} {}",
                        t.kind.name(),
                        human_duration_ms(t.remaining_ms)
                    );
                }
                None => buf.push('-'),
            }
            Ok(())
        }
        Col::Rtt => {
            match shown_info(s).and_then(|i| i.rtt_us) {
                Some(us) => {
                    let _ = write!(buf, "{:.2}ms", f64::from(us) / 1000.0);
                }
                None => buf.push('-'),
            }
            Ok(())
        }
        Col::LastRcv => {
            opt_ms(buf, shown_info(s).and_then(|i| i.last_data_recv_ms));
            Ok(())
        }
        Col::LastAck => {
            opt_ms(buf, shown_info(s).and_then(|i| i.last_ack_recv_ms));
            Ok(())
        }
        Col::Process => {
            process_cell(buf, s, owners, filter);
            Ok(())
        }
    };
}

/// `comm pid=N fd=N`, `+K` more owners; the owner `--comm`/`--pid` asked for first.
fn process_cell(buf: &mut String, s: &Socket, owners: Option<&Owners>, filter: &SocketFilter) {
    let Some(owners) = owners else {
        return;
    };
    if s.inode == 0 {
        buf.push('-');
        return;
    }
    let all = filter.owners_of(s, owners);
    match all.first() {
        None => buf.push('?'),
        Some(o) => {
            let comm = owners.process(o.pid).map_or("?", |p| p.comm.as_str());
            let comm = fit(comm, text::NAME_MAX);
            let _ = write!(buf, "{comm} pid={} fd={}", o.pid, o.fd);
            if all.len() > 1 {
                let _ = write!(buf, " +{}", all.len() - 1);
            }
        }
    }
}

/// The tcp_info fields that mean something for this socket. For a listener the kernel
/// fills only its queue lengths and returns (tcp_get_info(), "listeners aliased
/// fields"): timings, RTT and byte counts are zeros that were never measured, shown as
/// unknown rather than as "0 ms ago".
fn shown_info(s: &Socket) -> Option<TcpInfo> {
    match s.state {
        TcpState::Listen => s.tcp_info.map(|_| TcpInfo::default()),
        _ => s.tcp_info,
    }
}

pub fn write_human(out: &mut impl Write, r: &SocketsReport, style: Style) -> io::Result<()> {
    let cols = columns(r);
    let owners = r.owners.as_ref();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.header().len()).collect();
    let mut buf = String::with_capacity(128);
    for (k, s) in r.sockets.iter().enumerate() {
        for (i, c) in cols.iter().enumerate() {
            cell(&mut buf, *c, s, r.netns(k), owners, &r.filter);
            widths[i] = widths[i].max(buf.chars().count());
        }
    }
    let last = cols.len() - 1;
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.write_all(b"  ")?;
        }
        let w = if i == last && !c.right() {
            0
        } else {
            widths[i]
        };
        style.cell(out, c.header(), w, c.right(), Some(Paint::Bold))?;
    }
    out.write_all(b"\n")?;
    for (k, s) in r.sockets.iter().enumerate() {
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                out.write_all(b"  ")?;
            }
            cell(&mut buf, *c, s, r.netns(k), owners, &r.filter);
            let paint = match c {
                Col::State => state_paint(s.state),
                _ => None,
            };
            let w = if i == last && !c.right() {
                0
            } else {
                widths[i]
            };
            style.cell(out, &buf, w, c.right(), paint)?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The trailer for humans: how many matched, and whether --limit cut the list.
pub fn write_summary_line(err: &mut impl Write, r: &SocketsReport) -> io::Result<()> {
    if r.matched > r.sockets.len() {
        writeln!(
            err,
            "{} of {} shown (--limit)",
            r.sockets.len(),
            count(r.matched as u64, "matching socket", "matching sockets")
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonOwner<'a> {
    pid: u32,
    fd: u32,
    comm: Option<&'a str>,
    uid: Option<u32>,
    cmdline: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonNetns<'a> {
    inode: u64,
    name: &'a str,
}

#[derive(Serialize)]
struct JsonSocket<'a> {
    #[serde(flatten)]
    socket: &'a Socket,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<JsonNetns<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owners: Option<Vec<JsonOwner<'a>>>,
}

pub fn write_json(out: &mut impl Write, r: &SocketsReport) -> io::Result<()> {
    write!(
        out,
        "{{\"schema_version\":{JSON_SCHEMA_VERSION},\"command\":\"sockets\",\"source\":\"{}\",\"matched\":{},\"shown\":{},\"owners_collected\":{},\"notices\":",
        r.source.name(),
        r.matched,
        r.sockets.len(),
        r.owners.is_some()
    )?;
    serde_json::to_writer(&mut *out, &r.notices).map_err(io::Error::from)?;
    out.write_all(b",\"namespaces\":")?;
    serde_json::to_writer(&mut *out, &r.namespaces).map_err(io::Error::from)?;
    out.write_all(b",\"sockets\":[")?;
    for (i, s) in r.sockets.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"\n")?;
        let owners = r.owners.as_ref().map(|o| {
            r.filter
                .owners_of(s, o)
                .into_iter()
                .map(|ow| {
                    let p: Option<&Process> = o.process(ow.pid);
                    JsonOwner {
                        pid: ow.pid,
                        fd: ow.fd,
                        comm: p.map(|p| p.comm.as_str()),
                        uid: p.map(|p| p.uid),
                        cmdline: p.map(|p| p.cmdline.as_str()),
                    }
                })
                .collect()
        });
        let netns = r.netns(i).map(|n| JsonNetns {
            inode: n.inode,
            name: &n.name,
        });
        let shown = Socket {
            tcp_info: shown_info(s),
            ..*s
        };
        serde_json::to_writer(
            &mut *out,
            &JsonSocket {
                socket: &shown,
                netns,
                owners,
            },
        )
        .map_err(io::Error::from)?;
    }
    out.write_all(b"\n]}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Family, Owner, SocketOwnerMap};

    fn socket(state: TcpState, inode: u64) -> Socket {
        Socket {
            family: Family::V4,
            state,
            local: Endpoint::new("127.0.0.1".parse().expect("ip"), 5000),
            remote: Endpoint::unspecified(Family::V4),
            inode,
            uid: 0,
            recv_q: 0,
            send_q: 128,
            timer: None,
            cookie: None,
            // What the kernel sends for a listener: zeros it never measured.
            tcp_info: Some(TcpInfo {
                last_data_sent_ms: Some(0),
                last_data_recv_ms: Some(0),
                last_ack_recv_ms: Some(0),
                rtt_us: Some(0),
                rtt_var_us: Some(0),
                total_retrans: Some(0),
                bytes_acked: Some(0),
                bytes_received: Some(0),
                min_rtt_us: Some(0),
            }),
        }
    }

    fn owners() -> Owners {
        let mut map = SocketOwnerMap::default();
        map.insert(7, Owner { pid: 10, fd: 3 });
        map.insert(7, Owner { pid: 20, fd: 4 });
        let mut o = Owners {
            map,
            ..Owners::default()
        };
        for (pid, comm) in [(10, "supervisor"), (20, "worker")] {
            o.processes.insert(
                pid,
                Process {
                    pid,
                    comm: comm.into(),
                    uid: 0,
                    cmdline: String::new(),
                    open_fds: 4,
                },
            );
        }
        o
    }

    fn report(s: Socket, filter: SocketFilter) -> SocketsReport {
        SocketsReport {
            source: crate::model::Source::Netlink,
            sockets: vec![s],
            matched: 1,
            owners: Some(owners()),
            filter,
            tcp_info: true,
            namespaces: Vec::new(),
            netns_of: Vec::new(),
            notices: Vec::new(),
        }
    }

    #[test]
    fn listener_timings_are_unknown_not_zero() {
        let r = report(socket(TcpState::Listen, 7), SocketFilter::default());
        let mut json = Vec::new();
        write_json(&mut json, &r).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
        let info = &v["sockets"][0]["tcp_info"];
        assert!(info.is_object(), "{v}");
        for (k, field) in info.as_object().expect("object") {
            assert!(field.is_null(), "{k} = {field}");
        }
        let mut table = Vec::new();
        write_human(&mut table, &r, Style { color: false }).expect("table");
        let text = String::from_utf8(table).expect("utf8");
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .expect("row")
            .split_whitespace()
            .collect();
        // STATE RECV-Q SEND-Q LOCAL PEER TIMER RTT LASTRCV LASTACK PROCESS...
        assert_eq!(&row[5..9], ["-", "-", "-", "-"], "{text}");
        // A connected socket keeps its numbers.
        let r = report(socket(TcpState::Established, 7), SocketFilter::default());
        let mut json = Vec::new();
        write_json(&mut json, &r).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
        assert_eq!(v["sockets"][0]["tcp_info"]["rtt_us"], 0);
    }

    #[test]
    fn the_owner_asked_for_comes_first() {
        let by_comm = |comm: &str| SocketFilter {
            comms: vec![comm.to_string()],
            ..SocketFilter::default()
        };
        for (filter, first) in [
            (SocketFilter::default(), "supervisor pid=10 fd=3 +1"),
            (by_comm("worker"), "worker pid=20 fd=4 +1"),
            (by_comm("supervisor"), "supervisor pid=10 fd=3 +1"),
            (
                SocketFilter {
                    pids: vec![20],
                    ..SocketFilter::default()
                },
                "worker pid=20 fd=4 +1",
            ),
        ] {
            let r = report(socket(TcpState::Established, 7), filter);
            let mut table = Vec::new();
            write_human(&mut table, &r, Style { color: false }).expect("table");
            let text = String::from_utf8(table).expect("utf8");
            assert!(text.trim_end().ends_with(first), "{text}");
            let mut json = Vec::new();
            write_json(&mut json, &r).expect("json");
            let v: serde_json::Value = serde_json::from_slice(&json).expect("valid json");
            let comm = first.split_whitespace().next().expect("comm");
            assert_eq!(v["sockets"][0]["owners"][0]["comm"], comm, "{v}");
            assert_eq!(v["sockets"][0]["owners"].as_array().map(Vec::len), Some(2));
        }
    }
}
