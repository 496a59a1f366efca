//! Events → aggregates: drains the ring buffer into per-process merge outcomes and scan metrics,
//! and counts what was received and lost.
pub mod merges;
pub mod scans;

use std::collections::BTreeMap;

use aya::maps::{MapData, RingBuf};
use ksm_trace_common::{Event, kind};

pub use merges::{MergeClock, MergeTracker, comm_str};
pub use scans::ScanTracker;

#[derive(Debug, Default)]
pub struct Collector {
    pub merges: MergeTracker,
    pub scans: ScanTracker,
    pub received: BTreeMap<&'static str, u64>,
    /// CLOCK_MONOTONIC ns at which the recording window opened.
    window_start: u64,
    /// Events from before the window that were not counted.
    pub before_window: u64,
    /// CLOCK_MONOTONIC ns at which the window closed (0 while open).
    window_end: u64,
}

impl Collector {
    /// Events stamped before `start_ns` describe work the kernel counters' start snapshot already
    /// includes: they are not counted (scan start/stop and enter/exit still are, since they only
    /// give context).
    pub fn open_window(&mut self, start_ns: u64) {
        self.window_start = start_ns;
    }

    /// Events stamped after `end_ns` (a workload still writing while ksm-trace stops) fall
    /// outside the end snapshot of the kernel's counters: they are not counted.
    pub fn close_window(&mut self, end_ns: u64) {
        self.window_end = end_ns;
    }

    pub fn handle(&mut self, event: &Event) {
        let context_only = matches!(
            event.kind,
            kind::START_SCAN | kind::STOP_SCAN | kind::ENTER | kind::EXIT
        );
        let after = self.window_end != 0 && event.ts_ns > self.window_end;
        if (event.ts_ns < self.window_start || after) && !context_only {
            self.before_window += 1;
            return;
        }
        *self.received.entry(kind_name(event.kind)).or_default() += 1;
        match event.kind {
            kind::START_SCAN | kind::STOP_SCAN | kind::KSMD_BATCH | kind::ADVISOR => {
                self.scans.handle(event)
            }
            _ => self.merges.handle(event),
        }
    }

    /// Pages merged into the stable tree so far, all processes.
    pub fn merged_total(&self) -> u64 {
        self.merges.by_pid.values().map(|s| s.counts.merges).sum()
    }

    /// When merges happened: whether they are happening now drives the merge-latency
    /// sampling.
    pub fn merge_clock(&self) -> MergeClock {
        self.merges.clock()
    }

    /// Takes every event waiting in the ring buffer.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            if let Some(event) = Self::decode(&item) {
                self.handle(&event);
            }
        }
    }

    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        (bytes.len() >= size_of::<Event>())
            // SAFETY: Event is plain old data; the length is checked above.
            .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
    }
}

pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        kind::START_SCAN => "ksm_start_scan",
        kind::STOP_SCAN => "ksm_stop_scan",
        kind::MERGE_WITH_KSM_PAGE => "ksm_merge_with_ksm_page",
        kind::MERGE_ONE_PAGE => "ksm_merge_one_page",
        kind::REMOVE_KSM_PAGE => "ksm_remove_ksm_page",
        kind::REMOVE_RMAP_ITEM => "ksm_remove_rmap_item",
        kind::ENTER => "ksm_enter",
        kind::EXIT => "ksm_exit",
        kind::ADVISOR => "ksm_advisor",
        kind::KSMD_BATCH => "ksmd_batch",
        kind::COW_BREAK => "cow_break",
        kind::COW_FAULT => "cow_fault",
        kind::COW_DONE => "cow_done",
        kind::UNMERGE_CALL => "unmerge_call",
        _ => "unknown",
    }
}
