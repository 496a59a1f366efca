//! The report's last lines: when KSM settled, the samples kept, who shares with whom in brief,
//! the events received and lost, and the mechanism behind each figure.
use std::fmt::Write as _;

use crate::{
    recording::Recording,
    report::{mechanisms, model::Report},
};

pub(super) fn section(o: &mut String, rec: &Recording, r: &Report) {
    let _ = writeln!(
        o,
        "\nSettled (pages_sharing moved < 5% over a full scan): {}; {} time-series samples; {} ksmd profile samples ({} lost) for `ksm-trace flame`",
        r.settle_s
            .map_or("not within the recording".to_owned(), |s| format!(
                "after {s:.1} s"
            )),
        rec.timeseries.len(),
        r.profile_samples,
        r.profile_lost
    );
    sharing(o, r);
    let received: u64 = rec.events.received.values().sum();
    let _ = writeln!(
        o,
        "\nEvents: {received} received, {} lost{}",
        r.lost_events,
        if r.unpaired_merges > 0 {
            format!(", {} new-page merges unpaired", r.unpaired_merges)
        } else {
            String::new()
        }
    );
    let _ = write!(o, "Mechanisms:\n{}", mechanisms::lines(&r.mechanisms));
}

fn sharing(o: &mut String, r: &Report) {
    let Some(sh) = &r.sharing else {
        return;
    };
    let pairs: Vec<String> = sh
        .top_pairs
        .iter()
        .map(|(a, b, n)| format!("{a} ↔ {b} {n}"))
        .collect();
    let _ = writeln!(
        o,
        "\nSharing: {} of the {} KSM pages merged in the window are mapped by two or more recorded processes at its end{}{}; `ksm-trace sharing FILE [--by guest|cgroup]` for the matrix",
        sh.shared_pages,
        sh.ksm_pages,
        if sh.reconciled {
            ""
        } else {
            " (not reconciled: no end snapshot)"
        },
        if pairs.is_empty() {
            String::new()
        } else {
            format!("; most: {}", pairs.join(", "))
        }
    );
}
