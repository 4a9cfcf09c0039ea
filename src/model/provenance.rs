//! Leak provenance: where in a program a socket was opened (issue 13).
//!
//! The tracer records, for each connection opened by connect() or accept(), who opened
//! it and the user-space stack at that moment ([`Origin`], stack stored once by id);
//! user space turns the addresses into [`Frame`]s (collect::symbolize) and groups the
//! leaked sockets by call site ([`CallSiteGroup`]). Plain data only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rank::tally;

/// How a frame's address was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// From an ELF file's symbol table (and DWARF for file:line when present).
    Native,
    /// From a JIT runtime's perf map (`/tmp/perf-PID.map`).
    Jit,
    /// Not resolved: `Frame::module` (when known) says where the address lies.
    Unresolved,
}

/// One frame of a user-space stack, innermost first in a stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// The instruction address in the process.
    pub addr: u64,
    pub kind: FrameKind,
    /// Function (demangled where the language mangles), or the perf map's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The mapped file the address lies in (`/usr/lib/.../libc.so.6`, `[anon]`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Frame {
    /// The frame as one short phrase: `Fetcher.fetch (Fetcher.java:88)`, `fetch`,
    /// `0x55d0c0a01234 in leaky`.
    pub fn describe(&self) -> String {
        let module = self
            .module
            .as_deref()
            .map(|m| m.rsplit('/').next().unwrap_or(m));
        match (&self.symbol, &self.file, self.line) {
            (Some(s), Some(file), Some(line)) => {
                let file = file.rsplit('/').next().unwrap_or(file);
                format!("{s} ({file}:{line})")
            }
            (Some(s), _, _) => s.clone(),
            (None, _, _) => match module {
                Some(m) => format!("{:#x} in {m}", self.addr),
                None => format!("{:#x}", self.addr),
            },
        }
    }
}

/// Who opened one socket, and from where (the tracer's record, joined by cookie).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub cookie: u64,
    pub pid: u32,
    pub tid: u32,
    /// The thread's name at the time (`comm` of the thread, e.g. `pool-3-thread-7`).
    pub thread: String,
    /// Wall-clock time of the connect() or accept(), Unix milliseconds.
    pub at_unix_ms: u64,
    /// `connect` or `accept`.
    pub via: OpenedBy,
    /// The tracer's stack id; `None` when the kernel could not take the stack.
    pub stack_id: Option<u32>,
    /// The peer (`10.0.0.7:443`, `[::1]:80`): the destination of a connect(), the
    /// client of an accept().
    pub remote: String,
    /// Inode of the network namespace.
    pub netns: u64,
    /// The socket's inode (what `/proc/PID/fd/N` links to); 0 when not known.
    pub inode: u64,
}

/// One recorded user stack, resolved in user space (collect::provenance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub id: u32,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// The frame that names the call site (see [`CallSiteGroup::call_site`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_site: Option<Frame>,
    /// What to enable when frames did not resolve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What the tracer recorded about the sockets of one snapshot, joined by cookie: the
/// origins of its CLOSE_WAIT sockets (and of detached descriptors, by inode), and their
/// stacks. `None` in a snapshot when no recording was found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// By socket cookie.
    pub origins: BTreeMap<u64, Origin>,
    /// Origins of sockets still held as descriptors after the kernel closed them (in
    /// no socket table, so without a cookie in any dump), by socket inode.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub detached: BTreeMap<u64, Origin>,
    pub stacks: BTreeMap<u32, Stack>,
    /// Since when sockets were recorded (Unix ms): older ones have no origin.
    pub recording_since_unix_ms: u64,
    /// Who records: `tcpdoctor serve (pid 812)`.
    pub recorder: String,
}

/// Thread names with every run of digits folded to `*`, so the threads of one pool
/// are one name: `pool-3-thread-17` -> `pool-*-thread-*`.
pub fn fold_digits(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_digits = false;
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('*');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// How leaked sockets are put together: by the call site when frames resolved, by the
/// recorded stack when they did not, by thread name when there is no stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum GroupKey {
    CallSite(String),
    Stack(u32),
    Thread(String),
}

fn key_of(o: &Origin, stacks: &BTreeMap<u32, Stack>) -> GroupKey {
    let stack = o.stack_id.and_then(|id| stacks.get(&id));
    if let Some(site) = stack.and_then(|s| s.call_site.as_ref()) {
        let name = site.symbol.clone().unwrap_or_default();
        return GroupKey::CallSite(format!(
            "{name}|{}|{}",
            site.file.clone().unwrap_or_default(),
            site.line.unwrap_or(0)
        ));
    }
    match (o.stack_id, stack) {
        (Some(id), Some(_)) => GroupKey::Stack(id),
        _ => GroupKey::Thread(fold_digits(&o.thread)),
    }
}

/// Groups the origins of one process's leaked sockets by call site, biggest first.
/// `leaked` is how many sockets of the process leaked in all (the groups' `of`); the
/// origins are those found among them.
pub fn group(pid: u32, leaked: u64, origins: &[&Origin], prov: &Provenance) -> Vec<CallSiteGroup> {
    let mut by: BTreeMap<(OpenedBy, GroupKey), Vec<&Origin>> = BTreeMap::new();
    for o in origins.iter().filter(|o| o.pid == pid) {
        by.entry((o.via, key_of(o, &prov.stacks)))
            .or_default()
            .push(o);
    }
    let mut out: Vec<CallSiteGroup> = by
        .into_iter()
        .map(|((via, _), members)| {
            // The stack most of the group's sockets share stands for the group.
            let ids = tally(members.iter().filter_map(|o| o.stack_id));
            let stack = ids.first().and_then(|(id, _)| prov.stacks.get(id));
            let threads = tally(members.iter().map(|o| fold_digits(&o.thread)))
                .into_iter()
                .map(|(t, _)| t)
                .collect();
            let destinations = tally(members.iter().map(|o| o.remote.clone()))
                .into_iter()
                .map(|(remote, count)| Destination { remote, count })
                .collect();
            CallSiteGroup {
                pid,
                count: members.len() as u64,
                of: leaked,
                via,
                stack_id: stack.map(|s| s.id),
                frames: stack.map(|s| s.frames.clone()).unwrap_or_default(),
                call_site: stack.and_then(|s| s.call_site.clone()),
                threads,
                destinations,
                first_unix_ms: members.iter().map(|o| o.at_unix_ms).min().unwrap_or(0),
                last_unix_ms: members.iter().map(|o| o.at_unix_ms).max().unwrap_or(0),
                hint: stack.and_then(|s| s.hint.clone()),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.first_unix_ms.cmp(&b.first_unix_ms))
    });
    out
}

impl CallSiteGroup {
    /// Where the group's sockets were opened, in words: `at Fetcher.fetch
    /// (Fetcher.java:88)`, or the first unresolved frames outside the C library.
    pub fn site_text(&self) -> String {
        if let Some(site) = &self.call_site {
            return format!("at {}", site.describe());
        }
        match self.stack_id {
            Some(id) => {
                let shown: Vec<String> = self
                    .frames
                    .iter()
                    .filter(|f| {
                        !f.module
                            .as_deref()
                            .is_some_and(|m| m.contains("/libc.so") || m.contains("/libc-"))
                    })
                    .take(3)
                    .map(Frame::describe)
                    .collect();
                format!("with stack {id} ({})", shown.join(" <- "))
            }
            None => "with no stack recorded".to_string(),
        }
    }
}

impl CallSiteGroup {
    /// The peers in words: ` to 10.0.0.7:443`, ` from 10.0.1.3:4000 and 14 other
    /// peers` (accept()); empty without peers.
    pub fn peers_text(&self) -> String {
        let word = match self.via {
            OpenedBy::Connect => "to",
            OpenedBy::Accept => "from",
        };
        match self.destinations.as_slice() {
            [] => String::new(),
            [one] => format!(" {word} {}", one.remote),
            [first, rest @ ..] => format!(
                " {word} {} and {} other {}",
                first.remote,
                rest.len(),
                if rest.len() == 1 { "peer" } else { "peers" }
            ),
        }
    }
}

/// A peer of a group's sockets and how many of them went to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub remote: String,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenedBy {
    Connect,
    Accept,
}

/// Leaked sockets of one process that were opened at one call site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSiteGroup {
    pub pid: u32,
    /// Leaked sockets in this group.
    pub count: u64,
    /// Leaked sockets of this process in all (matched or not).
    pub of: u64,
    pub via: OpenedBy,
    /// The tracer's id of the stack shown (the one most of the group's sockets share).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<u32>,
    /// The stack, innermost first; empty when no stack was taken.
    pub frames: Vec<Frame>,
    /// The frame that names the call site: the innermost one in the program's own
    /// code (not libc, the JVM or the runtime); `None` when no frame resolved.
    pub call_site: Option<Frame>,
    /// Thread names, digits folded to `*` (`pool-3-thread-*`), most sockets first.
    pub threads: Vec<String>,
    /// Peers, most sockets first.
    pub destinations: Vec<Destination>,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    /// What to enable when frames could not be resolved (frame pointers, symbols, a
    /// perf map); `None` when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `tcpdoctor trace --leaks`: one look at the leaked sockets and where they were
/// opened.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeakReport {
    pub at_unix_ms: u64,
    /// CLOSE_WAIT sockets seen (with a descriptor: accepted or connected).
    pub close_wait: u64,
    /// Of them leaked (idle `leak_age_ms` or longer), plus detached descriptors.
    pub leaked: u64,
    pub leak_age_ms: u64,
    pub recording_since_unix_ms: u64,
    /// Leaking processes, most leaked sockets first.
    pub processes: Vec<ProcessLeaks>,
    pub table: OriginTable,
}

/// One process's leaked sockets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessLeaks {
    pub pid: u32,
    pub comm: String,
    /// Its CLOSE_WAIT sockets in all.
    pub close_wait: u64,
    /// Leaked: CLOSE_WAIT idle long enough, plus `detached`.
    pub leaked: u64,
    /// Descriptors it still holds of sockets the kernel closed (in no socket table).
    pub detached: u64,
    /// Leaked sockets whose origin was recorded (the rest were opened before
    /// recording began, or their record was pushed out).
    pub attributed: u64,
    pub groups: Vec<CallSiteGroup>,
}

/// The origin table of the recording: fill and losses since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OriginTable {
    pub present: u64,
    pub capacity: u64,
    pub added: u64,
    pub removed: u64,
    /// Pushed out of the full table (oldest unused first).
    pub evicted: u64,
    /// Could not be stored.
    pub failed: u64,
    /// Stored without a stack (stack table full or a hash collision, or no user stack).
    pub stacks_lost: u64,
    /// Accepted sockets not recorded: queued before recording began.
    pub accept_unrecorded: u64,
}

impl OpenedBy {
    /// `connect()`, `accept()`.
    pub fn call(self) -> &'static str {
        match self {
            OpenedBy::Connect => "connect()",
            OpenedBy::Accept => "accept()",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(cookie: u64, pid: u32, thread: &str, stack: Option<u32>, at: u64) -> Origin {
        Origin {
            cookie,
            pid,
            tid: pid + 1,
            thread: thread.to_string(),
            at_unix_ms: at,
            via: OpenedBy::Connect,
            stack_id: stack,
            remote: "10.0.0.7:443".to_string(),
            netns: 1,
            inode: cookie + 100,
        }
    }

    fn stack(id: u32, site: Option<&str>) -> Stack {
        let frame = |s: Option<&str>, addr| Frame {
            addr,
            kind: if s.is_some() {
                FrameKind::Native
            } else {
                FrameKind::Unresolved
            },
            symbol: s.map(str::to_string),
            file: None,
            line: None,
            module: None,
        };
        Stack {
            id,
            frames: vec![frame(None, 0x10), frame(site, 0x20 + u64::from(id))],
            call_site: site.map(|s| frame(Some(s), 0x20 + u64::from(id))),
            hint: None,
        }
    }

    #[test]
    fn digits_fold_to_one_star_per_run() {
        assert_eq!(fold_digits("pool-3-thread-17"), "pool-*-thread-*");
        assert_eq!(fold_digits("worker"), "worker");
        assert_eq!(fold_digits("42"), "*");
        assert_eq!(fold_digits(""), "");
    }

    #[test]
    fn groups_by_call_site_then_stack_then_thread() {
        let mut prov = Provenance::default();
        // Two stacks through one call site are one group; an unresolved stack is its
        // own; no stack at all groups by thread name.
        prov.stacks.insert(1, stack(1, Some("fetch")));
        prov.stacks.insert(2, stack(2, Some("fetch")));
        prov.stacks.insert(3, stack(3, None));
        let all = [
            origin(1, 7, "pool-1-thread-1", Some(1), 1000),
            origin(2, 7, "pool-1-thread-2", Some(1), 3000),
            origin(3, 7, "pool-1-thread-3", Some(2), 2000),
            origin(4, 7, "main", Some(3), 500),
            origin(5, 7, "io-4", None, 700),
            origin(6, 7, "io-5", None, 800),
            origin(7, 8, "other", Some(1), 900),
        ];
        let refs: Vec<&Origin> = all.iter().collect();
        let g = group(7, 10, &refs, &prov);
        assert_eq!(g.len(), 3, "{g:#?}");
        assert_eq!(g[0].count, 3);
        assert_eq!(g[0].of, 10);
        assert_eq!(g[0].stack_id, Some(1), "the stack most sockets share");
        assert_eq!(
            g[0].call_site.as_ref().and_then(|f| f.symbol.as_deref()),
            Some("fetch")
        );
        assert_eq!(g[0].threads, vec!["pool-*-thread-*".to_string()]);
        assert_eq!((g[0].first_unix_ms, g[0].last_unix_ms), (1000, 3000));
        assert_eq!(
            g[0].destinations,
            vec![Destination {
                remote: "10.0.0.7:443".into(),
                count: 3
            }]
        );
        assert_eq!(g[1].count, 2);
        assert!(g[1].frames.is_empty() && g[1].stack_id.is_none());
        assert_eq!(g[1].threads, vec!["io-*".to_string()]);
        assert_eq!(g[2].count, 1);
        assert_eq!(g[2].stack_id, Some(3));
        assert!(g[2].call_site.is_none());
        assert!(group(9, 1, &refs, &prov).is_empty());
    }
}
