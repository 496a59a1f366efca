//! What someone else did to KSM during the window, read from the counter time series: a knob
//! another process changed (ksm-trace sets them before the window and only toggles `run` at
//! its edges), and `full_scans` going backwards (writing run=2 resets it), counted across
//! the reset. Figures spanning such a change mix two configurations: the report says so.
use serde::{Deserialize, Serialize};

use crate::{kernel::sysfs, recording::schema::Sample};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OtherActors {
    pub knob_changes: Vec<KnobChange>,
    /// Times (s into the window) at which full_scans went backwards.
    pub full_scan_resets_s: Vec<f64>,
    /// Full scans the kernel completed in the window, counted across resets: a lower bound
    /// when there was a reset (scans between the last sample before it and the reset itself
    /// are gone from the counter); the traced full scans are exact.
    pub full_scans_across_resets: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnobChange {
    /// Seen at this sample, s into the window (it happened since the previous one).
    pub t_s: f64,
    pub knob: String,
    pub from: i64,
    pub to: i64,
}

impl OtherActors {
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut others = Self::default();
        let last = samples.len().saturating_sub(1);
        for (i, pair) in samples.windows(2).enumerate() {
            let (before, after) = (&pair[0].counters.ksm, &pair[1].counters.ksm);
            let t_s = pair[1].t_ns as f64 / 1e9;
            for knob in sysfs::KNOBS {
                // ksm-trace's own: ksmd started after the first sample, paused before the last.
                if knob == "run" && (i == 0 || i + 1 == last) {
                    continue;
                }
                if let (Some(&from), Some(&to)) = (before.get(knob), after.get(knob))
                    && from != to
                {
                    others.knob_changes.push(KnobChange {
                        t_s,
                        knob: knob.to_owned(),
                        from,
                        to,
                    });
                }
            }
            if let (Some(&from), Some(&to)) = (before.get("full_scans"), after.get("full_scans")) {
                if to < from {
                    others.full_scan_resets_s.push(t_s);
                    others.full_scans_across_resets += to;
                } else {
                    others.full_scans_across_resets += to - from;
                }
            }
        }
        others
    }

    pub fn any(&self) -> bool {
        !self.knob_changes.is_empty() || !self.full_scan_resets_s.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: u64, pairs: &[(&str, i64)]) -> Sample {
        let mut s = Sample {
            t_ns: t_s * 1_000_000_000,
            ..Default::default()
        };
        for (k, v) in pairs {
            s.counters.ksm.insert(k.to_string(), *v);
        }
        s
    }

    #[test]
    fn another_process_changing_knobs_and_resetting_full_scans() {
        let samples = [
            sample(
                0,
                &[("run", 0), ("pages_to_scan", 2700), ("full_scans", 10)],
            ),
            sample(
                1,
                &[("run", 1), ("pages_to_scan", 2700), ("full_scans", 14)],
            ),
            // Someone wrote pages_to_scan=10, then run=2 (which resets full_scans) and run=1.
            sample(2, &[("run", 1), ("pages_to_scan", 10), ("full_scans", 16)]),
            sample(3, &[("run", 2), ("pages_to_scan", 10), ("full_scans", 0)]),
            sample(4, &[("run", 1), ("pages_to_scan", 10), ("full_scans", 3)]),
            sample(5, &[("run", 0), ("pages_to_scan", 10), ("full_scans", 3)]),
        ];
        let o = OtherActors::from_samples(&samples);
        let changes: Vec<(&str, i64, i64)> = o
            .knob_changes
            .iter()
            .map(|c| (c.knob.as_str(), c.from, c.to))
            .collect();
        assert_eq!(
            changes,
            [("pages_to_scan", 2700, 10), ("run", 1, 2), ("run", 2, 1)]
        );
        assert_eq!(o.knob_changes[0].t_s, 2.0);
        assert_eq!(o.full_scan_resets_s, [3.0]);
        // 4 + 2 before the reset, 0 + 3 after it.
        assert_eq!(o.full_scans_across_resets, 9);
        assert!(o.any());
    }

    #[test]
    fn ksm_traces_own_edges_are_not_reported() {
        let samples = [
            sample(0, &[("run", 0), ("full_scans", 1)]),
            sample(1, &[("run", 1), ("full_scans", 2)]),
            sample(2, &[("run", 0), ("full_scans", 2)]),
        ];
        let o = OtherActors::from_samples(&samples);
        assert!(!o.any(), "{o:?}");
        assert_eq!(o.full_scans_across_resets, 1);
    }
}
