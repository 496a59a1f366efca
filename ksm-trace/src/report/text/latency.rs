//! Merge latency over all processes: how many merges were timed, and for a sample what it
//! leaves out and how sure its percentiles are; then the histogram.
use std::fmt::Write as _;

use crate::{
    recording::Recording,
    report::{
        histogram::{Unit, fmt_ns, render_log2},
        model::{LatencyReport, Report, all_latencies},
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
    o.push_str(&render_log2(&all_latencies(rec), Unit::Nanoseconds));
}

/// A sample's size, what its windows cannot see (first: the intervals hold only for the
/// rest), and its percentiles' intervals.
fn sample(o: &mut String, lat: &LatencyReport) {
    let _ = writeln!(
        o,
        "  a sample: {:.1}% of merges timed in {} windows",
        lat.timed_percent, lat.timed_windows
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
