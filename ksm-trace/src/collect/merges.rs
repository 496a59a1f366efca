//! Turns the stream of merge tracepoints into per-process merge outcomes.
//!
//! `ksm_merge_with_ksm_page` fires once for a page that joins an existing KSM page, but twice for
//! a page pair that forms a new KSM page: first for the page being scanned with `ksm_page == 0`,
//! then for the unstable-tree page it pairs with, with `ksm_page != 0` and the same pfn. Only
//! when the second call succeeds do both pages enter the stable tree (the kernel breaks the first
//! again otherwise). Zero-page merges (`use_zero_pages=1`) come from `ksm_merge_one_page`.
//!
//! Unmerges: when ksmd drops a stale KSM page (every sharer wrote its copy, or exited), it
//! fires `ksm_remove_rmap_item` for every sharer but the last, then `ksm_remove_ksm_page`. The
//! tracker remembers which mm joined which KSM page (by pfn) to attribute all of them. A sharer
//! that leaves a KSM page others still map fires nothing: those unmerges are not observable
//! from tracepoints (the report shows them as the remainder against ksm_merging_pages).
use std::collections::{BTreeMap, HashMap};

use crate::{histogram::Histogram, recording::schema::MergeStats};
use ksm_trace_common::{Event, MERGE_QUIET_NS, kind};

/// The first half of a new-page pair, waiting for its second half.
#[derive(Clone, Copy, Debug)]
struct FirstHalf {
    event: Event,
}

#[derive(Debug, Default)]
pub struct MergeTracker {
    pub by_pid: BTreeMap<u32, MergeStats>,
    pending: Option<FirstHalf>,
    /// First halves whose second half never came (only possible when events were lost).
    pub unpaired: u64,
    /// KSM page pfn → (mm, tgid) of each sharer merged while tracing.
    sharers: HashMap<u64, Vec<(u64, u32)>>,
    /// Last sharers of KSM pages merged before tracing began (owner unknown).
    pub unattributed_unmerges: u64,
    /// Per sampling window of the bracket, per process: timed merge latencies (ns, to 3
    /// significant digits) → count. A window's merges are consecutive, not independent draws,
    /// so intervals for sampled percentiles treat each window as one draw. Kept only when
    /// `keep_latency_windows` (a recording; the live views forget processes and keep no
    /// history).
    pub latency_windows: Vec<BTreeMap<u32, BTreeMap<u64, u64>>>,
    pub keep_latency_windows: bool,
    /// Per process, how far into its burst each successful merge came (ns since the first
    /// merge after [`MERGE_QUIET_NS`] without one), kept with the windows: windows that open
    /// when merges start miss a burst's first milliseconds, and this says how many merges
    /// came then.
    pub burst_age_ns: BTreeMap<u32, Histogram>,
    /// Each timed merge's (age in its burst, latency) in ns, kept when
    /// `keep_aged_latencies`: the bench holds `always`'s against a sample's burst head.
    pub aged_latencies: Vec<(u64, u64)>,
    pub keep_aged_latencies: bool,
    clock: MergeClock,
    /// The bracket's windows so far (CLOCK_MONOTONIC ns), and since when the open one is
    /// attached: a merge that came inside one counts as sampled (`merges_in_windows`).
    bracket_windows: Vec<(u64, u64)>,
    bracket_since: Option<u64>,
    /// Per process: the mm its last merge was on (its merges wake the tracer while it needs
    /// timed ones), and the windows opened to time its merges.
    mms: HashMap<u32, u64>,
    coverage_windows: HashMap<u32, u32>,
}

/// Timed merges a process needs for useful percentiles of its own: the sampling opens windows
/// for a process that merges with fewer (all of them when it merges fewer).
pub const COVERAGE_MERGES: u64 = 100;
/// Windows opened for one process's coverage at most: a process that merges too sparsely to
/// reach [`COVERAGE_MERGES`] in them keeps what they timed.
pub const COVERAGE_WINDOWS: u32 = 8;

/// When merges happened, as the merge-latency sampling needs it (CLOCK_MONOTONIC ns, 0 before
/// any merge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeClock {
    /// The latest merge event.
    pub last_ns: u64,
    /// The first merge event after a quiet spell of [`MERGE_QUIET_NS`]: the burst's start.
    pub burst_start_ns: u64,
    /// Whose merge the latest was, and whether that process still needs timed merges
    /// ([`COVERAGE_MERGES`]): the sampling opens a window for it.
    pub last_pid: u32,
    pub last_uncovered: bool,
}

impl MergeClock {
    fn tick(&mut self, ts_ns: u64) {
        if ts_ns.saturating_sub(self.last_ns) > MERGE_QUIET_NS || self.last_ns == 0 {
            self.burst_start_ns = ts_ns;
        }
        self.last_ns = self.last_ns.max(ts_ns);
    }
}

impl MergeTracker {
    fn stats(&mut self, event: &Event) -> &mut MergeStats {
        let stats = self.by_pid.entry(event.tgid).or_default();
        let comm = comm_str(&event.comm);
        if !comm.is_empty() && stats.comm != comm {
            stats.comm = comm;
        }
        stats
    }

    fn merged(&mut self, event: &Event, new_page: bool) {
        self.sharers
            .entry(event.pfn)
            .or_default()
            .push((event.mm, event.tgid));
        let stats = self.stats(event);
        stats.counts.merges += 1;
        let ns = record_latency(stats, event);
        count_shootdowns(stats, event, ns);
        if new_page {
            stats.counts.new_pages += 1;
            stats.time_ns.new_page += ns;
        } else {
            stats.counts.joins += 1;
            stats.time_ns.join += ns;
        }
        self.sampled(event, ns);
    }

    /// The bracket was attached again: timed merges from here on belong to a new window;
    /// `for_coverage`: it was opened for the process whose merge came last.
    pub fn next_latency_window(&mut self, for_coverage: bool) {
        if self.latency_windows.last().is_some_and(|w| !w.is_empty()) {
            self.latency_windows.push(BTreeMap::new());
        }
        if for_coverage {
            *self
                .coverage_windows
                .entry(self.clock.last_pid)
                .or_default() += 1;
        }
    }

    /// The bracket's windows as the sampling policy has them (the closed ones, and since when
    /// the open one is attached), for the merges drained next.
    pub fn bracket_windows(&mut self, closed: &[(u64, u64)], open_since: Option<u64>) {
        let known = self.bracket_windows.len();
        self.bracket_windows
            .extend_from_slice(&closed[known.min(closed.len())..]);
        self.bracket_since = open_since;
    }

    /// Whether a merge at `ts` came while the bracket was attached.
    fn in_bracket_window(&self, ts: u64) -> bool {
        self.bracket_since.is_some_and(|since| ts >= since)
            || self
                .bracket_windows
                .iter()
                .rev()
                .take(4)
                .any(|&(from, to)| (from..=to).contains(&ts))
    }

    /// Whether `pid`'s merges still need timing: fewer than [`COVERAGE_MERGES`] timed (or
    /// than all its merges), and windows left for it.
    fn needs_coverage(&self, pid: u32) -> bool {
        let Some(s) = self.by_pid.get(&pid).filter(|_| pid != 0) else {
            return false;
        };
        let merges = s.counts.merges + s.counts.zero_page_merges;
        s.merge_latency_ns.count() < merges.min(COVERAGE_MERGES)
            && self.coverage_windows.get(&pid).copied().unwrap_or(0) < COVERAGE_WINDOWS
    }

    /// The mms of the processes whose merges still need timing: their next merge wakes the
    /// tracer.
    pub fn uncovered_mms(&self) -> Vec<u64> {
        self.mms
            .iter()
            .filter(|&(&pid, _)| self.needs_coverage(pid))
            .map(|(_, &mm)| mm)
            .collect()
    }

    /// When merges happened: drives the merge-latency sampling.
    pub fn clock(&self) -> MergeClock {
        self.clock
    }

    /// A successful merge that took `ns` (0: untimed), for the sample's accounting.
    fn sampled(&mut self, event: &Event, ns: u64) {
        let in_window = self.in_bracket_window(event.ts_ns) as u64;
        *self.stats(event).merges_in_windows.get_or_insert(0) += in_window;
        self.mms.insert(event.tgid, event.mm);
        self.clock.last_pid = event.tgid;
        self.clock.last_uncovered = self.needs_coverage(event.tgid);
        let age = event.ts_ns.saturating_sub(self.clock.burst_start_ns);
        if self.keep_aged_latencies && ns != 0 {
            self.aged_latencies.push((age, ns));
        }
        if !self.keep_latency_windows {
            return;
        }
        self.burst_age_ns.entry(event.tgid).or_default().record(age);
        if ns == 0 {
            return;
        }
        if self.latency_windows.is_empty() {
            self.latency_windows.push(BTreeMap::new());
        }
        let window = self.latency_windows.last_mut().expect("pushed above");
        *window
            .entry(event.tgid)
            .or_default()
            .entry(three_digits(ns))
            .or_default() += 1;
    }

    fn failed(&mut self, event: &Event) {
        let stats = self.stats(event);
        stats.counts.failed += 1;
        add_shootdowns(stats, event);
        stats.time_ns.failed += latency(event);
    }

    pub fn handle(&mut self, event: &Event) {
        if matches!(event.kind, kind::MERGE_WITH_KSM_PAGE | kind::MERGE_ONE_PAGE) {
            self.clock.tick(event.ts_ns);
        }
        match event.kind {
            kind::MERGE_WITH_KSM_PAGE => self.merge_with_ksm_page(event),
            kind::MERGE_ONE_PAGE => {
                let stats = self.stats(event);
                if event.err == 0 {
                    stats.counts.zero_page_merges += 1;
                    let ns = record_latency(stats, event);
                    stats.time_ns.zero_page += ns;
                    count_shootdowns(stats, event, ns);
                    self.sampled(event, ns);
                } else {
                    stats.counts.zero_page_failed += 1;
                    add_shootdowns(stats, event);
                    stats.time_ns.failed += latency(event);
                }
            }
            kind::REMOVE_RMAP_ITEM => {
                let sharer = self.sharers.get_mut(&event.pfn).and_then(|list| {
                    let at = list.iter().position(|(mm, _)| *mm == event.mm)?;
                    Some(list.swap_remove(at))
                });
                // The tgid recorded at merge time; the owner may have exited since.
                let tgid = sharer.map_or(event.tgid, |(_, tgid)| tgid);
                let stats = self.by_pid.entry(tgid).or_default();
                stats.counts.removals += 1;
                stats.counts.unmerges += 1;
            }
            kind::REMOVE_KSM_PAGE => {
                let known = self.sharers.remove(&event.pfn).unwrap_or_default();
                for &(_, tgid) in &known {
                    self.by_pid.entry(tgid).or_default().counts.unmerges += 1;
                }
                // The function backend says how many sharers the page had (no per-sharer
                // events came before); the tracepoints leave only the last one unsaid.
                let sharers = if event.arg0 > 0 { event.arg0 } else { 1 };
                self.unattributed_unmerges += sharers.saturating_sub(known.len() as u64);
            }
            kind::ENTER => self.stats(event).counts.entered += 1,
            kind::COW_BREAK => {
                let stats = self.stats(event);
                stats.cow_breaks += 1;
                stats.cow_fault_ns.record(event.arg0);
            }
            kind::COW_FAULT => {
                let stats = self.stats(event);
                if event.arg1 == ksm_trace_common::cow::ZERO {
                    stats.zero_page_breaks += 1;
                } else {
                    stats.cow_breaks_at_fault += 1;
                }
            }
            // Carries no comm: the fault before it named the process.
            kind::COW_DONE => self
                .by_pid
                .entry(event.tgid)
                .or_default()
                .cow_at_fault_ns
                .record(event.arg0),
            kind::EXIT => self.stats(event).counts.exited += 1,
            kind::UNMERGE_CALL => {
                let stats = self.stats(event);
                stats.unmerge_call_ns.record(event.arg0);
                stats.unmerge_call_pages += event.arg1;
            }
            _ => {}
        }
    }

    fn merge_with_ksm_page(&mut self, event: &Event) {
        if event.ksm_page == 0 {
            self.drop_pending();
            if event.err == 0 {
                self.pending = Some(FirstHalf { event: *event });
            } else {
                self.failed(event);
            }
            return;
        }
        match self.pending.take() {
            Some(first) if first.event.pfn == event.pfn => {
                if event.err == 0 {
                    self.merged(&first.event, true);
                    self.merged(event, true);
                } else {
                    self.stats(&first.event).counts.reverted += 1;
                    self.failed(event);
                }
            }
            other => {
                self.pending = other;
                self.drop_pending();
                if event.err == 0 {
                    self.merged(event, false);
                } else {
                    self.failed(event);
                }
            }
        }
    }

    fn drop_pending(&mut self) {
        if self.pending.take().is_some() {
            self.unpaired += 1;
        }
    }

    /// Forgets processes that have exited (a live view that runs for days): their figures and
    /// the KSM pages they were remembered as sharing.
    pub fn forget(&mut self, gone: &std::collections::BTreeSet<u32>) {
        if gone.is_empty() {
            return;
        }
        self.by_pid.retain(|pid, _| !gone.contains(pid));
        self.sharers.retain(|_, list| {
            list.retain(|(_, tgid)| !gone.contains(tgid));
            !list.is_empty()
        });
    }

    /// KSM page pfn → the processes the events say map it, for processes `keep` accepts.
    pub fn sharers_by_page(
        &self,
        keep: impl Fn(u32) -> bool,
    ) -> BTreeMap<u64, std::collections::BTreeSet<u32>> {
        self.sharers
            .iter()
            .map(|(&pfn, list)| {
                let pids = list
                    .iter()
                    .map(|&(_, tgid)| tgid)
                    .filter(|&tgid| keep(tgid))
                    .collect();
                (pfn, pids)
            })
            .collect()
    }

    /// Call at the end of a recording: a first half still waiting is unpaired.
    pub fn finish(&mut self) {
        self.drop_pending();
    }
}

/// `v` rounded to 3 significant decimal digits: the histograms' precision, so a window keeps
/// a few hundred distinct values at most.
fn three_digits(v: u64) -> u64 {
    let mut scale = 1;
    while v / scale >= 1000 {
        scale *= 10;
    }
    (v / scale + u64::from(v % scale >= scale / 2 && scale > 1)) * scale
}

/// The event's latency from the best mechanism that measured it (0: not measured).
fn latency(event: &Event) -> u64 {
    if event.lat_fexit_ns != 0 {
        event.lat_fexit_ns
    } else {
        event.lat_lock_ns
    }
}

/// Records a successful merge's latency; returns it (0 when untimed).
fn record_latency(stats: &mut MergeStats, event: &Event) -> u64 {
    let primary = latency(event);
    if primary == 0 {
        stats.untimed_merges += 1;
        return 0;
    }
    stats.merge_latency_ns.record(primary);
    if event.lat_fexit_ns != 0 && event.lat_lock_ns != 0 {
        stats.merge_latency_bracket_ns.record(event.lat_lock_ns);
    }
    primary
}

/// The remote TLB flushes (`arg0`) and IPIs (`arg1`) a merge attempt caused.
fn add_shootdowns(stats: &mut MergeStats, event: &Event) {
    stats.tlb_remote_flushes += event.arg0;
    stats.tlb_shootdowns += event.arg1;
}

/// [`add_shootdowns`] for a successful merge, with its latency `ns` (0: untimed) among the
/// merges that sent IPIs.
fn count_shootdowns(stats: &mut MergeStats, event: &Event, ns: u64) {
    add_shootdowns(stats, event);
    if event.arg1 > 0 {
        stats.merges_with_shootdowns += 1;
        if ns > 0 {
            stats.merge_latency_shootdown_ns.record(ns);
        }
    }
}

/// The NUL-terminated comm as a string.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove(kind: u32, pfn: u64, mm: u64) -> Event {
        Event {
            kind,
            pfn,
            mm,
            ..Event::default()
        }
    }

    #[test]
    fn kernel_unmerge_calls_add_up_per_process() {
        let mut t = MergeTracker::default();
        for (ns, pages) in [(1_500_000, 500), (2_500_000, 500)] {
            t.handle(&Event {
                kind: kind::UNMERGE_CALL,
                tgid: 7,
                mm: 0xa,
                arg0: ns,
                arg1: pages,
                ..Event::default()
            });
        }
        let s = &t.by_pid[&7];
        assert_eq!((s.unmerge_call_ns.count(), s.unmerge_call_pages), (2, 1000));
        // 3 significant digits.
        assert_eq!(s.unmerge_call_ns.summary().max / 10_000, 250);
        // Unmerge calls are not unmerges seen leaving the stable tree.
        assert_eq!(s.counts.unmerges, 0);
    }

    #[test]
    fn function_backend_drops_a_stale_page_in_one_event() {
        let mut t = MergeTracker::default();
        let (mut a, mut b) = (merge(1, 0, 100, 0, 0), merge(2, 0xffff, 100, 0, 0));
        (a.mm, b.mm) = (0xa, 0xb);
        t.handle(&a);
        t.handle(&b);
        // remove_node_from_stable_tree: one event, three sharers (one merged before tracing).
        let mut drop = remove(kind::REMOVE_KSM_PAGE, 100, 0);
        drop.arg0 = 3;
        t.handle(&drop);
        assert_eq!(t.by_pid[&1].counts.unmerges, 1);
        assert_eq!(t.by_pid[&2].counts.unmerges, 1);
        assert_eq!(t.unattributed_unmerges, 1);
    }

    #[test]
    fn stale_ksm_page_unmerges_every_sharer() {
        let mut t = MergeTracker::default();
        let (mut a, mut b, mut c) = (
            merge(1, 0, 100, 0, 0),
            merge(2, 0xffff, 100, 0, 0),
            merge(3, 0xffff, 100, 0, 0),
        );
        (a.mm, b.mm, c.mm) = (0xa, 0xb, 0xc);
        c.pfn = 100; // a join of the same KSM page
        for e in [a, b, c] {
            t.handle(&e);
        }
        assert_eq!(t.by_pid[&3].counts.joins, 1);
        // ksmd drops the stale page: two rmap items reported, the last one implied.
        t.handle(&remove(kind::REMOVE_RMAP_ITEM, 100, 0xc));
        t.handle(&remove(kind::REMOVE_RMAP_ITEM, 100, 0xa));
        t.handle(&remove(kind::REMOVE_KSM_PAGE, 100, 0));
        for pid in [1, 2, 3] {
            assert_eq!(t.by_pid[&pid].counts.unmerges, 1, "pid {pid}");
        }
        assert_eq!(t.by_pid[&1].counts.removals, 1);
        assert_eq!(t.by_pid[&2].counts.removals, 0);
        // A KSM page merged before tracing: its last sharer is unattributed.
        t.handle(&remove(kind::REMOVE_KSM_PAGE, 555, 0));
        assert_eq!(t.unattributed_unmerges, 1);
    }

    #[test]
    fn timed_merges_are_kept_per_bracket_window_and_process() {
        let mut live = MergeTracker::default();
        live.handle(&merge(1, 0xffff, 10, 0, 1234));
        assert!(
            live.latency_windows.is_empty(),
            "only recordings keep windows"
        );
        let mut t = MergeTracker {
            keep_latency_windows: true,
            ..Default::default()
        };
        // Joins of existing KSM pages (one event each), the first window.
        t.handle(&merge(1, 0xffff, 10, 0, 1234));
        t.handle(&merge(2, 0xffff, 11, 0, 1226));
        t.handle(&merge(2, 0xffff, 12, 0, 0)); // untimed: in no window
        t.next_latency_window(false);
        t.next_latency_window(false); // nothing timed in between: still one new window
        t.handle(&merge(1, 0xffff, 13, 0, 98_765));
        assert_eq!(t.latency_windows.len(), 2);
        // 3 significant digits, to the nearest: 1234 and 1226 are both 1230.
        assert_eq!(t.latency_windows[0][&1], BTreeMap::from([(1230, 1)]));
        assert_eq!(t.latency_windows[0][&2], BTreeMap::from([(1230, 1)]));
        assert_eq!(t.latency_windows[1][&1], BTreeMap::from([(98_800, 1)]));
        assert_eq!(three_digits(999), 999);
        assert_eq!(three_digits(1_004_999), 1_000_000);
        assert_eq!(three_digits(1_005_000), 1_010_000);
        assert_eq!(three_digits(9_995), 10_000);
    }

    fn merge(tgid: u32, ksm_page: u64, pfn: u64, err: i32, lat: u64) -> Event {
        let mut comm = [0u8; 16];
        let name = format!("p{tgid}");
        comm[..name.len()].copy_from_slice(name.as_bytes());
        Event {
            kind: kind::MERGE_WITH_KSM_PAGE,
            tgid,
            comm,
            ksm_page,
            pfn,
            err,
            lat_lock_ns: lat,
            ..Event::default()
        }
    }

    #[test]
    fn new_page_pair_counts_both_processes() {
        let mut t = MergeTracker::default();
        t.handle(&merge(1, 0, 100, 0, 2000));
        t.handle(&merge(2, 0xffff, 100, 0, 3000));
        t.finish();
        assert_eq!(t.by_pid[&1].counts.merges, 1);
        assert_eq!(t.by_pid[&1].counts.new_pages, 1);
        assert_eq!(t.by_pid[&2].counts.merges, 1);
        assert_eq!(t.by_pid[&2].comm, "p2");
        assert_eq!(t.by_pid[&1].merge_latency_ns.count(), 1);
        assert_eq!(t.unpaired, 0);
    }

    #[test]
    fn a_process_needs_timed_merges_until_it_has_a_hundred_or_its_windows() {
        let mut t = MergeTracker::default();
        let join = |tgid: u32, mm: u64, lat: u64| Event {
            mm,
            ..merge(tgid, 0xbeef, 1, 0, lat)
        };
        // Process 1: 150 merges, none timed; process 2: 150, all timed.
        for _ in 0..150 {
            t.handle(&join(1, 0x1000, 0));
            t.handle(&join(2, 0x2000, 900));
        }
        assert_eq!(t.uncovered_mms(), [0x1000]);
        assert!(!t.clock().last_uncovered, "the last merge was process 2's");
        t.handle(&join(1, 0x1000, 0));
        assert!(t.clock().last_uncovered && t.clock().last_pid == 1);
        // Windows opened for it: after COVERAGE_WINDOWS of them it keeps what they timed.
        for _ in 0..COVERAGE_WINDOWS {
            assert_eq!(t.uncovered_mms(), [0x1000]);
            t.next_latency_window(true);
        }
        assert!(t.uncovered_mms().is_empty());
        // A third process that timed a hundred of its many merges has enough.
        for i in 0..300 {
            t.handle(&join(3, 0x3000, if i < 100 { 700 } else { 0 }));
        }
        assert!(!t.clock().last_uncovered);
        // A merge inside a bracket window counts as sampled, one outside does not.
        t.bracket_windows(&[(100, 200)], None);
        t.handle(&Event {
            ts_ns: 150,
            ..join(4, 0x4000, 0)
        });
        t.handle(&Event {
            ts_ns: 250,
            ..join(4, 0x4000, 0)
        });
        assert_eq!(t.by_pid[&4].merges_in_windows, Some(1));
    }

    #[test]
    fn a_merge_after_a_quiet_spell_starts_a_burst_and_ages_count_from_it() {
        let mut t = MergeTracker {
            keep_latency_windows: true,
            ..MergeTracker::default()
        };
        let ms = 1_000_000;
        let at = |ts_ns: u64, tgid: u32, lat: u64| Event {
            ts_ns,
            ..merge(tgid, 0xaaaa, ts_ns, 0, lat)
        };
        let t0 = 5_000 * ms;
        // A burst: untimed at its start, timed 3 ms in (a window opened then).
        for (dt, lat) in [(0, 0), (1, 0), (3, 1500), (4, 1600)] {
            t.handle(&at(t0 + dt * ms, 1, lat));
        }
        // A failed attempt is a merge event too: it keeps the burst going.
        t.handle(&Event {
            ts_ns: t0 + 4 * ms + MERGE_QUIET_NS,
            ..merge(1, 0xaaaa, 1, -14, 0)
        });
        assert_eq!(t.clock().burst_start_ns, t0);
        // Quiet for longer than MERGE_QUIET_NS: a new burst, with another process.
        let t1 = t0 + 40 * ms + 2 * MERGE_QUIET_NS;
        t.handle(&at(t1, 2, 0));
        t.handle(&at(t1 + 2 * ms, 2, 1700));
        assert_eq!(
            t.clock(),
            MergeClock {
                last_ns: t1 + 2 * ms,
                burst_start_ns: t1,
                last_pid: 2,
                // One of its two merges timed: short of timing all it made.
                last_uncovered: true,
            }
        );
        let within = |pid: u32, ns: u64| t.burst_age_ns[&pid].count_at_most(ns);
        assert_eq!(
            within(1, 2 * ms),
            2,
            "process 1's first two merges came in 2 ms"
        );
        assert_eq!(within(1, 10 * ms), 4);
        assert_eq!(
            within(2, 0),
            1,
            "process 2's first merge began the second burst"
        );
        assert_eq!(within(2, 2 * ms), 2);
        assert_eq!(t.latency_windows.len(), 1);
    }

    #[test]
    fn failed_second_half_reverts_first() {
        let mut t = MergeTracker::default();
        t.handle(&merge(1, 0, 100, 0, 0));
        t.handle(&merge(2, 0xffff, 100, -14, 0));
        assert_eq!(t.by_pid[&1].counts.merges, 0);
        assert_eq!(t.by_pid[&1].counts.reverted, 1);
        assert_eq!(t.by_pid[&2].counts.failed, 1);
    }

    #[test]
    fn join_is_not_taken_for_a_second_half() {
        let mut t = MergeTracker::default();
        // A join to an existing KSM page has ksm_page set but a different pfn.
        t.handle(&merge(3, 0xaaaa, 7, 0, 1500));
        assert_eq!(t.by_pid[&3].counts.joins, 1);
        assert_eq!(t.by_pid[&3].counts.merges, 1);
        // A first half followed by an unrelated join leaves the first half unpaired.
        t.handle(&merge(1, 0, 100, 0, 0));
        t.handle(&merge(3, 0xaaaa, 8, 0, 0));
        t.finish();
        assert_eq!(t.unpaired, 1);
        assert_eq!(t.by_pid[&3].counts.joins, 2);
        assert_eq!(t.by_pid[&3].untimed_merges, 1);
        assert!(!t.by_pid.contains_key(&1) || t.by_pid[&1].counts.merges == 0);
    }

    #[test]
    fn failed_first_half_is_a_failed_attempt() {
        let mut t = MergeTracker::default();
        t.handle(&merge(1, 0, 100, -14, 0));
        assert_eq!(t.by_pid[&1].counts.failed, 1);
        assert_eq!(t.by_pid[&1].counts.merges, 0);
    }

    #[test]
    fn shootdowns_go_to_the_merge_that_sent_them() {
        let mut t = MergeTracker::default();
        let mut sent = merge(6, 0xaaaa, 9, 0, 40_000);
        (sent.arg0, sent.arg1) = (2, 2);
        t.handle(&sent);
        // Flushes asked for, but the other CPU was idle: no IPI.
        let mut skipped = merge(6, 0xaaaa, 10, 0, 1_500);
        skipped.arg0 = 2;
        t.handle(&skipped);
        let mut failed = merge(6, 0xaaaa, 11, -14, 0);
        (failed.arg0, failed.arg1) = (1, 1);
        t.handle(&failed);
        let s = &t.by_pid[&6];
        assert_eq!(s.tlb_remote_flushes, 5);
        assert_eq!((s.tlb_shootdowns, s.merges_with_shootdowns), (3, 1));
        assert_eq!(s.merge_latency_shootdown_ns.count(), 1);
        assert_eq!(s.merge_latency_ns.count(), 2);
    }

    #[test]
    fn zero_page_merges_are_separate() {
        let mut t = MergeTracker::default();
        let mut e = merge(4, 0, 1, 0, 900);
        e.kind = kind::MERGE_ONE_PAGE;
        t.handle(&e);
        assert_eq!(t.by_pid[&4].counts.zero_page_merges, 1);
        assert_eq!(t.by_pid[&4].counts.merges, 0);
        assert_eq!(t.by_pid[&4].merge_latency_ns.count(), 1);
    }

    #[test]
    fn fexit_latency_preferred_and_both_kept() {
        let mut t = MergeTracker::default();
        // Values below 2048 are exact at 3 significant digits.
        let mut e = merge(5, 0xaaaa, 9, 0, 1500);
        e.lat_fexit_ns = 1200;
        t.handle(&e);
        assert_eq!(t.by_pid[&5].merge_latency_ns.summary().max, 1200);
        assert_eq!(t.by_pid[&5].merge_latency_bracket_ns.summary().max, 1500);
    }
}
