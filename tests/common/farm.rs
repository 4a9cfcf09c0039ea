//! The JSON line sockfarm prints once every socket it was asked for is in place: what
//! it built, where, and the exact count per state to expect.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::netns::netns_link_inode;

/// The JSON line sockfarm prints when every socket is in place.
#[derive(Debug, Default, Deserialize)]
pub struct FarmReady {
    pub pid: u32,
    /// e.g. "net:[4026532290]".
    pub netns: String,
    pub listeners: Vec<FarmListener>,
    pub workers: Vec<FarmWorker>,
    /// Exact count per TCP state (kernel spelling, all 11 states present).
    pub expected: BTreeMap<String, u64>,
    pub build_ms: u64,
    #[serde(default)]
    pub phase_ms: BTreeMap<String, u64>,
    /// Counts including TIME_WAIT are exact only before this time (Unix ms).
    pub time_wait_valid_until_unix_ms: Option<u64>,
}

impl FarmReady {
    /// Expected count of one state (kernel spelling); 0 if absent.
    pub fn expected(&self, state: &str) -> u64 {
        self.expected.get(state).copied().unwrap_or(0)
    }

    /// (worker pid, socket) for one list of every worker, e.g. `|w| &w.close_wait`.
    pub fn sockets<'a>(
        &'a self,
        pick: impl Fn(&'a FarmWorker) -> &'a Option<Vec<FarmSocket>>,
    ) -> Vec<(u32, &'a FarmSocket)> {
        self.workers
            .iter()
            .flat_map(|w| pick(w).iter().flatten().map(move |s| (w.pid, s)))
            .collect()
    }

    /// The inode of the farm's network namespace.
    pub fn netns_inode(&self) -> u64 {
        netns_link_inode(&self.netns)
    }

    /// False once the farm's first TIME_WAIT may have expired: from then on the
    /// TIME_WAIT count (and totals including it) may be lower than `expected`.
    pub fn time_wait_still_exact(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.time_wait_valid_until_unix_ms.unwrap_or(0) >= now
    }
}

#[derive(Debug, Deserialize)]
pub struct FarmListener {
    /// "127.0.0.1:5000" or "[::1]:5000" (port 0 already resolved).
    pub addr: String,
    pub pid: u32,
    pub fd: i32,
    /// "accept" (--listen) or "backlog" (--backlog-listen, never accepts).
    pub role: String,
    pub backlog: u32,
    /// Children waiting in the accept queue at ready time.
    pub queued: u64,
}

impl FarmListener {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in listener address {:?}", self.addr))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct FarmWorkerCounts {
    pub established: u64,
    pub close_wait: u64,
    pub close_wait_read: u64,
    pub fin_wait2: u64,
    pub unaccepted_clients: u64,
    pub time_wait_made: u64,
}

/// One worker process and the sockets it holds (lists absent with --quiet-fds).
#[derive(Debug, Deserialize)]
pub struct FarmWorker {
    pub pid: u32,
    pub counts: FarmWorkerCounts,
    #[serde(default)]
    pub established: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub close_wait: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub close_wait_read: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub fin_wait2: Option<Vec<FarmSocket>>,
    #[serde(default)]
    pub unaccepted_clients: Option<Vec<FarmSocket>>,
}

#[derive(Debug, Deserialize)]
pub struct FarmSocket {
    pub fd: i32,
    pub local: String,
    pub remote: String,
    /// "client" or "server".
    pub side: String,
}
