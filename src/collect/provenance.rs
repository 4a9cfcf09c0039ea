//! Leak provenance, the user-space half of the join: the tracer's origin records
//! ([`OriginMaps`]) matched to the sockets a dump found, by cookie, and to descriptors
//! the kernel closed under their holder, by inode; their stacks turned into frames.
//!
//! Symbolization is one function, [`symbolize`]: the seam where
//! `collect::symbolize::Symbolizer` plugs in. Until then frames are addresses with the
//! mapped file they lie in (from /proc/PID/maps), stacks group by id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::trace::origins::{boot_to_unix_ms, OriginMaps};
use super::trace::TraceError;
use crate::model::provenance::{Frame, FrameKind, Origin, Provenance, Stack};

/// What one read of a recording gave, before any join.
#[derive(Debug, Default)]
pub struct Recorded {
    /// By cookie.
    pub origins: HashMap<u64, Origin>,
    /// Cookies of records of sockets the kernel closed while a descriptor held them.
    pub closed_held: HashSet<u64>,
    /// Records that did not decode.
    pub skipped: u64,
    /// Records in the table, and its capacity.
    pub present: u64,
    pub capacity: u32,
}

/// Reads every record of a recording.
pub fn read(maps: &OriginMaps) -> Result<Recorded, TraceError> {
    let read = maps.read()?;
    let offset = boot_to_unix_ms();
    let mut out = Recorded {
        present: read.origins.len() as u64,
        capacity: read.capacity,
        ..Recorded::default()
    };
    for (cookie, raw) in read.origins {
        match raw.to_model(cookie, offset) {
            Ok(o) => {
                if raw.closed_held != 0 {
                    out.closed_held.insert(cookie);
                }
                out.origins.insert(cookie, o);
            }
            Err(_) => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Socket inodes a process holds as descriptors (`/proc/PID/fd/*` -> `socket:[N]`).
pub fn held_socket_inodes(proc_root: &Path, pid: u32) -> HashSet<u64> {
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

/// Of the records the kernel closed under a descriptor, those whose descriptor is still
/// held by the process that opened them: leaks no socket table shows. By inode.
pub fn detached(proc_root: &Path, rec: &Recorded) -> BTreeMap<u64, Origin> {
    let mut by_pid: BTreeMap<u32, Vec<&Origin>> = BTreeMap::new();
    for cookie in &rec.closed_held {
        if let Some(o) = rec.origins.get(cookie).filter(|o| o.inode != 0) {
            by_pid.entry(o.pid).or_default().push(o);
        }
    }
    let mut out = BTreeMap::new();
    for (pid, origins) in by_pid {
        let held = held_socket_inodes(proc_root, pid);
        for o in origins.into_iter().filter(|o| held.contains(&o.inode)) {
            out.insert(o.inode, o.clone());
        }
    }
    out
}

/// Resolves stacks, once per (process, stack id), reading each process's mappings once.
#[derive(Debug, Default)]
pub struct Resolver {
    proc_root: PathBuf,
    mappings: HashMap<u32, Vec<Mapping>>,
    done: HashMap<(u32, u32), Stack>,
}

/// One line of /proc/PID/maps that maps a file or an anonymous executable region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

impl Resolver {
    pub fn new(proc_root: &Path) -> Resolver {
        Resolver {
            proc_root: proc_root.to_path_buf(),
            ..Resolver::default()
        }
    }

    /// The stack `id` of process `pid`, resolved; `None` when it is not in the table.
    pub fn stack(&mut self, maps: &OriginMaps, pid: u32, id: u32) -> Option<Stack> {
        if let Some(s) = self.done.get(&(pid, id)) {
            return Some(s.clone());
        }
        let addrs = maps.stack(id)?;
        let mappings = self
            .mappings
            .entry(pid)
            .or_insert_with(|| read_mappings(&self.proc_root, pid));
        let (frames, call_site, hint) = symbolize(pid, &addrs, mappings);
        let s = Stack {
            id,
            frames,
            call_site,
            hint,
        };
        self.done.insert((pid, id), s.clone());
        Some(s)
    }
}

/// THE SEAM for symbolization (issue 13): user addresses of process `pid`, innermost
/// first, into frames, the frame that names the call site, and what to enable when
/// frames did not resolve. With `collect::symbolize` merged this becomes:
///
/// ```ignore
/// let mut frames = symbolizer.symbolize(pid, addrs);
/// fill_modules(&mut frames, mappings); // where the symbolizer left `module` empty
/// let site = Symbolizer::call_site(&frames);
/// let hint = Symbolizer::hint(pid, &frames);
/// (frames, site, hint)
/// ```
///
/// (the `Symbolizer` then lives in [`Resolver`], created once per run). Meanwhile:
/// unresolved frames with the mapped file each address lies in, no call site (groups
/// are then by stack id).
fn symbolize(
    _pid: u32,
    addrs: &[u64],
    mappings: &[Mapping],
) -> (Vec<Frame>, Option<Frame>, Option<String>) {
    let mut frames: Vec<Frame> = addrs
        .iter()
        .map(|&addr| Frame {
            addr,
            kind: FrameKind::Unresolved,
            symbol: None,
            file: None,
            line: None,
            module: None,
        })
        .collect();
    fill_modules(&mut frames, mappings);
    (frames, None, None)
}

/// Sets `module` of frames without one to the mapping their address lies in.
pub fn fill_modules(frames: &mut [Frame], mappings: &[Mapping]) {
    for f in frames.iter_mut().filter(|f| f.module.is_none()) {
        f.module = mappings
            .iter()
            .find(|m| m.start <= f.addr && f.addr < m.end)
            .map(|m| m.name.clone());
    }
}

fn read_mappings(proc_root: &Path, pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("maps"))
        .map(|t| parse_mappings(&t))
        .unwrap_or_default()
}

/// Executable mappings of a /proc/PID/maps text; malformed lines are skipped.
pub fn parse_mappings(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            if !perms.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let name = f.nth(3).map_or("[anon]", |n| n).to_string();
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                name,
            })
        })
        .collect()
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

    #[test]
    fn mappings_keep_executable_lines_and_skip_bad_ones() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/leaky
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/leaky
7f0000000000-7f0000001000 r-xp 00000000 00:00 0
zzzz-7f00 r-xp 00000000 00:00 0 /bad
7f1000000000-7f1000100000 r-xp 00028000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
";
        let m = parse_mappings(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[0].name, "/usr/bin/leaky");
        assert_eq!(m[1].name, "[anon]");
        let mut frames = vec![Frame {
            addr: 0x7f1000000010,
            kind: FrameKind::Unresolved,
            symbol: None,
            file: None,
            line: None,
            module: None,
        }];
        fill_modules(&mut frames, &m);
        assert_eq!(
            frames[0].module.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
    }
}
