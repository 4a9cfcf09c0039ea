//! Leak provenance: where in a program a socket was opened (issue 13).
//!
//! The tracer records, for each connection opened by connect() or accept(), who opened
//! it and the user-space stack at that moment ([`Origin`], stack stored once by id);
//! user space turns the addresses into [`Frame`]s (collect::symbolize) and groups the
//! leaked sockets by call site ([`CallSiteGroup`]). Plain data only.

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// The stack, innermost first; empty when no stack was taken.
    pub frames: Vec<Frame>,
    /// The frame that names the call site: the innermost one in the program's own
    /// code (not libc, the JVM or the runtime); `None` when no frame resolved.
    pub call_site: Option<Frame>,
    /// Thread names, digits folded to `*` (`pool-3-thread-*`), most sockets first.
    pub threads: Vec<String>,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    /// What to enable when frames could not be resolved (frame pointers, symbols, a
    /// perf map); `None` when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
