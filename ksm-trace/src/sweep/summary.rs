//! One configuration of a sweep, summarized from its recording alone, and the choices across
//! configurations: the Pareto front of memory saved vs ksmd CPU, and the cheapest
//! configuration that reaches a share of the best saving.
use serde::{Deserialize, Serialize};

use crate::{
    recording::Recording, report::Report, run::knobs::KnobSettings, sample::SETTLE_THRESHOLD,
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
    /// Memory the workload saved at settle and at the end: its processes' share of the KSM
    /// savings (their pages' split and zero-page merges, from the page tables at the end).
    /// Recordings without that split: (pages_sharing + ksm_zero_pages) × page size.
    pub saved_mib_settle: Option<f64>,
    pub saved_mib_end: f64,
    /// What the machine's counters count as saved at the end that is not the workload's: KSM
    /// pages of exited processes ksmd had not cleaned up yet, and other processes' merges.
    #[serde(default)]
    pub not_workload_mib_end: Option<f64>,
    pub general_profit_mib_settle: Option<f64>,
    /// None where the kernel has no general_profit (before 6.6).
    pub general_profit_mib_end: Option<f64>,
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
    /// The KSM-off run of the same workload (`--baseline`).
    pub baseline: bool,
    /// The workload's own load (vms with sysbench): transactions per second summed over the
    /// guests, and the worst guest's p95 latency. None without a load, or when a guest's load
    /// had not finished.
    pub load_tps: Option<f64>,
    pub load_p95_ms: Option<f64>,
    /// load_tps ÷ the baseline's load_tps: what KSM at this configuration leaves of the
    /// workload's throughput (1.0 = no impact).
    pub impact: Option<f64>,
}

const MIB: f64 = (1u64 << 20) as f64;

pub fn label(knobs: &KnobSettings) -> String {
    let mut parts = Vec::new();
    if let Some(a) = knobs.advisor.as_deref().filter(|a| *a != "none") {
        parts.push(format!("advisor={a}"));
        let b = &knobs.advisor_bounds;
        if let Some(t) = b.target_scan_time_s {
            parts.push(format!("target={t}s"));
        }
        if let Some(c) = b.max_cpu {
            parts.push(format!("max_cpu={c}%"));
        }
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
    // Absent before 6.6 (Debian 12's 6.1): not available, never a measured 0.
    let profit = |s: &crate::recording::schema::Sample| {
        s.counters
            .ksm
            .get("general_profit")
            .map(|&p| p as f64 / MIB)
    };
    let settle_s = settle_time_s(&rec.timeseries, SETTLE_THRESHOLD);
    let at_settle = settle_s.and_then(|t| rec.timeseries.iter().find(|s| s.t_ns as f64 / 1e9 >= t));
    let end = rec.timeseries.last();
    let machine_end = end.map(saved).unwrap_or(0.0);
    // The workload's own, where the end snapshot split the savings; the rest, assumed to stay
    // as it was at the end, is taken off the machine's figure at settle too.
    let not_workload = workload_saved_mib(rec).map(|own| machine_end - own);
    let saved_end = machine_end - not_workload.unwrap_or(0.0);
    let saved_at =
        |s: &crate::recording::schema::Sample| (saved(s) - not_workload.unwrap_or(0.0)).max(0.0);
    let cpu_s = rec
        .counters_end
        .ksmd_cpu_ns
        .saturating_sub(rec.counters_start.ksmd_cpu_ns) as f64
        / 1e9;
    let merges: u64 = rec.processes.iter().map(|p| p.stats.counts.merges).sum();
    let cow_p99 = rec
        .meta
        .workload
        .iter()
        .flat_map(|w| &w.workers)
        .map(|w| w.write_fault_ns.percentile(99.0))
        .max()
        .unwrap_or(0);
    let loads: Vec<_> = rec
        .meta
        .workload
        .iter()
        .flat_map(|w| &w.workers)
        .map(|w| w.load.as_ref())
        .collect();
    let all_loads: Option<Vec<_>> = if loads.is_empty() {
        None
    } else {
        loads.into_iter().collect()
    };
    ConfigSummary {
        index,
        label: label(knobs),
        knobs: knobs.clone(),
        recording: recording.to_owned(),
        ended_by: rec.meta.ended_by.clone(),
        duration_s: report.duration_s,
        saved_mib_settle: at_settle.map(saved_at),
        saved_mib_end: saved_end,
        not_workload_mib_end: not_workload,
        general_profit_mib_settle: at_settle.and_then(profit),
        general_profit_mib_end: end.and_then(profit),
        settle_s,
        ksmd_cpu_percent: report.scans.ksmd_cpu_percent_schedstat,
        cpu_s_per_mib_saved: (saved_end > 0.0).then(|| cpu_s / saved_end),
        merges_per_s: merges as f64 / report.duration_s,
        full_scan_p50_ms: report.scans.full_scan_ns.p50 as f64 / 1e6,
        merge_latency_p50_ns: report.merge_latency.all_ns.p50,
        merge_latency_p99_ns: report.merge_latency.all_ns.p99,
        cow_fault_p99_ns: cow_p99,
        lost_events: report.lost_events,
        baseline: false,
        load_tps: all_loads
            .as_ref()
            .map(|l| l.iter().map(|l| l.transactions_per_sec).sum()),
        load_p95_ms: all_loads
            .as_ref()
            .map(|l| l.iter().map(|l| l.latency_ms_p95).fold(0.0, f64::max)),
        impact: None,
    }
}

/// The workload's processes' share of the KSM savings at the window's end, MiB (None: the
/// recording has no split, or no workload).
fn workload_saved_mib(rec: &Recording) -> Option<f64> {
    let savings = rec
        .sharing
        .as_ref()?
        .end_snapshot
        .as_ref()?
        .savings
        .as_ref()?;
    let pids: Vec<u32> = rec
        .meta
        .workload
        .as_ref()?
        .workers
        .iter()
        .map(|w| w.pid)
        .collect();
    let pages: f64 = savings
        .processes
        .iter()
        .filter(|p| pids.contains(&p.pid))
        .map(|p| p.saved_pages + p.zero_pages as f64)
        .sum();
    Some(pages * savings.page_size as f64 / MIB)
}

/// Marks the baseline's impact 1 and every other configuration's as its throughput over the
/// baseline's, where both measured their load.
pub fn set_impact(summaries: &mut [ConfigSummary]) {
    let Some(base) = summaries
        .iter()
        .find(|s| s.baseline)
        .and_then(|s| s.load_tps)
        .filter(|&t| t > 0.0)
    else {
        return;
    };
    for s in summaries {
        s.impact = s.load_tps.map(|t| t / base);
    }
}

/// Which configurations are on the Pareto front of saved memory vs ksmd CPU; the baseline
/// (KSM off) is a reference, never a choice.
pub fn front(summaries: &[ConfigSummary]) -> Vec<bool> {
    let candidates: Vec<&ConfigSummary> = summaries.iter().filter(|s| !s.baseline).collect();
    let on = pareto_front(
        &candidates
            .iter()
            .map(|s| (s.ksmd_cpu_percent, s.saved_mib_end))
            .collect::<Vec<_>>(),
    );
    let mut on = on.into_iter();
    summaries
        .iter()
        .map(|s| !s.baseline && on.next().unwrap_or(false))
        .collect()
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
        .filter(|s| !s.baseline && s.saved_mib_end >= share * best)
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
            ksmd_cpu_percent: cpu,
            ..summary_with(saved)
        };
        let s = [mk(0, 9.0, 100.0), mk(1, 3.0, 96.0), mk(2, 1.0, 50.0)];
        assert_eq!(cheapest_near_best(&s, 0.95).unwrap().index, 1);
        assert_eq!(cheapest_near_best(&s, 0.99).unwrap().index, 0);
        assert!(cheapest_near_best(&[mk(0, 1.0, 0.0)], 0.95).is_none());
    }

    #[test]
    fn impact_is_throughput_over_the_baselines() {
        let mk = |baseline: bool, tps: Option<f64>| ConfigSummary {
            baseline,
            load_tps: tps,
            ..summary_with(0.0)
        };
        let mut s = [mk(true, Some(80.0)), mk(false, Some(60.0)), mk(false, None)];
        set_impact(&mut s);
        assert_eq!(s.map(|s| s.impact), [Some(1.0), Some(0.75), None]);
        let mut no_base = [mk(false, Some(60.0))];
        set_impact(&mut no_base);
        assert_eq!(no_base[0].impact, None);
    }

    fn summary_with(saved: f64) -> ConfigSummary {
        ConfigSummary {
            index: 0,
            label: String::new(),
            knobs: KnobSettings::default(),
            recording: String::new(),
            ended_by: "duration".into(),
            duration_s: 10.0,
            saved_mib_settle: None,
            saved_mib_end: saved,
            not_workload_mib_end: None,
            general_profit_mib_settle: None,
            general_profit_mib_end: Some(saved),
            settle_s: None,
            ksmd_cpu_percent: 0.0,
            cpu_s_per_mib_saved: None,
            merges_per_s: 0.0,
            full_scan_p50_ms: 0.0,
            merge_latency_p50_ns: 0,
            merge_latency_p99_ns: 0,
            cow_fault_p99_ns: 0,
            lost_events: 0,
            baseline: false,
            load_tps: None,
            load_p95_ms: None,
            impact: None,
        }
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
