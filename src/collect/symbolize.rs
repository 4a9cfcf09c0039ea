//! Addresses of a user-space stack turned into frames (issue 13, leak provenance).
//!
//! Native code is resolved by blazesym from the process's own mappings (`/proc/PID/maps`
//! and `map_files`): the ELF symbol table, DWARF for file:line, and separate debug info
//! under /usr/lib/debug found by debug link or build id when a debug package is
//! installed. JIT code (Java, Node) lives in anonymous memory that no file describes; the
//! runtime can write a perf map (`/tmp/perf-PID.map`, one `START SIZE name` line per
//! compiled function) and we read it ourselves: blazesym 0.2 parses perf maps, but
//! refuses a whole map for one line it cannot read and does not take the `0x` prefix the
//! JDK's `jcmd PID Compiler.perfmap` writes, so a JVM's map would give nothing.
//!
//! OS access only: what to make of the frames (grouping, wording) is not decided here,
//! beyond [`Symbolizer::call_site`] and [`Symbolizer::hint`], which need to look at the
//! process (its executable, its perf map) to answer.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Reason, Symbolized, Symbolizer as Native};
use blazesym::Pid;

use crate::collect::bounded;
use crate::model::provenance::{Frame, FrameKind};

/// Processes whose mappings and perf map are kept at once; the least recently used one
/// is dropped past this. A leak report names a handful of processes.
pub const MAX_PROCESSES: usize = 64;

/// Bound for one `/proc/PID/maps`: a JVM has a few thousand mappings of ~100 bytes.
const MAPS: u64 = 16 << 20;

/// Bound for one perf map: a large JVM's code cache holds ~100,000 methods of ~150
/// bytes a line (15 MB); a Node process appending with `--perf-basic-prof` for days can
/// write more, and is cut here rather than read without end.
pub const PERF_MAP: u64 = 256 << 20;

/// A perf map line longer than this is skipped (a Java signature with many generic
/// parameters is a few hundred bytes).
const PERF_MAP_LINE: usize = 8 << 10;

/// No function in a perf map is this large: a bigger size is a corrupt line, and
/// keeping it would make every lookup scan the whole map.
const PERF_MAP_MAX_FN: u64 = 256 << 20;

/// Resolves stack addresses of live processes, keeping per-process data (mappings,
/// perf map, blazesym's ELF and DWARF handles) for up to [`MAX_PROCESSES`] processes.
///
/// Not `Send`: blazesym's caches use `Rc` and `RefCell`. Make it on the thread that
/// symbolizes.
pub struct Symbolizer {
    native: Native,
    processes: HashMap<u32, ProcessState>,
    /// Increases with every call; a process's last use, for eviction.
    clock: u64,
    /// Processes evicted since `native` was made: blazesym keeps ELF handles by
    /// `/proc/PID/map_files/...` path, which its per-process eviction does not drop, so
    /// it is made anew after [`MAX_PROCESSES`] evictions.
    evicted: usize,
}

/// What is kept about one process.
struct ProcessState {
    /// The process's start time (`/proc/PID/stat` field 22): a new process that reuses
    /// the pid has another, and nothing cached for the old one is used for it.
    started: u64,
    maps: Vec<Mapping>,
    perf_map: Option<CachedPerfMap>,
    last_used: u64,
}

struct CachedPerfMap {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    map: PerfMap,
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    /// The file (`/usr/lib/x86_64-linux-gnu/libc.so.6`), a kernel name (`[vdso]`,
    /// `[heap]`), or `None` for anonymous memory.
    pub path: Option<String>,
}

impl Mapping {
    /// What [`Frame::module`] says for an address here.
    fn module(&self) -> String {
        self.path.clone().unwrap_or_else(|| "[anon]".to_string())
    }

    fn is_anonymous(&self) -> bool {
        self.path.is_none()
    }
}

/// Parses `/proc/PID/maps` text; lines that do not parse are skipped (the kernel writes
/// none, a replayed file might).
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = text.lines().filter_map(parse_maps_line).collect();
    maps.sort_by_key(|m| m.start);
    maps
}

/// `7f2c1a000000-7f2c1a028000 r-xp 00028000 fe:01 1234  /usr/lib/.../libc.so.6`
fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().map(str::trim_start).filter(|p| !p.is_empty());
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    Some(Mapping {
        start,
        end,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        path: path.map(str::to_string),
    })
}

/// The mapping that holds `addr` in `maps` (sorted by start).
fn mapping_of(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}

/// One function of a perf map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfMapEntry {
    pub start: u64,
    pub size: u64,
    pub name: String,
}

/// A parsed perf map: its functions by start address, and how many lines were skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerfMap {
    /// Sorted by start, then by line order.
    entries: Vec<PerfMapEntry>,
    /// Each entry's line number among the kept lines: of overlapping entries (code
    /// reused after a method was unloaded, in a map appended to over time) the later
    /// line describes what is there now.
    order: Vec<usize>,
    /// The largest size kept: a lookup looks back no further than this.
    widest: u64,
    /// Lines that did not parse (malformed, an impossible size, too long, not UTF-8).
    pub skipped: u64,
}

impl PerfMap {
    /// Parses a perf map (`START SIZE name`, START and SIZE in hex with or without
    /// `0x`, the name the rest of the line). A line that does not parse is counted in
    /// [`PerfMap::skipped`] and the rest is still read; only a read error fails.
    pub fn parse(mut input: impl BufRead) -> io::Result<PerfMap> {
        let mut skipped = 0;
        let mut line = Vec::new();
        let mut kept: Vec<(PerfMapEntry, usize)> = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = trim_line_end(&line);
            if text.is_empty() {
                continue;
            }
            match parse_perf_map_line(text) {
                Some(entry) => {
                    let seq = kept.len();
                    kept.push((entry, seq));
                }
                None => skipped += 1,
            }
        }
        kept.sort_by_key(|(e, seq)| (e.start, *seq));
        let widest = kept.iter().map(|(e, _)| e.size).max().unwrap_or(0);
        let (entries, order) = kept.into_iter().unzip();
        Ok(PerfMap {
            entries,
            order,
            widest,
            skipped,
        })
    }

    /// The functions kept, by start address.
    pub fn entries(&self) -> &[PerfMapEntry] {
        &self.entries
    }

    /// The function whose code holds `addr`; of overlapping ones, the last written.
    pub fn lookup(&self, addr: u64) -> Option<&PerfMapEntry> {
        let end = self.entries.partition_point(|e| e.start <= addr);
        // Only entries starting within `widest` below `addr` can hold it.
        (0..end)
            .rev()
            .take_while(|&i| addr - self.entries[i].start < self.widest)
            .filter(|&i| addr - self.entries[i].start < self.entries[i].size)
            .max_by_key(|&i| self.order[i])
            .map(|i| &self.entries[i])
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn parse_perf_map_line(line: &[u8]) -> Option<PerfMapEntry> {
    if line.len() > PERF_MAP_LINE {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let (start, rest) = text
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let (size, name) = rest
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let start = parse_hex(start)?;
    let size = parse_hex(size)?;
    let name = name.trim();
    if name.is_empty() || size == 0 || size > PERF_MAP_MAX_FN || start.checked_add(size).is_none() {
        return None;
    }
    if name.chars().any(char::is_control) {
        return None;
    }
    Some(PerfMapEntry {
        start,
        size,
        name: name.to_string(),
    })
}

/// Reads the perf map at `path` within [`PERF_MAP`] bytes.
pub fn read_perf_map(path: &Path) -> io::Result<PerfMap> {
    let stream = bounded::open_stream(path, PERF_MAP)?;
    PerfMap::parse(io::BufReader::new(stream))
}

/// The pid `pid` has in its own PID namespace (the last `NSpid:` of its status), which
/// names its perf map; `pid` itself when the kernel shows no `NSpid:`.
pub fn namespace_pid(proc_root: &Path, pid: u32) -> Option<u32> {
    let status =
        bounded::read_to_string(&proc_root.join(format!("{pid}/status")), bounded::SMALL).ok()?;
    namespace_pid_from_status(&status).or(Some(pid))
}

/// The innermost pid of a `/proc/PID/status` text's `NSpid:` line.
pub fn namespace_pid_from_status(status: &str) -> Option<u32> {
    super::procfs::status::nspid(status.as_bytes())?
        .last()
        .copied()
}

/// Where the process `pid` wrote its perf map: `/tmp` as the process sees it (its own
/// mount namespace, reached through `/proc/PID/root`), named by its pid as it sees it.
pub fn perf_map_path(pid: u32) -> Option<PathBuf> {
    let proc_root = Path::new("/proc");
    let nspid = namespace_pid(proc_root, pid)?;
    Some(proc_root.join(format!("{pid}/root/tmp/perf-{nspid}.map")))
}

/// `/proc/PID/stat` field 22, the start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat =
        bounded::read_to_string(Path::new(&format!("/proc/{pid}/stat")), bounded::SMALL).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last
    // `)`. Field 22 is then the 20th.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

fn read_maps(pid: u32) -> Vec<Mapping> {
    match bounded::read(Path::new(&format!("/proc/{pid}/maps")), MAPS) {
        // A file name need not be UTF-8; only the mapping's own name is then garbled.
        Ok(bytes) => parse_maps(&String::from_utf8_lossy(&bytes)),
        Err(_) => Vec::new(),
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Symbolizer {
            native: new_native(),
            processes: HashMap::new(),
            clock: 0,
            evicted: 0,
        }
    }

    /// One frame per address of a user stack taken at a syscall, in the same order.
    /// Every address of such a stack is a return address (the innermost one too: the
    /// user IP after the `syscall` instruction), so each is looked up one byte before,
    /// inside the call: the function and line named are the caller's at the call, not
    /// the next line's. `Frame::addr` keeps the address as given. The process must
    /// still run: a process that exited gives unresolved frames.
    pub fn symbolize(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let lookups: Vec<u64> = addrs.iter().map(|a| a.saturating_sub(1)).collect();
        self.resolve(pid, addrs, &lookups)
    }

    /// Like [`Symbolizer::symbolize`] for instruction addresses that are not return
    /// addresses (a function's entry, a perf map's start): each is looked up as is.
    pub fn symbolize_exact(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.resolve(pid, addrs, addrs)
    }

    fn resolve(&mut self, pid: u32, addrs: &[u64], lookups: &[u64]) -> Vec<Frame> {
        if addrs.is_empty() {
            return Vec::new();
        }
        if !self.refresh(pid, lookups) {
            // Gone (or never there): nothing of it can be read any more.
            return addrs.iter().map(|&a| unresolved(a, None)).collect();
        }
        let natives = self.native_symbols(pid, lookups);
        let Some(state) = self.processes.get(&pid) else {
            return addrs.iter().map(|&a| unresolved(a, None)).collect();
        };
        addrs
            .iter()
            .zip(lookups)
            .zip(natives)
            .map(|((&addr, &at), native)| {
                let mapping = mapping_of(&state.maps, at);
                if let Some(frame) = native.map(|n| n.into_frame(addr, mapping)) {
                    return frame;
                }
                // JIT code is anonymous memory; so is an address whose mapping is
                // already gone when the maps were read (code unloaded).
                if mapping.is_none_or(Mapping::is_anonymous) {
                    if let Some(e) = state.perf_map.as_ref().and_then(|p| p.map.lookup(at)) {
                        let (file, line) = jit_location(&e.name);
                        return Frame {
                            addr,
                            kind: FrameKind::Jit,
                            symbol: Some(e.name.clone()),
                            file,
                            line,
                            module: mapping.map(Mapping::module),
                        };
                    }
                }
                unresolved(addr, mapping.map(Mapping::module))
            })
            .collect()
    }

    /// Brings what is kept about `pid` up to date: a process that replaced it under
    /// the same pid starts afresh, an address outside every known mapping re-reads the
    /// maps, and a perf map that changed since it was read is read again. False when
    /// no process `pid` runs.
    fn refresh(&mut self, pid: u32, lookups: &[u64]) -> bool {
        self.clock += 1;
        let Some(started) = start_time(pid) else {
            self.forget(pid);
            return false;
        };
        if self
            .processes
            .get(&pid)
            .is_some_and(|s| s.started != started)
        {
            self.forget(pid);
        }
        if !self.processes.contains_key(&pid) {
            self.make_room();
            self.processes.insert(
                pid,
                ProcessState {
                    started,
                    maps: read_maps(pid),
                    perf_map: None,
                    last_used: self.clock,
                },
            );
        }
        let Some(state) = self.processes.get_mut(&pid) else {
            return false;
        };
        state.last_used = self.clock;
        if lookups
            .iter()
            .any(|&a| mapping_of(&state.maps, a).is_none())
        {
            state.maps = read_maps(pid);
        }
        let wants_perf_map = lookups
            .iter()
            .any(|&a| mapping_of(&state.maps, a).is_none_or(Mapping::is_anonymous));
        if wants_perf_map {
            refresh_perf_map(pid, state);
        }
        true
    }

    fn forget(&mut self, pid: u32) {
        if self.processes.remove(&pid).is_some() {
            let _ = self
                .native
                .evict(&blazesym::symbolize::evict::Process::new(Pid::from(pid)).into());
            self.evicted += 1;
            if self.evicted >= MAX_PROCESSES {
                self.native = new_native();
                self.evicted = 0;
            }
        }
    }

    fn make_room(&mut self) {
        while self.processes.len() >= MAX_PROCESSES {
            let Some(oldest) = self
                .processes
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(&pid, _)| pid)
            else {
                return;
            };
            self.forget(oldest);
        }
    }

    /// blazesym's answer for each address: `None` where it has none.
    fn native_symbols(&mut self, pid: u32, lookups: &[u64]) -> Vec<Option<NativeSym>> {
        let mut out = self.native_pass(pid, lookups, true);
        // `/proc/PID/map_files` needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE); without
        // it every file-backed address fails. The paths in `maps` then serve, as long as
        // the process sees the same files we do (no other mount namespace).
        if out.iter().any(|s| matches!(s, Answer::Failed)) {
            let again = self.native_pass(pid, lookups, false);
            for (first, second) in out.iter_mut().zip(again) {
                if matches!(first, Answer::Failed) {
                    *first = second;
                }
            }
        }
        out.into_iter()
            .map(|a| match a {
                Answer::Found(s) => Some(s),
                Answer::Failed | Answer::Missing => None,
            })
            .collect()
    }

    fn native_pass(&mut self, pid: u32, lookups: &[u64], map_files: bool) -> Vec<Answer> {
        let mut source = Process::new(Pid::from(pid));
        source.perf_map = false;
        source.map_files = map_files;
        source.debug_syms = true;
        match self
            .native
            .symbolize(&Source::Process(source), Input::AbsAddr(lookups))
        {
            Ok(syms) if syms.len() == lookups.len() => syms
                .into_iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => Answer::Found(NativeSym {
                        name: sym.name.into_owned(),
                        file: sym
                            .code_info
                            .as_ref()
                            .map(|c| c.to_path().to_string_lossy().into_owned()),
                        line: sym.code_info.as_ref().and_then(|c| c.line),
                    }),
                    Symbolized::Unknown(Reason::IgnoredError) => Answer::Failed,
                    Symbolized::Unknown(_) => Answer::Missing,
                })
                .collect(),
            // The whole batch failed (the process is gone, maps unreadable).
            _ => lookups.iter().map(|_| Answer::Failed).collect(),
        }
    }

    /// The frame that names where the program opened the socket: the innermost one in
    /// the program's own code. Passed over: the C library and dynamic loader, the
    /// runtimes (the JVM's native libraries, its interpreter and stubs, the JDK's
    /// classes; Node's binary, its builtins and `node:internal` code; Python's
    /// interpreter and standard library), and then connection-pool libraries a
    /// program calls (Apache HttpClient, OkHttp, Netty, JDBC drivers, libcurl, libpq,
    /// ...), so that a leak through HttpClient names the program's method that called
    /// it. When only library frames resolve, the innermost of those; `None` when
    /// nothing resolves.
    pub fn call_site(frames: &[Frame]) -> Option<Frame> {
        frames
            .iter()
            .find(|f| origin(f) == Origin::Program)
            .or_else(|| frames.iter().find(|f| origin(f) == Origin::Library))
            .cloned()
    }

    /// What to enable so that these frames resolve, for the process `pid` (read live:
    /// its executable, its perf map); `None` when the program's own code resolved.
    pub fn hint(pid: u32, frames: &[Frame]) -> Option<String> {
        if frames.iter().any(|f| origin(f) == Origin::Program) {
            return None;
        }
        let runtime = Runtime::of(pid, frames);
        let perf_map = perf_map_path(pid).filter(|p| p.is_file());
        let short = frames.len() <= 2;
        match runtime {
            Runtime::Java => Some(if perf_map.is_none() {
                format!(
                    "Java methods are named from a perf map, and pid {pid} has none: start the \
                     JVM with -XX:+PreserveFramePointer and run `jcmd {pid} Compiler.perfmap` \
                     (JDK 17+) once it is warm (or -XX:+UnlockDiagnosticVMOptions \
                     -XX:+DumpPerfMapAtExit, or perf-map-agent)"
                )
            } else if frames
                .iter()
                .any(|f| f.symbol.as_deref() == Some("Interpreter"))
            {
                format!(
                    "the Java code here was interpreted, and a perf map names the JVM's \
                     interpreter, not the methods it runs: methods get their names once \
                     compiled (hot code is); run `jcmd {pid} Compiler.perfmap` again later"
                )
            } else if short {
                "the stack stops in the JVM: start it with -XX:+PreserveFramePointer so the \
                 walk goes through compiled Java frames"
                    .to_string()
            } else {
                format!(
                    "the Java frames here were compiled after the perf map was written (it \
                     names the methods compiled when it was written): run `jcmd {pid} \
                     Compiler.perfmap` again"
                )
            }),
            Runtime::Node => Some(if perf_map.is_none() {
                format!(
                    "JavaScript functions are named from a perf map, and pid {pid} has none: \
                     start node with --perf-basic-prof --interpreted-frames-native-stack"
                )
            } else {
                "start node with --interpreted-frames-native-stack too, so interpreted \
                 functions get frames of their own in the perf map"
                    .to_string()
            }),
            Runtime::Python => Some(
                "Python functions are named only with Python 3.12+ started with -X perf (or \
                 PYTHONPERFSUPPORT=1), which writes a perf map"
                    .to_string(),
            ),
            Runtime::Native => Some(native_hint(pid, frames, perf_map.is_some())),
        }
    }
}

fn native_hint(pid: u32, frames: &[Frame], has_perf_map: bool) -> String {
    let stripped = frames.iter().find(|f| {
        f.kind == FrameKind::Unresolved
            && f.module.as_deref().is_some_and(|m| m.starts_with('/'))
            && !f.module.as_deref().is_some_and(is_runtime_module)
    });
    if let Some(module) = stripped.and_then(|f| f.module.as_deref()) {
        return format!(
            "{module} has no symbol table (stripped): install its debug symbols (the \
             -dbgsym or -dbg package, into /usr/lib/debug) or build it with symbols (-g, no \
             strip)"
        );
    }
    let anonymous = frames.iter().any(|f| {
        f.kind == FrameKind::Unresolved && f.module.as_deref().is_none_or(|m| m == "[anon]")
    });
    if anonymous && !has_perf_map {
        return format!(
            "the stack runs through anonymous memory (JIT code) and pid {pid} wrote no perf \
             map (/tmp/perf-{pid}.map as the process sees it): enable the runtime's perf map"
        );
    }
    if frames.len() <= 2 {
        return format!(
            "the stack stops after {} in the C library: the program was built without frame \
             pointers; rebuild it with -fno-omit-frame-pointer (Rust: -C \
             force-frame-pointers=yes, Go keeps them)",
            crate::model::units::count(frames.len() as u64, "frame", "frames")
        );
    }
    "no frame of the program's own code resolved: build it with frame pointers \
     (-fno-omit-frame-pointer) and symbols (-g)"
        .to_string()
}

/// A blazesym answer for one address.
enum Answer {
    Found(NativeSym),
    /// Looked up and not found (no symbol there).
    Missing,
    /// Could not be looked up (an error was folded into the batch).
    Failed,
}

struct NativeSym {
    name: String,
    file: Option<String>,
    line: Option<u32>,
}

impl NativeSym {
    fn into_frame(self, addr: u64, mapping: Option<&Mapping>) -> Frame {
        Frame {
            addr,
            kind: FrameKind::Native,
            symbol: Some(self.name),
            file: self.file,
            line: self.line,
            module: mapping.map(Mapping::module),
        }
    }
}

fn unresolved(addr: u64, module: Option<String>) -> Frame {
    Frame {
        addr,
        kind: FrameKind::Unresolved,
        symbol: None,
        file: None,
        line: None,
        module,
    }
}

fn new_native() -> Native {
    // Inlined functions are not asked for: a call site is named by the function the
    // address lies in, and at -O0 (or with frame pointers kept) that is the caller.
    Native::builder()
        .enable_code_info(true)
        .enable_inlined_fns(false)
        .build()
}

fn refresh_perf_map(pid: u32, state: &mut ProcessState) {
    let Some(path) = perf_map_path(pid) else {
        state.perf_map = None;
        return;
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        state.perf_map = None;
        return;
    };
    let modified = meta.modified().ok();
    let unchanged = state
        .perf_map
        .as_ref()
        .is_some_and(|c| c.path == path && c.modified == modified && c.len == meta.len());
    if unchanged {
        return;
    }
    state.perf_map = read_perf_map(&path).ok().map(|map| CachedPerfMap {
        path,
        modified,
        len: meta.len(),
        map,
    });
}

/// Whose code a frame is, for [`Symbolizer::call_site`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Not resolved: says nothing.
    Unknown,
    /// The C library, the loader, a language runtime, its stubs and its own library.
    Runtime,
    /// A library the program calls to open connections (HTTP clients, pools, drivers).
    Library,
    Program,
}

/// Whether a mapped file is part of the C library, the dynamic loader or a language
/// runtime (the JVM and the JDK's native libraries, Node and libuv, Python), by its
/// path and file name; kernel names (`[vdso]`) too.
fn is_runtime_module(module: &str) -> bool {
    let name = module_name(module);
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
    module.starts_with('[')
        || module.contains("/lib/jvm/")
        || starts(&[
            "libc.so",
            "libc-2.",
            "libc.musl",
            "ld-linux",
            "ld-musl",
            "ld-2.",
            "libpthread.so",
            "libpthread-",
            "libdl.so",
            "libjvm.so",
            "libjava.so",
            "libnet.so",
            "libnio.so",
            "libjli.so",
            "libnode.so",
            "libuv.so",
            "libpython",
        ])
        || name == "node"
        || name == "nodejs"
        || is_python_binary(name)
}

/// Native client libraries that open connections for a program (HTTP, databases,
/// caches, RPC): a leak through them is the caller's.
fn is_library_module(module: &str) -> bool {
    let name = module_name(module);
    [
        "libcurl.so",
        "libcurl-",
        "libpq.so",
        "libmysqlclient.so",
        "libmariadb.so",
        "libhiredis.so",
        "libgrpc.so",
        "libgrpc++.so",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// `python`, `python3`, `python3.11`, `python3.12d`, not `pythonista`.
fn is_python_binary(name: &str) -> bool {
    name.strip_prefix("python").is_some_and(|v| {
        v.trim_end_matches(['d', 'm', 'u'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
    })
}

/// Java classes of the JDK itself (and of Node's and Python's own code, by their
/// spelling in a perf map).
const RUNTIME_JAVA_PACKAGES: &[&str] = &["java.", "javax.", "jdk.", "sun.", "com.sun."];

/// Libraries a program calls to get connections: a leak through them is the caller's.
const LIBRARY_JAVA_PACKAGES: &[&str] = &[
    "org.apache.http.",
    "org.apache.hc.",
    "okhttp3.",
    "okio.",
    "io.netty.",
    "reactor.netty.",
    "com.zaxxer.hikari.",
    "org.postgresql.",
    "com.mysql.",
    "redis.clients.",
    "io.lettuce.",
];

fn module_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

fn origin(f: &Frame) -> Origin {
    let Some(symbol) = f.symbol.as_deref() else {
        return Origin::Unknown;
    };
    match f.kind {
        FrameKind::Unresolved => Origin::Unknown,
        FrameKind::Native => match f.module.as_deref() {
            Some(m) if is_runtime_module(m) => Origin::Runtime,
            Some(m) if is_library_module(m) => Origin::Library,
            _ => Origin::Program,
        },
        FrameKind::Jit => jit_origin(symbol),
    }
}

/// A perf map name's origin. Java: `RET pkg.Class.method(ARGS)` for a compiled method,
/// no parentheses for the interpreter and stubs (`Interpreter`, `StubRoutines (1)` has
/// them but no dot before). Node: `JS:*fn file.js:1:2` / `LazyCompile:...` for
/// functions, `Builtin:`, `BytecodeHandler:`, `Stub:` ... for V8's own code. Python
/// (-X perf): `py::fn:/path/file.py`.
fn jit_origin(name: &str) -> Origin {
    if let Some(method) = java_method(name) {
        if RUNTIME_JAVA_PACKAGES.iter().any(|p| method.starts_with(p)) {
            return Origin::Runtime;
        }
        if LIBRARY_JAVA_PACKAGES.iter().any(|p| method.starts_with(p)) {
            return Origin::Library;
        }
        return Origin::Program;
    }
    if let Some((kind, rest)) = name.split_once(':') {
        let js = matches!(kind, "JS" | "LazyCompile" | "Function" | "Eval" | "Script");
        if js {
            let internal = rest.contains("node:") || rest.contains("internal/");
            return if internal {
                Origin::Runtime
            } else {
                Origin::Program
            };
        }
        if kind == "py" {
            let stdlib = rest.contains("/usr/lib/python") || rest.contains("/lib/python3");
            return if stdlib {
                Origin::Runtime
            } else {
                Origin::Program
            };
        }
    }
    // The JVM's interpreter, adapters and stubs; V8's builtins, handlers and stubs.
    Origin::Runtime
}

/// The source location V8 writes into a JavaScript function's perf map name
/// (`JS:~fetch /srv/app/client.js:12:3`: file and line; the column is left out). The
/// JDK's names carry none.
fn jit_location(name: &str) -> (Option<String>, Option<u32>) {
    let Some((kind, rest)) = name.split_once(':') else {
        return (None, None);
    };
    if !matches!(kind, "JS" | "LazyCompile" | "Function" | "Eval" | "Script") {
        return (None, None);
    }
    let location = rest.rsplit(' ').next().unwrap_or(rest);
    // `path:line:col`; the path itself may hold colons (`node:net`).
    let mut parts = location.rsplitn(3, ':');
    let (Some(_col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return (None, None);
    };
    match line.parse::<u32>() {
        Ok(line) if !file.is_empty() => (Some(file.to_string()), Some(line)),
        _ => (None, None),
    }
}

/// `pkg.Class.method` of a Java perf map name `RET pkg.Class.method(ARGS)`.
pub fn java_method(name: &str) -> Option<&str> {
    let (head, _) = name.split_once('(')?;
    let method = head.rsplit(' ').next()?;
    (method.contains('.') && !method.contains(':')).then_some(method)
}

/// The language runtime of a process, for the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Java,
    Node,
    Python,
    Native,
}

impl Runtime {
    fn of(pid: u32, frames: &[Frame]) -> Runtime {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let names = exe
            .iter()
            .map(String::as_str)
            .chain(frames.iter().filter_map(|f| f.module.as_deref()));
        for module in names {
            let name = module_name(module);
            if name == "java" || name == "libjvm.so" || module.contains("/lib/jvm/") {
                return Runtime::Java;
            }
            if name == "node" || name == "nodejs" || name.starts_with("libnode.so") {
                return Runtime::Node;
            }
            if is_python_binary(name) || name.starts_with("libpython") {
                return Runtime::Python;
            }
        }
        if frames.iter().any(|f| f.kind == FrameKind::Jit) {
            let java = frames
                .iter()
                .filter_map(|f| f.symbol.as_deref())
                .any(|s| s == "Interpreter" || java_method(s).is_some());
            if java {
                return Runtime::Java;
            }
        }
        Runtime::Native
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JDK_MAP: &str = include_str!("../../tests/fixtures/perfmap/jdk17-leaky-fetcher.map");

    fn frame(kind: FrameKind, symbol: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            addr: 0x1000,
            kind,
            symbol: symbol.map(str::to_string),
            file: None,
            line: None,
            module: module.map(str::to_string),
        }
    }

    #[test]
    fn a_jdk_perf_map_parses_whole_with_its_0x_prefixes() {
        let map = PerfMap::parse(JDK_MAP.as_bytes()).expect("in memory");
        assert_eq!(map.skipped, 0);
        assert_eq!(map.entries().len(), JDK_MAP.lines().count());
        let fetch = map
            .entries()
            .iter()
            .find(|e| e.name.contains("LeakyFetcher.fetch("))
            .expect("the compiled fetch method is in the fixture");
        // Its first byte, its last, and one past the end (the next entry or nothing).
        let name = &map.lookup(fetch.start).expect("start").name;
        assert_eq!(name, &fetch.name);
        let last = map.lookup(fetch.start + fetch.size - 1).expect("last byte");
        assert_eq!(last.name, fetch.name);
        assert_ne!(
            map.lookup(fetch.start + fetch.size).map(|e| &e.name),
            Some(&fetch.name)
        );
        assert_eq!(
            java_method(&fetch.name),
            Some("LeakyFetcher.fetch"),
            "{}",
            fetch.name
        );
        let interp = map
            .entries()
            .iter()
            .find(|e| e.name == "Interpreter")
            .expect("the interpreter's code blob is in every JDK map");
        assert_eq!(
            map.lookup(interp.start + 1).map(|e| &e.name),
            Some(&interp.name)
        );
    }

    #[test]
    fn malformed_perf_map_lines_are_skipped_and_counted() {
        let text = "\
1000 10 good_one
not-hex 10 bad_start
2000 zz bad_size
3000 0 zero_size
4000 10
0xffffffffffffff00 200 wraps
5000 fffffffffff too_big
\r
6000\t20\tTabs separate fields
0x7000 0x8 with prefixes\r
";
        let map = PerfMap::parse(text.as_bytes()).expect("in memory");
        assert_eq!(map.skipped, 6, "{map:?}");
        let names: Vec<&str> = map.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["good_one", "Tabs separate fields", "with prefixes"]);
        assert_eq!(map.lookup(0x100f).map(|e| e.start), Some(0x1000));
        assert_eq!(map.lookup(0x1010), None);
        assert_eq!(map.lookup(0x6010).map(|e| e.start), Some(0x6000));
        assert_eq!(map.lookup(0x7007).map(|e| e.start), Some(0x7000));
        assert_eq!(map.lookup(0), None);

        let bytes: &[u8] = b"1000 10 \xff\xfe not utf-8\n2000 10 fine\n";
        let map = PerfMap::parse(bytes).expect("in memory");
        assert_eq!((map.skipped, map.entries().len()), (1, 1));
        let long = format!("1000 10 {}\n2000 10 fine\n", "x".repeat(PERF_MAP_LINE));
        let map = PerfMap::parse(long.as_bytes()).expect("in memory");
        assert_eq!((map.skipped, map.entries().len()), (1, 1));
    }

    #[test]
    fn overlapping_perf_map_entries_resolve_to_the_later_line() {
        // Code reused after an unload: the second line describes what is there now.
        let map =
            PerfMap::parse(&b"1000 100 old\n1000 100 new\n1080 10 inner\n"[..]).expect("in memory");
        assert_eq!(map.lookup(0x1010).map(|e| e.name.as_str()), Some("new"));
        assert_eq!(map.lookup(0x1085).map(|e| e.name.as_str()), Some("inner"));
    }

    #[test]
    fn maps_lines_parse_with_spaces_in_paths_and_bad_lines_skipped() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 131 /tmp/my prog
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 131 /tmp/my prog
7f00deadb000-7f00deadc000 rwxp 00000000 00:00 0 
7fff0000-7ffe0000 r-xp 00000000 00:00 0 [backwards]
garbage
7ffc1234a000-7ffc1234c000 r-xp 00000000 00:00 0                          [vdso]
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4, "{maps:?}");
        let exe = mapping_of(&maps, 0x55d0c0a01800).expect("in the text mapping");
        assert!(exe.executable);
        assert_eq!(exe.path.as_deref(), Some("/tmp/my prog"));
        let jit = mapping_of(&maps, 0x7f00deadb010).expect("anonymous");
        assert!(jit.is_anonymous());
        assert_eq!(jit.module(), "[anon]");
        assert_eq!(
            mapping_of(&maps, 0x7ffc1234a000).and_then(|m| m.path.as_deref()),
            Some("[vdso]")
        );
        assert!(mapping_of(&maps, 0x10).is_none());
        assert!(mapping_of(&maps, 0x55d0c0a02000).is_none());
    }

    #[test]
    fn the_namespace_pid_is_the_last_of_nspid() {
        let status = "Name:\tjava\nTgid:\t4242\nNSpid:\t4242\t17\t1\nPPid:\t1\n";
        assert_eq!(namespace_pid_from_status(status), Some(1));
        assert_eq!(namespace_pid_from_status("NSpid:\t4242\n"), Some(4242));
        assert_eq!(namespace_pid_from_status("Name:\tx\n"), None);
        assert_eq!(namespace_pid_from_status("NSpid:\tmany\n"), None);
        let own = std::process::id();
        assert_eq!(namespace_pid(Path::new("/proc"), own), Some(own));
    }

    #[test]
    fn the_call_site_skips_libc_the_jvm_stubs_and_the_jdk() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let jvm = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so";
        let frames = [
            frame(FrameKind::Native, Some("__connect"), Some(libc)),
            frame(FrameKind::Native, Some("Java_sun_nio_ch_Net_connect0"), Some(jvm)),
            frame(FrameKind::Jit, Some("StubRoutines (1)"), Some("[anon]")),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
            frame(
                FrameKind::Jit,
                Some("void sun.nio.ch.NioSocketImpl.connect(java.net.SocketAddress, int)"),
                Some("[anon]"),
            ),
            frame(
                FrameKind::Jit,
                Some("java.net.Socket org.apache.http.conn.socket.PlainConnectionSocketFactory.connectSocket(int)"),
                Some("[anon]"),
            ),
            frame(FrameKind::Jit, Some("Interpreter"), Some("[anon]")),
            frame(
                FrameKind::Jit,
                Some("java.lang.String com.acme.Fetcher.fetch(java.lang.String)"),
                Some("[anon]"),
            ),
        ];
        let site = Symbolizer::call_site(&frames).expect("the program's method");
        assert_eq!(
            site.symbol.as_deref(),
            Some("java.lang.String com.acme.Fetcher.fetch(java.lang.String)")
        );
        // Without the program's frame, the library's is the best there is.
        let site = Symbolizer::call_site(&frames[..7]).expect("the library's method");
        assert!(site
            .symbol
            .as_deref()
            .is_some_and(|s| s.contains("PlainConnectionSocketFactory")));
        // Only the runtime: nothing to name.
        assert_eq!(Symbolizer::call_site(&frames[..5]), None);
        assert_eq!(Symbolizer::call_site(&[]), None);
    }

    #[test]
    fn the_call_site_of_native_code_is_the_first_frame_outside_libc() {
        let frames = [
            frame(
                FrameKind::Native,
                Some("connect"),
                Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ),
            frame(
                FrameKind::Native,
                Some("open_leaky"),
                Some("/opt/app/bin/app"),
            ),
            frame(FrameKind::Native, Some("main"), Some("/opt/app/bin/app")),
        ];
        assert_eq!(
            Symbolizer::call_site(&frames).and_then(|f| f.symbol),
            Some("open_leaky".to_string())
        );
    }

    #[test]
    fn a_node_perf_map_names_the_program_with_its_file_and_line_and_v8_as_runtime() {
        const NODE_MAP: &str = include_str!("../../tests/fixtures/perfmap/node20-leaky.map");
        let map = PerfMap::parse(NODE_MAP.as_bytes()).expect("in memory");
        assert_eq!(map.skipped, 0);
        assert_eq!(map.entries().len(), NODE_MAP.lines().count());
        let find = |needle: &str| {
            map.entries()
                .iter()
                .find(|e| e.name.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in the fixture"))
        };
        let jit = |e: &PerfMapEntry| {
            let (file, line) = jit_location(&e.name);
            Frame {
                addr: e.start,
                kind: FrameKind::Jit,
                symbol: Some(e.name.clone()),
                file,
                line,
                module: Some("[anon]".to_string()),
            }
        };
        let frames = [
            jit(find("Builtin:")),
            jit(find("BytecodeHandler:")),
            jit(find("JS:~protoGetter node:net:")),
            jit(find("JS:~fetchLeaky ")),
        ];
        assert_eq!(frames[2].file.as_deref(), Some("node:net"));
        let site = Symbolizer::call_site(&frames).expect("the program's function");
        assert!(site
            .symbol
            .as_deref()
            .is_some_and(|s| s.contains("fetchLeaky")));
        assert!(
            site.file
                .as_deref()
                .is_some_and(|f| f.ends_with("/leaky.js")),
            "{site:?}"
        );
        // fetchLeaky is on line 2 of tests/fixtures/perfmap/node20-leaky.js.
        assert_eq!(site.line, Some(2));
        assert_eq!(Symbolizer::call_site(&frames[..3]), None);
        assert_eq!(jit_location("Builtin:ArrayPrototypePush"), (None, None));
        assert_eq!(jit_location("JS:~ no-line-here"), (None, None));
        assert_eq!(jit_location("JS:*f /a.js:x:1"), (None, None));
    }

    #[test]
    fn node_and_python_perf_map_names_are_told_apart() {
        assert_eq!(
            jit_origin("JS:*fetchAll /srv/app/client.js:12:3"),
            Origin::Program
        );
        assert_eq!(
            jit_origin("LazyCompile:~connect node:net:1012:17"),
            Origin::Runtime
        );
        assert_eq!(
            jit_origin("Builtin:CallFunction_ReceiverIsAny"),
            Origin::Runtime
        );
        assert_eq!(jit_origin("BytecodeHandler:Star0"), Origin::Runtime);
        assert_eq!(jit_origin("py::fetch:/srv/app/fetch.py"), Origin::Program);
        assert_eq!(
            jit_origin("py::create_connection:/usr/lib/python3.12/socket.py"),
            Origin::Runtime
        );
        assert_eq!(jit_origin("Interpreter"), Origin::Runtime);
        assert_eq!(jit_origin("I2C/C2I adapters"), Origin::Runtime);
    }

    #[test]
    fn hints_say_what_to_enable_and_nothing_when_the_program_resolved() {
        // This test process has no perf map, and is not Java, Node nor Python.
        let pid = std::process::id();
        let own = [frame(
            FrameKind::Native,
            Some("main"),
            Some("/opt/app/bin/app"),
        )];
        assert_eq!(Symbolizer::hint(pid, &own), None);

        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let short = [
            frame(FrameKind::Native, Some("connect"), Some(libc)),
            frame(FrameKind::Native, Some("__libc_start_main"), Some(libc)),
        ];
        let hint = Symbolizer::hint(pid, &short).expect("a hint");
        assert!(hint.contains("frame pointers"), "{hint}");
        assert!(hint.contains("after 2 frames"), "{hint}");

        let stripped = [
            frame(FrameKind::Native, Some("connect"), Some(libc)),
            frame(FrameKind::Unresolved, None, Some("/opt/app/bin/app")),
            frame(FrameKind::Unresolved, None, Some("/opt/app/bin/app")),
        ];
        let hint = Symbolizer::hint(pid, &stripped).expect("a hint");
        assert!(
            hint.contains("/opt/app/bin/app has no symbol table"),
            "{hint}"
        );
        assert!(hint.contains("-dbgsym"), "{hint}");

        let jvm = "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so";
        let java = [
            frame(FrameKind::Native, Some("connect"), Some(libc)),
            frame(FrameKind::Native, Some("JVM_Connect"), Some(jvm)),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
        ];
        let hint = Symbolizer::hint(pid, &java).expect("a hint");
        assert!(hint.contains("-XX:+PreserveFramePointer"), "{hint}");
        assert!(
            hint.contains(&format!("jcmd {pid} Compiler.perfmap")),
            "{hint}"
        );

        let node = [
            frame(
                FrameKind::Native,
                Some("uv__connect"),
                Some("/usr/bin/node"),
            ),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
        ];
        let hint = Symbolizer::hint(pid, &node).expect("a hint");
        assert!(
            hint.contains("--perf-basic-prof --interpreted-frames-native-stack"),
            "{hint}"
        );

        let python = [
            frame(
                FrameKind::Native,
                Some("sock_connect"),
                Some("/usr/bin/python3.11"),
            ),
            frame(
                FrameKind::Native,
                Some("_PyEval_EvalFrameDefault"),
                Some("/usr/bin/python3.11"),
            ),
            frame(
                FrameKind::Native,
                Some("_PyEval_EvalFrameDefault"),
                Some("/usr/bin/python3.11"),
            ),
        ];
        let hint = Symbolizer::hint(pid, &python).expect("a hint");
        assert!(hint.contains("-X perf"), "{hint}");

        let jit = [
            frame(FrameKind::Native, Some("connect"), Some(libc)),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
            frame(FrameKind::Unresolved, None, Some("[anon]")),
        ];
        let hint = Symbolizer::hint(pid, &jit).expect("a hint");
        assert!(hint.contains("no perf map"), "{hint}");
    }

    #[test]
    fn a_process_that_is_gone_gives_unresolved_frames_without_panicking() {
        let mut s = Symbolizer::new();
        // Pid 0 is never a process visible in /proc.
        let frames = s.symbolize(0, &[0x1000, 0, u64::MAX]);
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.kind == FrameKind::Unresolved));
        assert_eq!(frames[1].addr, 0);
        assert_eq!(frames[2].addr, u64::MAX);
        assert!(s.symbolize(0, &[]).is_empty());
    }

    #[test]
    fn this_test_binary_resolves_its_own_function() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        let addr = this_test_binary_resolves_its_own_function as *const () as usize as u64;
        let frames = s.symbolize_exact(pid, &[addr]);
        assert_eq!(frames[0].kind, FrameKind::Native, "{frames:?}");
        let name = frames[0].symbol.as_deref().unwrap_or("");
        assert!(
            name.contains("this_test_binary_resolves_its_own_function"),
            "{name}"
        );
        // As a return address one byte in: still the same function.
        let frames = s.symbolize(pid, &[addr + 1]);
        assert!(frames[0]
            .symbol
            .as_deref()
            .is_some_and(|n| n.contains("this_test_binary_resolves_its_own_function")));
    }

    #[test]
    fn the_cache_is_bounded() {
        // Threads are processes enough for /proc/TID: each tid a pid of its own here.
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
        let n = MAX_PROCESSES + 8;
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (tx, stop_rx) = (tx.clone(), std::sync::Arc::clone(&stop_rx));
                std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() } as u32;
                    let _ = tx.send(tid);
                    // Wait until told (or the sender is dropped).
                    let _ = stop_rx.lock().map(|r| r.recv());
                })
            })
            .collect();
        let tids: Vec<u32> = (0..n).map(|_| rx.recv().expect("a tid")).collect();
        let mut s = Symbolizer::new();
        let addr = the_cache_is_bounded as *const () as usize as u64;
        for &tid in &tids {
            let frames = s.symbolize_exact(tid, &[addr]);
            assert_eq!(frames[0].kind, FrameKind::Native, "tid {tid}: {frames:?}");
            assert!(s.processes.len() <= MAX_PROCESSES);
        }
        assert_eq!(s.processes.len(), MAX_PROCESSES);
        // The oldest went first.
        assert!(!s.processes.contains_key(&tids[0]));
        assert!(s.processes.contains_key(&tids[n - 1]));
        // A pid that is not running takes no slot.
        s.symbolize(0, &[addr]);
        assert!(!s.processes.contains_key(&0));
        drop(stop_tx);
        for t in threads {
            t.join().expect("thread");
        }
    }

    #[test]
    fn runtime_modules_are_told_from_programs_named_alike() {
        for runtime in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc-2.31.so",
            "/usr/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/jvm/java-17-openjdk-amd64/lib/libnio.so",
            "/opt/jdk-21/lib/server/libjvm.so",
            "/usr/bin/node",
            "/usr/lib/x86_64-linux-gnu/libuv.so.1",
            "/usr/bin/python3.11",
            "/usr/bin/python3",
            "[vdso]",
        ] {
            assert!(is_runtime_module(runtime), "{runtime}");
        }
        for program in [
            "/usr/bin/node_exporter",
            "/opt/app/pythonista",
            "/usr/local/bin/ld-helper",
            "/srv/app/server",
        ] {
            assert!(!is_runtime_module(program), "{program}");
            assert!(!is_library_module(program), "{program}");
        }
        let curl = "/usr/lib/x86_64-linux-gnu/libcurl.so.4";
        assert!(!is_runtime_module(curl) && is_library_module(curl));
        // A program's connect through libcurl is the program's.
        let frames = [
            frame(
                FrameKind::Native,
                Some("connect"),
                Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ),
            frame(FrameKind::Native, Some("Curl_connecthost"), Some(curl)),
            frame(
                FrameKind::Native,
                Some("fetch_feed"),
                Some("/srv/app/server"),
            ),
        ];
        let site = Symbolizer::call_site(&frames).and_then(|f| f.symbol);
        assert_eq!(site.as_deref(), Some("fetch_feed"));
        assert_eq!(
            Symbolizer::call_site(&frames[..2])
                .and_then(|f| f.symbol)
                .as_deref(),
            Some("Curl_connecthost")
        );
    }
}
