//! Leak recording's kernel maps (`trace_origins`, `trace_stacks`, `trace_leak_meta` in
//! bpf/trace.bpf.c): read from the tracer that owns them, or found by another tcpdoctor
//! (`check`) while a recorder (`serve`, `watch`, `trace --leaks`) runs.
//!
//! How `check` finds a recorder: every tracer object has a one-entry map named
//! `trace_leak_meta`; a recorder writes into it its pid, the ids of its two maps and
//! when it began. `check` lists the kernel's maps (BPF_MAP_GET_NEXT_ID), opens each
//! `trace_leak_meta` that carries the magic, and then the two maps it names, all
//! read-only (BPF_F_RDONLY). No bpffs is needed (many hosts, this one included, have
//! none mounted), nothing is left behind when a recorder dies (its maps go with its
//! descriptors), and it works from any mount namespace. It needs what tracing needs
//! (CAP_SYS_ADMIN to open maps by id).

use std::os::fd::{FromRawFd, OwnedFd};

use super::records::RawOrigin;
use super::TraceError;

/// `trace_leak_meta`'s value when a recorder wrote it.
pub const META_MAGIC: u32 = 0x7463_6c6b; // "tclk"

/// `struct leak_meta` (the loader writes it; the programs never read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RawLeakMeta {
    pub magic: u32,
    pub pid: u32,
    pub origins_id: u32,
    pub stacks_id: u32,
    /// When recording began, Unix ms.
    pub since_unix_ms: u64,
}

const _: () = assert!(std::mem::size_of::<RawLeakMeta>() == 24);

// SAFETY: plain integers, no padding (24 bytes asserted above).
#[cfg(not(tcpdoctor_no_trace_bpf))]
unsafe impl aya::Pod for RawLeakMeta {}
// SAFETY: `#[repr(C)]`, integers and byte arrays only, size asserted in records.rs.
#[cfg(not(tcpdoctor_no_trace_bpf))]
unsafe impl aya::Pod for RawOrigin {}

/// Counts of the recording since the tracer started (cumulative, from trace_counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakCounters {
    pub added: u64,
    pub removed: u64,
    /// Origins that could not be stored at all.
    pub failed: u64,
    /// Origins stored without their stack.
    pub stacks_lost: u64,
    /// Accepted sockets without a cookie (queued before recording began).
    pub accept_no_cookie: u64,
}

impl LeakCounters {
    /// Origins pushed out of the full table: every one added and neither removed at a
    /// close nor still there. The kernel does not count LRU evictions; this does.
    pub fn evicted(&self, present: u64) -> u64 {
        self.added
            .saturating_sub(self.removed)
            .saturating_sub(present)
    }
}

/// The offset that turns CLOCK_BOOTTIME (the records' clock) into Unix ms, now.
pub fn boot_to_unix_ms() -> i64 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec for the duration of the call.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_BOOTTIME)
}

/// Opens a map by id, read-only (BPF_MAP_GET_FD_BY_ID with BPF_F_RDONLY).
#[cfg_attr(tcpdoctor_no_trace_bpf, allow(dead_code))]
fn map_fd_read_only(id: u32) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        map_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_F_RDONLY: u32 = 1 << 3;
    let mut attr = Attr {
        map_id: id,
        next_id: 0,
        open_flags: BPF_F_RDONLY,
    };
    // SAFETY: the attr outlives the call; the kernel reads size_of::<Attr>() bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_FD_BY_ID,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What one read of the origin table gave.
#[derive(Debug, Clone, Default)]
pub struct OriginRead {
    /// (cookie, record): the records the read kept.
    pub origins: Vec<(u64, RawOrigin)>,
    /// Records in the table, kept or not.
    pub present: u64,
    /// Capacity of the table.
    pub capacity: u32,
}

/// A recorder found by [`find_recorders`].
#[derive(Debug)]
pub struct Recorder {
    pub pid: u32,
    pub since_unix_ms: u64,
    pub maps: OriginMaps,
}

#[cfg(tcpdoctor_no_trace_bpf)]
#[derive(Debug)]
pub struct OriginMaps;

#[cfg(tcpdoctor_no_trace_bpf)]
impl OriginMaps {
    pub fn read_matching(
        &self,
        _: impl FnMut(u64, &RawOrigin) -> bool,
    ) -> Result<OriginRead, TraceError> {
        Err(TraceError::NotBuilt)
    }
    pub fn stack(&self, _: u32) -> Option<Vec<u64>> {
        None
    }
}

#[cfg(tcpdoctor_no_trace_bpf)]
pub fn find_recorders() -> Result<Vec<Recorder>, TraceError> {
    Err(TraceError::NotBuilt)
}

/// The two maps of one recorder.
#[cfg(not(tcpdoctor_no_trace_bpf))]
pub struct OriginMaps {
    origins: aya::maps::HashMap<aya::maps::MapData, u64, RawOrigin>,
    stacks: aya::maps::StackTraceMap<aya::maps::MapData>,
    capacity: u32,
}

#[cfg(not(tcpdoctor_no_trace_bpf))]
impl std::fmt::Debug for OriginMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginMaps")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(not(tcpdoctor_no_trace_bpf))]
impl OriginMaps {
    pub(super) fn new(
        origins: aya::maps::Map,
        stacks: aya::maps::Map,
        capacity: u32,
    ) -> Result<OriginMaps, TraceError> {
        let bad = |name: &'static str| {
            move |e: aya::maps::MapError| TraceError::Load(format!("map {name}: {e}"))
        };
        Ok(OriginMaps {
            origins: origins.try_into().map_err(bad("trace_origins"))?,
            stacks: stacks.try_into().map_err(bad("trace_stacks"))?,
            capacity,
        })
    }

    /// Map ids (for `trace_leak_meta`).
    pub(super) fn ids(&self) -> Option<(u32, u32)> {
        use aya::maps::IterableMap;
        let id = |m: &aya::maps::MapData| m.info().ok().map(|i| i.id());
        Some((id(self.origins.map())?, id(self.stacks.map())?))
    }

    /// The records `keep` accepts, and the count of all. A long-running sampler wants
    /// a handful of the up to 65,536 records at each sample: keeping them all (and
    /// decoding them) made `serve`'s memory climb with the table's churn. Reading from
    /// user space does not count as use for the LRU (since Linux 5.1 the syscall lookup
    /// passes `mark = false`: `htab_lru_map_lookup_elem_sys`), so reading keeps no
    /// record in a full table.
    pub fn read_matching(
        &self,
        mut keep: impl FnMut(u64, &RawOrigin) -> bool,
    ) -> Result<OriginRead, TraceError> {
        let mut read = OriginRead {
            capacity: self.capacity,
            ..OriginRead::default()
        };
        for item in self.origins.iter() {
            // Removed between "next key" and "lookup": gone, skip it.
            let Ok((cookie, o)) = item else { continue };
            read.present += 1;
            if keep(cookie, &o) {
                read.origins.push((cookie, o));
            }
        }
        Ok(read)
    }

    /// The user stack with this id, innermost first; `None` when it is not (or no
    /// longer) in the table.
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        let s = self.stacks.get(&id, 0).ok()?;
        Some(s.frames().iter().map(|f| f.ip).collect())
    }

    /// Opens a recorder's maps by id, read-only.
    fn open(origins_id: u32, stacks_id: u32) -> Result<OriginMaps, String> {
        use aya::maps::{Map, MapData};
        let open = |id| -> Result<MapData, String> {
            let fd = map_fd_read_only(id).map_err(|e| format!("map id {id}: {e}"))?;
            MapData::from_fd(fd).map_err(|e| format!("map id {id}: {e}"))
        };
        let o = open(origins_id)?;
        let capacity = o.info().map(|i| i.max_entries()).unwrap_or(0);
        let origins = Map::LruHashMap(o);
        let stacks = Map::StackTraceMap(open(stacks_id)?);
        OriginMaps::new(origins, stacks, capacity).map_err(|e| e.to_string())
    }
}

/// Every running recorder (`serve`, `watch`, `trace --leaks` of any tcpdoctor on this
/// host), found by its `trace_leak_meta` map. A recorder whose maps cannot be opened
/// is left out; the error says why when none could be read at all.
#[cfg(not(tcpdoctor_no_trace_bpf))]
pub fn find_recorders() -> Result<Vec<Recorder>, TraceError> {
    use aya::maps::{Array, Map, MapData};
    let mut found = Vec::new();
    let mut first_error = None;
    for info in aya::maps::loaded_maps() {
        let Ok(info) = info else { continue };
        if info.name_as_str() != Some("trace_leak_meta")
            || info.value_size() as usize != std::mem::size_of::<RawLeakMeta>()
        {
            continue;
        }
        let meta = map_fd_read_only(info.id())
            .map_err(|e| e.to_string())
            .and_then(|fd| MapData::from_fd(fd).map_err(|e| e.to_string()))
            .and_then(|m| {
                let a: Array<MapData, RawLeakMeta> = Map::Array(m)
                    .try_into()
                    .map_err(|e: aya::maps::MapError| e.to_string())?;
                a.get(&0, 0).map_err(|e| e.to_string())
            });
        let meta = match meta {
            Ok(m) if m.magic == META_MAGIC => m,
            Ok(_) => continue,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        match OriginMaps::open(meta.origins_id, meta.stacks_id) {
            Ok(maps) => found.push(Recorder {
                pid: meta.pid,
                since_unix_ms: meta.since_unix_ms,
                maps,
            }),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (found.is_empty(), first_error) {
        (true, Some(e)) => Err(TraceError::Read {
            map: "trace_leak_meta",
            reason: e,
        }),
        _ => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_was_added_and_neither_removed_nor_present() {
        let c = LeakCounters {
            added: 100,
            removed: 30,
            ..LeakCounters::default()
        };
        assert_eq!(c.evicted(70), 0);
        assert_eq!(c.evicted(50), 20);
        // Reads race with the programs: never below zero.
        assert_eq!(c.evicted(90), 0);
    }

    #[test]
    fn boot_offset_is_close_to_now_minus_uptime() {
        let uptime_s: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .expect("/proc/uptime");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64;
        let expected = now_ms - (uptime_s * 1000.0) as i64;
        assert!((boot_to_unix_ms() - expected).abs() < 2000);
    }
}
