//! Everything that touches the OS, and nothing else: sock_diag dumps, /proc reads,
//! sysctls. Collectors never print and never fail a run for partial data; they return
//! what they could read plus [`Notice`](crate::model::Notice)s saying what is missing.
//!
//! [`host`] assembles a whole [`HostSnapshot`](crate::model::HostSnapshot) from the
//! namespaces a command chose; [`namespace`] is what is read inside one of them.

pub mod bounded;
pub mod btf;
pub mod cgroup;
pub mod flows;
pub mod host;
pub mod import;
pub mod kmsg;
pub mod limits_source;
pub mod namespace;
pub mod netlink;
pub mod netns;
pub mod nginx;
pub mod owners;
pub mod procfs;
pub mod provenance;
pub mod replay;
pub mod snapshot;
pub mod sockets;
pub mod symbolize;
pub mod sysctl;
pub mod sysctl_files;
pub mod trace;
