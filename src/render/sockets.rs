//! `tcpdoctor sockets`: the socket list as an aligned table or JSON.
//!
//! The table is written in two passes over the sockets (measure, then print) with one
//! reused scratch buffer, so a million rows cost no per-cell allocation.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use super::{human_duration_ms, state_paint, Paint, Style, JSON_SCHEMA_VERSION};
use crate::model::{NetnsInfo, Owners, Process, Socket, SocketsReport};

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
fn cell(buf: &mut String, col: Col, s: &Socket, ns: Option<&NetnsInfo>, owners: Option<&Owners>) {
    buf.clear();
    let opt_ms = |buf: &mut String, v: Option<u32>| match v {
        Some(ms) => buf.push_str(&human_duration_ms(u64::from(ms))),
        None => buf.push('-'),
    };
    // Writing to a String cannot fail.
    let _ = match col {
        Col::Netns => {
            buf.push_str(ns.map_or("?", |n| n.name.as_str()));
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
            match s.tcp_info.and_then(|i| i.rtt_us) {
                Some(us) => {
                    let _ = write!(buf, "{:.2}ms", f64::from(us) / 1000.0);
                }
                None => buf.push('-'),
            }
            Ok(())
        }
        Col::LastRcv => {
            opt_ms(buf, s.tcp_info.and_then(|i| i.last_data_recv_ms));
            Ok(())
        }
        Col::LastAck => {
            opt_ms(buf, s.tcp_info.and_then(|i| i.last_ack_recv_ms));
            Ok(())
        }
        Col::Process => {
            process_cell(buf, s, owners);
            Ok(())
        }
    };
}

fn process_cell(buf: &mut String, s: &Socket, owners: Option<&Owners>) {
    let Some(owners) = owners else {
        return;
    };
    if s.inode == 0 {
        buf.push('-');
        return;
    }
    let mut it = owners.map.owners(s.inode);
    match it.next() {
        None => buf.push('?'),
        Some(o) => {
            let comm = owners.process(o.pid).map_or("?", |p| p.comm.as_str());
            let _ = write!(buf, "{comm} pid={} fd={}", o.pid, o.fd);
            let more = it.count();
            if more > 0 {
                let _ = write!(buf, " +{more}");
            }
        }
    }
}

pub fn write_human(out: &mut impl Write, r: &SocketsReport, style: Style) -> io::Result<()> {
    let cols = columns(r);
    let owners = r.owners.as_ref();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.header().len()).collect();
    let mut buf = String::with_capacity(128);
    for (k, s) in r.sockets.iter().enumerate() {
        for (i, c) in cols.iter().enumerate() {
            cell(&mut buf, *c, s, r.netns(k), owners);
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
            cell(&mut buf, *c, s, r.netns(k), owners);
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
            "{} of {} matching sockets shown (--limit)",
            r.sockets.len(),
            r.matched
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
            o.map
                .owners(s.inode)
                .filter(|_| s.inode != 0)
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
        serde_json::to_writer(
            &mut *out,
            &JsonSocket {
                socket: s,
                netns,
                owners,
            },
        )
        .map_err(io::Error::from)?;
    }
    out.write_all(b"\n]}\n")
}
