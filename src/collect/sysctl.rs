//! Reads of `/proc/sys`: the TCP, core, fs and conntrack knobs the doctor reasons about.
//! A key that does not exist (removed in this kernel, module not loaded, not in this
//! network namespace) is simply absent from the result.

use std::collections::BTreeMap;
use std::path::Path;

/// Every sysctl the doctor reads, dotted as `sysctl(8)` spells them.
pub const KEYS: &[&str] = &[
    "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_linear_timeouts",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rfc1337",
    "net.ipv4.tcp_ehash_entries",
    "net.ipv4.tcp_mem",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_autobind_reuse",
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "fs.file-max",
    "fs.file-nr",
    "fs.nr_open",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
];

/// Reads `keys` below `proc_root/sys`. Values have their whitespace collapsed to single
/// spaces (`ip_local_port_range` is tab-separated in the kernel).
pub fn read(proc_root: &Path, keys: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for key in keys {
        let path = proc_root.join("sys").join(key.replace('.', "/"));
        if let Ok(raw) = std::fs::read_to_string(&path) {
            let v = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            out.insert((*key).to_string(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fixture_tree_and_skips_missing() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/netns_mixed");
        let m = read(&root, KEYS);
        assert_eq!(
            m.get("net.ipv4.ip_local_port_range").map(String::as_str),
            Some("32768 60999")
        );
        assert_eq!(
            m.get("net.ipv4.tcp_fin_timeout").map(String::as_str),
            Some("60")
        );
        assert_eq!(
            m.get("net.core.somaxconn").map(String::as_str),
            Some("4096")
        );
        // Host-wide knob, absent inside a network namespace.
        assert!(!m.contains_key("net.ipv4.tcp_max_orphans"));
        assert!(!m.contains_key("net.ipv4.tcp_tw_recycle"));
    }
}
