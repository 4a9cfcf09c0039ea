//! Connections traced during `check`'s interval as a snapshot records them (part of
//! format version 1, added without a version bump: older readers ignore these keys, and
//! files without them read as "not traced"), and the descriptors of CLOSE_WAIT holders
//! counted again at the second reading. With them `check --from` names who opens short
//! connections, failed connect() calls and resets as the live run did.
//!
//! Like [`format`](super::format), these types are the file's schema, kept apart from
//! the model; the conversions are here. Fields added later must default.

use serde::{Deserialize, Serialize};

use super::format::{endpoint_text, parse_endpoint, BadRecord};
use crate::model::flow::LIFETIME_BUCKETS;
use crate::model::{
    ConnectFailures, DescriptorRecheck, Direction, FlowCounts, FlowKey, FlowPeer, FlowRow,
    Lifetimes, NamespaceFlows,
};

/// What the tracer counted in one namespace ([`NamespaceFlows`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsRec {
    pub duration_ms: u64,
    #[serde(default)]
    pub flows: Vec<FlowRec>,
    #[serde(default)]
    pub omitted: u64,
    #[serde(default)]
    pub omitted_active: CountsRec,
    #[serde(default)]
    pub omitted_passive: CountsRec,
    #[serde(default)]
    pub totals: CountsRec,
    #[serde(default)]
    pub all_errnos: bool,
}

/// One flow: a process and the destination it connects to (`remote`), or the listening
/// port it accepts on (`port`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRec {
    pub pid: u32,
    /// `active` or `passive`.
    pub direction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub counts: CountsRec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsRec {
    #[serde(default)]
    pub opened: u64,
    #[serde(default)]
    pub closed_local: u64,
    #[serde(default)]
    pub closed_peer: u64,
    #[serde(default)]
    pub closed_unknown: u64,
    #[serde(default)]
    pub resets_sent: u64,
    #[serde(default)]
    pub resets_received: u64,
    /// Failed connect() calls by errno name (`EADDRNOTAVAIL`, ..., `aborted`, `other`);
    /// zeros left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<(String, u64)>,
    #[serde(default)]
    pub lifetimes: u64,
    #[serde(default)]
    pub lifetime_sum_us: u64,
    /// Log2 buckets of lifetimes in µs ([`Lifetimes`]); trailing zeros left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifetime_buckets: Vec<u64>,
}

impl CountsRec {
    fn from_model(c: &FlowCounts) -> CountsRec {
        let mut buckets = c.lifetimes.buckets.to_vec();
        while buckets.last() == Some(&0) {
            buckets.pop();
        }
        CountsRec {
            opened: c.opened,
            closed_local: c.closed_local,
            closed_peer: c.closed_peer,
            closed_unknown: c.closed_unknown,
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
            failures: c
                .connect_failures
                .named()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| (name.to_string(), *n))
                .collect(),
            lifetimes: c.lifetimes.count,
            lifetime_sum_us: c.lifetimes.sum_us,
            lifetime_buckets: buckets,
        }
    }

    /// Errno names this tcpdoctor does not know count as `other`; buckets beyond
    /// [`LIFETIME_BUCKETS`] go to the last one.
    fn to_model(&self) -> FlowCounts {
        let mut f = ConnectFailures::default();
        for (name, n) in &self.failures {
            let slot = match name.as_str() {
                "EADDRNOTAVAIL" => &mut f.eaddrnotavail,
                "ECONNREFUSED" => &mut f.econnrefused,
                "ETIMEDOUT" => &mut f.etimedout,
                "ENETUNREACH" => &mut f.enetunreach,
                "EHOSTUNREACH" => &mut f.ehostunreach,
                "EADDRINUSE" => &mut f.eaddrinuse,
                "EPERM" => &mut f.eperm,
                "aborted" => &mut f.aborted,
                _ => &mut f.other,
            };
            *slot = slot.saturating_add(*n);
        }
        let mut lifetimes = Lifetimes {
            count: self.lifetimes,
            sum_us: self.lifetime_sum_us,
            ..Lifetimes::default()
        };
        for (i, n) in self.lifetime_buckets.iter().enumerate() {
            let b = i.min(LIFETIME_BUCKETS - 1);
            lifetimes.buckets[b] = lifetimes.buckets[b].saturating_add(*n);
        }
        FlowCounts {
            opened: self.opened,
            closed_local: self.closed_local,
            closed_peer: self.closed_peer,
            closed_unknown: self.closed_unknown,
            resets_sent: self.resets_sent,
            resets_received: self.resets_received,
            connect_failures: f,
            lifetimes,
        }
    }
}

impl FlowsRec {
    pub fn from_model(f: &NamespaceFlows) -> FlowsRec {
        FlowsRec {
            duration_ms: f.duration_ms,
            flows: f
                .flows
                .iter()
                .map(|r| FlowRec {
                    pid: r.key.pid,
                    direction: r.key.direction.name().to_string(),
                    remote: match r.key.peer {
                        FlowPeer::Remote(e) => Some(endpoint_text(&e)),
                        FlowPeer::ListeningPort(_) => None,
                    },
                    port: match r.key.peer {
                        FlowPeer::ListeningPort(p) => Some(p),
                        FlowPeer::Remote(_) => None,
                    },
                    comm: r.comm.clone(),
                    counts: CountsRec::from_model(&r.counts),
                })
                .collect(),
            omitted: f.omitted,
            omitted_active: CountsRec::from_model(&f.omitted_active),
            omitted_passive: CountsRec::from_model(&f.omitted_passive),
            totals: CountsRec::from_model(&f.totals),
            all_errnos: f.all_errnos,
        }
    }

    /// The namespace's flows; `netns` and `netns_name` are the namespace's own. A flow
    /// line that names neither a destination nor a port, or an unknown direction, is
    /// skipped and counted (its counts stay in the totals).
    pub fn to_model(&self, netns: u64, netns_name: &str) -> (NamespaceFlows, Vec<BadRecord>) {
        let mut bad = Vec::new();
        let mut flows = Vec::with_capacity(self.flows.len());
        for r in &self.flows {
            let direction = match r.direction.as_str() {
                "active" => Direction::Active,
                "passive" => Direction::Passive,
                other => {
                    bad.push(BadRecord(format!("flow direction '{other}'")));
                    continue;
                }
            };
            let peer = match (&r.remote, r.port) {
                (Some(remote), _) => match parse_endpoint(remote) {
                    Ok(e) => FlowPeer::Remote(e),
                    Err(e) => {
                        bad.push(e);
                        continue;
                    }
                },
                (None, Some(port)) => FlowPeer::ListeningPort(port),
                (None, None) => {
                    bad.push(BadRecord(format!(
                        "flow of pid {} names no destination or port",
                        r.pid
                    )));
                    continue;
                }
            };
            flows.push(FlowRow {
                key: FlowKey {
                    pid: r.pid,
                    netns,
                    direction,
                    peer,
                },
                comm: r.comm.clone(),
                netns_name: netns_name.to_string(),
                counts: r.counts.to_model(),
            });
        }
        let model = NamespaceFlows {
            duration_ms: self.duration_ms,
            flows,
            omitted: self.omitted,
            omitted_active: self.omitted_active.to_model(),
            omitted_passive: self.omitted_passive.to_model(),
            totals: self.totals.to_model(),
            all_errnos: self.all_errnos,
        };
        (model, bad)
    }
}

/// A CLOSE_WAIT holder's descriptors counted again ([`DescriptorRecheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecheckRec {
    pub pid: u32,
    pub open_fds: u64,
    pub after_ms: u64,
}

impl RecheckRec {
    pub fn from_model(pid: u32, r: &DescriptorRecheck) -> RecheckRec {
        RecheckRec {
            pid,
            open_fds: r.open_fds,
            after_ms: r.after_ms,
        }
    }

    pub fn to_model(self) -> (u32, DescriptorRecheck) {
        (
            self.pid,
            DescriptorRecheck {
                open_fds: self.open_fds,
                after_ms: self.after_ms,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    fn counts(seed: u64) -> FlowCounts {
        let mut c = FlowCounts {
            opened: seed,
            closed_local: seed / 2,
            closed_peer: 3,
            closed_unknown: 1,
            resets_sent: 4,
            resets_received: 5,
            ..FlowCounts::default()
        };
        c.connect_failures.eaddrnotavail = 7;
        c.connect_failures.other = 2;
        c.lifetimes.count = seed;
        c.lifetimes.sum_us = seed * 900;
        c.lifetimes.buckets[10] = seed;
        c
    }

    fn flows() -> NamespaceFlows {
        let row = |pid, direction, peer, seed| FlowRow {
            key: FlowKey {
                pid,
                netns: 4026531840,
                direction,
                peer,
            },
            comm: format!("p{pid}"),
            netns_name: "host".into(),
            counts: counts(seed),
        };
        NamespaceFlows {
            duration_ms: 1003,
            flows: vec![
                row(
                    812,
                    Direction::Active,
                    FlowPeer::Remote(Endpoint::new("10.0.0.5".parse().expect("ip"), 8080)),
                    410,
                ),
                row(90, Direction::Passive, FlowPeer::ListeningPort(443), 12),
                row(
                    91,
                    Direction::Active,
                    FlowPeer::Remote(Endpoint::new("::1".parse().expect("ip"), 9)),
                    1,
                ),
            ],
            omitted: 2,
            omitted_active: counts(6),
            omitted_passive: FlowCounts::default(),
            totals: counts(500),
            all_errnos: false,
        }
    }

    #[test]
    fn flows_come_back_as_they_went_in() {
        let f = flows();
        let json = serde_json::to_string(&FlowsRec::from_model(&f)).expect("json");
        let back: FlowsRec = serde_json::from_str(&json).expect("parse");
        let (model, bad) = back.to_model(4026531840, "host");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(model, f);
    }

    #[test]
    fn bad_flow_lines_are_skipped_and_said_unknown_errnos_are_other() {
        let mut rec = FlowsRec::from_model(&flows());
        rec.flows[0].direction = "sideways".into();
        rec.flows[1].port = None;
        rec.flows[2].remote = Some("not an address".into());
        rec.totals.failures.push(("EFUTURE".into(), 3));
        let (model, bad) = rec.to_model(1, "x");
        assert!(model.flows.is_empty());
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(model.totals.connect_failures.other, 2 + 3);
    }

    #[test]
    fn descriptor_rechecks_come_back() {
        let r = DescriptorRecheck {
            open_fds: 924,
            after_ms: 2000,
        };
        let json = serde_json::to_string(&RecheckRec::from_model(9, &r)).expect("json");
        let back: RecheckRec = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.to_model(), (9, r));
    }
}
