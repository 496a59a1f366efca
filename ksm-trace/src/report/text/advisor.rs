//! The KSM advisor's scorecard: did it reach its target scan time, how fast, at what CPU, and
//! which bound held it.
use std::fmt::Write as _;

use super::table::table;
use crate::report::{
    advisor::{AdvisorReport, AdvisorScan},
    model::Report,
};

pub(super) fn section(o: &mut String, r: &Report) {
    let Some(a) = &r.advisor else {
        return;
    };
    let opt = |v: Option<i64>| v.map_or("?".into(), |v| v.to_string());
    let _ = writeln!(
        o,
        "\nKSM advisor (scan-time): target {} s per full scan, at most {} % CPU, at most {} pages_to_scan",
        opt(a.target_s),
        opt(a.max_cpu_percent),
        opt(a.max_pages)
    );
    let _ = writeln!(o, "  {}", verdict(a));
    if a.first_cpu_since_boot {
        let _ = writeln!(
            o,
            "  The first scan's CPU_KERNEL counts ksmd's CPU since boot: the advisor's context starts at 0 when the mode is switched on, so its first choice rests on that figure"
        );
    }
    let mut rows = vec![
        [
            "T",
            "SCANS",
            "SCAN_S",
            "KERNEL_S",
            "PAGES_BEFORE",
            "PAGES_TO_SCAN",
            "CPU_KERNEL",
            "CPU_MEASURED",
            "BOUND",
        ]
        .map(String::from)
        .to_vec(),
    ];
    // Runs of scans the advisor treated alike (same inputs in whole seconds, same choice) are
    // one row: a settled advisor makes thousands.
    let same = |a: &AdvisorScan, b: &AdvisorScan| {
        (a.kernel_scan_s, a.pages_before, a.pages_to_scan, &a.bound)
            == (b.kernel_scan_s, b.pages_before, b.pages_to_scan, &b.bound)
    };
    let range = |v: &mut dyn Iterator<Item = f64>, digits: usize, unit: &str| {
        let v: Vec<f64> = v.collect();
        match (
            v.iter().copied().reduce(f64::min),
            v.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) if format!("{lo:.digits$}") != format!("{hi:.digits$}") => {
                format!("{lo:.digits$}–{hi:.digits$}{unit}")
            }
            (Some(lo), _) => format!("{lo:.digits$}{unit}"),
            _ => "-".into(),
        }
    };
    for run in a.scans.chunk_by(same) {
        let s = &run[0];
        rows.push(vec![
            range(&mut run.iter().map(|s| s.t_s), 1, "s"),
            run.len().to_string(),
            range(&mut run.iter().filter_map(|s| s.scan_s), 2, ""),
            s.kernel_scan_s.to_string(),
            s.pages_before.map_or("?".into(), |p| p.to_string()),
            s.pages_to_scan.to_string(),
            format!("{}%", s.cpu_percent_kernel),
            range(
                &mut run.iter().filter_map(|s| s.cpu_percent_measured),
                1,
                "%",
            ),
            s.bound.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    for line in table(&rows, &[]).lines() {
        let _ = writeln!(o, "  {line}");
    }
    let _ = writeln!(
        o,
        "  (SCAN_S: traced; KERNEL_S: the whole seconds the advisor computes with, at least 1; CPU_KERNEL: its own figure from them; CPU_MEASURED: ksmd's schedstat over the scan; BOUND: max_cpu = advisor_max_cpu, min_cpu_floor = the kernel's fixed 10 % floor, max_pages = advisor_max_pages_to_scan)"
    );
}

/// One line: whether, and how fast, it reached the target, and what held it.
fn verdict(a: &AdvisorReport) -> String {
    let reached = match (a.scans_to_converge, a.swing_after_percent) {
        (Some(n), Some(swing)) => format!(
            "within ±10 % of the target after {n} of {} scans; afterwards up to {swing:.0} % off",
            a.scans.len()
        ),
        _ => format!("not within ±10 % of the target in {} scans", a.scans.len()),
    };
    let held: Vec<String> = [
        (a.held_by_max_cpu, "advisor_max_cpu"),
        (a.held_by_min_cpu_floor, "the 10 % CPU floor"),
        (a.held_by_max_pages, "advisor_max_pages_to_scan"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{what} held {n}"))
    .collect();
    let mut line = if held.is_empty() {
        format!("{reached}; no bound held it")
    } else {
        format!("{reached}; {}", held.join(", "))
    };
    let short = a
        .scans
        .iter()
        .filter(|s| s.scan_s.is_some_and(|d| d < 0.5))
        .count();
    if short * 2 > a.scans.len() {
        line += &format!(
            " — {short} scans took under half a second, which the advisor counts as 1 s: the scanned memory is too small for this target"
        );
    }
    line
}
