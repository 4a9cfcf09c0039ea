//! How long until a resource runs out at the rate it is used now (not a rule): the
//! ephemeral ports toward one destination, and a process's file descriptors while its
//! CLOSE_WAIT sockets pile up. Pure arithmetic on snapshot data; the rules
//! (`ephemeral_port_exhaustion`, `close_wait_leak`) and `watch` turn it into words.

use serde_json::json;

use super::util::{rate_text, round2};
use crate::model::units::human_duration_ms;
use crate::model::{Evidence, PortUse, Snapshot, TimeWaitPolicy};

/// Where the ports toward one destination are going.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PortRunway {
    /// New connections per second asked of this destination.
    pub demand_per_s: f64,
    /// The most it sustains ([`PortUse::sustainable_per_s`]).
    pub sustainable_per_s: f64,
    /// Ports connect() can pick now.
    pub headroom: u64,
    /// Ports coming free per second now: the TIME_WAIT ports connect() may not take yet,
    /// assumed to come free evenly over the time they are held (the reuse delay where
    /// tcp_tw_reuse applies, else the TIME_WAIT length).
    pub release_per_s: f64,
    /// `None`: the rate is sustainable, the ports never run out at it; `Some(0)`: none
    /// is left now; else seconds until none is.
    pub exhausted_in_s: Option<f64>,
}

impl PortRunway {
    pub fn sustainable(&self) -> bool {
        self.exhausted_in_s.is_none()
    }

    /// `sustainable (120/s of ~470/s)`, `ports run out in about 28s at 1000/s (~470/s
    /// sustainable)`, or `no port left now`.
    pub fn text(&self) -> String {
        let (rate, most) = (
            rate_text(self.demand_per_s),
            rate_text(self.sustainable_per_s),
        );
        match self.exhausted_in_s {
            None => format!("sustainable: {rate}/s of ~{most}/s"),
            Some(s) if s <= 0.0 => format!(
                "no port left now: {rate}/s asked, ~{most}/s sustainable, connect() fails with EADDRNOTAVAIL"
            ),
            Some(s) => format!(
                "not sustainable: at {rate}/s (~{most}/s sustainable) the ports run out in about {}",
                human_duration_ms((s * 1000.0).round() as u64)
            ),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "demand_per_s": round2(self.demand_per_s),
            "sustainable_per_s": round2(self.sustainable_per_s),
            "sustainable": self.sustainable(),
            "headroom": self.headroom,
            "release_per_s": round2(self.release_per_s),
            "exhausted_in_s": self.exhausted_in_s.map(round2),
        })
    }
}

/// The runway of `p`'s ports at `demand_per_s` new connections per second. A rate
/// above what the destination sustains drains the free ports at the rate minus what
/// comes free: the ports held in TIME_WAIT that connect() may not take yet come back
/// within the time they are held, spread evenly (their ages are known only roughly).
/// Above the sustainable rate that release is always smaller than the demand, so the
/// ports do run out.
pub fn ports(p: &PortUse, policy: &TimeWaitPolicy, demand_per_s: f64) -> PortRunway {
    let sustainable_per_s = p.sustainable_per_s(policy);
    let headroom = p.headroom();
    let hold_ms = p.hold_ms(policy);
    let blocked = p.unavailable().saturating_sub(p.held_open());
    let release_per_s = blocked as f64 * 1000.0 / hold_ms as f64;
    let exhausted_in_s = if demand_per_s <= 0.0 || demand_per_s < sustainable_per_s {
        None
    } else if headroom == 0 {
        Some(0.0)
    } else {
        let drain = demand_per_s - release_per_s;
        // Never reached above the sustainable rate (see above); kept finite anyway.
        Some(if drain > 0.0 {
            headroom as f64 / drain
        } else {
            f64::MAX
        })
    };
    PortRunway {
        demand_per_s,
        sustainable_per_s,
        headroom,
        release_per_s,
        exhausted_in_s,
    }
}

/// A process's descriptors against its soft RLIMIT_NOFILE while they grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DescriptorRunway {
    pub open_fds: u64,
    pub limit: u64,
    /// Descriptors gained per second.
    pub growth_per_s: f64,
    /// What the growth was measured over, for the text.
    pub over_ms: u64,
    /// Seconds until the soft limit at that growth (0: at it already).
    pub exhausted_in_s: f64,
}

impl DescriptorRunway {
    /// `+40 in 1.0s (40/s): the soft limit 1024 is reached in about 24s`.
    pub fn text(&self) -> String {
        let gained = (self.growth_per_s * self.over_ms as f64 / 1000.0).round();
        let when = if self.exhausted_in_s <= 0.0 {
            "it is reached now: accept() and socket() fail with EMFILE".to_string()
        } else {
            format!(
                "it is reached in about {}",
                human_duration_ms((self.exhausted_in_s * 1000.0).round() as u64)
            )
        };
        format!(
            "+{gained} in {} ({}/s), {} open of the soft limit {}: {when}",
            human_duration_ms(self.over_ms),
            rate_text(self.growth_per_s),
            self.open_fds,
            self.limit
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "open_fds": self.open_fds,
            "soft_limit": self.limit,
            "growth_per_s": round2(self.growth_per_s),
            "over_ms": self.over_ms,
            "exhausted_in_s": round2(self.exhausted_in_s),
        })
    }
}

/// When `open_fds` descriptors growing by `growth_per_s` reach `limit`; `None` when they
/// do not grow.
pub fn descriptors(
    open_fds: u64,
    limit: u64,
    growth_per_s: f64,
    over_ms: u64,
) -> Option<DescriptorRunway> {
    if growth_per_s <= 0.0 || !growth_per_s.is_finite() {
        return None;
    }
    Some(DescriptorRunway {
        open_fds,
        limit,
        growth_per_s,
        over_ms,
        exhausted_in_s: limit.saturating_sub(open_fds) as f64 / growth_per_s,
    })
}

/// The runway of `pid`'s descriptors from `check`'s two looks at them
/// ([`Snapshot::descriptor_recheck`]): `None` when they were not looked at twice, did
/// not grow, or the soft limit is not known (or unlimited).
pub fn descriptors_between_readings(s: &Snapshot, pid: u32) -> Option<DescriptorRunway> {
    let p = s.process(pid)?;
    let again = s.descriptor_recheck.get(&pid)?;
    let limit = p.nofile_soft.and_then(|l| l.value())?;
    if again.after_ms == 0 || again.open_fds <= p.open_fds {
        return None;
    }
    let growth = (again.open_fds - p.open_fds) as f64 * 1000.0 / again.after_ms as f64;
    descriptors(again.open_fds, limit, growth, again.after_ms)
}

/// The evidence line `close_wait_leak` adds for a process whose descriptors grew
/// between `check`'s readings.
pub fn descriptor_evidence(s: &Snapshot, pid: Option<u32>) -> Option<Evidence> {
    let r = descriptors_between_readings(s, pid?)?;
    Some(Evidence::new("descriptors growing", r.text()))
}

/// The same for a finding's `data` (`null` when not measured or not growing).
pub fn descriptor_json(s: &Snapshot, pid: Option<u32>) -> serde_json::Value {
    pid.and_then(|p| descriptors_between_readings(s, p))
        .map_or(serde_json::Value::Null, |r| r.json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        DescriptorRecheck, Endpoint, Limit, ProcessFacts, StateCounts, TcpState, TimeWaitAges,
    };

    fn port_use(established: u64, time_wait: u64, usable: u64, tw_reuse: bool) -> PortUse {
        let mut counts = StateCounts::default();
        counts.0[TcpState::Established.index()] = established;
        counts.0[TcpState::TimeWait.index()] = time_wait;
        let mut ages = TimeWaitAges::default();
        // All young: none reusable yet.
        for _ in 0..time_wait {
            ages.add(Some(10), 1000);
        }
        PortUse {
            local_ip: "10.0.0.1".parse().expect("ip"),
            remote: Endpoint::new("10.0.0.5".parse().expect("ip"), 443),
            counts,
            sample_owner: None,
            usable,
            time_wait_ages: ages,
            tw_reuse,
        }
    }

    fn policy() -> TimeWaitPolicy {
        TimeWaitPolicy::default()
    }

    #[test]
    fn a_fresh_destination_runs_out_after_its_headroom_at_the_full_rate() {
        // 28232 ports, nothing held, no reuse: 470.5/s sustainable. At 1000/s nothing
        // comes free for 60 s, so 28232 ports last 28.2 s.
        let p = port_use(0, 0, 28_232, false);
        let r = ports(&p, &policy(), 1000.0);
        assert_eq!(r.headroom, 28_232);
        assert!((r.sustainable_per_s - 470.53).abs() < 0.01);
        let t = r.exhausted_in_s.expect("runs out");
        assert!((t - 28.232).abs() < 0.001, "{t}");
        assert!(r.text().contains("run out in about 28.2s"), "{}", r.text());
        // Below the sustainable rate: never.
        let r = ports(&p, &policy(), 400.0);
        assert!(r.sustainable() && r.text().starts_with("sustainable: 400/s"));
    }

    #[test]
    fn ports_coming_free_slow_the_drain_and_none_left_is_now() {
        // 20000 TIME_WAIT held (no reuse) come back at 333/s; at 1000/s the other
        // 8232 ports last 8232 / 667 = 12.3 s.
        let p = port_use(0, 20_000, 28_232, false);
        let r = ports(&p, &policy(), 1000.0);
        assert!((r.release_per_s - 333.33).abs() < 0.01);
        let t = r.exhausted_in_s.expect("runs out");
        assert!((t - 12.35).abs() < 0.01, "{t}");
        let full = port_use(100, 0, 100, true);
        let r = ports(&full, &policy(), 5.0);
        assert_eq!(r.exhausted_in_s, Some(0.0));
        assert!(r.text().contains("EADDRNOTAVAIL"));
        assert_eq!(r.json()["exhausted_in_s"], 0.0);
    }

    #[test]
    fn descriptors_reach_the_soft_limit_at_their_growth() {
        let r = descriptors(1000, 1024, 4.0, 1000).expect("grows");
        assert_eq!(r.exhausted_in_s, 6.0);
        assert_eq!(
            r.text(),
            "+4 in 1.0s (4.0/s), 1000 open of the soft limit 1024: it is reached in about 6.0s"
        );
        assert!(descriptors(1000, 1024, 0.0, 1000).is_none());
        let at = descriptors(1030, 1024, 2.0, 1000).expect("grows");
        assert_eq!(at.exhausted_in_s, 0.0);
        assert!(at.text().contains("EMFILE"));
    }

    #[test]
    fn the_two_looks_of_check_give_the_growth() {
        let mut s = Snapshot::default();
        s.processes.insert(
            9,
            ProcessFacts {
                pid: 9,
                comm: "java".into(),
                uid: 0,
                cmdline: String::new(),
                open_fds: 900,
                nofile_soft: Some(Limit::Value(1024)),
                nofile_hard: None,
                detached_tcp_fds: None,
            },
        );
        assert!(descriptor_evidence(&s, Some(9)).is_none(), "one look only");
        s.descriptor_recheck.insert(
            9,
            DescriptorRecheck {
                open_fds: 924,
                after_ms: 2000,
            },
        );
        let e = descriptor_evidence(&s, Some(9)).expect("grew");
        assert_eq!(
            e.value,
            "+24 in 2.0s (12/s), 924 open of the soft limit 1024: it is reached in about 8.3s"
        );
        assert_eq!(descriptor_json(&s, Some(9))["growth_per_s"], 12.0);
        // Not growing: nothing said.
        s.descriptor_recheck.get_mut(&9).expect("entry").open_fds = 900;
        assert!(descriptor_evidence(&s, Some(9)).is_none());
        assert_eq!(descriptor_json(&s, None), serde_json::Value::Null);
    }
}
