//! The kernel's unmerge calls per process (function probes on unmerge_ksm_pages).
use std::fmt::Write as _;

use crate::report::{histogram::fmt_ns, model::Report};

pub(super) fn section(o: &mut String, r: &Report) {
    let rows: Vec<_> = r
        .processes
        .iter()
        .filter(|p| p.unmerge_call_ns.count > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nUnmerge calls in the kernel (unmerge_ksm_pages: MADV_UNMERGEABLE, prctl off, run=2), per process"
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "PROCESS", "CALLS", "PAGES", "p50", "p99", "MAX", "ns/PAGE"
    );
    for p in rows {
        let u = &p.unmerge_call_ns;
        let per_page = u.mean * u.count as f64 / p.unmerge_call_pages.max(1) as f64;
        let _ = writeln!(
            o,
            "  {:<24} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10.0}",
            format!("{}[{}]", p.comm, p.pid),
            u.count,
            p.unmerge_call_pages,
            fmt_ns(u.p50),
            fmt_ns(u.p99),
            fmt_ns(u.max),
            per_page
        );
    }
}
