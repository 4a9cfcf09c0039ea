//! The long-running commands, `watch`, `serve` and `trace`: loops that take samples from
//! [`cmd`](crate::cmd) and hand them to [`render`](crate::render). They sit on top of
//! both, so that `cmd` (data) and `render` (bytes) never import each other.

mod http;
pub mod serve;
pub mod trace;
mod tty;
pub mod watch;

/// Gives the allocator's free pages back to the kernel; called after each collection
/// of the long-running samplers. glibc keeps what a thread's arena once held (the peak
/// of a busy sample) until the top of the arena is free, so without this the resident
/// size of `serve` or `watch` climbs in steps with every new peak and never comes down.
/// `malloc_trim` also releases free pages in the middle of each arena (glibc 2.8 and
/// later). A few milliseconds at most, once per sample.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free
    // lists under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
