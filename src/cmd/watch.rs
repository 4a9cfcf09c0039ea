//! `tcpdoctor watch` (being written).

use crate::settings::{Common, WatchSettings};

pub fn run(
    _common: &Common,
    _s: &WatchSettings,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("tcpdoctor watch is not built yet".into())
}
