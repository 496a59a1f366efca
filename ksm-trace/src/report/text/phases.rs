//! ksmd's cost by phase, from its stack samples: share with its interval, CPU time, and what
//! each phase costs per page scanned (and per merge for merging).
use std::fmt::Write as _;

use crate::report::{model::Report, phases::WIDE};

pub(super) fn section(o: &mut String, r: &Report) {
    let Some(p) = &r.phases else {
        return;
    };
    let _ = writeln!(
        o,
        "\nksmd's cost by phase ({} stack samples at {} Hz; share of ksmd's CPU time with its 95% interval, that CPU time, and per page scanned)",
        p.samples, p.frequency_hz
    );
    let _ = writeln!(
        o,
        "  {:<30} {:>7} {:>16} {:>10} {:>12}",
        "PHASE", "SHARE", "95% CI", "CPU ms", "ns/PAGE"
    );
    for ph in p.phases.iter().filter(|ph| ph.samples > 0) {
        let per_merge = ph
            .ns_per_merge
            .map_or(String::new(), |ns| format!("  ({ns:.0} ns per merge)"));
        let ci = format!("{:.1}–{:.1}%", ph.share_ci.0 * 100.0, ph.share_ci.1 * 100.0);
        let _ = writeln!(
            o,
            "  {:<30} {:>6.1}% {:>16} {:>10.1} {:>12}{per_merge}",
            ph.name,
            ph.share * 100.0,
            ci,
            ph.cpu_ms,
            ph.ns_per_page.map_or("-".into(), |ns| format!("{ns:.1}")),
        );
    }
    if let Some(hz) = p.profile_hz_for_wide {
        let _ = writeln!(
            o,
            "  intervals up to ±{:.1} points: too wide to read shares finer than that; --profile-hz {hz} (or a run {:.0}× as long) would narrow them to ±{:.0}",
            p.widest_half * 100.0,
            hz as f64 / p.frequency_hz.max(1) as f64,
            WIDE * 100.0
        );
    }
}
