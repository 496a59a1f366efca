//! Full scans (ksm_start_scan → ksm_stop_scan) and ksmd batches (on-CPU stretches).
use std::collections::BTreeMap;

use crate::{
    histogram::Histogram,
    recording::schema::{AdvisorStep, FullScan},
};
use ksm_trace_common::{Event, kind};

impl FullScan {
    pub fn duration_ns(&self) -> Option<u64> {
        self.start_ns.map(|s| self.stop_ns.saturating_sub(s))
    }
}

#[derive(Debug, Default)]
pub struct ScanTracker {
    started: BTreeMap<u64, u64>,
    pub full_scans: Vec<FullScan>,
    pub batch_on_cpu_ns: Histogram,
    pub batch_wall_ns: Histogram,
    pub ksmd_on_cpu_ns: u64,
    pub advisor: Vec<AdvisorStep>,
}

impl ScanTracker {
    pub fn handle(&mut self, e: &Event) {
        match e.kind {
            kind::START_SCAN => {
                self.started.insert(e.arg0, e.ts_ns);
            }
            kind::STOP_SCAN => self.full_scans.push(FullScan {
                seq: e.arg0,
                start_ns: self.started.remove(&e.arg0),
                stop_ns: e.ts_ns,
                rmap_entries: e.arg1,
            }),
            kind::KSMD_BATCH => {
                self.batch_on_cpu_ns.record(e.arg0);
                self.batch_wall_ns.record(e.arg1);
                self.ksmd_on_cpu_ns += e.arg0;
            }
            kind::ADVISOR => self.advisor.push(AdvisorStep {
                ts_ns: e.ts_ns,
                scan_time_s: e.arg0 as i64,
                pages_to_scan: e.arg1,
                cpu_percent: e.arg2,
            }),
            _ => {}
        }
    }

    /// Full scans that completed inside the window whose kernel full_scans counter went from
    /// `first` to `last`: exactly those whose seq is in `first..last`.
    pub fn scans_in_window(&self, first: u64, last: u64) -> Vec<FullScan> {
        self.full_scans
            .iter()
            .filter(|s| (first..last).contains(&s.seq))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u32, ts: u64, seq: u64) -> Event {
        Event {
            kind,
            ts_ns: ts,
            arg0: seq,
            ..Event::default()
        }
    }

    #[test]
    fn full_scan_durations_and_window() {
        let mut t = ScanTracker::default();
        t.handle(&ev(kind::STOP_SCAN, 5, 9)); // started before tracing
        t.handle(&ev(kind::START_SCAN, 10, 10));
        t.handle(&ev(kind::STOP_SCAN, 110, 10));
        t.handle(&ev(kind::START_SCAN, 120, 11));
        t.handle(&ev(kind::STOP_SCAN, 320, 11));
        assert_eq!(t.full_scans[0].duration_ns(), None);
        assert_eq!(t.full_scans[1].duration_ns(), Some(100));
        let w = t.scans_in_window(10, 12);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].duration_ns(), Some(200));
        assert_eq!(t.scans_in_window(10, 11).len(), 1);
    }

    #[test]
    fn batches_sum_on_cpu_time() {
        let mut t = ScanTracker::default();
        for on_cpu in [100, 300] {
            t.handle(&Event {
                kind: kind::KSMD_BATCH,
                arg0: on_cpu,
                arg1: on_cpu * 2,
                ..Event::default()
            });
        }
        assert_eq!(t.ksmd_on_cpu_ns, 400);
        assert_eq!(t.batch_on_cpu_ns.count(), 2);
    }
}
