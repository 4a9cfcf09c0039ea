//! Imports text people already have (stub).

use std::path::PathBuf;

use super::snapshot::{FromError, Recorded};
use crate::model::{Notice, NoticeCode};

pub fn open(paths: &[PathBuf]) -> Result<Recorded, FromError> {
    Err(FromError::Import {
        what: format!("{paths:?}"),
        why: "not yet".into(),
    })
}

/// The notice for a recording without socket owners.
pub fn no_owners_notice(origin: &str) -> Notice {
    Notice::new(
        NoticeCode::ReplayMissing,
        format!("{origin} holds no socket owners (ss -p, netstat -p): sockets are not named after processes"),
    )
}
