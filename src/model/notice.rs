//! Notes about partial data: what could not be read, and what to do about it.

use serde::Serialize;

/// What a [`Notice`] is about. The codes are public: they appear in JSON and in the
/// exporter's `tcpdoctor_partial_data_notices{code}`, so a code never changes meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeCode {
    /// sock_diag refused: sockets came from /proc/net/tcp{,6}.
    NetlinkUnavailable,
    /// IPv6 sockets could not be read (no IPv6 in this kernel or namespace).
    Ipv6Unavailable,
    /// The kernel gave no tcp_info for some sockets (ages unknown).
    TcpInfoUnavailable,
    /// The kernel interrupted a dump because the table changed under it.
    DumpInterrupted,
    /// Malformed records were skipped.
    RecordsSkipped,
    /// Unknown or malformed netlink attributes were skipped.
    AttributesSkipped,
    /// Some sockets' owners could not be seen (permission, exited processes).
    OwnersPartial,
    /// Some processes' descriptor counts could not be read.
    FdCountsPartial,
    /// /proc/net/{netstat,snmp} could not be read.
    CountersUnavailable,
    /// /proc/net/{netstat,snmp} had malformed lines.
    CountersPartial,
    /// The kernel log could not be read.
    KernelLogUnavailable,
    /// The CLOSE_WAIT pass failed.
    CloseWaitUnavailable,
    /// Only the current network namespace was read (no privilege for the others).
    NetnsCurrentOnly,
    /// A network namespace could not be read.
    NetnsUnreadable,
    /// A network namespace disappeared between discovery and reading (its sockets went
    /// with it, so nothing is hidden).
    NetnsVanished,
    /// `--netns` does not apply to a replayed capture.
    NetnsReplay,
    /// A replayed capture lacks some evidence a live run reads.
    ReplayMissing,
    /// A running nginx's configuration could not be read or parsed.
    NginxConfigUnreadable,
    /// The connection tracer runs without some of its programs (the kernel refused
    /// them); the message says what is not seen.
    TraceDegraded,
    /// The connection tracer lost counts or events (full tables, rate limit).
    TraceLosses,
    /// `check`, `watch` or `serve` could not trace connections (not root, no BPF or
    /// BTF): nothing is hidden that a run without the tracer would show, but findings
    /// do not name who opens connections, and failed connect() calls and resets are
    /// not counted.
    TraceUnavailable,
}

impl NoticeCode {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeCode::NetlinkUnavailable => "netlink_unavailable",
            NoticeCode::Ipv6Unavailable => "ipv6_unavailable",
            NoticeCode::TcpInfoUnavailable => "tcp_info_unavailable",
            NoticeCode::DumpInterrupted => "dump_interrupted",
            NoticeCode::RecordsSkipped => "records_skipped",
            NoticeCode::AttributesSkipped => "attributes_skipped",
            NoticeCode::OwnersPartial => "owners_partial",
            NoticeCode::FdCountsPartial => "fd_counts_partial",
            NoticeCode::CountersUnavailable => "counters_unavailable",
            NoticeCode::CountersPartial => "counters_partial",
            NoticeCode::KernelLogUnavailable => "kernel_log_unavailable",
            NoticeCode::CloseWaitUnavailable => "close_wait_unavailable",
            NoticeCode::NetnsCurrentOnly => "netns_current_only",
            NoticeCode::NetnsUnreadable => "netns_unreadable",
            NoticeCode::NetnsVanished => "netns_vanished",
            NoticeCode::NetnsReplay => "netns_replay",
            NoticeCode::ReplayMissing => "replay_missing",
            NoticeCode::NginxConfigUnreadable => "nginx_config_unreadable",
            NoticeCode::TraceDegraded => "trace_degraded",
            NoticeCode::TraceLosses => "trace_losses",
            NoticeCode::TraceUnavailable => "trace_unavailable",
        }
    }

    /// Every code, for the exporter's series and the docs.
    pub const ALL: [NoticeCode; 21] = [
        NoticeCode::NetlinkUnavailable,
        NoticeCode::Ipv6Unavailable,
        NoticeCode::TcpInfoUnavailable,
        NoticeCode::DumpInterrupted,
        NoticeCode::RecordsSkipped,
        NoticeCode::AttributesSkipped,
        NoticeCode::OwnersPartial,
        NoticeCode::FdCountsPartial,
        NoticeCode::CountersUnavailable,
        NoticeCode::CountersPartial,
        NoticeCode::KernelLogUnavailable,
        NoticeCode::CloseWaitUnavailable,
        NoticeCode::NetnsCurrentOnly,
        NoticeCode::NetnsUnreadable,
        NoticeCode::NetnsVanished,
        NoticeCode::NetnsReplay,
        NoticeCode::ReplayMissing,
        NoticeCode::NginxConfigUnreadable,
        NoticeCode::TraceDegraded,
        NoticeCode::TraceLosses,
        NoticeCode::TraceUnavailable,
    ];

    /// Whether a report with this notice may have missed a problem: sockets, processes,
    /// namespaces or evidence that rules judge were not seen. A socket whose owner is
    /// not visible (its process exited during the scan, or lives in another pid
    /// namespace) is still judged, only not named, so `owners_partial` alone does not
    /// hide a problem; unreadable descriptor tables do (`fd_counts_partial`). A missing
    /// IPv6 stack or a skipped attribute does not hide a problem either.
    pub fn hides_problems(self) -> bool {
        matches!(
            self,
            NoticeCode::FdCountsPartial
                | NoticeCode::CountersUnavailable
                | NoticeCode::KernelLogUnavailable
                | NoticeCode::CloseWaitUnavailable
                | NoticeCode::NetnsCurrentOnly
                | NoticeCode::NetnsUnreadable
                | NoticeCode::ReplayMissing
                | NoticeCode::NginxConfigUnreadable
                | NoticeCode::TraceLosses
        )
    }
}

impl std::fmt::Display for NoticeCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stable code plus a sentence for humans. Reports carry these instead of failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub code: NoticeCode,
    pub message: String,
}

/// Longest notice message kept, in characters.
pub const NOTICE_MAX: usize = 2000;

impl Notice {
    /// A notice; its message often quotes outside input (a file's bad line, a path, an
    /// error from the kernel), so control characters become `?` and it is cut at
    /// [`NOTICE_MAX`] characters: nothing in a notice can move the cursor or flood a
    /// terminal.
    pub fn new(code: NoticeCode, message: impl Into<String>) -> Notice {
        let message = message.into();
        let message = if super::text::is_clean(&message) && message.chars().count() <= NOTICE_MAX {
            message
        } else {
            super::text::clean(&message, NOTICE_MAX)
        };
        Notice { code, message }
    }
}

/// Where sockets were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// NETLINK_SOCK_DIAG (inet_diag).
    Netlink,
    /// `/proc/net/tcp` and `tcp6`.
    Proc,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Netlink => "netlink",
            Source::Proc => "proc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_messages_are_printable_and_bounded() {
        let n = Notice::new(
            NoticeCode::RecordsSkipped,
            "bad '0000\u{1a}E6\u{1b}[2J' here",
        );
        assert_eq!(n.message, "bad '0000?E6?[2J' here");
        let long = "x".repeat(NOTICE_MAX * 3);
        assert_eq!(
            Notice::new(NoticeCode::RecordsSkipped, long)
                .message
                .chars()
                .count(),
            NOTICE_MAX
        );
        let fine = "the capture lacks net/snmp (Tcp counters)";
        assert_eq!(Notice::new(NoticeCode::ReplayMissing, fine).message, fine);
    }

    #[test]
    fn codes_serialize_as_their_public_names() {
        for c in NoticeCode::ALL {
            assert_eq!(
                serde_json::to_value(c).expect("json"),
                serde_json::Value::String(c.as_str().to_string())
            );
        }
    }
}
