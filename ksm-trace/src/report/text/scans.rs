//! ksmd's work: full scans (traced against the kernel's count) and batches, with its CPU share
//! and the pages it scanned.
use std::fmt::Write as _;

use crate::{
    recording::Recording,
    report::{
        histogram::{Unit, fmt_ns, render_log2},
        mechanisms,
        model::{Report, ScansReport, full_scan_histogram},
    },
};

pub(super) fn section(o: &mut String, rec: &Recording, r: &Report) {
    let s = &r.scans;
    let others = &r.other_actors;
    let _ = writeln!(
        o,
        "\nFull scans: {} (kernel full_scans {:+}{}); duration p50 {} max {}",
        s.full_scans,
        r.kernel_deltas.get("full_scans").copied().unwrap_or(0),
        if others.full_scan_resets_s.is_empty() {
            String::new()
        } else {
            format!(
                "; at least {} across the run=2 reset",
                others.full_scans_across_resets
            )
        },
        fmt_ns(s.full_scan_ns.p50),
        fmt_ns(s.full_scan_ns.max)
    );
    o.push_str(&render_log2(&full_scan_histogram(rec), Unit::Nanoseconds));
    match s.ksmd_cpu_percent {
        Some(cpu) => {
            let _ = writeln!(
                o,
                "\nksmd batches: {} (on-CPU p50 {} p99 {} max {}); ksmd CPU {cpu:.1}% on-CPU by sched_switch, {:.1}% by schedstat; {}",
                s.batches,
                fmt_ns(s.batch_ns.p50),
                fmt_ns(s.batch_ns.p99),
                fmt_ns(s.batch_ns.max),
                s.ksmd_cpu_percent_schedstat,
                scanned(s)
            );
            o.push_str(&render_log2(&rec.scans.batch_on_cpu_ns, Unit::Nanoseconds));
        }
        None => {
            let _ = writeln!(
                o,
                "\nksmd batches: not traced ({}); ksmd CPU {:.1}% by schedstat; {}",
                mechanisms::batches(r.mechanisms.batches),
                s.ksmd_cpu_percent_schedstat,
                scanned(s)
            );
        }
    }
}

/// Pages ksmd scanned in the window, where the kernel counts them (`pages_scanned`).
fn scanned(s: &ScansReport) -> String {
    match (s.pages_scanned, s.pages_scanned_per_sec) {
        (Some(n), Some(rate)) => format!("{n} pages scanned ({rate:.0}/s)"),
        _ => "pages scanned: not counted by this kernel (no pages_scanned)".into(),
    }
}
