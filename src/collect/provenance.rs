//! Leak provenance, the user-space half of the join: the tracer's origin records
//! ([`OriginMaps`]) matched to the sockets a dump found, by cookie, and to descriptors
//! the kernel closed under their holder, by inode; their stacks turned into frames.
//!
//! Stacks become frames through [`Symbolizer`](super::symbolize::Symbolizer) (ELF
//! symbols and DWARF, JIT perf maps), once per process and stack id ([`Resolver`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::symbolize::Symbolizer;
use super::trace::origins::{boot_to_unix_ms, OriginMaps};
use super::trace::TraceError;
use crate::model::provenance::{FrameKind, Origin, Provenance, Stack};

/// What one read of a recording gave, before any join.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The records of the wanted sockets, by cookie.
    pub origins: HashMap<u64, Origin>,
    /// Records of sockets the kernel closed while a descriptor held them, whose
    /// descriptor the process that opened them still holds: leaks no socket table
    /// shows. By inode.
    pub detached: BTreeMap<u64, Origin>,
    /// Records kept that did not decode.
    pub skipped: u64,
    /// Records in the table, and its capacity.
    pub present: u64,
    pub capacity: u32,
}

/// Reads what a join can use of a recording: the records of the sockets whose cookies
/// are in `wanted`, and of the detached descriptors (records the kernel closed under a
/// descriptor that `/proc/PID/fd` under `proc_root` still shows). Every other record is
/// only counted: a long-running sampler reads the table at each sample, and keeping
/// (and decoding) up to 65,536 records each time made `serve`'s memory climb with the
/// table's churn.
pub fn read(
    maps: &OriginMaps,
    wanted: &HashSet<u64>,
    proc_root: &Path,
) -> Result<Recorded, TraceError> {
    // Each process's socket descriptors, read at its first closed record. A record
    // stays marked after its process closed the descriptor (until the table needs the
    // room), so most such records are stale: they are dropped here, undecoded.
    let mut held: HashMap<u32, HashSet<u64>> = HashMap::new();
    let read = maps.read_matching(|cookie, raw| {
        if wanted.contains(&cookie) {
            return true;
        }
        raw.closed_held != 0
            && raw.inode != 0
            && held
                .entry(raw.tgid)
                .or_insert_with(|| held_socket_inodes(proc_root, raw.tgid))
                .contains(&raw.inode)
    })?;
    let offset = boot_to_unix_ms();
    let mut out = Recorded {
        present: read.present,
        capacity: read.capacity,
        ..Recorded::default()
    };
    for (cookie, raw) in read.origins {
        match raw.to_model(cookie, offset) {
            Ok(o) => {
                if wanted.contains(&cookie) {
                    out.origins.insert(cookie, o);
                } else {
                    out.detached.insert(o.inode, o);
                }
            }
            Err(_) => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Socket inodes a process holds as descriptors (`/proc/PID/fd/*` -> `socket:[N]`).
fn held_socket_inodes(proc_root: &Path, pid: u32) -> HashSet<u64> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            super::owners::socket_inode(std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()))
        })
        .collect()
}

/// Most stacks a [`StackCache`] keeps; past it, it starts again empty.
const STACKS_KEPT: usize = 4096;

/// Stacks already symbolized, by (process, stack id), with the addresses they were
/// symbolized from: a stack id the kernel gave to another stack since (the stack map
/// replaces entries) no longer matches them and is symbolized again. Plain data, so a
/// long-running sampler (`watch`, `serve`) keeps it from one sample to the next while
/// the symbolizer itself (not `Send`) lives only for one join.
#[derive(Debug, Default)]
pub struct StackCache {
    stacks: HashMap<(u32, u32), (Vec<u64>, Stack)>,
}

impl StackCache {
    /// The stack symbolized from exactly `addrs` as `id` of `pid`.
    fn get(&self, pid: u32, id: u32, addrs: &[u64]) -> Option<&Stack> {
        self.stacks
            .get(&(pid, id))
            .filter(|(seen, _)| seen == addrs)
            .map(|(_, s)| s)
    }

    fn insert(&mut self, pid: u32, addrs: Vec<u64>, s: Stack) {
        if self.stacks.len() >= STACKS_KEPT {
            self.stacks.clear();
        }
        self.stacks.insert((pid, s.id), (addrs, s));
    }
}

/// Resolves stacks with one [`Symbolizer`] per join (it caches each process's
/// mappings, symbol tables and perf map, and is made at the first stack the
/// [`StackCache`] does not hold). Stacks are resolved against the live processes (a
/// recording exists only on a live host), whatever `--proc-root` says.
#[derive(Default)]
pub struct Resolver {
    symbolizer: Option<Symbolizer>,
    cache: StackCache,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("stacks", &self.cache.stacks.len())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver that starts from the stacks `cache` holds ([`Resolver::into_cache`]
    /// gives them back, with what it added).
    pub fn with_cache(cache: StackCache) -> Resolver {
        Resolver {
            symbolizer: None,
            cache,
        }
    }

    pub fn into_cache(self) -> StackCache {
        self.cache
    }

    /// The stack `id` of process `pid`, resolved; `None` when it is not in the table.
    pub fn stack(&mut self, maps: &OriginMaps, pid: u32, id: u32) -> Option<Stack> {
        let addrs = maps.stack(id)?;
        if let Some(s) = self.cache.get(pid, id, &addrs) {
            return Some(s.clone());
        }
        // Frames of user stacks taken at a system call: every address is a return
        // address (Symbolizer::symbolize looks each up inside its call).
        let frames = self
            .symbolizer
            .get_or_insert_with(Symbolizer::new)
            .symbolize(pid, &addrs);
        let call_site = Symbolizer::call_site(&frames);
        let hint = Symbolizer::hint(pid, &frames);
        let s = Stack {
            id,
            frames,
            call_site,
            hint,
        };
        // A stack with unresolved frames is resolved again next time: a perf map may be
        // written meanwhile (`jcmd PID Compiler.perfmap`), or the JIT compile the code.
        if !s.frames.iter().any(|f| f.kind == FrameKind::Unresolved) {
            self.cache.insert(pid, addrs, s.clone());
        }
        Some(s)
    }
}

/// The provenance of the given sockets: origins of `cookies` (a dump's sockets) and of
/// the detached descriptors in `detached`, with their stacks resolved.
pub fn join(
    maps: &OriginMaps,
    rec: &Recorded,
    cookies: impl IntoIterator<Item = u64>,
    detached: BTreeMap<u64, Origin>,
    resolver: &mut Resolver,
    since_unix_ms: u64,
    recorder: String,
) -> Provenance {
    let mut p = Provenance {
        recording_since_unix_ms: since_unix_ms,
        recorder,
        ..Provenance::default()
    };
    for c in cookies {
        if let Some(o) = rec.origins.get(&c) {
            p.origins.insert(c, o.clone());
        }
    }
    p.detached = detached;
    let wanted: Vec<(u32, u32)> = p
        .origins
        .values()
        .chain(p.detached.values())
        .filter_map(|o| Some((o.pid, o.stack_id?)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for (pid, id) in wanted {
        if let Some(s) = resolver.stack(maps, pid, id) {
            p.stacks.insert(id, s);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(id: u32) -> Stack {
        Stack {
            id,
            frames: Vec::new(),
            call_site: None,
            hint: None,
        }
    }

    #[test]
    fn a_cached_stack_is_used_only_for_the_same_addresses_and_the_cache_is_bounded() {
        let mut c = StackCache::default();
        c.insert(7, vec![1, 2, 3], stack(5));
        assert!(c.get(7, 5, &[1, 2, 3]).is_some());
        // The kernel gave id 5 to another stack: symbolize again.
        assert!(c.get(7, 5, &[1, 2, 4]).is_none());
        assert!(c.get(8, 5, &[1, 2, 3]).is_none());
        for id in 0..STACKS_KEPT as u32 + 10 {
            c.insert(9, vec![u64::from(id)], stack(id));
        }
        assert!(c.stacks.len() <= STACKS_KEPT);
    }
}
