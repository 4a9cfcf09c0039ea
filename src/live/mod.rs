//! The long-running commands, `watch`, `serve` and `trace`: loops that take samples from
//! [`cmd`](crate::cmd) and hand them to [`render`](crate::render). They sit on top of
//! both, so that `cmd` (data) and `render` (bytes) never import each other.

mod http;
pub mod serve;
pub mod trace;
mod tty;
pub mod watch;
