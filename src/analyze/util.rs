//! Small helpers shared by rules: percentages, process labels.

use std::collections::BTreeMap;

use crate::model::{Owner, PortRange, Snapshot};

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

/// Connections per second implied by `count` TIME_WAIT entries in `s`'s namespace:
/// each lives [`Snapshot::time_wait_len_s`].
pub fn per_second_over_time_wait(s: &Snapshot, count: u64) -> f64 {
    count as f64 / s.time_wait_len_s() as f64
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

/// Where a widened ephemeral range should start at the lowest: most services listen
/// below it.
pub const PORT_RANGE_FLOOR: u16 = 10000;

/// The `ip_local_port_range` tcpdoctor proposes instead of `current` when more ports are
/// needed: start no lower than the floor and no higher than the default start, made even;
/// end at 65535. Even start and odd end: the different parity the kernel prefers.
pub fn widened_port_range(current: PortRange) -> PortRange {
    PortRange {
        low: current
            .low
            .clamp(PORT_RANGE_FLOOR, PortRange::KERNEL_DEFAULT.low)
            & !1,
        high: u16::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widened_ranges_start_between_floor_and_default_with_different_parity() {
        let w = |low, high| {
            let r = widened_port_range(PortRange { low, high });
            (r.low, r.high)
        };
        assert_eq!(w(32768, 60999), (32768, 65535));
        assert_eq!(w(1024, 65535), (10000, 65535));
        assert_eq!(w(15001, 64999), (15000, 65535));
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
        assert_eq!(per_second_over_time_wait(&s, 600), 10.0);
    }
}
