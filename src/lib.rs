//! tcpdoctor: find, explain and fix TCP connection-state problems on Linux.
//!
//! Data flows one way: `collect` (OS access only) -> `model` (plain data) ->
//! `analyze` (pure rules) -> `render` (bytes for a terminal, JSON, metrics).

pub mod analyze;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod live;
pub mod manual;
pub mod model;
pub mod render;
pub mod settings;
