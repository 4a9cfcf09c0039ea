//! `/proc/PID/status`: the fields tcpdoctor needs (capabilities, `NSpid`), parsed from
//! bytes. Pure functions; callers read the file.

/// Capability bits (include/uapi/linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The value of the line `key` of a status file, trimmed.
pub fn field<'a>(status: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(b":"))?;
    std::str::from_utf8(line).ok().map(str::trim)
}

/// The effective capability set (`CapEff:`, hexadecimal); `None` when the line is
/// missing or malformed.
pub fn effective_caps(status: &[u8]) -> Option<u64> {
    u64::from_str_radix(field(status, b"CapEff")?, 16).ok()
}

/// Whether the effective set holds `cap`; false when it cannot be told.
pub fn has_cap(status: &[u8], cap: u32) -> bool {
    effective_caps(status).is_some_and(|caps| caps & (1u64 << cap) != 0)
}

/// The numbers of the `NSpid:` line (Linux 4.1+): the pid in each pid namespace from
/// the one /proc was mounted for down to the process's own.
pub fn nspid(status: &[u8]) -> Option<Vec<u32>> {
    field(status, b"NSpid")?
        .split_ascii_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_line_is_read() {
        let status = b"Name:\tsh\nTgid:\t7\nNSpid:\t8302\t1\nNSsid:\t1\n";
        assert_eq!(nspid(status), Some(vec![8302, 1]));
        assert_eq!(nspid(b"NSpid:\t42\n"), Some(vec![42]));
        assert_eq!(nspid(b"NSpid:\t4x\n"), None);
        assert_eq!(nspid(b"Name:\tsh\n"), None);
    }

    #[test]
    fn capabilities_are_read_from_capeff() {
        let caps = |v: &str| format!("Name:\tx\nCapEff:\t{v}\n").into_bytes();
        assert!(has_cap(&caps("000001ffffffffff"), CAP_SYS_ADMIN));
        assert!(has_cap(&caps("0000000000200000"), CAP_SYS_ADMIN));
        assert!(!has_cap(&caps("0000000000000000"), CAP_SYS_ADMIN));
        assert!(has_cap(&caps("000000c000000000"), CAP_BPF));
        assert!(!has_cap(&caps("zz"), CAP_SYS_ADMIN), "malformed: no");
        assert_eq!(effective_caps(b"Name:\tx\n"), None);
    }
}
