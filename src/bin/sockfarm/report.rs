//! The ready line: the JSON sockfarm prints once every socket is in place, and
//! the per-worker part that each worker sends to the parent over its pipe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The one line printed on stdout.
#[derive(Debug, Serialize)]
pub struct Ready {
    /// Parent pid; it owns the listeners.
    pub pid: u32,
    /// Network namespace of the farm, e.g. "net:[4026532290]".
    pub netns: String,
    pub listeners: Vec<ListenerReport>,
    pub workers: Vec<WorkerReport>,
    /// Exact per-state counts the farm created in this netns (kernel spelling,
    /// all 11 states, zeros included).
    pub expected: Expected,
    /// Wall time from start to the ready line.
    pub build_ms: u64,
    /// Wall time of each phase that ran, by its flag name without dashes.
    pub phase_ms: BTreeMap<&'static str, u64>,
    /// TIME_WAIT sockets start expiring at this time (Unix ms); `null` when the
    /// farm made none. Counts that include TIME_WAIT are exact only before it.
    pub time_wait_valid_until_unix_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ListenerReport {
    pub addr: String,
    pub pid: u32,
    pub fd: i32,
    /// "accept" for --listen, "backlog" for --backlog-listen (never accepts).
    pub role: &'static str,
    /// Effective listen() backlog (after truncation to somaxconn).
    pub backlog: u32,
    /// Children waiting in the accept queue when the farm became ready.
    pub queued: u64,
}

/// Counts per state, serialised in kernel state-code order.
#[derive(Debug, Default, Serialize)]
#[allow(non_snake_case)]
pub struct Expected {
    pub ESTABLISHED: u64,
    pub SYN_SENT: u64,
    pub SYN_RECV: u64,
    pub FIN_WAIT1: u64,
    pub FIN_WAIT2: u64,
    pub TIME_WAIT: u64,
    pub CLOSE: u64,
    pub CLOSE_WAIT: u64,
    pub LAST_ACK: u64,
    pub LISTEN: u64,
    pub CLOSING: u64,
}

/// One socket a worker holds open.
#[derive(Debug, Serialize, Deserialize)]
pub struct SocketReport {
    pub fd: i32,
    pub local: String,
    pub remote: String,
    /// "client" (made by connect) or "server" (returned by accept).
    pub side: String,
}

/// Number of held sockets per list (always present, even with --quiet-fds).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerCounts {
    pub established: u64,
    pub close_wait: u64,
    pub close_wait_read: u64,
    pub fin_wait2: u64,
    pub unaccepted_clients: u64,
    /// TIME_WAIT connections this worker made (their sockets hold no fd).
    pub time_wait_made: u64,
    /// Server ends of --close-wait connections reset by --reset-close-wait: closed,
    /// in no socket table, descriptor still held.
    #[serde(default)]
    pub detached: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    pub pid: u32,
    pub counts: WorkerCounts,
    /// Both ends of --established connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<Vec<SocketReport>>,
    /// Server ends of --close-wait (Recv-Q 1: EOF not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_wait: Option<Vec<SocketReport>>,
    /// Server ends of --close-wait-read (Recv-Q 0: EOF read, never closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_wait_read: Option<Vec<SocketReport>>,
    /// Client ends of both close-wait kinds (shutdown(SHUT_WR), fd kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fin_wait2: Option<Vec<SocketReport>>,
    /// Client ends of --unaccepted connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unaccepted_clients: Option<Vec<SocketReport>>,
    /// Server ends of --close-wait connections reset by --reset-close-wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<Vec<SocketReport>>,
}
