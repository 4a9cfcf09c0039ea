//! Reads of `/proc/sys`: the TCP, core, fs and conntrack knobs the doctor reasons about.
//! A key that does not exist (removed in this kernel, module not loaded, not in this
//! network namespace) is simply absent from the result. Which keys: `model::PER_NETNS_SYSCTLS`
//! (read in each namespace) and `model::HOST_WIDE_SYSCTLS` (read once).

use std::collections::BTreeMap;
use std::path::Path;

use super::bounded;
use crate::model::text;

/// Reads `keys` below `proc_root/sys`. Values have their whitespace collapsed to single
/// spaces (`ip_local_port_range` is tab-separated in the kernel).
pub fn read(proc_root: &Path, keys: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for key in keys {
        let path = proc_root.join("sys").join(key.replace('.', "/"));
        if let Ok(raw) = bounded::read_to_string(&path, bounded::SMALL) {
            let v = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            out.insert((*key).to_string(), v);
        }
    }
    out
}

/// The host's name (`kernel.hostname`); empty when unreadable.
pub fn hostname(proc_root: &Path) -> String {
    bounded::read_prefix(&proc_root.join("sys/kernel/hostname"), 4096)
        .map(|b| text::name(b.trim_ascii(), text::NAME_MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fixture_tree_and_skips_missing() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc/netns_mixed");
        let keys: Vec<&str> = crate::model::PER_NETNS_SYSCTLS
            .iter()
            .chain(crate::model::HOST_WIDE_SYSCTLS)
            .copied()
            .collect();
        let m = read(&root, &keys);
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
