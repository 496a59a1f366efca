//! The TLB shootdowns ksmd caused per merge, per process that merged (`--tlb-shootdowns on`).
use std::fmt::Write as _;

use crate::report::{histogram::fmt_ns, model::Report};

const HEADER: [&str; 8] = [
    "PROCESS",
    "MERGES",
    "FLUSHES/MERGE",
    "IPIS/MERGE",
    "MERGES W/IPI",
    "p50 W/IPI",
    "MEAN W/O",
    "TIME SHARE",
];

pub(super) fn section(o: &mut String, r: &Report) {
    let rows: Vec<_> = r
        .processes
        .iter()
        .filter_map(|p| Some((p, p.tlb.as_ref()?)))
        .filter(|(p, _)| p.counts.merges + p.counts.zero_page_merges > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nTLB shootdowns ksmd caused while merging: remote flushes it asked for (tlb:tlb_flush) and the IPIs it sent for them (ipi:ipi_send_cpu[mask]; CPUs idle or in lazy TLB mode are skipped), and what the merges that sent IPIs cost"
    );
    let h = HEADER;
    let _ = writeln!(
        o,
        "  {:<24} {:>9} {:>14} {:>10} {:>12} {:>12} {:>12} {:>10}",
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    );
    for (p, t) in rows {
        let _ = writeln!(
            o,
            "  {:<24} {:>9} {:>14.2} {:>10} {:>12} {:>12} {:>12} {:>10}",
            format!("{}[{}]", p.comm, p.pid),
            p.counts.merges + p.counts.zero_page_merges,
            t.flushes_per_merge,
            t.per_merge.map_or("-".into(), |n| format!("{n:.2}")),
            t.merges_with,
            if t.with_ns.count > 0 {
                fmt_ns(t.with_ns.p50)
            } else {
                "-".into()
            },
            t.without_mean_ns.map_or("-".into(), |ns| fmt_ns(ns as u64)),
            t.share_of_merge_time
                .map_or("-".into(), |s| format!("{:.0} %", s * 100.0)),
        );
    }
}
