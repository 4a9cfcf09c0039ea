//! What sockfarm reads from and (only when asked) writes to the current network
//! namespace: sysctls, /proc/net/sockstat and the TcpExt counters that tell
//! whether the kernel silently dropped or recycled something during the build.

use std::collections::HashMap;
use std::fs;

use crate::plan::{HostLimits, Request};
use crate::sys::{fail, FarmError, Result};

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const MAX_TW_BUCKETS: &str = "/proc/sys/net/ipv4/tcp_max_tw_buckets";
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
const RFC1337: &str = "/proc/sys/net/ipv4/tcp_rfc1337";
/// The range --widen-port-range sets: keeps 1-1023 and 65001-65535 free, and
/// uses different parities at both ends as ip-sysctl.rst asks.
const WIDE_PORT_RANGE: &str = "1024 65000";

/// TcpExt counters that must not move while the farm is built: each one means a
/// socket the farm counted was dropped, recycled or never created.
const GUARD_COUNTERS: [(&str, &str); 6] = [
    ("TWRecycled", "a connect() took over the 4-tuple of a TIME_WAIT socket (tcp_tw_reuse); pass --exact-time-wait and run in a fresh netns"),
    ("TCPTimeWaitOverflow", "tcp_max_tw_buckets was reached; pass --max-tw-buckets"),
    ("ListenOverflows", "an accept queue overflowed"),
    ("ListenDrops", "a listener dropped a connection"),
    ("TCPReqQFullDrop", "a SYN queue was full"),
    ("TCPReqQFullDoCookies", "a SYN queue was full (syncookies sent)"),
];

fn read_trimmed(path: &str) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| FarmError(format!("read {path}: {e}")))
}

fn read_number(path: &str) -> Result<u64> {
    let text = read_trimmed(path)?;
    text.parse()
        .map_err(|_| FarmError(format!("{path}: expected a number, found \"{text}\"")))
}

/// Identity of this process's network namespace, e.g. "net:[4026532290]".
pub fn netns_id() -> Result<String> {
    fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| FarmError(format!("readlink /proc/self/ns/net: {e}")))
}

/// Inode of the initial network namespace on kernels that fix it
/// (PROC_NET_INIT_INO = 0xEFFFFFF9 in include/linux/proc_ns.h, 6.18 and later;
/// older kernels number init_net like any other namespace).
const PROC_NET_INIT_INO: u64 = 0xEFFF_FFF9;

/// The initial network namespace's identity, from the first source that works:
/// pid 1's namespace; kthreadd's (kernel threads always live in init_net; pid 1
/// may be unreadable in a sandbox); the fixed inode on kernels >= 6.18.
fn initial_netns_id() -> std::result::Result<String, String> {
    let mut tried = Vec::new();
    match fs::read_link("/proc/1/ns/net") {
        Ok(p) => return Ok(p.to_string_lossy().into_owned()),
        Err(e) => tried.push(format!("/proc/1/ns/net: {e}")),
    }
    let kthreadd = fs::read_to_string("/proc/2/comm").map(|c| c.trim() == "kthreadd");
    if let Ok(true) = kthreadd {
        match fs::read_link("/proc/2/ns/net") {
            Ok(p) => return Ok(p.to_string_lossy().into_owned()),
            Err(e) => tried.push(format!("/proc/2/ns/net: {e}")),
        }
    } else {
        tried.push("pid 2 is not kthreadd".to_string());
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version >= (6, 18) {
        return Ok(format!("net:[{PROC_NET_INIT_INO}]"));
    }
    tried.push(format!(
        "kernel {} predates the fixed init_net inode",
        release.trim()
    ));
    Err(tried.join("; "))
}

/// Refuses unless this process runs in a network namespace other than the
/// initial one, so sysctl writes can never reach the host's namespace.
fn require_private_netns(flag: &str) -> Result<()> {
    let own = netns_id()?;
    let init = initial_netns_id().map_err(|why| {
        FarmError(format!(
            "{flag}: cannot tell whether this is the initial network namespace ({why}); refusing to change sysctls"
        ))
    })?;
    if own == init {
        return fail(format!(
            "{flag} changes a sysctl and is allowed only inside a throwaway network namespace (run under `ip netns exec NAME` or `unshare -n`); this process is in the initial one ({own})"
        ));
    }
    Ok(())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    fs::write(path, format!("{value}\n"))
        .map_err(|e| FarmError(format!("write \"{value}\" to {path}: {e}")))
}

/// Applies --widen-port-range and --max-tw-buckets (after the netns check).
pub fn apply_sysctls(request: &Request) -> Result<()> {
    if request.widen_port_range {
        require_private_netns("--widen-port-range")?;
        write_sysctl(PORT_RANGE, WIDE_PORT_RANGE)?;
    }
    if let Some(n) = request.max_tw_buckets {
        require_private_netns("--max-tw-buckets")?;
        write_sysctl(MAX_TW_BUCKETS, &n.to_string())?;
    }
    if request.exact_time_wait {
        require_private_netns("--exact-time-wait")?;
        write_sysctl(TW_REUSE, "0")?;
        write_sysctl(RFC1337, "1")?;
    }
    Ok(())
}

/// Reads the limits the plan is checked against.
pub fn read_limits(nofile: u64) -> Result<HostLimits> {
    let range = read_trimmed(PORT_RANGE)?;
    let mut parts = range.split_whitespace().map(str::parse::<u32>);
    let port_range = match (parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => (lo, hi),
        _ => return fail(format!("{PORT_RANGE}: cannot parse \"{range}\"")),
    };
    let somaxconn = u32::try_from(read_number(SOMAXCONN)?).unwrap_or(u32::MAX);
    Ok(HostLimits {
        nofile,
        port_range,
        somaxconn,
        max_tw_buckets: read_number(MAX_TW_BUCKETS)?,
        tw_in_use: sockstat_tw()?,
        tw_reuse: read_number(TW_REUSE)?,
    })
}

/// The `tw` field of /proc/net/sockstat: TIME_WAIT plus FIN_WAIT2 minisockets in
/// this netns.
pub fn sockstat_tw() -> Result<u64> {
    let text = fs::read_to_string("/proc/net/sockstat")
        .map_err(|e| FarmError(format!("read /proc/net/sockstat: {e}")))?;
    parse_sockstat_tw(&text)
        .ok_or_else(|| FarmError("/proc/net/sockstat: no \"TCP: ... tw N\" field".into()))
}

fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| *f == "tw")?;
    fields.get(at + 1)?.parse().ok()
}

/// The guard counters from /proc/net/netstat (TcpExt), by name.
pub fn guard_counters() -> Result<HashMap<&'static str, u64>> {
    let text = fs::read_to_string("/proc/net/netstat")
        .map_err(|e| FarmError(format!("read /proc/net/netstat: {e}")))?;
    let all = parse_tcpext(&text);
    Ok(GUARD_COUNTERS
        .iter()
        .map(|(name, _)| (*name, all.get(*name).copied().unwrap_or(0)))
        .collect())
}

/// /proc/net/netstat holds pairs of lines: "TcpExt: Name1 Name2 ..." then
/// "TcpExt: 1 2 ...".
fn parse_tcpext(text: &str) -> HashMap<String, u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let mut out = HashMap::new();
    if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if let Ok(v) = v.parse() {
                out.insert(n.to_string(), v);
            }
        }
    }
    out
}

/// Fails if any guard counter rose between the two readings.
/// `overflow_expected`: --overflow makes listener drops on purpose.
pub fn check_counters(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
    overflow_expected: bool,
) -> Result<()> {
    for (name, meaning) in GUARD_COUNTERS {
        if overflow_expected && name.starts_with("Listen") {
            continue;
        }
        let (b, a) = (
            before.get(name).copied().unwrap_or(0),
            after.get(name).copied().unwrap_or(0),
        );
        if a > b {
            return fail(format!(
                "TcpExt {name} rose by {} while the farm was built: {meaning}; the counts would not be exact",
                a - b
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_tw_is_found() {
        let text =
            "sockets: used 5\nTCP: inuse 3 orphan 0 tw 17 alloc 4 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), Some(17));
    }

    #[test]
    fn tcpext_pairs_names_with_values() {
        let text = "TcpExt: SyncookiesSent TWRecycled\nTcpExt: 0 5\nIpExt: InNoRoutes\nIpExt: 1\n";
        let m = parse_tcpext(text);
        assert_eq!(m.get("TWRecycled"), Some(&5));
        assert_eq!(m.get("InNoRoutes"), None);
    }
}
