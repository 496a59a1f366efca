//! The report's first lines: how long, on which kernel, how it ended, whether events were lost;
//! then the knobs, what other processes changed during the window, and the memory saved.
use std::fmt::Write as _;

use crate::{recording::Recording, report::model::Report};

pub(super) fn title(o: &mut String, r: &Report) {
    let ended = match (r.ended_by.as_str(), r.settle_s) {
        ("settled", Some(s)) => format!("settled after {s:.1} s"),
        ("timeout", _) => "timeout before KSM settled".to_owned(),
        (other, _) => other.replace('-', " "),
    };
    let _ = writeln!(
        o,
        "ksm-trace: {:.1} s on Linux {}, ended: {ended}",
        r.duration_s, r.kernel_release
    );
    if !r.complete {
        let _ = writeln!(
            o,
            "INCOMPLETE: {} events were lost (the ring buffer was full; --ring-buffer sets its size). Lower bounds or short for this run: {}. The exactness checks (merges = Δksm_merging_pages, full scans = Δfull_scans) do not hold; the kernel's counters below are exact.",
            r.lost_events,
            r.incomplete.join("; ")
        );
    }
}

pub(super) fn knobs(o: &mut String, rec: &Recording, r: &Report) {
    let knobs: Vec<String> = r.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        o,
        "knobs: {}{}",
        knobs.join(" "),
        if rec.meta.ksmd_kept_off {
            " (ksmd kept off for this run: the KSM-off baseline)"
        } else if rec.meta.ksmd_started_for_run {
            " (ksmd was off: started for this run)"
        } else {
            ""
        }
    );
    let others = &r.other_actors;
    for c in &others.knob_changes {
        let _ = writeln!(
            o,
            "CHANGED by another process during the window: {} {}→{} (seen {:.1} s in); figures spanning it mix two configurations",
            c.knob, c.from, c.to, c.t_s
        );
    }
    for t in &others.full_scan_resets_s {
        let _ = writeln!(
            o,
            "RESET: full_scans went backwards {t:.1} s in (someone wrote run=2, which unmerges everything): at least {} full scans by the kernel's counter across the reset; the traced count below is exact",
            others.full_scans_across_resets
        );
    }
    let _ = writeln!(
        o,
        "memory saved at the end: {:.1} MiB (pages_sharing + ksm_zero_pages); general_profit {}",
        r.saved_mib_end,
        r.general_profit_mib_end
            .map_or("not available on this kernel".into(), |p| format!(
                "{p:.1} MiB"
            ))
    );
}
