//! `tcpdoctor serve` (being written).

use crate::settings::{Common, ServeSettings};

pub fn run(
    _common: &Common,
    _s: &ServeSettings,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("tcpdoctor serve is not built yet".into())
}
