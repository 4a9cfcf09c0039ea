//! `tcpdoctor kill`: the sockets selected (before asking, or for --dry-run), what
//! happened to each one, the reminder that processes keep their descriptors, and JSON.

use std::io::{self, Write};

use serde::Serialize;

use super::{state_paint, Paint, Style, Table, JSON_SCHEMA_VERSION};
use crate::model::units::{count, noun};
use crate::model::{Confirmation, KillOutcome, KillReport, KillRow, KillStop, Socket, TcpState};

/// `comm pid=N fd=N`, `+K` more holders; `-` when no descriptor refers to the socket,
/// `?` when its holder could not be seen.
fn process_cell(r: &KillReport, row: &KillRow) -> String {
    if row.socket.inode == 0 {
        return "-".into();
    }
    match row.owners.first() {
        None => "?".into(),
        Some(o) => {
            let comm = r.owners.process(o.pid).map_or("?", |p| p.comm.as_str());
            let mut s = format!("{comm} pid={} fd={}", o.pid, o.fd);
            if row.owners.len() > 1 {
                s.push_str(&format!(" +{}", row.owners.len() - 1));
            }
            s
        }
    }
}

/// What happened, in a few words.
pub fn outcome_text(row: &KillRow) -> String {
    match row.outcome {
        KillOutcome::WouldDestroy => "would destroy".into(),
        KillOutcome::NotTried => "not tried".into(),
        KillOutcome::Destroyed => "destroyed".into(),
        KillOutcome::AlreadyGone => "already gone".into(),
        KillOutcome::NotPermitted => "not permitted (needs CAP_NET_ADMIN)".into(),
        KillOutcome::Unsupported if row.socket.state == TcpState::TimeWait => {
            "unsupported (TIME_WAIT: Linux 6.0+)".into()
        }
        KillOutcome::Unsupported => "unsupported by this kernel".into(),
        KillOutcome::Failed { errno } => {
            format!("failed: {}", io::Error::from_raw_os_error(errno))
        }
    }
}

fn outcome_paint(o: KillOutcome) -> Option<Paint> {
    match o {
        KillOutcome::Destroyed => Some(Paint::Green),
        KillOutcome::AlreadyGone | KillOutcome::NotTried | KillOutcome::WouldDestroy => {
            Some(Paint::Dim)
        }
        _ => Some(Paint::Red),
    }
}

/// The sockets as a table; `with_outcome` adds a first column saying what happened.
fn table(out: &mut impl Write, r: &KillReport, style: Style, with_outcome: bool) -> io::Result<()> {
    let mut cols: Vec<(&str, bool)> = Vec::new();
    if with_outcome {
        cols.push(("RESULT", false));
    }
    if r.several {
        cols.push(("NETNS", false));
    }
    cols.extend([
        ("STATE", false),
        ("RECV-Q", true),
        ("LOCAL", false),
        ("PEER", false),
        ("PROCESS", false),
    ]);
    let mut t = Table::new(&cols);
    for row in &r.rows {
        let s: &Socket = &row.socket;
        let mut cells = Vec::new();
        if with_outcome {
            cells.push((outcome_text(row), outcome_paint(row.outcome)));
        }
        if r.several {
            cells.push((r.netns(row).map_or("?", |n| n.name.as_str()).into(), None));
        }
        cells.extend([
            (s.state.name().to_string(), state_paint(s.state)),
            (s.recv_q.to_string(), None),
            (s.local.to_string(), None),
            (s.remote.to_string(), None),
            (process_cell(r, row), None),
        ]);
        t.row(cells);
    }
    t.write(out, style)
}

/// The selection: what would be destroyed (--dry-run), or what is about to be asked
/// about. When nothing matched, says so and why if it can tell.
pub fn write_plan(out: &mut impl Write, r: &KillReport, style: Style) -> io::Result<()> {
    if r.rows.is_empty() {
        let states: Vec<&str> = r.states.iter().map(|s| s.name()).collect();
        writeln!(
            out,
            "No {} socket matches: nothing to destroy.",
            states.join(" or ")
        )?;
        for h in &r.hints {
            writeln!(out, "  {h}")?;
        }
        return Ok(());
    }
    let n = r.rows.len() as u64;
    match r.confirmation {
        Confirmation::DryRun => writeln!(
            out,
            "Would destroy {} (dry run: nothing is destroyed):",
            count(n, "socket", "sockets")
        )?,
        _ => writeln!(out, "{} to destroy:", count(n, "socket", "sockets"))?,
    }
    table(out, r, style, false)?;
    if r.confirmation == Confirmation::DryRun {
        writeln!(
            out,
            "Destroying resets each connection (SOCK_DESTROY, as ss -K); the processes keep their descriptors until they close them."
        )?;
    }
    Ok(())
}

/// The question asked on the terminal before destroying.
pub fn question(r: &KillReport) -> String {
    let what = match r.rows.len() {
        1 => "this socket".to_string(),
        n => format!("these {n} sockets"),
    };
    format!("Destroy {what}? The kernel resets each connection. [y/N] ")
}

/// Why the remaining requests were not sent, as one line (without a trailing period).
pub fn stop_line(r: &KillReport) -> Option<String> {
    let stop = r.stopped?;
    let done = r.count("destroyed");
    let tail = if done == 0 {
        "nothing was destroyed".to_string()
    } else {
        format!(
            "{} destroyed before that, the rest not tried",
            count(done, "socket was", "sockets were")
        )
    };
    Some(match stop {
        KillStop::Unsupported => format!(
            "this kernel cannot destroy sockets: it was built without CONFIG_INET_DIAG_DESTROY (grep INET_DIAG_DESTROY /boot/config-$(uname -r)), so ss -K cannot either; {tail}"
        ),
        KillStop::NotPermitted => format!(
            "destroying sockets needs CAP_NET_ADMIN in their network namespace: run as root; {tail}"
        ),
    })
}

/// Whether the per-socket table says anything the stop line does not: some request
/// was answered with something else than the stop's own error.
fn results_worth_a_table(r: &KillReport) -> bool {
    r.stopped.is_none()
        || r.rows.iter().any(|row| {
            !matches!(
                row.outcome,
                KillOutcome::NotTried | KillOutcome::Unsupported | KillOutcome::NotPermitted
            )
        })
}

/// What happened to each socket, a one-line total, and the reminder about the
/// descriptors the processes still hold. With a stop and nothing else to report, only
/// the stop line matters: `main` prints it on stderr and this writes nothing.
pub fn write_results(out: &mut impl Write, r: &KillReport, style: Style) -> io::Result<()> {
    if r.confirmation == Confirmation::Declined {
        return writeln!(out, "Nothing destroyed.");
    }
    if r.rows.is_empty() || !results_worth_a_table(r) {
        return Ok(());
    }
    table(out, r, style, true)?;
    let parts: Vec<String> = [
        ("destroyed", "destroyed"),
        ("already_gone", "already gone"),
        ("not_permitted", "not permitted"),
        ("unsupported", "unsupported"),
        ("failed", "failed"),
        ("not_tried", "not tried"),
    ]
    .iter()
    .filter_map(|(key, words)| {
        let n = r.count(key);
        (n > 0).then(|| format!("{n} {words}"))
    })
    .collect();
    writeln!(
        out,
        "{}: {}.",
        count(r.rows.len() as u64, "socket", "sockets"),
        parts.join(", ")
    )?;
    write_reminder(out, r)
}

/// Destroying a socket closes no descriptor: says which processes still hold how many.
fn write_reminder(out: &mut impl Write, r: &KillReport) -> io::Result<()> {
    let kept = r.descriptors_kept();
    if kept.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "Reminder: the processes still hold the descriptors of the destroyed sockets:"
    )?;
    for (pid, n) in &kept {
        let comm = r.owners.process(*pid).map_or("?", |p| p.comm.as_str());
        writeln!(
            out,
            "  {comm} (pid {pid}): {} {}",
            count(*n, "descriptor", "descriptors"),
            noun(*n, "stays open", "stay open")
        )?;
    }
    writeln!(
        out,
        "Each stays open until the process closes it: its next call on it fails with ECONNABORTED, then reads see end-of-file and writes EPIPE. The leak goes on until the code path that never calls close() is fixed (or the process restarts)."
    )
}

#[derive(Serialize)]
struct JsonOwner<'a> {
    pid: u32,
    fd: u32,
    comm: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonNetns<'a> {
    inode: u64,
    name: &'a str,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<JsonNetns<'a>>,
    #[serde(flatten)]
    socket: &'a Socket,
    owners: Vec<JsonOwner<'a>>,
    outcome: &'static str,
    /// Failed: the error as the OS words it.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
}

#[derive(Serialize)]
struct JsonKept<'a> {
    pid: u32,
    comm: Option<&'a str>,
    descriptors: u64,
}

#[derive(Serialize)]
struct JsonStop {
    reason: &'static str,
    message: String,
}

#[derive(Serialize)]
struct JsonKill<'a> {
    schema_version: u32,
    command: &'static str,
    dry_run: bool,
    confirmation: &'static str,
    states: Vec<TcpState>,
    matched: usize,
    outcomes: serde_json::Map<String, serde_json::Value>,
    stopped: Option<JsonStop>,
    descriptors_kept: Vec<JsonKept<'a>>,
    hints: &'a [String],
    notices: &'a [crate::model::Notice],
    namespaces: &'a [crate::model::NetnsInfo],
    sockets: Vec<JsonRow<'a>>,
}

/// One JSON document: the selection and each socket's outcome (docs/json.md).
pub fn write_json(out: &mut impl Write, r: &KillReport) -> io::Result<()> {
    let outcomes = KillOutcome::NAMES
        .iter()
        .map(|n| (n.to_string(), serde_json::Value::from(r.count(n))))
        .collect();
    let sockets = r
        .rows
        .iter()
        .map(|row| JsonRow {
            netns: r
                .several
                .then(|| r.netns(row))
                .flatten()
                .map(|n| JsonNetns {
                    inode: n.inode,
                    name: &n.name,
                }),
            socket: &row.socket,
            owners: row
                .owners
                .iter()
                .map(|o| JsonOwner {
                    pid: o.pid,
                    fd: o.fd,
                    comm: r.owners.process(o.pid).map(|p| p.comm.as_str()),
                })
                .collect(),
            outcome: row.outcome.name(),
            error: match row.outcome {
                KillOutcome::Failed { errno } => {
                    Some(io::Error::from_raw_os_error(errno).to_string())
                }
                _ => None,
            },
            errno: match row.outcome {
                KillOutcome::Failed { errno } => Some(errno),
                _ => None,
            },
        })
        .collect();
    let doc = JsonKill {
        schema_version: JSON_SCHEMA_VERSION,
        command: "kill",
        dry_run: r.confirmation == Confirmation::DryRun,
        confirmation: match r.confirmation {
            Confirmation::DryRun => "dry_run",
            Confirmation::Flag => "yes_flag",
            Confirmation::Answered => "answered_yes",
            Confirmation::Declined => "declined",
        },
        states: r.states.iter().collect(),
        matched: r.rows.len(),
        outcomes,
        stopped: r.stopped.map(|s| JsonStop {
            reason: s.name(),
            message: stop_line(r).unwrap_or_default(),
        }),
        descriptors_kept: r
            .descriptors_kept()
            .into_iter()
            .map(|(pid, n)| JsonKept {
                pid,
                comm: r.owners.process(pid).map(|p| p.comm.as_str()),
                descriptors: n,
            })
            .collect(),
        hints: &r.hints,
        notices: &r.notices,
        namespaces: if r.several { &r.namespaces } else { &[] },
        sockets,
    };
    serde_json::to_writer(&mut *out, &doc).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Family, Owner, Owners, Process, SocketFilter};

    fn row(port: u16, outcome: KillOutcome, state: TcpState) -> KillRow {
        KillRow {
            netns: 0,
            socket: Socket {
                family: Family::V4,
                state,
                local: Endpoint::new("127.0.0.1".parse().expect("ip"), 8080),
                remote: Endpoint::new("127.0.0.1".parse().expect("ip"), port),
                inode: u64::from(port),
                uid: 0,
                recv_q: 1,
                send_q: 0,
                timer: None,
                cookie: Some(u64::from(port)),
                tcp_info: None,
            },
            owners: vec![Owner {
                pid: 4242,
                fd: u32::from(port) - 40000,
            }],
            outcome,
        }
    }

    fn report(rows: Vec<KillRow>, confirmation: Confirmation) -> KillReport {
        let mut owners = Owners::default();
        owners.processes.insert(
            4242,
            Process {
                pid: 4242,
                comm: "leaky".into(),
                uid: 0,
                cmdline: String::new(),
                open_fds: 9,
            },
        );
        KillReport {
            states: [TcpState::CloseWait].into_iter().collect(),
            filter: SocketFilter {
                pids: vec![4242],
                ..SocketFilter::default()
            },
            confirmation,
            rows,
            owners,
            namespaces: Vec::new(),
            several: false,
            stopped: None,
            notices: Vec::new(),
            hints: Vec::new(),
        }
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut b = Vec::new();
        f(&mut b).expect("write");
        String::from_utf8(b).expect("utf8")
    }

    #[test]
    fn results_say_per_socket_what_happened_and_remind_of_descriptors() {
        let r = report(
            vec![
                row(40001, KillOutcome::Destroyed, TcpState::CloseWait),
                row(40002, KillOutcome::AlreadyGone, TcpState::CloseWait),
                row(
                    40003,
                    KillOutcome::Failed {
                        errno: libc::EINVAL,
                    },
                    TcpState::CloseWait,
                ),
            ],
            Confirmation::Flag,
        );
        let t = text(|b| write_results(b, &r, Style { color: false }));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RESULT"), "{t}");
        assert!(lines[1].starts_with("destroyed ") && lines[1].ends_with("leaky pid=4242 fd=1"));
        assert!(lines[2].starts_with("already gone "), "{t}");
        assert!(lines[3].starts_with("failed: Invalid argument"), "{t}");
        assert_eq!(
            lines[4],
            "3 sockets: 1 destroyed, 1 already gone, 1 failed."
        );
        assert_eq!(
            lines[6], "  leaky (pid 4242): 1 descriptor stays open",
            "{t}"
        );
        assert!(t.contains("ECONNABORTED"), "{t}");
    }

    #[test]
    fn a_stop_with_nothing_done_is_one_line_and_no_table() {
        let mut r = report(
            vec![
                row(40001, KillOutcome::Unsupported, TcpState::CloseWait),
                row(40002, KillOutcome::NotTried, TcpState::CloseWait),
            ],
            Confirmation::Flag,
        );
        r.stopped = Some(KillStop::Unsupported);
        assert_eq!(text(|b| write_results(b, &r, Style { color: false })), "");
        let line = stop_line(&r).expect("line");
        assert!(
            line.contains("CONFIG_INET_DIAG_DESTROY") && line.ends_with("nothing was destroyed"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
        // Something destroyed before the stop (another namespace): the table stays.
        r.rows[1].outcome = KillOutcome::Destroyed;
        r.stopped = Some(KillStop::NotPermitted);
        assert!(text(|b| write_results(b, &r, Style { color: false })).contains("destroyed"));
        assert!(stop_line(&r)
            .expect("line")
            .ends_with("1 socket was destroyed before that, the rest not tried"));
        let mut json = Vec::new();
        write_json(&mut json, &r).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid");
        assert_eq!(v["stopped"]["reason"], "not_permitted");
        assert_eq!(v["outcomes"]["destroyed"], 1);
        assert_eq!(v["outcomes"]["unsupported"], 1);
    }

    #[test]
    fn a_time_wait_refusal_names_the_kernel_version() {
        let r = row(40001, KillOutcome::Unsupported, TcpState::TimeWait);
        assert_eq!(outcome_text(&r), "unsupported (TIME_WAIT: Linux 6.0+)");
    }

    #[test]
    fn plan_and_question_agree_with_their_count() {
        let one = report(
            vec![row(40001, KillOutcome::NotTried, TcpState::CloseWait)],
            Confirmation::Answered,
        );
        assert_eq!(
            question(&one),
            "Destroy this socket? The kernel resets each connection. [y/N] "
        );
        let plan = text(|b| write_plan(b, &one, Style { color: false }));
        assert!(plan.starts_with("1 socket to destroy:\n"), "{plan}");
        let none = report(Vec::new(), Confirmation::DryRun);
        let plan = text(|b| write_plan(b, &none, Style { color: false }));
        assert_eq!(plan, "No CLOSE_WAIT socket matches: nothing to destroy.\n");
        let declined = report(
            vec![row(40001, KillOutcome::NotTried, TcpState::CloseWait)],
            Confirmation::Declined,
        );
        assert_eq!(
            text(|b| write_results(b, &declined, Style { color: false })),
            "Nothing destroyed.\n"
        );
    }
}
