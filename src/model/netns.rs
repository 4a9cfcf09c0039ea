//! Network namespaces: which one a socket, count or finding belongs to, and what a human
//! calls it (its container or pod, its `ip netns` name, or its first process).

use serde::Serialize;

use super::Container;

/// Where a namespace's name came from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetnsKind {
    /// The initial network namespace (the one kernel threads live in): "host".
    Host,
    /// A container or pod, named from the cgroup of its processes.
    Container,
    /// A name under /run/netns (`ip netns add NAME`).
    IpNetns,
    /// Neither: named after its first process.
    Process,
    /// No process and no name (held open by a bind mount elsewhere).
    Unnamed,
}

/// One network namespace as the reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetnsInfo {
    /// Inode of the nsfs file (`net:[INODE]` in /proc/PID/ns/net): the namespace's id.
    pub inode: u64,
    /// Human name: "pod default/web (nginx)", "docker redis", "blue", "nginx[1234]".
    pub name: String,
    pub kind: NetnsKind,
    /// Whether tcpdoctor runs in this namespace.
    pub current: bool,
    /// Whether this is the initial network namespace, the host's own (where kernel
    /// threads live; global sysctls such as tcp_max_orphans exist only there). False
    /// also when that could not be told (not root, and tcpdoctor runs elsewhere).
    pub initial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Names under /run/netns that refer to it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_netns: Vec<String>,
    /// Processes whose /proc/PID/ns/net is this namespace (0 for one held by a mount).
    pub processes: u64,
    /// The lowest such pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_pid: Option<u32>,
}

impl NetnsInfo {
    pub fn to_ref(&self) -> NetnsRef {
        NetnsRef {
            inode: self.inode,
            name: self.name.clone(),
        }
    }
}

/// The namespace a finding or row is about, as carried on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NetnsRef {
    pub inode: u64,
    pub name: String,
}

/// Picks the human name of a namespace from what is known about it: "host" for the
/// initial namespace, else its container or pod, its `ip netns` name, its first process.
/// Whether tcpdoctor runs in it plays no part: `ip netns exec blue tcpdoctor` calls
/// its namespace "blue", not "host".
pub fn name_namespace(
    initial: bool,
    container: Option<&Container>,
    ip_netns: &[String],
    first_process: Option<(&str, u32)>,
) -> (String, NetnsKind) {
    if initial {
        return ("host".to_string(), NetnsKind::Host);
    }
    if let Some(c) = container {
        return (c.display(), NetnsKind::Container);
    }
    if let Some(n) = ip_netns.first() {
        return (n.clone(), NetnsKind::IpNetns);
    }
    match first_process {
        Some((comm, pid)) if !comm.is_empty() => (format!("{comm}[{pid}]"), NetnsKind::Process),
        Some((_, pid)) => (format!("pid {pid}"), NetnsKind::Process),
        None => ("(unnamed)".to_string(), NetnsKind::Unnamed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefer_host_then_ip_netns_then_process() {
        let n = |initial, ip: &[String], p| name_namespace(initial, None, ip, p);
        assert_eq!(
            n(true, &[], Some(("systemd", 1))),
            ("host".to_string(), NetnsKind::Host)
        );
        let blue = vec!["blue".to_string()];
        assert_eq!(
            n(true, &blue, Some(("systemd", 1))).0,
            "host",
            "initial wins"
        );
        assert_eq!(
            n(false, &blue, Some(("nginx", 40))),
            ("blue".to_string(), NetnsKind::IpNetns)
        );
        assert_eq!(
            n(false, &[], Some(("nginx", 40))),
            ("nginx[40]".to_string(), NetnsKind::Process)
        );
        assert_eq!(n(false, &[], Some(("", 40))).0, "pid 40");
        assert_eq!(n(false, &[], None).1, NetnsKind::Unnamed);
    }
}
