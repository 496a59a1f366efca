//! `ksm-trace sweep`: the KSM study's scan-rate characterization in one command. For every
//! combination of knob values: a fresh workload and a recording kept in the output directory;
//! then one summary (terminal table, summary.csv, summary.json, charts) computed from those
//! recordings only, and the cheapest configuration that reaches 95 % of the best saving.
pub mod summary;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    plot::{self, Series},
    probes::LatencyMode,
    recorder::{self, RecordOptions},
    report::histogram::fmt_ns,
    run::knobs::KnobSettings,
};
pub use summary::ConfigSummary;

#[derive(Clone, Debug, Default)]
pub struct SweepOptions {
    pub workload: String,
    pub pages_to_scan: Vec<u32>,
    pub sleep_ms: Vec<u32>,
    pub smart_scan: Vec<bool>,
    pub use_zero_pages: Vec<bool>,
    pub max_page_sharing: Vec<u32>,
    pub advisor: Vec<String>,
    /// Applied to the configurations with the scan-time advisor.
    pub advisor_bounds: crate::run::knobs::AdvisorBounds,
    /// Each configuration's duration, or its timeout with `until_settled`.
    pub duration: Duration,
    pub until_settled: bool,
    pub interval: Duration,
    pub merge_latency: LatencyMode,
    pub out_dir: PathBuf,
    /// Record the workload once with KSM off first, and give each configuration's impact on
    /// the workload's own throughput against it.
    pub baseline: bool,
}

const BASELINE_LABEL: &str = "KSM off (baseline)";

/// Share of the best saving the closing recommendation must reach.
pub const NEAR_BEST: f64 = 0.95;

/// Every combination of the given knob values; a dimension left empty keeps the current value.
pub fn combinations(o: &SweepOptions) -> Vec<KnobSettings> {
    fn axis<T: Clone>(values: &[T]) -> Vec<Option<T>> {
        if values.is_empty() {
            vec![None]
        } else {
            values.iter().cloned().map(Some).collect()
        }
    }
    let mut out = Vec::new();
    for advisor in axis(&o.advisor) {
        // With the advisor on, it sets pages_to_scan itself: that axis collapses.
        let pages = if advisor.as_deref() == Some("scan-time") {
            vec![None]
        } else {
            axis(&o.pages_to_scan)
        };
        for &pages_to_scan in &pages {
            for &sleep_ms in &axis(&o.sleep_ms) {
                for &smart_scan in &axis(&o.smart_scan) {
                    for &use_zero_pages in &axis(&o.use_zero_pages) {
                        for &max_page_sharing in &axis(&o.max_page_sharing) {
                            out.push(KnobSettings {
                                pages_to_scan,
                                sleep_ms,
                                use_zero_pages,
                                smart_scan,
                                max_page_sharing,
                                advisor: advisor.clone(),
                                advisor_bounds: if advisor.as_deref() == Some("scan-time") {
                                    o.advisor_bounds.clone()
                                } else {
                                    Default::default()
                                },
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

pub async fn run(o: &SweepOptions, command_line: Vec<String>) -> Result<Vec<ConfigSummary>> {
    let configs = combinations(o);
    for c in &configs {
        c.validate()?;
    }
    let spec = crate::workload::WorkloadSpec::parse(&o.workload)?;
    // A workload with a load of its own runs each configuration until the load ends.
    let duration = match spec.load_time() {
        Some(load) => load + recorder::DEFAULT_TIMEOUT,
        None => o.duration,
    };
    // The baseline (KSM off) first: None knobs, recorded with ksmd stopped.
    let runs: Vec<Option<&KnobSettings>> = o
        .baseline
        .then_some(None)
        .into_iter()
        .chain(configs.iter().map(Some))
        .collect();
    std::fs::create_dir_all(&o.out_dir).with_context(|| {
        format!(
            "cannot create {}: choose a writable directory with -o",
            o.out_dir.display()
        )
    })?;
    let started = Instant::now();
    let mut summaries = Vec::new();
    for (k, knobs) in runs.iter().enumerate() {
        let label = knobs.map_or(BASELINE_LABEL.into(), summary::label);
        let eta = match k {
            0 => String::new(),
            _ => format!(
                ", ETA {:.0} s",
                started.elapsed().as_secs_f64() / k as f64 * (runs.len() - k) as f64
            ),
        };
        eprintln!(
            "ksm-trace sweep: configuration {} of {}: {label} (elapsed {:.0} s{eta})",
            k + 1,
            runs.len(),
            started.elapsed().as_secs_f64()
        );
        let file = match knobs {
            Some(_) => format!("config-{:02}.json", k + 1),
            None => "baseline.json".into(),
        };
        let opts = RecordOptions {
            duration: Some(duration),
            workload: Some(o.workload.clone()),
            pids: Vec::new(),
            output: o.out_dir.join(&file),
            knobs: knobs.cloned().unwrap_or_default(),
            probes: crate::probes::ProbeOptions::new(o.merge_latency),
            progress: false,
            refresh: false,
            interval: o.interval,
            until_settled: o.until_settled,
            settle_margin: 0,
            // Each configuration is exactly the knobs the sweep names.
            auto_scan: false,
            until_full_scans: None,
            ksm_off: knobs.is_none(),
        };
        let rec = recorder::record(&opts, command_line.clone()).await?;
        rec.write(&opts.output)?;
        let mut summary = summary::summarize(k + 1, &opts.knobs, &file, &rec);
        if knobs.is_none() {
            summary.baseline = true;
            summary.label = BASELINE_LABEL.into();
        }
        summaries.push(summary);
        if matches!(rec.meta.ended_by.as_str(), "interrupt" | "terminate") {
            eprintln!(
                "ksm-trace sweep: interrupted; keeping the {} configuration(s) recorded so far",
                k + 1
            );
            break;
        }
    }
    summary::set_impact(&mut summaries);
    write_outputs(&summaries, &o.out_dir)?;
    Ok(summaries)
}

fn write_outputs(summaries: &[ConfigSummary], dir: &Path) -> Result<()> {
    if summaries.is_empty() {
        bail!("no configuration was recorded");
    }
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(summaries)? + "\n",
    )?;
    std::fs::write(dir.join("summary.csv"), csv(summaries))?;
    let front = summary::front(summaries);
    let mut front_points: Vec<(f64, f64)> = summaries
        .iter()
        .zip(&front)
        .filter(|(_, on)| **on)
        .map(|(s, _)| (s.ksmd_cpu_percent, s.saved_mib_end))
        .collect();
    front_points.sort_by(|a, b| a.0.total_cmp(&b.0));
    plot::draw(
        &dir.join("saved-vs-cpu.svg"),
        "Memory saved vs ksmd CPU (each point a configuration)",
        "ksmd CPU, % of one CPU",
        "saved MiB at the end",
        &[
            Series {
                name: "configurations".into(),
                points: summaries
                    .iter()
                    .map(|s| (s.ksmd_cpu_percent, s.saved_mib_end))
                    .collect(),
                line: false,
            },
            Series {
                name: "Pareto front".into(),
                points: front_points,
                line: true,
            },
        ],
    )?;
    let mut by_sleep: Vec<Series> = Vec::new();
    for s in summaries {
        let (Some(p), Some(t)) = (s.knobs.pages_to_scan, s.settle_s) else {
            continue;
        };
        let name = format!(
            "sleep_ms={}",
            s.knobs.sleep_ms.map_or("current".into(), |v| v.to_string())
        );
        match by_sleep.iter_mut().find(|x| x.name == name) {
            Some(series) => series.points.push((p as f64, t)),
            None => by_sleep.push(Series {
                name,
                points: vec![(p as f64, t)],
                line: true,
            }),
        }
    }
    for s in &mut by_sleep {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    if !by_sleep.is_empty() {
        plot::draw(
            &dir.join("settle-vs-pages-to-scan.svg"),
            "Time to settle vs pages_to_scan",
            "pages_to_scan",
            "seconds to settle",
            &by_sleep,
        )?;
    }
    Ok(())
}

fn csv(summaries: &[ConfigSummary]) -> String {
    let mut out = String::from(
        "index,configuration,recording,ended_by,duration_s,saved_mib_settle,saved_mib_end,general_profit_mib_settle,general_profit_mib_end,settle_s,ksmd_cpu_percent,cpu_s_per_mib_saved,merges_per_s,full_scan_p50_ms,merge_latency_p50_ns,merge_latency_p99_ns,cow_fault_p99_ns,lost_events,baseline,load_tps,load_p95_ms,impact,not_workload_mib_end\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for s in summaries {
        let _ = writeln!(
            out,
            "{},\"{}\",{},{},{:.3},{},{:.3},{},{},{},{:.3},{},{:.1},{:.3},{},{},{},{},{},{},{},{},{}",
            s.index,
            s.label,
            s.recording,
            s.ended_by,
            s.duration_s,
            opt(s.saved_mib_settle),
            s.saved_mib_end,
            opt(s.general_profit_mib_settle),
            opt(s.general_profit_mib_end),
            opt(s.settle_s),
            s.ksmd_cpu_percent,
            opt(s.cpu_s_per_mib_saved),
            s.merges_per_s,
            s.full_scan_p50_ms,
            s.merge_latency_p50_ns,
            s.merge_latency_p99_ns,
            s.cow_fault_p99_ns,
            s.lost_events,
            s.baseline,
            opt(s.load_tps),
            opt(s.load_p95_ms),
            opt(s.impact),
            opt(s.not_workload_mib_end)
        );
    }
    out
}

/// The terminal table and the closing recommendation.
pub fn render(summaries: &[ConfigSummary]) -> String {
    let mut o = String::new();
    let loaded = summaries.iter().any(|s| s.load_tps.is_some());
    let _ = write!(
        o,
        "{:>3}  {:<44} {:>9} {:>9} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>5}",
        "#",
        "configuration",
        "saved MiB",
        "profitMiB",
        "settle s",
        "CPU %",
        "CPU s/MiB",
        "merges/s",
        "scan p50",
        "lat p50",
        "lat p99",
        "lost"
    );
    if loaded {
        let _ = write!(o, " {:>8} {:>8} {:>7}", "tps", "p95 ms", "impact");
    }
    let _ = writeln!(o);
    let front = summary::front(summaries);
    for (s, on_front) in summaries.iter().zip(front) {
        let load = if loaded {
            let opt =
                |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
            format!(
                " {:>8} {:>8} {:>7}",
                opt(s.load_tps, 1),
                opt(s.load_p95_ms, 1),
                opt(s.impact, 3)
            )
        } else {
            String::new()
        };
        let _ = write!(
            o,
            "{:>3}{} {:<44} {:>9.1} {:>9} {:>8} {:>7.2} {:>9} {:>8.0} {:>7.1}ms {:>8} {:>8} {:>5}",
            s.index,
            if on_front { "*" } else { " " },
            s.label,
            s.saved_mib_end,
            s.general_profit_mib_end
                .map_or("n/a".into(), |p| format!("{p:.1}")),
            s.settle_s.map_or("-".into(), |t| format!("{t:.1}")),
            s.ksmd_cpu_percent,
            s.cpu_s_per_mib_saved
                .map_or("-".into(), |v| format!("{v:.4}")),
            s.merges_per_s,
            s.full_scan_p50_ms,
            fmt_ns(s.merge_latency_p50_ns),
            fmt_ns(s.merge_latency_p99_ns),
            s.lost_events
        );
        let _ = writeln!(o, "{load}");
    }
    let _ = writeln!(o, "(* on the Pareto front of saved memory vs ksmd CPU)");
    let others: Vec<String> = summaries
        .iter()
        .filter_map(|s| {
            s.not_workload_mib_end
                .filter(|&m| m.abs() >= 0.05)
                .map(|m| format!("#{} {m:.1} MiB", s.index))
        })
        .collect();
    if !others.is_empty() {
        let _ = writeln!(
            o,
            "(saved MiB is the workload's own, from its processes' page tables; the machine's counters also counted, at the end: {} — KSM pages of processes that exited before ksmd passed again, and other processes' merges)",
            others.join(", ")
        );
    }
    if loaded {
        let _ = writeln!(
            o,
            "(tps: the guests' sysbench transactions/s summed; p95 ms: the worst guest's; impact: tps ÷ the KSM-off baseline's)"
        );
    }
    match summary::cheapest_near_best(summaries, NEAR_BEST) {
        Some(s) => {
            let _ = writeln!(
                o,
                "Cheapest configuration reaching ≥ {:.0}% of the best saving: #{} {} ({:.1} MiB saved at {:.2}% ksmd CPU)",
                NEAR_BEST * 100.0,
                s.index,
                s.label,
                s.saved_mib_end,
                s.ksmd_cpu_percent
            );
        }
        None => {
            let _ = writeln!(
                o,
                "No configuration saved any memory: the workload may have nothing to merge, or the runs were too short."
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_cover_the_grid_and_collapse_pages_under_the_advisor() {
        let o = SweepOptions {
            pages_to_scan: vec![100, 1000, 5000],
            sleep_ms: vec![20, 200],
            smart_scan: vec![true, false],
            ..Default::default()
        };
        let c = combinations(&o);
        assert_eq!(c.len(), 12);
        assert_eq!(c[0].pages_to_scan, Some(100));
        assert_eq!(c[0].smart_scan, Some(true));
        assert!(c.iter().all(|k| k.use_zero_pages.is_none()));
        let with_advisor = SweepOptions {
            advisor: vec!["none".into(), "scan-time".into()],
            ..o
        };
        let c = combinations(&with_advisor);
        assert_eq!(c.len(), 12 + 4, "scan-time ignores the pages_to_scan axis");
        assert!(
            c.iter()
                .filter(|k| k.advisor.as_deref() == Some("scan-time"))
                .all(|k| k.pages_to_scan.is_none())
        );
        assert_eq!(
            combinations(&SweepOptions::default()),
            vec![KnobSettings::default()]
        );
    }
}
