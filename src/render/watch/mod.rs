//! `tcpdoctor watch`'s screen: the app state ([`WatchApp`], fed samples and keys, no
//! terminal I/O) and the pure [`draw`] of it into a ratatui frame. The terminal, the
//! event loop and sampling live in `cmd::watch`.

mod app;
mod draw;
mod json;

pub use app::{
    ChurnRow, Key, Overlay, PortRow, ProcessRow, SortKey, TimeWaitRow, View, WatchApp, WatchConfig,
    HISTORY, RATES,
};
pub use draw::{draw, sparkline};
pub use json::write_sample_line;
