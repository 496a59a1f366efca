//! Merge latency over all processes: how many merges were timed, and for a sample what it
//! leaves out and how sure its percentiles are; then the histogram.
use std::fmt::Write as _;

use crate::{
    recording::Recording,
    report::{
        histogram::{Unit, fmt_ns, render_log2},
        model::{LatencyReport, ProcessReport, Report, all_latencies},
    },
};

pub(super) fn section(o: &mut String, rec: &Recording, r: &Report) {
    let lat = &r.merge_latency;
    let _ = writeln!(
        o,
        "\nMerge latency, all processes: {} of {} merges timed{}",
        lat.timed,
        lat.timed + lat.untimed,
        if lat.bracket_attached_percent > 0.0 {
            format!(
                " (mmap_lock bracket attached {:.0}% of the time)",
                lat.bracket_attached_percent
            )
        } else {
            String::new()
        }
    );
    if lat.timed > 0 && lat.untimed > 0 {
        sample(o, lat);
    }
    if lat.untimed > 0 {
        per_process(o, r);
    }
    o.push_str(&render_log2(&all_latencies(rec), Unit::Nanoseconds));
}

/// A sample's size, what its windows cannot see (first: the intervals hold only for the
/// rest), and its percentiles' intervals.
fn sample(o: &mut String, lat: &LatencyReport) {
    let _ = writeln!(
        o,
        "  a sample: {:.1}% of merges timed in {} windows{}",
        lat.timed_percent,
        lat.timed_windows,
        match lat.coverage_windows {
            Some(n) if n > 0 => format!(
                " ({n} of the bracket's windows opened for processes short of timed merges)"
            ),
            _ => String::new(),
        }
    );
    let of = match (lat.burst_head_ns, lat.burst_head_percent) {
        (Some(ns), Some(percent)) => {
            let _ = writeln!(
                o,
                "  windows open when merges start, {} into the burst (median): the merges that came that early in their burst, {:.1}% of all, are left out of the sample (but for windows already open), and may be slower",
                fmt_ns(ns),
                percent
            );
            "the other merges'"
        }
        _ => "all merges'",
    };
    let _ = match (lat.p50_ci_ns, lat.p99_ci_ns) {
        (Some((l50, h50)), Some((l99, h99))) => writeln!(
            o,
            "  {of} p50 {} (95% CI {}–{}), p99 {} ({}–{}), from how the windows differ, as far as they are representative",
            fmt_ns(lat.all_ns.p50),
            fmt_ns(l50),
            fmt_ns(h50),
            fmt_ns(lat.all_ns.p99),
            fmt_ns(l99),
            fmt_ns(h99)
        ),
        _ => writeln!(
            o,
            "  too few windows for an interval of {of} percentiles (it takes {}: one window's merges are alike, not independent draws)",
            crate::histogram::MIN_CLUSTERS
        ),
    };
}

/// How many of each merging process's merges were timed, and for one with none, why.
fn per_process(o: &mut String, r: &Report) {
    let merging: Vec<&ProcessReport> = r
        .processes
        .iter()
        .filter(|p| p.counts.merges + p.counts.zero_page_merges > 0)
        .collect();
    if merging.is_empty() {
        return;
    }
    let _ = writeln!(o, "  timed per process:");
    for p in merging {
        let merges = p.counts.merges + p.counts.zero_page_merges;
        let timed = p.merge_latency_ns.count;
        let figures = if timed > 0 {
            format!(
                "{timed} of {merges} timed, p50 {} p99 {}",
                fmt_ns(p.merge_latency_ns.p50),
                fmt_ns(p.merge_latency_ns.p99)
            )
        } else {
            format!("none of {merges} timed: {}", why_untimed(p))
        };
        let _ = writeln!(o, "    {}[{}] {figures}", p.comm, p.pid);
    }
}

fn why_untimed(p: &ProcessReport) -> String {
    match p.merges_in_windows {
        Some(0) => "none came while the bracket was attached".into(),
        Some(n) => {
            format!("{n} came while the bracket was attached, none with a bracket on its mm")
        }
        None => "not counted in this recording (before version 10)".into(),
    }
}
