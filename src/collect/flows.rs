//! The connection tracer as `check`, `watch` and `serve` use it: started before a
//! reading, its counts since the previous read cut per network namespace into each
//! snapshot's [`flows`](crate::model::Snapshot::flows).
//!
//! It runs no owner scan of its own (`tcpdoctor trace` does): the listening sockets
//! and their owners come from the host collection, whose scan found them. They tell
//! the tracer about listeners opened before it started, and name the connections the
//! kernel accepted on them before it was told (the tracer files those under pid 0).

use super::trace::deltas::FlowDeltas;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::trace::{SeedListener, TraceError, TraceOptions, Tracer};
use crate::model::{
    FlowKey, FlowPeer, FlowRow, HostSnapshot, NamespaceFlows, Notice, NoticeCode, Snapshot,
    TraceLosses,
};

/// The notice for a command that wanted to trace and could not: one line, what is
/// missing and why.
pub fn unavailable_notice(e: &TraceError) -> Notice {
    Notice::new(
        NoticeCode::TraceUnavailable,
        format!(
            "connections were not traced ({e}): findings do not name the processes that open short connections, and failed connect() calls and resets are not counted"
        ),
    )
}

/// The tracer, attached, and what it counted up to its last read.
pub struct FlowTracing {
    tracer: Tracer,
    last_read: Instant,
    /// Each kernel flow's counts at the last read.
    deltas: FlowDeltas,
    /// Listening sockets already told to the tracer: (netns inode, port).
    seeded: HashSet<(u64, u16)>,
    losses: TraceLosses,
    /// Said with the next snapshot only (once per start).
    degraded: Vec<Notice>,
}

impl std::fmt::Debug for FlowTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTracing")
            .field("flows", &self.deltas.len())
            .finish_non_exhaustive()
    }
}

impl FlowTracing {
    /// Loads and attaches the tracer (counts only, no raw events). Counting starts now.
    pub fn start() -> Result<FlowTracing, TraceError> {
        FlowTracing::start_with(None)
    }

    /// Also records who opens each socket (`serve`, `watch`): other tcpdoctors
    /// (`check`) find the recording while this runs (see `trace::origins`).
    pub fn start_recording() -> Result<FlowTracing, TraceError> {
        FlowTracing::start_with(Some(super::trace::LeakOptions::default()))
    }

    fn start_with(leaks: Option<super::trace::LeakOptions>) -> Result<FlowTracing, TraceError> {
        let tracer = Tracer::start(&TraceOptions {
            leaks,
            ..TraceOptions::default()
        })?;
        let degraded = tracer
            .degraded
            .iter()
            .map(|d| Notice::new(NoticeCode::TraceDegraded, d.clone()))
            .collect();
        let losses = tracer.losses()?;
        Ok(FlowTracing {
            tracer,
            last_read: Instant::now(),
            deltas: FlowDeltas::default(),
            seeded: HashSet::new(),
            losses,
            degraded,
        })
    }

    /// Tells the tracer about the listening sockets `host` holds that it has not been
    /// told about, with the owners the collection found. A listener shared by several
    /// processes (a prefork server) goes to the lowest pid, usually the one that opened
    /// it. Best effort: a full listener table is counted in the losses.
    pub fn seed(&mut self, host: &HostSnapshot) {
        // Forget the namespaces that are gone (a long `serve` sees containers come and
        // go): the set stays the size of what the host holds now.
        let present: HashSet<u64> = host
            .namespaces
            .iter()
            .filter_map(|s| s.netns.as_ref().map(|n| n.inode))
            .collect();
        self.seeded.retain(|(netns, _)| present.contains(netns));
        let mut fresh = Vec::new();
        for snap in &host.namespaces {
            let Some(inode) = snap.netns.as_ref().map(|n| n.inode) else {
                continue;
            };
            for (port, (pid, comm)) in listener_owners(snap) {
                if self.seeded.insert((inode, port)) {
                    fresh.push(SeedListener {
                        netns: inode,
                        port,
                        pid,
                        comm,
                    });
                }
            }
        }
        if !fresh.is_empty() {
            self.tracer.seed_listeners(&fresh);
        }
    }

    /// What the tracer counted since the previous call (or since it started), into
    /// each namespace of `host` (flows of namespaces `host` does not hold are left
    /// out). A failed read is a notice, and the namespaces get no flows.
    pub fn attach(&mut self, host: &mut HostSnapshot) {
        let now = Instant::now();
        let duration_ms = now.duration_since(self.last_read).as_millis() as u64;
        self.last_read = now;
        host.missing.append(&mut self.degraded);
        let read = match self.tracer.read_flows() {
            Ok(r) => r,
            Err(e) => {
                host.missing.push(unavailable_notice(&e));
                return;
            }
        };
        let all_errnos = self.tracer.connect_errnos();
        let slot: BTreeMap<u64, usize> = host
            .namespaces
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((s.netns.as_ref()?.inode, i)))
            .collect();
        let mut per_ns: Vec<NamespaceFlows> = host
            .namespaces
            .iter()
            .map(|_| NamespaceFlows {
                duration_ms,
                all_errnos,
                ..NamespaceFlows::default()
            })
            .collect();
        let skipped = read.skipped;
        for f in self.deltas.take(&mut self.tracer, read) {
            let Some(i) = slot.get(&f.key.netns) else {
                continue;
            };
            per_ns[*i].flows.push(FlowRow {
                key: f.key,
                comm: f.comm,
                netns_name: String::new(),
                counts: f.counts,
            });
        }

        for (snap, mut flows) in host.namespaces.iter_mut().zip(per_ns) {
            name_accepted(snap, &mut flows);
            let name = snap
                .netns
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default();
            for r in &mut flows.flows {
                r.netns_name.clone_from(&name);
                flows.totals.add(&r.counts);
            }
            flows.keep_biggest();
            snap.flows = Some(flows);
        }

        match self.tracer.losses() {
            Ok(l) => {
                let lost = l.since(&self.losses);
                self.losses = l;
                if lost.flows_full > 0 {
                    host.missing.push(Notice::new(
                        NoticeCode::TraceLosses,
                        format!(
                            "{} connection counts found the tracer's flow table full (too many distinct processes and destinations): traced totals are low",
                            lost.flows_full
                        ),
                    ));
                }
            }
            Err(e) => host.missing.push(unavailable_notice(&e)),
        }
        if skipped > 0 {
            host.missing.push(Notice::new(
                NoticeCode::TraceLosses,
                format!(
                    "{skipped} flow records from the kernel could not be read and were skipped"
                ),
            ));
        }
    }
}

/// Listening port -> (lowest owning pid, its name), for the listeners of `snap` whose
/// owner the collection found.
fn listener_owners(snap: &Snapshot) -> BTreeMap<u16, (u32, String)> {
    let mut out: BTreeMap<u16, (u32, String)> = BTreeMap::new();
    for l in &snap.sockets.listeners {
        let Some(o) = l.owner else { continue };
        let comm = snap
            .process(o.pid)
            .map(|p| p.comm.clone())
            .unwrap_or_default();
        out.entry(l.local.port)
            .and_modify(|e| {
                if o.pid < e.0 {
                    *e = (o.pid, comm.clone());
                }
            })
            .or_insert((o.pid, comm));
    }
    out
}

/// Incoming flows the tracer could not attribute (pid 0: accepted on a listener it was
/// not told about yet) go to the listener's owner as the collection found it, merged
/// with that owner's own flow on the port.
fn name_accepted(snap: &Snapshot, flows: &mut NamespaceFlows) {
    if !flows
        .flows
        .iter()
        .any(|r| r.key.pid == 0 && matches!(r.key.peer, FlowPeer::ListeningPort(_)))
    {
        return;
    }
    let owners = listener_owners(snap);
    let mut merged: BTreeMap<FlowKey, FlowRow> = BTreeMap::new();
    for mut r in std::mem::take(&mut flows.flows) {
        if let (0, FlowPeer::ListeningPort(port)) = (r.key.pid, r.key.peer) {
            if let Some((pid, comm)) = owners.get(&port) {
                r.key.pid = *pid;
                r.comm.clone_from(comm);
            }
        }
        match merged.get_mut(&r.key) {
            Some(m) => {
                m.counts.add(&r.counts);
                if m.comm.is_empty() {
                    m.comm = r.comm;
                }
            }
            None => {
                merged.insert(r.key, r);
            }
        }
    }
    flows.flows = merged.into_values().collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, Endpoint, FlowCounts, ListenerSocket, Owner, ProcessFacts};

    fn row(pid: u32, peer: FlowPeer, opened: u64) -> FlowRow {
        FlowRow {
            key: FlowKey {
                pid,
                netns: 7,
                direction: Direction::Passive,
                peer,
            },
            comm: if pid == 0 {
                String::new()
            } else {
                "srv".into()
            },
            netns_name: String::new(),
            counts: FlowCounts {
                opened,
                ..FlowCounts::default()
            },
        }
    }

    #[test]
    fn connections_accepted_before_the_tracer_knew_go_to_the_listeners_owner() {
        let mut snap = Snapshot::default();
        for pid in [41, 40] {
            snap.sockets.listeners.push(ListenerSocket {
                local: Endpoint::new("0.0.0.0".parse().expect("ip"), 8080),
                accept_queue: 0,
                backlog: 128,
                backlog_known: true,
                inode: 1,
                owner: Some(Owner { pid, fd: 3 }),
            });
            snap.processes.insert(
                pid,
                ProcessFacts {
                    pid,
                    comm: "gunicorn".into(),
                    uid: 0,
                    cmdline: String::new(),
                    open_fds: 5,
                    nofile_soft: None,
                    nofile_hard: None,
                    detached_tcp_fds: None,
                },
            );
        }
        let mut flows = NamespaceFlows {
            flows: vec![
                row(0, FlowPeer::ListeningPort(8080), 5),
                row(40, FlowPeer::ListeningPort(8080), 20),
                // No listener known on 9090: stays unknown.
                row(0, FlowPeer::ListeningPort(9090), 3),
            ],
            ..NamespaceFlows::default()
        };
        name_accepted(&snap, &mut flows);
        let got: Vec<(u32, u64)> = flows
            .flows
            .iter()
            .map(|r| (r.key.pid, r.counts.opened))
            .collect();
        assert_eq!(got, vec![(0, 3), (40, 25)]);
        assert_eq!(flows.flows[1].comm, "gunicorn");
    }

    #[test]
    fn the_unavailable_notice_is_one_line_naming_the_reason() {
        let n = unavailable_notice(&TraceError::NotPermitted);
        assert_eq!(n.code, NoticeCode::TraceUnavailable);
        assert!(!n.message.contains('\n'));
        assert!(n.message.contains("needs root"), "{}", n.message);
        assert!(!n.code.hides_problems());
    }
}
