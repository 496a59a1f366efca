//! One configuration of a sweep, summarized from its recording alone, and the choices across
//! configurations: the Pareto front of memory saved vs ksmd CPU, and the cheapest
//! configuration that reaches a share of the best saving.
use serde::{Deserialize, Serialize};

use crate::{
    knobs::KnobSettings, recording::Recording, report::Report, sample::SETTLE_THRESHOLD,
    sample::settle_time_s,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub index: usize,
    pub label: String,
    pub knobs: KnobSettings,
    /// File name of the recording, in the sweep's directory.
    pub recording: String,
    pub ended_by: String,
    pub duration_s: f64,
    /// Memory saved, (pages_sharing + ksm_zero_pages) × page size, at settle and at the end.
    pub saved_mib_settle: Option<f64>,
    pub saved_mib_end: f64,
    pub general_profit_mib_settle: Option<f64>,
    pub general_profit_mib_end: f64,
    pub settle_s: Option<f64>,
    pub ksmd_cpu_percent: f64,
    /// ksmd CPU seconds spent per MiB saved at the end.
    pub cpu_s_per_mib_saved: Option<f64>,
    pub merges_per_s: f64,
    pub full_scan_p50_ms: f64,
    pub merge_latency_p50_ns: u64,
    pub merge_latency_p99_ns: u64,
    /// The workload's own writes to KSM pages (COW faults), p99.
    pub cow_fault_p99_ns: u64,
    pub lost_events: u64,
}

const MIB: f64 = (1u64 << 20) as f64;

pub fn label(knobs: &KnobSettings) -> String {
    let mut parts = Vec::new();
    if let Some(a) = knobs.advisor.as_deref().filter(|a| *a != "none") {
        parts.push(format!("advisor={a}"));
    }
    if let Some(p) = knobs.pages_to_scan {
        parts.push(format!("pages_to_scan={p}"));
    }
    if let Some(s) = knobs.sleep_ms {
        parts.push(format!("sleep_ms={s}"));
    }
    let on = |b: bool| if b { "on" } else { "off" };
    if let Some(s) = knobs.smart_scan {
        parts.push(format!("smart_scan={}", on(s)));
    }
    if let Some(z) = knobs.use_zero_pages {
        parts.push(format!("use_zero_pages={}", on(z)));
    }
    if let Some(m) = knobs.max_page_sharing {
        parts.push(format!("max_page_sharing={m}"));
    }
    if parts.is_empty() {
        "current knobs".into()
    } else {
        parts.join(" ")
    }
}

pub fn summarize(
    index: usize,
    knobs: &KnobSettings,
    recording: &str,
    rec: &Recording,
) -> ConfigSummary {
    let report = Report::from_recording(rec);
    let page = rec.meta.page_size as f64;
    let saved = |s: &crate::recording::schema::Sample| {
        (s.counters.ksm("pages_sharing") + s.counters.ksm("ksm_zero_pages")) as f64 * page / MIB
    };
    let settle_s = settle_time_s(&rec.timeseries, SETTLE_THRESHOLD);
    let at_settle = settle_s.and_then(|t| rec.timeseries.iter().find(|s| s.t_ns as f64 / 1e9 >= t));
    let end = rec.timeseries.last();
    let saved_end = end.map(saved).unwrap_or(0.0);
    let cpu_s = rec
        .counters_end
        .ksmd_cpu_ns
        .saturating_sub(rec.counters_start.ksmd_cpu_ns) as f64
        / 1e9;
    let merges: u64 = rec.processes.iter().map(|p| p.stats.merges).sum();
    let cow_p99 = rec
        .meta
        .workload
        .iter()
        .flat_map(|w| &w.workers)
        .map(|w| w.write_fault_ns.percentile(99.0))
        .max()
        .unwrap_or(0);
    ConfigSummary {
        index,
        label: label(knobs),
        knobs: knobs.clone(),
        recording: recording.to_owned(),
        ended_by: rec.meta.ended_by.clone(),
        duration_s: report.duration_s,
        saved_mib_settle: at_settle.map(saved),
        saved_mib_end: saved_end,
        general_profit_mib_settle: at_settle.map(|s| s.counters.ksm("general_profit") as f64 / MIB),
        general_profit_mib_end: end
            .map(|s| s.counters.ksm("general_profit") as f64 / MIB)
            .unwrap_or(0.0),
        settle_s,
        ksmd_cpu_percent: report.scans.ksmd_cpu_percent_schedstat,
        cpu_s_per_mib_saved: (saved_end > 0.0).then(|| cpu_s / saved_end),
        merges_per_s: merges as f64 / report.duration_s,
        full_scan_p50_ms: report.scans.full_scan_ns.p50 as f64 / 1e6,
        merge_latency_p50_ns: report.merge_latency.all_ns.p50,
        merge_latency_p99_ns: report.merge_latency.all_ns.p99,
        cow_fault_p99_ns: cow_p99,
        lost_events: report.lost_events,
    }
}

/// Which points are on the Pareto front when more saved memory and less CPU are better.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(cpu, saved)| {
            !points
                .iter()
                .any(|&(c, s)| c <= cpu && s >= saved && (c < cpu || s > saved))
        })
        .collect()
}

/// The configuration with the least ksmd CPU among those saving at least `share` of the best
/// saving.
pub fn cheapest_near_best(summaries: &[ConfigSummary], share: f64) -> Option<&ConfigSummary> {
    let best = summaries
        .iter()
        .map(|s| s.saved_mib_end)
        .fold(0.0_f64, f64::max);
    if best <= 0.0 {
        return None;
    }
    summaries
        .iter()
        .filter(|s| s.saved_mib_end >= share * best)
        .min_by(|a, b| a.ksmd_cpu_percent.total_cmp(&b.ksmd_cpu_percent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_undominated_points() {
        // (cpu %, saved MiB)
        let points = [
            (1.0, 10.0),
            (2.0, 20.0),
            (3.0, 15.0),
            (2.0, 20.0),
            (0.5, 5.0),
        ];
        assert_eq!(pareto_front(&points), [true, true, false, true, true]);
    }

    #[test]
    fn cheapest_configuration_near_the_best_saving() {
        let mk = |i: usize, cpu: f64, saved: f64| ConfigSummary {
            index: i,
            label: format!("c{i}"),
            knobs: KnobSettings::default(),
            recording: String::new(),
            ended_by: "duration".into(),
            duration_s: 10.0,
            saved_mib_settle: None,
            saved_mib_end: saved,
            general_profit_mib_settle: None,
            general_profit_mib_end: saved,
            settle_s: None,
            ksmd_cpu_percent: cpu,
            cpu_s_per_mib_saved: None,
            merges_per_s: 0.0,
            full_scan_p50_ms: 0.0,
            merge_latency_p50_ns: 0,
            merge_latency_p99_ns: 0,
            cow_fault_p99_ns: 0,
            lost_events: 0,
        };
        let s = [mk(0, 9.0, 100.0), mk(1, 3.0, 96.0), mk(2, 1.0, 50.0)];
        assert_eq!(cheapest_near_best(&s, 0.95).unwrap().index, 1);
        assert_eq!(cheapest_near_best(&s, 0.99).unwrap().index, 0);
        assert!(cheapest_near_best(&[mk(0, 1.0, 0.0)], 0.95).is_none());
    }

    #[test]
    fn labels_name_only_what_is_set() {
        let k = KnobSettings {
            pages_to_scan: Some(100),
            sleep_ms: Some(20),
            smart_scan: Some(false),
            ..Default::default()
        };
        assert_eq!(label(&k), "pages_to_scan=100 sleep_ms=20 smart_scan=off");
        assert_eq!(label(&KnobSettings::default()), "current knobs");
    }
}
