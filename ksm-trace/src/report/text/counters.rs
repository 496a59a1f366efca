//! The kernel's own counters over the window, with sizes for the page counts.
use std::fmt::Write as _;

use super::MIB;
use crate::{recording::Recording, report::model::Report};

pub(super) fn section(o: &mut String, rec: &Recording, r: &Report) {
    let page = rec.meta.page_size as f64;
    let _ = writeln!(o, "\nKernel counters (end − start)");
    for (name, delta) in &r.kernel_deltas {
        let end = rec
            .counters_end
            .ksm
            .get(name)
            .or(rec.counters_end.vmstat.get(name))
            .copied()
            .unwrap_or(0);
        let mib = |pages: i64| format!("{:+.1} MiB", pages as f64 * page / MIB);
        let size = match name.as_str() {
            "general_profit" => format!("{:+.1} MiB", *delta as f64 / MIB),
            "pages_shared" | "pages_sharing" | "pages_unshared" | "pages_volatile"
            | "ksm_zero_pages" => mib(*delta),
            _ => String::new(),
        };
        let _ = writeln!(o, "  {name:<28} {delta:>+12} {size:>14}   (now {end})");
    }
}
