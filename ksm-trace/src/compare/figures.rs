//! The figures `compare` sets side by side, each normalised to the work done, taken from one
//! recording: the run's value, and the within-run units it is made of (the 1 s samples of the
//! counter time series, or the full scans), for an interval when each side is one run.
use serde::{Deserialize, Serialize};

use crate::{
    recording::Recording,
    report::{Report, phases::Phase},
};

/// Which way a figure is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    Higher,
    Lower,
    /// A rate that follows the workload, not ksmd's efficiency: compared, never judged.
    Neither,
}

/// One figure of one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    /// None: the run does not have it (a kernel without pages_scanned, no merges timed).
    pub value: Option<f64>,
    /// The within-run units it is the mean of, and what they are (empty: none).
    pub units: Vec<f64>,
    pub units_are: &'static str,
    /// What a single run's noise floor is a share of, if not the figure itself: a phase's
    /// share moves between runs of one configuration by more than its samples say (which pages
    /// a run's first scans met), so its floor is taken of the run's ns per page overall.
    #[serde(default)]
    pub floor_of: Option<f64>,
}

/// Every figure of `rec`, in the order `compare` prints them.
pub fn of(rec: &Recording) -> Vec<Figure> {
    let report = Report::from_recording(rec);
    let cpu_s = rec
        .counters_end
        .ksmd_cpu_ns
        .saturating_sub(rec.counters_start.ksmd_cpu_ns) as f64
        / 1e9;
    let duration_s = rec.meta.duration_ns().max(1) as f64 / 1e9;
    let pages = report.scans.pages_scanned.map(|p| p as f64);
    let intervals = intervals(rec);
    let figure =
        |name: &str, unit, better, value: Option<f64>, units: Vec<f64>, units_are| Figure {
            name: name.to_owned(),
            unit,
            better,
            value: value.filter(|v| v.is_finite()),
            units,
            units_are,
            floor_of: None,
        };
    let samples = "1 s samples";
    let mut figures = vec![
        figure(
            "pages scanned per ksmd CPU-second",
            "pages/s",
            Better::Higher,
            pages.map(|p| p / cpu_s),
            per_interval(&intervals, |i| i.pages / i.cpu_s),
            samples,
        ),
        figure(
            "ns per page scanned",
            "ns",
            Better::Lower,
            pages.map(|p| cpu_s * 1e9 / p),
            per_interval(&intervals, |i| i.cpu_s * 1e9 / i.pages),
            samples,
        ),
        figure(
            "full-scan time",
            "ms",
            Better::Lower,
            (report.scans.full_scans > 0).then(|| report.scans.full_scan_ns.p50 as f64 / 1e6),
            rec.scans
                .full_scans
                .iter()
                .filter_map(|s| s.duration_ns())
                .map(|ns| ns as f64 / 1e6)
                .collect(),
            "full scans",
        ),
        figure(
            "merges per second",
            "/s",
            Better::Neither,
            Some(
                report
                    .processes
                    .iter()
                    .map(|p| p.counts.merges)
                    .sum::<u64>() as f64
                    / duration_s,
            ),
            per_interval(&intervals, |i| i.merges / i.seconds),
            samples,
        ),
        figure(
            "merge latency p50",
            "ns",
            Better::Lower,
            (report.merge_latency.timed > 0).then_some(report.merge_latency.all_ns.p50 as f64),
            // No within-run unit: which merges a run's windows caught varies from run to run
            // more than inside it, so latency is judged over repeated runs only.
            Vec::new(),
            "",
        ),
        figure(
            "merge latency p99",
            "ns",
            Better::Lower,
            (report.merge_latency.timed > 0).then_some(report.merge_latency.all_ns.p99 as f64),
            Vec::new(),
            "",
        ),
        figure(
            "COW breaks per second",
            "/s",
            Better::Neither,
            report
                .kernel_deltas
                .get("cow_ksm")
                .map(|&c| c as f64 / duration_s),
            per_interval(&intervals, |i| i.cow / i.seconds),
            samples,
        ),
        figure(
            "MiB saved per ksmd CPU-second",
            "MiB/s",
            Better::Higher,
            (cpu_s > 0.0).then(|| report.saved_mib_end / cpu_s),
            Vec::new(),
            "",
        ),
        figure(
            "memory saved",
            "MiB",
            Better::Higher,
            Some(report.saved_mib_end),
            Vec::new(),
            "",
        ),
    ];
    if let Some(phases) = &report.phases {
        let overall = figures.iter().find(|f| f.name == "ns per page scanned");
        let per_page = overall.and_then(|f| f.value);
        // How well the run's ns per page is known (its 1 s samples): a phase's ns per page is
        // that × its share, so its interval carries both.
        let overall_rel = overall.map_or(0.0, |f| {
            let (m, h) = crate::stats::mean_ci(&f.units);
            h.map_or(0.0, |h| h / m)
        });
        for p in phases.phases.iter().filter(|p| p.phase != Phase::Other) {
            let rel = |v: f64| {
                let share_rel = (p.share_ci.1 - p.share_ci.0) / 2.0 / p.share;
                v * share_rel.hypot(overall_rel)
            };
            // A share known no better than ±WIDE (the report's "too wide to read finely") gives
            // no interval, so no single-run verdict: with 40-odd samples, one of seven phases
            // would differ by chance in two runs of one configuration.
            let known = (p.share_ci.1 - p.share_ci.0) / 2.0 <= crate::report::phases::WIDE;
            let interval = |v: Option<f64>| match v {
                Some(v) if p.share > 0.0 && known => vec![v - rel(v), v + rel(v)],
                _ => Vec::new(),
            };
            figures.push(Figure {
                name: format!("ns per page: {}", p.name),
                unit: "ns",
                better: Better::Lower,
                value: p.ns_per_page,
                // Not units: the interval, carried as [value − half, value + half].
                units: interval(p.ns_per_page),
                units_are: "share's interval",
                floor_of: per_page,
            });
            // A change in the merge path shows per merge, whatever the pages scanned.
            if p.ns_per_merge.is_some() {
                figures.push(Figure {
                    name: format!("ns per merge: {}", p.name),
                    unit: "ns",
                    better: Better::Lower,
                    value: p.ns_per_merge,
                    units: interval(p.ns_per_merge),
                    units_are: "share's interval",
                    floor_of: None,
                });
            }
        }
    }
    figures
}

/// What one interval of the counter time series saw.
struct Interval {
    seconds: f64,
    cpu_s: f64,
    pages: f64,
    merges: f64,
    cow: f64,
}

fn intervals(rec: &Recording) -> Vec<Interval> {
    rec.timeseries
        .windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let d = |name: &str| (b.counters.ksm(name) - a.counters.ksm(name)) as f64;
            let vm = |name: &str| {
                (b.counters.vmstat.get(name).copied().unwrap_or(0)
                    - a.counters.vmstat.get(name).copied().unwrap_or(0)) as f64
            };
            Interval {
                seconds: b.t_ns.saturating_sub(a.t_ns) as f64 / 1e9,
                cpu_s: b
                    .counters
                    .ksmd_cpu_ns
                    .saturating_sub(a.counters.ksmd_cpu_ns) as f64
                    / 1e9,
                pages: d("pages_scanned"),
                merges: b.merges.saturating_sub(a.merges) as f64,
                cow: vm("cow_ksm"),
            }
        })
        // The last interval is cut short by the end of the window; a run=2 reset (full_scans
        // going back) makes counters meaningless across it.
        .filter(|i| i.seconds >= 0.5 && i.pages >= 0.0)
        .collect()
}

fn per_interval(intervals: &[Interval], f: impl Fn(&Interval) -> f64) -> Vec<f64> {
    intervals
        .iter()
        .filter(|i| i.cpu_s > 0.0 && i.pages > 0.0)
        .map(f)
        .filter(|v| v.is_finite())
        .collect()
}
