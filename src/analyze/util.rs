//! Small helpers shared by rules: percentages, process labels, closing rates.

use std::collections::BTreeMap;

use crate::model::{ClosingRate, Owner, PortRange, Snapshot, TimeWaitAges};

pub use crate::model::rank::{sorted_counts, tally as top_counts};

/// `part` as a percentage of `whole` (0 when `whole` is 0).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// `nginx (pid 1234)`, or `pid 1234` when the name is unknown.
pub fn process_label(s: &Snapshot, pid: u32) -> String {
    match s.process(pid) {
        Some(p) if !p.comm.is_empty() => format!("{} (pid {pid})", p.comm),
        _ => format!("pid {pid}"),
    }
}

/// Same, for an optional owner.
pub fn owner_label(s: &Snapshot, owner: Option<Owner>) -> String {
    match owner {
        Some(o) => process_label(s, o.pid),
        None => "unknown process".to_string(),
    }
}

/// Every process that holds a socket ([`SocketDigest::holders`]): `nginx (pid 100)`;
/// `nginx (pids 100, 101, 102 and 2 more)` when they share a name (a master and the
/// workers it forked); `gunicorn (pid 10), python3 (pid 11) and 1 more` otherwise;
/// `unknown process` when none is known.
///
/// [`SocketDigest::holders`]: crate::model::SocketDigest::holders
pub fn holders_label(s: &Snapshot, holders: &[Owner]) -> String {
    const SHOWN: usize = 3;
    match holders {
        [] => "unknown process".to_string(),
        [one] => process_label(s, one.pid),
        all => {
            let comm = |pid: u32| {
                s.process(pid)
                    .map(|p| p.comm.as_str())
                    .filter(|c| !c.is_empty())
            };
            let first = comm(all[0].pid);
            if first.is_some() && all.iter().all(|o| comm(o.pid) == first) {
                let pids: Vec<String> = all.iter().map(|o| o.pid.to_string()).collect();
                format!(
                    "{} (pids {})",
                    first.unwrap_or_default(),
                    crate::model::units::compact_list(&pids, SHOWN)
                )
            } else {
                let each: Vec<String> = all.iter().map(|o| process_label(s, o.pid)).collect();
                crate::model::units::compact_list(&each, SHOWN)
            }
        }
    }
}

/// Connections closed first per second by a group of `count` TIME_WAIT entries whose
/// ages are `ages`: the recent rate the ages give ([`TimeWaitAges::closing_rate`]), or,
/// when no age is known, the count spread over the TIME_WAIT length of `s`'s namespace
/// (a lower bound where tcp_tw_reuse takes entries over early). The one closing rate
/// of rules and `watch`.
pub fn closing_rate(s: &Snapshot, count: u64, ages: &TimeWaitAges) -> ClosingRate {
    let len_ms = s.time_wait_policy().len_ms.max(1);
    ages.closing_rate(len_ms).unwrap_or(ClosingRate {
        per_s: count as f64 * 1000.0 / len_ms as f64,
        window_ms: len_ms,
    })
}

/// `~405/s over the last 32s`.
pub fn describe_rate(r: &ClosingRate) -> String {
    format!(
        "~{}/s over the last {}",
        rate_text(r.per_s),
        window_text(r.window_ms)
    )
}

/// A window or delay: `32s`, `1s`, `1.5s`, `250ms`.
pub fn window_text(ms: u64) -> String {
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        crate::model::units::human_duration_ms(ms)
    }
}

/// A rate as the text shows it: one decimal below 10, whole numbers above.
pub fn rate_text(per_s: f64) -> String {
    if per_s < 10.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// Connections this namespace closed first per second during the counter interval:
/// TIME_WAIT (or orphaned FIN_WAIT2) minisockets created, `TcpExt.TW` (timeout over
/// 4 s) plus `TcpExt.TWKilled` (4 s or less), each counted once when the connection
/// enters them (`__inet_twsk_schedule()`). Counts entries that tcp_tw_reuse later takes
/// over too, which TIME_WAIT ages cannot see. `None` without a counter interval.
pub fn measured_closes_per_s(s: &Snapshot) -> Option<f64> {
    let tw = counter(s, "TcpExt.TW").rate?;
    Some(tw + counter(s, "TcpExt.TWKilled").rate.unwrap_or(0.0))
}

/// Rounds to two decimals for a finding's `data`.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One kernel counter as rules report it: the value since boot, its growth between the
/// two readings, and that growth per second. Each part is `None` when not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CounterReading {
    pub total: Option<i64>,
    pub delta: Option<i64>,
    pub rate: Option<f64>,
}

impl CounterReading {
    /// Grew during the sample.
    pub fn rising(&self) -> bool {
        self.delta.is_some_and(|d| d > 0)
    }

    /// Non-zero since boot.
    pub fn ever(&self) -> bool {
        self.total.is_some_and(|t| t > 0)
    }

    /// `{"total": .., "delta": .., "per_s": ..}` for a finding's `data`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"total": self.total, "delta": self.delta, "per_s": self.rate})
    }

    /// `+12 in 1.0s (12.0/s), 3456 since boot`, or whatever part is known.
    pub fn describe(&self, interval_ms: Option<u64>) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.delta {
            let window = interval_ms
                .map(|ms| format!(" in {}", crate::model::units::human_duration_ms(ms)))
                .unwrap_or_default();
            match self.rate {
                Some(r) => parts.push(format!("+{d}{window} ({r:.1}/s)")),
                None => parts.push(format!("+{d}{window}")),
            }
        }
        if let Some(t) = self.total {
            parts.push(format!("{t} since boot"));
        }
        if parts.is_empty() {
            "not available".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Reads `key` (`TcpExt.ListenOverflows`) from the snapshot's counter sample.
pub fn counter(s: &Snapshot, key: &str) -> CounterReading {
    match &s.counters {
        Some(c) => CounterReading {
            total: c.total(key),
            delta: c.delta(key),
            rate: c.rate(key),
        },
        None => CounterReading::default(),
    }
}

/// The counter sampling interval, when counters were sampled twice.
pub fn counter_interval_ms(s: &Snapshot) -> Option<u64> {
    s.counters
        .as_ref()
        .map(|c| c.interval_ms)
        .filter(|ms| *ms > 0)
}

/// Listening ports inside the ephemeral range and not reserved, with one owner each.
pub fn unreserved_listeners_in(s: &Snapshot, range: PortRange) -> BTreeMap<u16, String> {
    let ports = s.ephemeral_ports();
    let mut out = BTreeMap::new();
    for l in &s.sockets.listeners {
        let port = l.local.port;
        if !range.contains(port) || ports.is_reserved(port) {
            continue;
        }
        let label = owner_label(s, l.owner);
        out.entry(port)
            .and_modify(|e: &mut String| {
                if e == "unknown process" {
                    e.clone_from(&label);
                }
            })
            .or_insert(label);
    }
    out
}

/// The `ip_local_port_range` tcpdoctor proposes instead of `current` when more ports are
/// needed, or `None` when it will not widen it: 32768-65535. It never proposes a start
/// below the kernel default's 32768: below it live the ports services are configured
/// with (databases, caches, proxies; 1024-32767 in the IANA registry), and today's
/// listeners are not the only ones a host will run, so tcpdoctor cannot vouch for a
/// lower start. A range that already starts lower is the port_range_overlap audit's
/// business, not a widening. Even start and odd end: the different parity the kernel
/// prefers (connect() favours ports of the start's parity, bind(0) the other).
pub fn widened_port_range(current: PortRange) -> Option<PortRange> {
    let wide = PortRange {
        low: PortRange::KERNEL_DEFAULT.low,
        high: u16::MAX,
    };
    (current.low >= wide.low && wide.len() > current.len()).then_some(wide)
}

/// The `tcp_max_tw_buckets` tcpdoctor proposes when the table is short: never below the
/// kernel default (the limit is an attack guard and must not be lowered), and twice what
/// is in use when that is more. `None` when the default is unknown and nothing is used.
pub fn proposed_tw_buckets(s: &Snapshot, in_use: u64) -> Option<u64> {
    let default = s.tw_buckets_default();
    let wanted = in_use.saturating_mul(2);
    match default {
        Some(d) => Some(d.max(wanted)),
        None if wanted > 0 => Some(wanted.max(1024)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widened_ranges_never_start_below_the_default_unless_already_there() {
        let w = |low, high| widened_port_range(PortRange { low, high }).map(|r| (r.low, r.high));
        assert_eq!(w(32768, 60999), Some((32768, 65535)));
        assert_eq!(w(40000, 50001), Some((32768, 65535)));
        // Never a start below 32768, even where the host already has one.
        assert_eq!(w(15001, 64999), None);
        assert_eq!(w(1024, 65535), None);
        assert_eq!(w(32768, 65535), None);
    }

    #[test]
    fn proposed_tw_buckets_never_go_below_the_kernel_default() {
        let mut s = Snapshot::default();
        s.sysctls
            .insert("net.ipv4.tcp_ehash_entries".into(), "262144".into());
        assert_eq!(proposed_tw_buckets(&s, 5_000), Some(131_072));
        assert_eq!(proposed_tw_buckets(&s, 100_000), Some(200_000));
        let unknown = Snapshot::default();
        assert_eq!(proposed_tw_buckets(&unknown, 0), None);
        assert_eq!(proposed_tw_buckets(&unknown, 300), Some(1024));
    }

    #[test]
    fn pct_handles_zero() {
        assert_eq!(pct(1, 0), 0.0);
        assert_eq!(pct(1, 4), 25.0);
    }

    #[test]
    fn counter_readings_describe_what_is_known() {
        let mut s = Snapshot::default();
        assert_eq!(
            counter(&s, "TcpExt.ListenOverflows"),
            CounterReading::default()
        );
        let mut c = crate::model::CounterSample {
            interval_ms: 2000,
            ..Default::default()
        };
        c.before.insert("TcpExt.ListenOverflows".into(), 100);
        c.after.insert("TcpExt.ListenOverflows".into(), 110);
        s.counters = Some(c);
        let r = counter(&s, "TcpExt.ListenOverflows");
        assert!(r.rising() && r.ever());
        assert_eq!(
            r.describe(counter_interval_ms(&s)),
            "+10 in 2.0s (5.0/s), 110 since boot"
        );
        assert_eq!(r.json()["per_s"], 5.0);
    }

    #[test]
    fn closing_rate_uses_ages_and_falls_back_to_the_count_over_the_length() {
        let mut s = Snapshot::default();
        // No ages: 600 entries over 60 s.
        let r = closing_rate(&s, 600, &TimeWaitAges::default());
        assert_eq!((r.per_s, r.window_ms), (10.0, 60_000));
        assert_eq!(describe_rate(&r), "~10/s over the last 60s");
        // A vendor length of 20 s.
        s.sysctls
            .insert("net.ipv4.tcp_tw_timeout".into(), "20".into());
        assert_eq!(closing_rate(&s, 600, &TimeWaitAges::default()).per_s, 30.0);
        // 400 entries, all under 1 s old: 400/s over the last second.
        let mut ages = TimeWaitAges::default();
        for i in 0..400 {
            ages.add(Some(i * 2), 1000);
        }
        let r = closing_rate(&s, 400, &ages);
        assert_eq!((r.per_s, r.window_ms), (400.0, 1000));
        assert_eq!(rate_text(2.25), "2.2");
    }

    #[test]
    fn measured_closes_add_the_short_lived_minisockets() {
        let mut s = Snapshot::default();
        assert_eq!(measured_closes_per_s(&s), None);
        let mut c = crate::model::CounterSample {
            interval_ms: 2000,
            ..Default::default()
        };
        for (k, a, b) in [("TcpExt.TW", 100, 900), ("TcpExt.TWKilled", 0, 10)] {
            c.before.insert(k.into(), a);
            c.after.insert(k.into(), b);
        }
        s.counters = Some(c);
        assert_eq!(measured_closes_per_s(&s), Some(405.0));
    }
}
