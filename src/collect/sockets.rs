//! The socket inventory source: sock_diag when it works, `/proc/net/tcp{,6}` when not.
//!
//! Streams sockets to a visitor so callers that only count never hold a socket list.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::bounded;
use super::netlink::{DumpError, DumpRequest, DumpStats, ParseError, SockDiag};
use super::procfs::net_tcp;
use crate::model::units::{count, noun};
use crate::model::{Family, Notice, NoticeCode, Socket, Source, StateSet};

/// Where the user wants sockets read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePref {
    /// sock_diag, falling back to /proc with a notice.
    Auto,
    Netlink,
    Proc,
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketQuery {
    pub states: StateSet,
    pub ipv4: bool,
    pub ipv6: bool,
    pub tcp_info: bool,
    pub source: SourcePref,
}

impl SocketQuery {
    fn families(&self) -> impl Iterator<Item = Family> {
        [(self.ipv4, Family::V4), (self.ipv6, Family::V6)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| f)
    }
}

/// A read that produced nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Netlink(#[from] DumpError),
    #[error("cannot read '{path}': {source}; check --proc-root or run where /proc is mounted")]
    ProcFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a stream went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub source: Source,
    pub notices: Vec<Notice>,
}

/// Set once the kernel refused the both-families request (`TCPDIAG_GETSOCK`), so later
/// dumps go straight to one request per family.
static BOTH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Reads every socket that matches `query` and passes it to `visit`, family by family.
pub fn stream<F: FnMut(&Socket)>(
    query: &SocketQuery,
    proc_root: &Path,
    mut visit: F,
) -> Result<StreamReport, CollectError> {
    let mut notices = Vec::new();
    let diag = match query.source {
        SourcePref::Proc => None,
        SourcePref::Netlink => Some(SockDiag::open()?),
        SourcePref::Auto => match SockDiag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                notices.push(Notice::new(
                    NoticeCode::NetlinkUnavailable,
                    format!("{e}; read /proc/net/tcp and tcp6 instead (timers in 10 ms steps, no tcp_info)"),
                ));
                None
            }
        },
    };
    let Some(mut diag) = diag else {
        stream_proc(query, proc_root, &mut visit, &mut notices)?;
        return Ok(StreamReport {
            source: Source::Proc,
            notices,
        });
    };
    let mut stats = DumpStats::default();
    // Both families: one walk of the hash table with the older request when the kernel
    // takes it, else one walk per family.
    let both = query.ipv4 && query.ipv6 && !BOTH_REFUSED.load(Ordering::Relaxed);
    let mut walked = false;
    if both {
        let req = DumpRequest {
            family: None,
            states: query.states,
            tcp_info: query.tcp_info,
        };
        match diag.dump(&req, &mut stats, &mut visit) {
            Ok(()) => walked = true,
            // Refused before any socket came: ask per family, now and from now on.
            Err(DumpError::Parse(ParseError::Kernel { .. })) if stats.sockets == 0 => {
                BOTH_REFUSED.store(true, Ordering::Relaxed);
                diag = SockDiag::open()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !walked {
        for family in query.families() {
            let req = DumpRequest {
                family: Some(family),
                states: query.states,
                tcp_info: query.tcp_info,
            };
            diag.dump(&req, &mut stats, &mut visit)?;
        }
    }
    if stats.skipped > 0 {
        notices.push(Notice::new(
            NoticeCode::RecordsSkipped,
            format!("skipped {} sock_diag records the parser did not understand (unknown state or family, or too short)", stats.skipped),
        ));
    }
    if stats.bad_attributes > 0 {
        notices.push(Notice::new(
            NoticeCode::AttributesSkipped,
            format!(
                "ignored {} malformed sock_diag attributes; tcp_info is missing for those sockets",
                stats.bad_attributes
            ),
        ));
    }
    if stats.interrupted {
        notices.push(Notice::new(
            NoticeCode::DumpInterrupted,
            "the socket table changed while it was read (NLM_F_DUMP_INTR): a few sockets may be missing or counted twice",
        ));
    }
    Ok(StreamReport {
        source: Source::Netlink,
        notices,
    })
}

fn stream_proc<F: FnMut(&Socket)>(
    query: &SocketQuery,
    proc_root: &Path,
    visit: &mut F,
    notices: &mut Vec<Notice>,
) -> Result<(), CollectError> {
    if query.tcp_info {
        notices.push(Notice::new(
            NoticeCode::TcpInfoUnavailable,
            "/proc/net/tcp carries no tcp_info: lastrcv, lastack and rtt are unknown",
        ));
    }
    for family in query.families() {
        let name = match family {
            Family::V4 => "tcp",
            Family::V6 => "tcp6",
        };
        let path = proc_root.join("net").join(name);
        let file = match bounded::open_stream(&path, bounded::SOCKET_TABLE) {
            Ok(f) => f,
            // A kernel without IPv6 has no tcp6: that is zero IPv6 sockets, not an error.
            Err(e) if family == Family::V6 && e.kind() == std::io::ErrorKind::NotFound => {
                notices.push(Notice::new(
                    NoticeCode::Ipv6Unavailable,
                    format!(
                        "'{}' does not exist: IPv6 is not enabled here",
                        path.display()
                    ),
                ));
                continue;
            }
            Err(source) => return Err(CollectError::ProcFile { path, source }),
        };
        let stats = net_tcp::parse(
            BufReader::with_capacity(256 * 1024, file),
            family,
            query.states,
            visit,
        )
        .map_err(|source| CollectError::ProcFile {
            path: path.clone(),
            source,
        })?;
        if stats.repeated > 0 {
            notices.push(Notice::new(
                NoticeCode::DumpInterrupted,
                format!(
                    "the socket table changed while '{}' was read: {} the kernel listed twice {} counted once, and a few sockets may be missing",
                    path.display(),
                    count(stats.repeated, "entry", "entries"),
                    noun(stats.repeated, "was", "were"),
                ),
            ));
        }
        if let Some((line, err)) = &stats.first_error {
            notices.push(Notice::new(
                NoticeCode::RecordsSkipped,
                format!(
                    "skipped {} unreadable lines in '{}' (first at line {line}: {err})",
                    stats.skipped,
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}
