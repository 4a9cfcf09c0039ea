//! Everything that touches the OS, and nothing else: sock_diag dumps, /proc reads,
//! sysctls. Collectors never print and never fail a run for partial data; they return
//! what they could read plus [`Notice`](crate::model::Notice)s saying what is missing.

pub mod cgroup;
pub mod kmsg;
pub mod limits_source;
pub mod netlink;
pub mod netns;
pub mod nginx;
pub mod procfs;
pub mod sockets;
pub mod sysctl;
pub mod sysctl_files;
