//! Notes about partial data: what could not be read, and what to do about it.

use serde::Serialize;

/// A stable code plus a sentence for humans. Reports carry these instead of failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// Stable identifier, e.g. `owners_partial`, `netlink_unavailable`.
    pub code: &'static str,
    pub message: String,
}

impl Notice {
    pub fn new(code: &'static str, message: impl Into<String>) -> Notice {
        Notice {
            code,
            message: message.into(),
        }
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
