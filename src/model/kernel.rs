//! Kernel facts and the numbers derived from them, in one place: the ephemeral port
//! range and what connect() may use of it, how long TIME_WAIT lasts, when a TIME_WAIT
//! port may be reused, the defaults of the sysctls tcpdoctor judges. Rules, metrics,
//! `watch` and snapshots all call these; none recomputes them.
//!
//! Sources: kernel-facts.md in the team's knowledge base, checked against the kernel
//! (file and function named at each item).

use std::net::IpAddr;

use serde::Serialize;

/// How long a TIME_WAIT entry lives on upstream Linux: `TCP_TIMEWAIT_LEN` (60 * HZ) in
/// include/net/tcp.h; no upstream sysctl changes it.
pub const TIME_WAIT_LEN_S: u64 = 60;

/// The vendor sysctl some kernels add to set the TIME_WAIT length (Alibaba Cloud Linux
/// 2 and 3: 1-600 s, default 60). Absent upstream.
pub const VENDOR_TIME_WAIT_SYSCTL: &str = "net.ipv4.tcp_tw_timeout";

/// The per-namespace sysctl (6.14+, commits 19ce8cd30465 and ca6a6f93867a) that sets how
/// many milliseconds a TIME_WAIT entry must have lived before connect() may take its port
/// over; default [`defaults::TW_REUSE_DELAY_MS`]. Older kernels have no such sysctl: they
/// reuse once the whole-second clock has passed the peer's last timestamp, which is at
/// most about a second.
pub const TW_REUSE_DELAY_SYSCTL: &str = "net.ipv4.tcp_tw_reuse_delay";

/// Kernel defaults of the sysctls tcpdoctor judges (ip-sysctl.rst; live 6.18 values).
pub mod defaults {
    /// `tcp_fin_timeout`: orphaned FIN_WAIT2 lifetime, seconds.
    pub const FIN_TIMEOUT_S: i64 = 60;
    /// `tcp_keepalive_time`, seconds (intvl 75, probes 9).
    pub const KEEPALIVE_TIME_S: i64 = 7200;
    /// `tcp_syn_retries`.
    pub const SYN_RETRIES: i64 = 6;
    /// `tcp_synack_retries`.
    pub const SYNACK_RETRIES: i64 = 5;
    /// `net.core.somaxconn` since 5.4 (128 before).
    pub const SOMAXCONN: i64 = 4096;
    /// `tcp_tw_reuse`: 2, loopback only, since 4.18.
    pub const TW_REUSE: i64 = 2;
    /// `tcp_tw_reuse_delay` (6.14+), milliseconds since entering TIME_WAIT.
    pub const TW_REUSE_DELAY_MS: u64 = 1000;
    /// `tcp_syncookies`.
    pub const SYNCOOKIES: i64 = 1;
}

/// `ip_local_port_range`: the ports connect() and bind(0) pick local ports from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// The kernel's default since 4.2 (commit 07f4c90062f8): 28,232 ports.
    pub const KERNEL_DEFAULT: PortRange = PortRange {
        low: 32768,
        high: 60999,
    };

    /// Parses the sysctl's value ("32768 60999"); `None` for anything else.
    pub fn parse(v: &str) -> Option<PortRange> {
        let mut it = v.split_whitespace().map(|p| p.parse::<u16>());
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Some(PortRange { low, high }),
            _ => None,
        }
    }

    /// Ports in the range, both ends included.
    pub fn len(&self) -> u64 {
        u64::from(self.high) - u64::from(self.low) + 1
    }

    /// Never true: a range holds at least one port. For clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }

    /// Start and end of different parity, as the kernel documentation asks: connect()
    /// and bind(0) prefer ports of opposite parity and compete less that way.
    pub fn parity_ok(&self) -> bool {
        self.low % 2 != self.high % 2
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// Parses `ip_local_reserved_ports` ("8080,9000-9010", possibly empty) into inclusive
/// ranges. Malformed parts are ignored.
pub fn parse_port_list(s: &str) -> Vec<(u16, u16)> {
    s.split(',')
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                    (a <= b).then_some((a, b))
                }
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

/// The local ports connect() may pick in one network namespace: its range minus its
/// reserved ports. Ports are unique per (source ip, destination ip, destination port),
/// so this is the budget of each destination, not of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EphemeralPorts {
    pub range: PortRange,
    /// False when the namespace's range could not be read and the kernel default is
    /// assumed.
    pub range_seen: bool,
    /// `ip_local_reserved_ports`, as inclusive ranges (may reach outside the range).
    pub reserved: Vec<(u16, u16)>,
}

impl Default for EphemeralPorts {
    fn default() -> Self {
        EphemeralPorts {
            range: PortRange::KERNEL_DEFAULT,
            range_seen: false,
            reserved: Vec::new(),
        }
    }
}

impl EphemeralPorts {
    /// From the two sysctls' values; an unreadable range means the kernel default.
    pub fn from_sysctls(range: Option<&str>, reserved: Option<&str>) -> EphemeralPorts {
        let seen = range.and_then(PortRange::parse);
        EphemeralPorts {
            range: seen.unwrap_or(PortRange::KERNEL_DEFAULT),
            range_seen: seen.is_some(),
            reserved: reserved.map(parse_port_list).unwrap_or_default(),
        }
    }

    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|(a, b)| (*a..=*b).contains(&port))
    }

    /// A port connect() may hand out: inside the range and not reserved.
    pub fn is_ephemeral(&self, port: u16) -> bool {
        self.range.contains(port) && !self.is_reserved(port)
    }

    /// Ports connect() may use towards one destination. Overlapping reserved ranges
    /// are counted once.
    pub fn usable(&self) -> u64 {
        self.range.len() - self.reserved_inside()
    }

    /// Reserved ports that fall inside the range.
    pub fn reserved_inside(&self) -> u64 {
        let (lo, hi) = (u32::from(self.range.low), u32::from(self.range.high));
        let mut clipped: Vec<(u32, u32)> = self
            .reserved
            .iter()
            .map(|(a, b)| (u32::from(*a).max(lo), u32::from(*b).min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        clipped.sort_unstable();
        let mut inside = 0u64;
        let mut covered_to: Option<u32> = None;
        for (a, b) in clipped {
            let start = match covered_to {
                Some(c) if c >= b => continue,
                Some(c) if c >= a => c + 1,
                _ => a,
            };
            inside += u64::from(b - start + 1);
            covered_to = Some(b);
        }
        inside
    }

    /// Ports still free towards a destination that holds `used` of them.
    pub fn headroom(&self, used: u64) -> u64 {
        self.usable().saturating_sub(used)
    }
}

/// Whether connect() may take over a local port held by a TIME_WAIT socket towards this
/// destination (`tcp_twsk_unique()`, called from `__inet_check_established()`):
/// `tcp_tw_reuse` 1 for every destination, 2 (the default) only for loopback traffic,
/// and in both cases only when the old connection carried TCP timestamps, so
/// `tcp_timestamps` must be on. An unreadable `tcp_tw_reuse` is not assumed on.
pub fn tw_reuse_applies(
    tw_reuse: Option<i64>,
    timestamps: Option<i64>,
    local: IpAddr,
    remote: IpAddr,
) -> bool {
    let loopback = is_loopback(local) || is_loopback(remote);
    timestamps != Some(0)
        && match tw_reuse {
            Some(1) => true,
            Some(2) => loopback,
            _ => false,
        }
}

/// How TIME_WAIT behaves in one network namespace: how long an entry lives, how old it
/// must be before connect() may take its port over, and the sysctls that decide whether
/// it may at all. Built from the namespace's sysctls ([`TimeWaitPolicy::from_sysctls`]);
/// the digest counts ages with it and the rules judge ports with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeWaitPolicy {
    /// Lifetime of a TIME_WAIT entry, milliseconds: [`TIME_WAIT_LEN_S`], or the vendor
    /// [`VENDOR_TIME_WAIT_SYSCTL`] where a kernel has it.
    pub len_ms: u64,
    /// Age a TIME_WAIT entry needs before connect() may reuse its port
    /// ([`TW_REUSE_DELAY_SYSCTL`], or about 1 s on kernels without it).
    pub reuse_delay_ms: u64,
    /// Whether `reuse_delay_ms` was read from the sysctl (6.14+) rather than assumed.
    pub reuse_delay_seen: bool,
    /// `tcp_tw_reuse`; `None` when not visible (then reuse is not assumed).
    pub tw_reuse: Option<i64>,
    /// `tcp_timestamps`; `None` when not visible.
    pub timestamps: Option<i64>,
}

impl Default for TimeWaitPolicy {
    /// Upstream lengths; nothing known about reuse, so it is not assumed.
    fn default() -> Self {
        TimeWaitPolicy {
            len_ms: TIME_WAIT_LEN_S * 1000,
            reuse_delay_ms: defaults::TW_REUSE_DELAY_MS,
            reuse_delay_seen: false,
            tw_reuse: None,
            timestamps: None,
        }
    }
}

impl TimeWaitPolicy {
    /// From a namespace's sysctls (dotted names, values as read). A vendor length or a
    /// reuse delay that is absent, not a number or not positive means the default.
    pub fn from_sysctls<'a>(get: impl Fn(&str) -> Option<&'a str>) -> TimeWaitPolicy {
        let int = |k: &str| get(k).and_then(|v| v.trim().parse::<i64>().ok());
        let positive = |k: &str| {
            int(k)
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0)
        };
        let delay = positive(TW_REUSE_DELAY_SYSCTL);
        TimeWaitPolicy {
            len_ms: positive(VENDOR_TIME_WAIT_SYSCTL).unwrap_or(TIME_WAIT_LEN_S) * 1000,
            reuse_delay_ms: delay.unwrap_or(defaults::TW_REUSE_DELAY_MS),
            reuse_delay_seen: delay.is_some(),
            tw_reuse: int("net.ipv4.tcp_tw_reuse"),
            timestamps: int("net.ipv4.tcp_timestamps"),
        }
    }

    /// TIME_WAIT length in whole seconds.
    pub fn len_s(&self) -> u64 {
        self.len_ms / 1000
    }

    /// Whether connect() may take over a TIME_WAIT port from `local` towards `remote`
    /// ([`tw_reuse_applies`]).
    pub fn reuse_applies(&self, local: IpAddr, remote: IpAddr) -> bool {
        tw_reuse_applies(self.tw_reuse, self.timestamps, local, remote)
    }

    /// How long ago a TIME_WAIT entry whose timer has `remaining_ms` left entered
    /// TIME_WAIT: the length minus the time left (`inet_twsk_diag_fill()` reports the
    /// timer's remaining ms). An estimate: the kernel re-arms the full timer when the
    /// peer sends a bare ACK or a segment that fails PAWS or the window check
    /// (`tcp_timewait_state_process()`), so such an entry looks younger than it is.
    pub fn age_ms(&self, remaining_ms: u64) -> u64 {
        self.len_ms.saturating_sub(remaining_ms)
    }
}

/// Loopback as `tcp_twsk_unique()` counts it: 127.0.0.0/8, ::1, and IPv4-mapped
/// 127.0.0.0/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The kernel's default `tcp_max_tw_buckets`: half the established hash
/// (`tcp_set_hashinfo()`). A negative `tcp_ehash_entries` is a namespace sharing the
/// host's table of that size. `None` when unknown.
pub fn tw_buckets_default(ehash_entries: Option<i64>) -> Option<u64> {
    let ehash = ehash_entries?.unsigned_abs();
    (ehash > 0).then_some(ehash / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_count() {
        let r = PortRange::parse("32768\t60999").expect("range");
        assert_eq!(r, PortRange::KERNEL_DEFAULT);
        assert_eq!(r.len(), 28_232);
        assert!(r.parity_ok());
        assert_eq!(PortRange::parse("9 1"), None);
        assert_eq!(PortRange::parse("1 2 3"), None);
        assert_eq!(PortRange::parse(""), None);
        assert_eq!(r.to_string(), "32768-60999");
    }

    #[test]
    fn reserved_port_lists() {
        assert_eq!(parse_port_list(""), vec![]);
        assert_eq!(
            parse_port_list("8080,9000-9010"),
            vec![(8080, 8080), (9000, 9010)]
        );
        assert_eq!(parse_port_list("x,5-3,70000,7"), vec![(7, 7)]);
    }

    #[test]
    fn usable_ports_subtract_reserved_inside_once() {
        let e = EphemeralPorts::from_sysctls(
            Some("40000 40099"),
            Some("40000-40009,40005-40019,1-10,40099"),
        );
        assert_eq!(e.usable(), 100 - 20 - 1);
        assert_eq!(e.headroom(70), 9);
        assert_eq!(e.headroom(700), 0);
        assert!(e.is_ephemeral(40050));
        assert!(!e.is_ephemeral(40001));
        assert!(!e.is_ephemeral(39999));
        let unknown = EphemeralPorts::from_sysctls(None, None);
        assert!(!unknown.range_seen);
        assert_eq!(unknown.usable(), 28_232);
    }

    #[test]
    fn tw_reuse_follows_the_kernel_conditions() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let far: IpAddr = "10.0.0.5".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().expect("ip");
        assert!(tw_reuse_applies(Some(2), Some(1), lo, lo));
        assert!(tw_reuse_applies(Some(2), None, far, mapped));
        assert!(!tw_reuse_applies(Some(2), Some(1), far, far));
        assert!(tw_reuse_applies(Some(1), Some(1), far, far));
        assert!(!tw_reuse_applies(Some(1), Some(0), far, far));
        assert!(!tw_reuse_applies(Some(0), Some(1), lo, lo));
        assert!(!tw_reuse_applies(None, Some(1), lo, lo));
    }

    #[test]
    fn time_wait_policy_reads_the_namespace_sysctls() {
        let sysctls = [
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.tcp_timestamps", "1"),
            ("net.ipv4.tcp_tw_reuse_delay", "2500"),
        ];
        let get = |k: &str| sysctls.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let p = TimeWaitPolicy::from_sysctls(get);
        assert_eq!(
            (p.len_ms, p.reuse_delay_ms, p.reuse_delay_seen),
            (60_000, 2500, true)
        );
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let far: IpAddr = "10.0.0.5".parse().expect("ip");
        assert!(p.reuse_applies(lo, lo) && !p.reuse_applies(far, far));
        assert_eq!(p.age_ms(59_000), 1000);
        assert_eq!(
            p.age_ms(70_000),
            0,
            "a timer longer than the length is age 0"
        );

        let vendor = [
            ("net.ipv4.tcp_tw_timeout", "20"),
            ("net.ipv4.tcp_tw_reuse_delay", "x"),
        ];
        let get = |k: &str| vendor.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let p = TimeWaitPolicy::from_sysctls(get);
        assert_eq!((p.len_ms, p.len_s()), (20_000, 20));
        assert_eq!((p.reuse_delay_ms, p.reuse_delay_seen), (1000, false));
        assert!(
            !p.reuse_applies(lo, lo),
            "tcp_tw_reuse not visible: not assumed"
        );
        assert_eq!(
            TimeWaitPolicy::from_sysctls(|_| None),
            TimeWaitPolicy::default()
        );
    }

    #[test]
    fn tw_buckets_default_is_half_the_hash() {
        assert_eq!(tw_buckets_default(Some(262_144)), Some(131_072));
        assert_eq!(tw_buckets_default(Some(-262_144)), Some(131_072));
        assert_eq!(tw_buckets_default(Some(0)), None);
        assert_eq!(tw_buckets_default(None), None);
    }
}
