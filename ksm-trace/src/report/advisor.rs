//! The KSM advisor's scorecard (advisor_mode=scan-time, Linux 6.8): per full scan, the target
//! and the scan time achieved, the pages_to_scan it chose, the CPU share it computed against
//! ksmd's measured over the same scan, and which bound held it — worked out the way
//! mm/ksm.c's scan_time_advisor() applies them: the advisor_max_cpu cap, then the fixed 10 %
//! CPU floor, then advisor_max_pages_to_scan. Then how many scans it took to come within ±10 %
//! of the target and how far it swings afterwards.
use serde::{Deserialize, Serialize};

use crate::recording::{Recording, schema::Sample};

/// The advisor's fixed floor, KSM_ADVISOR_MIN_CPU in mm/ksm.c (percent of one CPU).
const MIN_CPU_PERCENT: u64 = 10;
/// Within this share of the target a scan counts as on target.
const ON_TARGET: f64 = 0.10;

/// One full scan the advisor acted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvisorScan {
    /// Seconds into the window at the scan's end.
    pub t_s: f64,
    /// The scan's duration as traced (ksm_start_scan → ksm_stop_scan); None when its start
    /// was before the window.
    pub scan_s: Option<f64>,
    /// The kernel's own figure, whole seconds (what the advisor computes with).
    pub kernel_scan_s: i64,
    /// pages_to_scan before the scan and the one the advisor chose after it.
    pub pages_before: Option<u64>,
    pub pages_to_scan: u64,
    /// ksmd's CPU share over the scan as the advisor computed it, and as measured from
    /// ksmd's schedstat (the 1 s samples, interpolated), percent of one CPU.
    pub cpu_percent_kernel: u64,
    pub cpu_percent_measured: Option<f64>,
    /// `max_cpu`, `min_cpu_floor`, `max_pages` or None: the bound that set pages_to_scan.
    pub bound: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvisorReport {
    /// advisor_target_scan_time (s), advisor_max_cpu (%), advisor_max_pages_to_scan.
    pub target_s: Option<i64>,
    pub max_cpu_percent: Option<i64>,
    pub max_pages: Option<i64>,
    pub scans: Vec<AdvisorScan>,
    /// Scans until the first within ±10 % of the target (None: not reached in the window).
    pub scans_to_converge: Option<usize>,
    /// After converging: the largest deviation of a scan's time from the target, percent.
    pub swing_after_percent: Option<f64>,
    /// The first scan's kernel CPU figure is over 100 % of one CPU: the advisor's context
    /// (cpu_time) started at 0, so it counted ksmd's CPU since boot.
    pub first_cpu_since_boot: bool,
    /// Scans held by each bound.
    pub held_by_max_cpu: usize,
    pub held_by_min_cpu_floor: usize,
    pub held_by_max_pages: usize,
}

impl AdvisorReport {
    /// None when the recording saw no ksm_advisor event.
    pub fn of(rec: &Recording) -> Option<Self> {
        let steps = &rec.scans.advisor;
        if steps.is_empty() {
            return None;
        }
        let knob = |name: &str| rec.meta.knobs.get(name).and_then(|v| v.parse::<i64>().ok());
        let (target_s, max_cpu, max_pages) = (
            knob("advisor_target_scan_time"),
            knob("advisor_max_cpu"),
            knob("advisor_max_pages_to_scan"),
        );
        let start = rec.meta.start_ns;
        // pages_to_scan before the first step: the window's first sample.
        let mut before = rec
            .timeseries
            .first()
            .map(|s| s.counters.ksm("pages_to_scan") as u64);
        let scans: Vec<AdvisorScan> = steps
            .iter()
            .map(|step| {
                // The event fires just before ksm_stop_scan of the same scan.
                let scan = rec
                    .scans
                    .full_scans
                    .iter()
                    .filter(|f| f.stop_ns >= step.ts_ns)
                    .min_by_key(|f| f.stop_ns);
                let span = scan.and_then(|f| Some((f.start_ns?, f.stop_ns)));
                let row = AdvisorScan {
                    t_s: step.ts_ns.saturating_sub(start) as f64 / 1e9,
                    scan_s: span.map(|(a, b)| (b - a) as f64 / 1e9),
                    kernel_scan_s: step.scan_time_s,
                    pages_before: before,
                    pages_to_scan: step.pages_to_scan,
                    cpu_percent_kernel: step.cpu_percent,
                    cpu_percent_measured: span.and_then(|(a, b)| {
                        cpu_share(
                            &rec.timeseries,
                            a.saturating_sub(start),
                            b.saturating_sub(start),
                        )
                    }),
                    bound: before.and_then(|prev| {
                        bound(
                            prev,
                            step.cpu_percent,
                            step.pages_to_scan,
                            max_cpu,
                            max_pages,
                        )
                    }),
                };
                before = Some(step.pages_to_scan);
                row
            })
            .collect();
        let off = |s: &AdvisorScan, t: i64| s.scan_s.map(|d| (d - t as f64).abs() / t as f64);
        let converged = target_s.and_then(|t| {
            scans
                .iter()
                .position(|s| off(s, t).is_some_and(|o| o <= ON_TARGET))
        });
        let swing = target_s.zip(converged).and_then(|(t, i)| {
            scans[i..]
                .iter()
                .filter_map(|s| off(s, t))
                .fold(None, |m: Option<f64>, o| Some(m.map_or(o, |m| m.max(o))))
                .map(|o| o * 100.0)
        });
        let held = |b: &str| {
            scans
                .iter()
                .filter(|s| s.bound.as_deref() == Some(b))
                .count()
        };
        Some(Self {
            target_s,
            max_cpu_percent: max_cpu,
            max_pages,
            first_cpu_since_boot: scans.first().is_some_and(|s| s.cpu_percent_kernel > 100),
            scans_to_converge: converged.map(|i| i + 1),
            swing_after_percent: swing,
            held_by_max_cpu: held("max_cpu"),
            held_by_min_cpu_floor: held("min_cpu_floor"),
            held_by_max_pages: held("max_pages"),
            scans,
        })
    }
}

/// Which of scan_time_advisor()'s bounds produced `chosen` from `prev` pages_to_scan and the
/// scan's `cpu_percent`: they are applied in order (max CPU, the 10 % floor, max pages), so the
/// last one whose value it equals is the one that held.
fn bound(
    prev: u64,
    cpu_percent: u64,
    chosen: u64,
    max_cpu: Option<i64>,
    max_pages: Option<i64>,
) -> Option<String> {
    let per_percent = (prev / cpu_percent.max(1)).max(1);
    if max_pages.is_some_and(|m| chosen == m as u64) {
        return Some("max_pages".into());
    }
    if chosen == per_percent * MIN_CPU_PERCENT {
        return Some("min_cpu_floor".into());
    }
    if max_cpu.is_some_and(|c| chosen == per_percent * c as u64) {
        return Some("max_cpu".into());
    }
    None
}

/// ksmd's CPU share (percent of one CPU) between `a` and `b` ns into the window, from its
/// cumulative CPU time in the samples, interpolated linearly.
fn cpu_share(samples: &[Sample], a: u64, b: u64) -> Option<f64> {
    if b <= a {
        return None;
    }
    let at = |t: u64| -> Option<f64> {
        let i = samples.iter().position(|s| s.t_ns >= t)?;
        let hi = &samples[i];
        if i == 0 {
            return (hi.t_ns == t).then_some(hi.counters.ksmd_cpu_ns as f64);
        }
        let lo = &samples[i - 1];
        let f = (t - lo.t_ns) as f64 / (hi.t_ns - lo.t_ns).max(1) as f64;
        Some(
            lo.counters.ksmd_cpu_ns as f64
                + f * (hi.counters.ksmd_cpu_ns as f64 - lo.counters.ksmd_cpu_ns as f64),
        )
    };
    Some((at(b)? - at(a)?) / (b - a) as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_one_whose_value_was_chosen() {
        // 1000 pages at 20 % CPU: 50 pages per percent.
        assert_eq!(
            bound(1000, 20, 3500, Some(70), Some(30000)).as_deref(),
            Some("max_cpu")
        );
        assert_eq!(
            bound(1000, 20, 500, Some(70), Some(30000)).as_deref(),
            Some("min_cpu_floor")
        );
        assert_eq!(
            bound(1000, 20, 2000, Some(70), Some(2000)).as_deref(),
            Some("max_pages")
        );
        assert_eq!(bound(1000, 20, 1234, Some(70), Some(30000)), None);
        // cpu_percent is at least 1 in the kernel.
        assert_eq!(
            bound(1000, 0, 10_000, Some(70), Some(30000)).as_deref(),
            Some("min_cpu_floor")
        );
    }

    #[test]
    fn cpu_share_interpolates_the_samples() {
        let sample = |t_s: u64, cpu_ms: u64| {
            let mut s = Sample {
                t_ns: t_s * 1_000_000_000,
                ..Default::default()
            };
            s.counters.ksmd_cpu_ns = cpu_ms * 1_000_000;
            s
        };
        let samples = [sample(0, 0), sample(1, 200), sample(2, 600)];
        // 0.5 s → 1.5 s: 100 ms → 400 ms, 300 ms of CPU in 1 s.
        let share = cpu_share(&samples, 500_000_000, 1_500_000_000).unwrap();
        assert!((share - 30.0).abs() < 1e-9, "{share}");
        assert_eq!(cpu_share(&samples, 500_000_000, 3_000_000_000), None);
    }
}
