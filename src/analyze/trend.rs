//! CLOSE_WAIT trends per process across repeated samples (`watch`, `serve`): growth per
//! minute and whether the growth is a confirmed leak. Pure: timestamps come in with each
//! sample, nothing here reads a clock or the OS.
//!
//! Why a trend and not a count: a busy server always has a few CLOSE_WAIT sockets between
//! the peer's FIN and its own close(). A leak is a count that keeps climbing, because the
//! kernel never ends CLOSE_WAIT on its own (no timer): only close() or process exit does.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::close_wait_leak;
use crate::model::Finding;

/// How a series must behave to be called a leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrendConfig {
    /// Samples kept per process (the window the growth is measured over).
    pub window: usize,
    /// Rises (a sample above the one before) needed within the window.
    pub min_rises: usize,
}

impl Default for TrendConfig {
    /// 30 samples (one minute at `watch`'s default 2 s) and 3 rises.
    fn default() -> Self {
        TrendConfig {
            window: 30,
            min_rises: 3,
        }
    }
}

/// The trend of one process's CLOSE_WAIT count over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PidTrend {
    pub pid: u32,
    /// The count at the latest sample.
    pub current: u64,
    /// The count at the oldest sample in the window.
    pub first: u64,
    /// Samples in the window (at most `TrendConfig::window`).
    pub samples: usize,
    /// Steps between consecutive samples where the count went up / down.
    pub rises: usize,
    pub falls: usize,
    /// (current - first) per minute over the window's time span; 0 with one sample.
    pub growth_per_min: f64,
    /// Grew in at least `min_rises` steps, fell in at most one step per four rises, and
    /// ended higher than it started.
    pub confirmed_leak: bool,
}

/// Per-pid CLOSE_WAIT series, fed one sample at a time.
#[derive(Debug, Clone, Default)]
pub struct CloseWaitTrend {
    config: TrendConfig,
    series: BTreeMap<u32, VecDeque<(u64, u64)>>,
}

impl CloseWaitTrend {
    pub fn new(config: TrendConfig) -> CloseWaitTrend {
        CloseWaitTrend {
            config: TrendConfig {
                window: config.window.max(2),
                min_rises: config.min_rises.max(1),
            },
            series: BTreeMap::new(),
        }
    }

    /// Adds the sample taken at `at_ms` (any monotonic millisecond clock). `counts` holds
    /// the CLOSE_WAIT sockets of each process that has some. A tracked pid absent from
    /// `counts` is recorded with 0 if `still_running(pid)`, and dropped otherwise (it
    /// exited; a later process with the same pid starts a new series). A series that has
    /// been 0 for the whole window is dropped too, so memory follows the leakers.
    pub fn observe(
        &mut self,
        at_ms: u64,
        counts: &BTreeMap<u32, u64>,
        still_running: impl Fn(u32) -> bool,
    ) {
        let window = self.config.window;
        self.series.retain(|pid, s| {
            let n = match counts.get(pid) {
                Some(n) => *n,
                None if still_running(*pid) => 0,
                None => return false,
            };
            // A clock that did not advance replaces the last point instead of adding one.
            if s.back().is_some_and(|(t, _)| *t >= at_ms) {
                s.pop_back();
            }
            s.push_back((at_ms, n));
            while s.len() > window {
                s.pop_front();
            }
            s.iter().any(|(_, c)| *c > 0)
        });
        for (pid, n) in counts {
            if *n > 0 && !self.series.contains_key(pid) {
                self.series.insert(*pid, VecDeque::from([(at_ms, *n)]));
            }
        }
    }

    /// The trend of one process, if it is tracked.
    pub fn get(&self, pid: u32) -> Option<PidTrend> {
        self.series.get(&pid).map(|s| assess(pid, s, &self.config))
    }

    /// Every tracked process, pid order.
    pub fn trends(&self) -> Vec<PidTrend> {
        self.series
            .iter()
            .map(|(pid, s)| assess(*pid, s, &self.config))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Applies the trends to one sample's findings (`watch`): a process whose CLOSE_WAIT
/// one look could not judge (`close_wait_slow_close`, `not_rechecked`) is a leak once
/// its count keeps rising ([`close_wait_leak::confirmed_by_trend`]). Returns how many
/// findings changed.
pub fn confirm_leaks(findings: &mut [Finding], trend: &CloseWaitTrend) -> usize {
    let mut changed = 0;
    for f in findings.iter_mut() {
        let pid = f.data["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        if let Some(t) = pid.and_then(|p| trend.get(p)) {
            changed += usize::from(close_wait_leak::confirmed_by_trend(f, &t));
        }
    }
    changed
}

fn assess(pid: u32, s: &VecDeque<(u64, u64)>, c: &TrendConfig) -> PidTrend {
    let (t0, first) = s.front().copied().unwrap_or((0, 0));
    let (t1, current) = s.back().copied().unwrap_or((0, 0));
    let (mut rises, mut falls) = (0, 0);
    for (a, b) in s.iter().zip(s.iter().skip(1)) {
        if b.1 > a.1 {
            rises += 1;
        } else if b.1 < a.1 {
            falls += 1;
        }
    }
    let span_ms = t1.saturating_sub(t0);
    let growth_per_min = if span_ms == 0 {
        0.0
    } else {
        (current as f64 - first as f64) * 60_000.0 / span_ms as f64
    };
    PidTrend {
        pid,
        current,
        first,
        samples: s.len(),
        rises,
        falls,
        growth_per_min,
        // A leaking process never gives a socket back by itself; a rare fall (an RST that
        // moved one to CLOSE) is tolerated, a seesaw is ordinary traffic.
        confirmed_leak: rises >= c.min_rises && falls * 4 <= rises && current > first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `series` for pid 7 every `step_ms`, the process alive throughout.
    fn feed(series: &[u64], step_ms: u64) -> CloseWaitTrend {
        let mut t = CloseWaitTrend::new(TrendConfig::default());
        for (i, n) in series.iter().enumerate() {
            let counts = BTreeMap::from([(7, *n)]);
            t.observe(i as u64 * step_ms, &counts, |_| true);
        }
        t
    }

    #[test]
    fn growing_series_is_a_confirmed_leak_with_its_rate() {
        // +2 every 2 s: 60 per minute.
        let t = feed(&[10, 12, 14, 16, 18], 2_000);
        let p = t.get(7).expect("tracked");
        assert!(p.confirmed_leak, "{p:?}");
        assert_eq!(p.rises, 4);
        assert_eq!(p.current, 18);
        assert!((p.growth_per_min - 60.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn too_few_rises_is_not_yet_a_leak() {
        let p = feed(&[10, 12, 14], 2_000).get(7).expect("tracked");
        assert!(!p.confirmed_leak);
        assert!(p.growth_per_min > 0.0);
    }

    #[test]
    fn stable_count_is_not_a_leak() {
        let p = feed(&[14; 10], 2_000).get(7).expect("tracked");
        assert!(!p.confirmed_leak);
        assert_eq!(p.growth_per_min, 0.0);
        assert_eq!((p.rises, p.falls), (0, 0));
    }

    #[test]
    fn noisy_up_and_down_is_not_a_leak() {
        // Ends higher than it started and rises 4 times, but falls as often.
        let p = feed(&[5, 8, 4, 9, 3, 10, 6, 11], 2_000)
            .get(7)
            .expect("tracked");
        assert!(!p.confirmed_leak, "{p:?}");
        assert!(p.growth_per_min > 0.0);
    }

    #[test]
    fn leak_with_a_rare_fall_is_still_a_leak() {
        let p = feed(&[1, 2, 3, 4, 3, 5, 6, 7], 1_000)
            .get(7)
            .expect("tracked");
        assert!(p.confirmed_leak, "{p:?}");
    }

    #[test]
    fn window_bounds_history_and_old_growth_ages_out() {
        let mut series: Vec<u64> = (0..10).collect();
        series.extend([9; 40]);
        let t = feed(&series, 2_000);
        let p = t.get(7).expect("tracked");
        assert_eq!(p.samples, TrendConfig::default().window);
        assert!(!p.confirmed_leak);
        assert_eq!(p.growth_per_min, 0.0);
    }

    #[test]
    fn vanished_process_is_dropped_and_running_one_counts_zero() {
        let mut t = CloseWaitTrend::new(TrendConfig::default());
        t.observe(0, &BTreeMap::from([(1, 3), (2, 5)]), |_| true);
        // pid 1 exited; pid 2 closed its sockets but still runs.
        t.observe(2_000, &BTreeMap::new(), |pid| pid == 2);
        assert!(t.get(1).is_none());
        let p = t.get(2).expect("still tracked");
        assert_eq!((p.first, p.current), (5, 0));
        assert!(p.growth_per_min < 0.0);
        // Zero across the whole window: no longer tracked.
        let mut t = CloseWaitTrend::new(TrendConfig {
            window: 2,
            min_rises: 1,
        });
        t.observe(0, &BTreeMap::from([(2, 1)]), |_| true);
        t.observe(1, &BTreeMap::new(), |_| true);
        t.observe(2, &BTreeMap::new(), |_| true);
        assert!(t.is_empty());
    }

    #[test]
    fn a_confirmed_trend_turns_the_unjudged_finding_of_its_process_into_a_leak() {
        use crate::analyze::close_wait_common::tests::{cw, snapshot};
        use crate::analyze::{close_wait_slow_close, Thresholds};
        // pid 42 holds 12 young CLOSE_WAIT sockets, looked at once.
        let s = snapshot(
            (0..12u16)
                .map(|i| {
                    cw(
                        Some(42),
                        "10.0.0.1:8080",
                        &format!("10.0.1.{i}:4000"),
                        1,
                        2_000,
                    )
                })
                .collect(),
        );
        let mut findings = close_wait_slow_close::check(&s, &Thresholds::default());
        assert_eq!(findings.len(), 1);
        let mut t = CloseWaitTrend::new(TrendConfig::default());
        t.observe(0, &BTreeMap::from([(42, 12)]), |_| true);
        assert_eq!(
            confirm_leaks(&mut findings, &t),
            0,
            "one sample proves nothing"
        );
        assert_eq!(findings[0].rule_id, close_wait_slow_close::ID);
        for (i, n) in [14, 16, 18].into_iter().enumerate() {
            t.observe(1_000 * (i as u64 + 1), &BTreeMap::from([(42, n)]), |_| true);
        }
        assert_eq!(confirm_leaks(&mut findings, &t), 1);
        assert_eq!(findings[0].rule_id, close_wait_leak::ID);
        assert_eq!(findings[0].data["verdict"], "rising_trend");
    }

    #[test]
    fn repeated_timestamp_replaces_the_point() {
        let mut t = CloseWaitTrend::new(TrendConfig::default());
        t.observe(1_000, &BTreeMap::from([(3, 1)]), |_| true);
        t.observe(1_000, &BTreeMap::from([(3, 4)]), |_| true);
        let p = t.get(3).expect("tracked");
        assert_eq!((p.samples, p.current, p.growth_per_min), (1, 4, 0.0));
    }
}
