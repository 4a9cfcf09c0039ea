//! What the tracer counted since the previous read, flow by flow. The kernel's flow
//! table holds cumulative counts; each reader (`check`/`watch`/`serve` through
//! collect::flows, `trace` through cmd::trace) keeps the last counts it saw of every
//! flow and takes the difference, and makes room in the table once it is half full by
//! removing the flows that have been idle for a few reads (their counts were taken).

use std::collections::{HashMap, HashSet};

use super::records::RawFlowKey;
use super::{FlowRead, TracedFlow, Tracer};
use crate::model::FlowCounts;

/// A kernel flow without new counts for this many reads is removed from the kernel's
/// table once the table is half full.
const IDLE_READS_BEFORE_EVICTION: u32 = 3;

/// The last counts seen of every flow, and how many reads in a row each had nothing new.
#[derive(Debug, Default)]
pub struct FlowDeltas {
    seen: HashMap<RawFlowKey, FlowCounts>,
    idle: HashMap<RawFlowKey, u32>,
}

impl FlowDeltas {
    /// The flows of `read` with new counts, each with its counts since the previous
    /// read (`counts` replaced by the difference). Flows no longer in the table are
    /// forgotten; idle ones are removed from it when it is half full.
    pub fn take(&mut self, tracer: &mut Tracer, read: FlowRead) -> Vec<TracedFlow> {
        let mut out = Vec::new();
        let mut present = HashSet::with_capacity(read.flows.len());
        for mut f in read.flows {
            present.insert(f.raw);
            let delta = match self.seen.get(&f.raw) {
                Some(before) => f.counts.since(before),
                None => f.counts,
            };
            self.seen.insert(f.raw, f.counts);
            let idle = self.idle.entry(f.raw).or_insert(0);
            if delta.is_empty() {
                *idle = idle.saturating_add(1);
                continue;
            }
            *idle = 0;
            f.counts = delta;
            out.push(f);
        }
        // Flows removed from the table (by us) are no longer followed.
        self.seen.retain(|k, _| present.contains(k));
        self.idle.retain(|k, _| present.contains(k));
        self.evict_idle(tracer, read.capacity);
        // A burst of flows (thousands of processes or destinations for a while) grew
        // these maps; once it is over, give the room back rather than keep the
        // high-water mark for the life of `serve` or `watch`.
        if self.seen.capacity() > 4 * self.seen.len().max(256) {
            self.seen.shrink_to_fit();
            self.idle.shrink_to_fit();
        }
        out
    }

    /// Flows followed.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn evict_idle(&mut self, tracer: &mut Tracer, capacity: u32) {
        if self.seen.len() * 2 < capacity as usize {
            return;
        }
        let idle: Vec<RawFlowKey> = self
            .idle
            .iter()
            .filter(|(_, n)| **n >= IDLE_READS_BEFORE_EVICTION)
            .map(|(k, _)| *k)
            .collect();
        tracer.remove_flows(&idle);
        for k in &idle {
            self.seen.remove(k);
            self.idle.remove(k);
        }
    }
}
