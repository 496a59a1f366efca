//! Periodic snapshots of the kernel's own counters while recording: /sys/kernel/mm/ksm,
//! /proc/vmstat, ksmd's run time and each traced process's ksm_stat — the study's monitor
//! script, in the same file as the events.
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crate::{
    kernel::{Counters, KsmStat},
    recording::schema::Sample,
};
use anyhow::Result;

pub struct Sampler {
    interval: Duration,
    next: Instant,
    window_start_ns: u64,
    ksmd: u32,
}

impl Sampler {
    /// Takes the first sample, which is also the window's start snapshot, and opens the window
    /// right after it (t = 0): events stamped before that are already in the snapshot.
    pub fn start(interval: Duration, ksmd: u32, pids: &BTreeSet<u32>) -> Result<(Self, Sample)> {
        let mut sampler = Self {
            interval,
            next: Instant::now(),
            window_start_ns: 0,
            ksmd,
        };
        let mut first = sampler.take(pids, 0)?;
        sampler.window_start_ns = crate::kernel::monotonic_ns();
        first.t_ns = 0;
        Ok((sampler, first))
    }

    /// CLOCK_MONOTONIC ns at which the window opened.
    pub fn window_start_ns(&self) -> u64 {
        self.window_start_ns
    }

    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    pub fn take(&mut self, pids: &BTreeSet<u32>, merges: u64) -> Result<Sample> {
        self.next += self.interval;
        Ok(Sample {
            t_ns: crate::kernel::monotonic_ns().saturating_sub(self.window_start_ns),
            counters: Counters::read(self.ksmd)?,
            merges,
            processes: pids
                .iter()
                .filter_map(|&p| KsmStat::read(p).ok().map(|s| (p, s)))
                .collect(),
        })
    }
}

/// "Settled": pages_sharing changes by less than this fraction per full scan.
pub const SETTLE_THRESHOLD: f64 = 0.05;

/// When KSM settled: the first full-scan boundary at which pages_sharing changed by less than
/// `threshold` (e.g. 0.05) since the previous boundary, with something merged. Seconds since
/// the window opened.
pub fn settle_time_s(samples: &[Sample], threshold: f64) -> Option<f64> {
    let mut previous: Option<(i64, i64)> = None; // (full_scans, pages_sharing) at a boundary
    for s in samples {
        let scans = s.counters.ksm("full_scans");
        let sharing = s.counters.ksm("pages_sharing");
        match previous {
            Some((last_scans, _)) if scans == last_scans => continue,
            Some((_, last_sharing))
                if last_sharing > 0
                    && ((sharing - last_sharing).abs() as f64)
                        < threshold * last_sharing as f64 =>
            {
                return Some(s.t_ns as f64 / 1e9);
            }
            _ => {}
        }
        previous = Some((scans, sharing));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: u64, scans: i64, sharing: i64) -> Sample {
        let mut s = Sample {
            t_ns: t_s * 1_000_000_000,
            ..Default::default()
        };
        s.counters.ksm.insert("full_scans".into(), scans);
        s.counters.ksm.insert("pages_sharing".into(), sharing);
        s
    }

    #[test]
    fn settles_when_sharing_stops_moving_per_full_scan() {
        let samples = [
            sample(0, 0, 0),
            sample(1, 1, 0),
            sample(2, 2, 1000),
            sample(3, 2, 1500), // same full scan: not a boundary
            sample(4, 3, 3000),
            sample(5, 4, 3100), // +3.3% over one full scan
            sample(6, 5, 3100),
        ];
        assert_eq!(settle_time_s(&samples, 0.05), Some(5.0));
        assert_eq!(settle_time_s(&samples, 0.01), Some(6.0));
    }

    #[test]
    fn never_settles_without_merges_or_scans() {
        assert_eq!(
            settle_time_s(&[sample(0, 0, 0), sample(1, 1, 0), sample(2, 2, 0)], 0.05),
            None
        );
        assert_eq!(
            settle_time_s(&[sample(0, 3, 100), sample(1, 3, 100)], 0.05),
            None
        );
    }
}
