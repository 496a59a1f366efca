//! The recording's schema: every type that `record` writes into the file and `report`, `flame`,
//! `plot` and `sweep` read back. Nothing else in ksm-trace derives serde for the file, so the
//! file's shape changes only here.
//!
//! ## Version rule
//!
//! [`VERSION`] counts the shapes this file has had. **Any** change to a type below — a field
//! added, removed or renamed, a unit or meaning changed, an enum variant added — bumps
//! `VERSION` and adds one step to `migrate.rs` that turns a file of the previous version into
//! the current shape. A field an older version did not have reads as "not recorded" (`None`,
//! an `Unavailable` mechanism), never as a measured 0. A reader reads every version from 1 to
//! `VERSION` and refuses a newer one with one line. `tests/fixtures/` keeps one real recording
//! per version; `tests/schema.rs` reads each of them, and checks that the current version's
//! fixture survives a read/write round trip unchanged, so a change here without a version bump
//! fails the tests.
//!
//! The runtime modules fill these types directly (the collector aggregates into
//! [`MergeStats`], the sampler takes [`Sample`]s, the probes describe their [`Mechanisms`]);
//! their behaviour (`impl` blocks) stays with them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::Histogram;

pub const FORMAT: &str = "ksm-trace-recording";
/// 1: first format. 2: typed mechanisms, workload kind instead of the parsed spec, COW fields
/// and the kernel's page/vmemmap facts always present. 3: where the events came from
/// (`Mechanisms::events`: tracepoints or the function backend) and the kernel's ksm_scan and
/// ksm_rmap_items addresses. 4: each process's guest name and cgroup, and what a guest's
/// load (sysbench) measured. 5: who shares KSM pages with whom (`Recording::sharing`).
/// 6: a procs worker's own timed unmerge calls (`Worker::unmerge`), events from kprobes
/// (`EventSource::Kprobes`), and the kernel's unmerge calls per process (`Mechanisms::unmerge`,
/// `MergeStats::unmerge_call_ns`). 7: `--merge-latency auto` opens its windows when merges
/// start (`BracketAttach::OnMerges`). 8: what those windows leave out of each burst
/// (`LatencyCoverage::burst_head`). 9: typed fallbacks (`Fallback`, the reason as data
/// instead of prose) and the active LSMs (`Capabilities::lsms`). 10: COW breaks from the page
/// fault tracepoints (`CowMechanism::FaultTracepoint`, `MergeStats::cow_breaks_at_fault`,
/// `zero_page_breaks`, `cow_at_fault_ns`), 5-level paging (`Capabilities::la57`), and the
/// merges that came while the sampled bracket was attached (`MergeStats::merges_in_windows`)
/// and the windows opened for them (`LatencyCoverage::coverage_windows`).
pub const VERSION: u32 = 11;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub format: String,
    pub version: u32,
    pub meta: Meta,
    pub mechanisms: Mechanisms,
    pub processes: Vec<ProcessRecord>,
    pub scans: ScanRecord,
    pub counters_start: Counters,
    pub counters_end: Counters,
    pub events: EventCounts,
    pub latency: LatencyCoverage,
    /// ksmd's kernel stacks sampled on-CPU.
    pub profile: Profile,
    /// The kernel's counters at a fixed interval.
    pub timeseries: Vec<Sample>,
    /// Who shares KSM pages with whom (None: not recorded, before version 5).
    pub sharing: Option<SharingRecord>,
}

/// Who shares KSM pages with whom, as the sets of recorded processes that map the same pages
/// (see `sharing/sets.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharingRecord {
    /// From the merge events: the KSM pages merged in the window, by the processes (still
    /// running at its end) that merged into each, less those the kernel reported leaving (a
    /// sharer that leaves silently stays).
    pub traced: Vec<SharerSet>,
    /// The recorded processes' page tables at the window's end (None where the kernel has no
    /// /proc/kpageflags).
    pub end_snapshot: Option<SharingSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharingSnapshot {
    /// Every KSM page the processes map, including pages merged before the window.
    pub sets: Vec<SharerSet>,
    pub took_ms: f64,
    /// `traced` less the sharers the snapshot no longer shows on the page: the traced matrix.
    pub traced_still_mapped: Vec<SharerSet>,
    /// (page, process) pairs traced but not mapped at the end: left without an event.
    pub left_silently: u64,
    /// (page, process) pairs mapped at the end but not traced: merged before the window.
    pub merged_before: u64,
    /// What each process on the machine saves and owes at the window's end (absent from
    /// recordings made before it was kept).
    #[serde(default)]
    pub savings: Option<Savings>,
}

/// One process's share of the KSM savings (see sharing/savings.rs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSavings {
    pub pid: u32,
    /// Its mappings of KSM pages (an address each).
    pub ksm_mappings: u64,
    /// Σ (m − 1)/m over its mappings: its part of pages_sharing.
    pub saved_pages: f64,
    /// Zero-page merges (use_zero_pages): a page saved each, its own.
    pub zero_pages: u64,
    /// Its rmap items, the metadata KSM keeps for each page it scans there.
    pub rmap_items: u64,
    /// (saved + zero pages) × page size − rmap items × their size.
    pub saved_bytes: i64,
    /// The kernel's own estimate (ksm_process_profit), which credits every merged mapping
    /// a whole page.
    pub kernel_profit_bytes: i64,
    /// Pages the host must find if this process wrote all its merged pages now.
    pub owes_pages: u64,
}

/// Every process's share, and the machine's totals they are held against.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Savings {
    pub processes: Vec<ProcessSavings>,
    pub page_size: u64,
    /// sizeof(struct ksm_rmap_item), as the kernel's own figures imply.
    pub rmap_item_bytes: i64,
    /// Σ saved_pages: the pages_sharing the processes' mappings make up.
    pub saved_pages: f64,
    /// /sys/kernel/mm/ksm/pages_sharing, read just after the page tables.
    pub pages_sharing: i64,
    /// pages_sharing the live mappings do not make up: the kernel still counts mappings that
    /// are gone (a process exited, a page was written or unmerged) until ksmd passes them again.
    pub stale_pages: f64,
    /// Σ saved_bytes, and general_profit read with pages_sharing.
    pub saved_bytes: i64,
    pub general_profit: Option<i64>,
    /// Σ kernel_profit_bytes: over the exact figure where pages have more than two sharers.
    pub kernel_profit_bytes: i64,
    /// The COW storm: pages the host must find if every merged page were written now.
    pub storm_pages: u64,
    pub mem_available_bytes: Option<u64>,
}

/// `pages` KSM pages, each mapped by exactly these processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharerSet {
    pub pids: Vec<u32>,
    pub pages: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub tool_version: String,
    pub command_line: Vec<String>,
    pub kernel_release: String,
    pub hostname: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// CLOCK_MONOTONIC at start and end of the traced window (event timestamps use it too).
    pub start_ns: u64,
    pub end_ns: u64,
    pub page_size: u64,
    pub ksmd_pid: u32,
    /// Why the recording stopped: duration, interrupt, terminate, workload-finished, settled,
    /// full-scans.
    pub ended_by: String,
    /// ksmd was off and ksm-trace started it for the run.
    pub ksmd_started_for_run: bool,
    /// ksmd was kept off for the run (sweep's KSM-off baseline).
    #[serde(default)]
    pub ksmd_kept_off: bool,
    /// KSM knobs during the run.
    pub knobs: BTreeMap<String, String>,
    pub workload: Option<WorkloadRecord>,
    /// Only these pids were asked for (`--pid`); empty means all.
    pub pid_filter: Vec<u32>,
    pub capabilities: Capabilities,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Procs,
    Vms,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// The spec as given (`procs:4,pages=…`): parse it again for its parameters.
    pub spec_text: String,
    pub kind: WorkloadKind,
    pub workers: Vec<Worker>,
}

/// One process of a workload, as reports attribute merges to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub pid: u32,
    /// The process's comm: `ksm-procs-N` or `ksm-vmN`.
    pub comm: String,
    /// procs: time to fill its memory; vms: time from QEMU start to the guest's ready marker.
    pub ready_ns: u64,
    /// Bytes the worker made resident (procs: its pages; vms: guest RAM size).
    pub bytes: u64,
    /// procs: latency of the worker's own writes to the pages it made identical, each a
    /// copy-on-write fault when KSM had merged the page (the user-side view of a COW break).
    pub write_fault_ns: Histogram,
    /// vms with a load: what the benchmark inside the guest measured (None: no load, or it had
    /// not finished when the recording ended).
    pub load: Option<LoadResult>,
    /// procs with `unmerge=F`: the worker's own timed MADV_UNMERGEABLE calls (None: not asked).
    pub unmerge: Option<UnmergeTiming>,
    /// procs with `zero=F`: how many of its zero-filled pages its rewrites found mapped to the
    /// kernel's zero page, as its pagemap showed them: KSM's zero-page merges, each undone by
    /// the write (the kernel's ksm_zero_pages is the zero-page merges less these), and, with
    /// huge pages on 6.12+, subpages that splitting a huge page mapped there, not KSM (use
    /// `thp=off` where the count must be KSM's alone). None: not counted (no zero pages, or
    /// pagemap unreadable). Absent rather than null then, so version-6 recordings without it
    /// read and write back unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_pages_broken: Option<u64>,
}

/// A worker's timed MADV_UNMERGEABLE calls: the user-side view of unmerging, the kernel
/// selftest's `ksm_tests -D` measure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnmergeTiming {
    /// Duration of each call.
    pub call_ns: Histogram,
    /// Sum of the calls' durations (exact; the histogram keeps 3 significant digits).
    pub total_ns: u64,
    /// Pages the calls covered.
    pub pages: u64,
    /// Of those, pages that were KSM pages just before their call (None: /proc/kpageflags was
    /// not readable). Zero-page merges are not KSM pages and are not counted here.
    pub ksm_pages: Option<u64>,
    /// The kernel's count: how far /proc/vmstat cow_ksm rose during the calls (unmerging a
    /// KSM page is a copy-on-write break). Global: another process's COW breaks in the same
    /// instants count too. None: the kernel has no cow_ksm.
    pub cow_ksm_during: Option<u64>,
}

/// A benchmark's own figures, as it printed them inside a guest (sysbench's summary).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// What ran, with its parameters (e.g. `sysbench oltp_read_write --tables=2 ...`).
    pub command: String,
    pub duration_s: f64,
    pub transactions: u64,
    pub transactions_per_sec: f64,
    pub queries_per_sec: f64,
    /// Errors the benchmark ignored (deadlocks retried) and reconnects.
    pub errors: u64,
    pub latency_ms_avg: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_max: f64,
    /// Transactions per second in each report interval, in order.
    pub interval_tps: Vec<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    #[serde(flatten)]
    pub stats: MergeStats,
    /// The guest's name, for a QEMU process (`-name`, as libvirt names its domains).
    pub guest: Option<String>,
    /// Its cgroup v2 path (None: it was gone before the end of the window).
    pub cgroup: Option<String>,
    /// /proc/<pid>/ksm_stat when the window opened (None: process not known then or gone).
    pub ksm_stat_start: Option<KsmStat>,
    pub ksm_stat_end: Option<KsmStat>,
}

/// What one process's pages went through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeStats {
    pub comm: String,
    /// The counts, flattened into the process's record (and into the report's process).
    #[serde(flatten)]
    pub counts: MergeCounts,
    /// Latency of successful merges (stable-tree and zero-page) that were timed: fentry/fexit
    /// where the kernel allows it, else the mmap_lock bracket.
    pub merge_latency_ns: Histogram,
    /// The mmap_lock bracket's view of merges that fentry/fexit also timed (for comparing the
    /// two mechanisms; empty unless both ran).
    pub merge_latency_bracket_ns: Histogram,
    /// Successful merges without a latency (mechanism not armed, or no matching bracket).
    pub untimed_merges: u64,
    /// Successful merges that came while the sampled bracket was attached, timed or not: why a
    /// process has few timed merges (its merges came outside the windows, or inside without a
    /// bracket on its mm). None: not counted (before version 10).
    pub merges_in_windows: Option<u64>,
    /// Copy-on-write breaks of KSM pages by this process as do_wp_page saw them (fentry;
    /// meaningful only where [`Mechanisms::cow`] attached it) and how long each fault took.
    pub cow_breaks: u64,
    pub cow_fault_ns: Histogram,
    /// The same as the page fault tracepoints saw them (where [`Mechanisms::cow`] attached
    /// them): write faults on KSM pages, on KSM's zero page (use_zero_pages; not in cow_ksm,
    /// but in ksm_zero_pages), and for each break that closed, the time from the fault to the
    /// faulting thread's TLB flush that installs the copy.
    pub cow_breaks_at_fault: u64,
    pub zero_page_breaks: u64,
    pub cow_at_fault_ns: Histogram,
    /// With `Mechanisms::tlb_shootdowns`: the remote TLB flushes ksmd asked for while merging
    /// this process's pages, the IPIs it sent for them (a CPU idle or in lazy TLB mode is
    /// skipped), the merges that sent at least one IPI, and their latency.
    pub tlb_remote_flushes: u64,
    pub tlb_shootdowns: u64,
    pub merges_with_shootdowns: u64,
    pub merge_latency_shootdown_ns: Histogram,
    /// Measured merge time per outcome, ns (what the `--by process` flame graph weighs).
    pub time_ns: OutcomeTimes,
    /// With `Mechanisms::unmerge`: the kernel's `unmerge_ksm_pages` calls on this process's
    /// memory (MADV_UNMERGEABLE, prctl off, run=2), how long each took, and the pages their
    /// ranges covered.
    pub unmerge_call_ns: Histogram,
    pub unmerge_call_pages: u64,
}

/// What one process's pages went through, counted from events: the recording's and the
/// report's one per-process count type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCounts {
    /// Pages that entered the stable tree: `new_pages + joins`.
    pub merges: u64,
    /// Pages that formed a new KSM page together with another page.
    pub new_pages: u64,
    /// Pages merged into an existing KSM page.
    pub joins: u64,
    /// Merge attempts the kernel reported as failed (err != 0).
    pub failed: u64,
    /// First halves of a new-page pair undone because the second half failed.
    pub reverted: u64,
    pub zero_page_merges: u64,
    pub zero_page_failed: u64,
    /// Sharers dropped with a stale stable node (ksm_remove_rmap_item).
    pub removals: u64,
    /// Pages that left the stable tree, as far as tracepoints show (stale KSM pages dropped).
    pub unmerges: u64,
    pub entered: u64,
    pub exited: u64,
}

/// Sums of measured latency by outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeTimes {
    pub new_page: u64,
    pub join: u64,
    pub zero_page: u64,
    pub failed: u64,
}

/// /proc/<pid>/ksm_stat: the kernel's per-process KSM accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmStat {
    pub ksm_rmap_items: u64,
    pub ksm_zero_pages: u64,
    pub ksm_merging_pages: u64,
    pub ksm_process_profit: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// Full scans completed inside the window.
    pub full_scans: Vec<FullScan>,
    pub batch_on_cpu_ns: Histogram,
    pub batch_wall_ns: Histogram,
    pub ksmd_on_cpu_ns: u64,
    pub advisor: Vec<AdvisorStep>,
}

/// One completed full scan. `seq` is the kernel's full_scans value before it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullScan {
    pub seq: u64,
    pub start_ns: Option<u64>,
    pub stop_ns: u64,
    pub rmap_entries: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvisorStep {
    pub ts_ns: u64,
    pub scan_time_s: i64,
    pub pages_to_scan: u64,
    pub cpu_percent: u64,
}

/// One snapshot of the global counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Every readable file in /sys/kernel/mm/ksm (counters and knobs).
    pub ksm: BTreeMap<String, i64>,
    /// cow_ksm and ksm_swpin_copy from /proc/vmstat (absent on kernels without them).
    pub vmstat: BTreeMap<String, i64>,
    /// ksmd's run time as the scheduler counts it (/proc/<ksmd>/schedstat, ns; excludes
    /// hypervisor steal time).
    pub ksmd_cpu_ns: u64,
}

/// One periodic snapshot of the kernel's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// ns since the recording window opened.
    pub t_ns: u64,
    pub counters: Counters,
    /// Merges traced since the window opened.
    pub merges: u64,
    /// /proc/<pid>/ksm_stat of the traced processes still alive.
    pub processes: BTreeMap<u32, KsmStat>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventCounts {
    pub received: BTreeMap<String, u64>,
    /// Dropped by the kernel side because the ring buffer was full.
    pub lost: u64,
    /// New-page first halves whose second half never arrived (only with lost events).
    pub unpaired: u64,
    /// Stale KSM pages dropped whose last sharer merged before tracing began.
    pub unattributed_unmerges: u64,
}

/// How merge latency was asked to be measured (`--merge-latency`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyMode {
    /// fentry/fexit where allowed; otherwise the mmap_lock bracket, sampled: attached for a
    /// short window when merges start, on a budget (while attached it costs ksmd a large
    /// share of its scan rate; see `probes::bracket`).
    #[default]
    Auto,
    /// fentry/fexit where allowed; otherwise the mmap_lock bracket for the whole run.
    Always,
    /// Both mechanisms where fentry/fexit is allowed, to compare them.
    Both,
    /// No merge latency.
    Off,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyCoverage {
    pub mode: LatencyMode,
    /// Windows (CLOCK_MONOTONIC ns) during which the mmap_lock bracket was attached.
    pub bracket_windows: Vec<(u64, u64)>,
    /// The timed merges of each bracket window that timed any, of the recorded processes: a
    /// sample's percentiles get intervals that treat a window as one draw. Absent in
    /// recordings made before they were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window_histograms: Vec<Histogram>,
    /// Windows that open when merges start are attached a little into each burst: the merges
    /// before are not in the sample. None: no window opened on a burst (or not recorded).
    #[serde(default)]
    pub burst_head: Option<BurstHead>,
    /// Of `bracket_windows`, how many opened for a process whose merges still lacked timed
    /// ones, on top of the budget's (None: not recorded, before version 10).
    pub coverage_windows: Option<u64>,
}

/// The start of each burst of merges that windows opened on merges do not time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BurstHead {
    /// Median time from a burst's first merge (after a quiet spell) to the window it opened.
    pub ns: u64,
    /// Successful merges of the recorded processes that came within `ns` of their burst's
    /// first merge, timed or not.
    pub merges: u64,
}

/// ksmd's kernel stacks, root first, with sample counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub frequency_hz: u64,
    /// `frame;frame;...` (root first) → samples.
    pub stacks: BTreeMap<String, u64>,
    /// Samples whose stack could not be stored.
    pub lost: u64,
}

/// What the running kernel allowed, found without changing anything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub kernel_release: String,
    pub root: bool,
    pub ksm: bool,
    pub btf: bool,
    /// The lockdown mode (`/sys/kernel/security/lockdown`; None: not readable).
    pub lockdown: Option<String>,
    /// The active LSMs, in order (`/sys/kernel/security/lsm`; None: not readable, or not
    /// recorded before version 9).
    pub lsms: Option<String>,
    /// 5-level paging is on (`la57` in /proc/cpuinfo; false before version 10, and in the
    /// lab's kept `doctor --json` captures).
    #[serde(default)]
    pub la57: bool,
    pub tracefs_mounted: bool,
    pub thp: Option<String>,
    /// Raw tracepoints ksm-trace attaches to, and whether this kernel has each.
    pub tracepoints: BTreeMap<String, bool>,
    /// Tracepoints present whose argument list differs from what our programs read (they are
    /// not attached): tracepoint → both argument lists.
    pub prototype_mismatches: BTreeMap<String, String>,
    pub functions: BTreeMap<String, bool>,
    pub offsets: BTreeMap<String, Option<u32>>,
    /// `sizeof(struct page)`.
    pub page_struct_size: Option<u32>,
    /// Address of `vmemmap_base` from /proc/kallsyms (absent without KASLR memory
    /// randomization or CONFIG_KALLSYMS_ALL).
    pub vmemmap_base: Option<u64>,
    /// Addresses of mm/ksm.c's `ksm_scan` and `ksm_rmap_items` from /proc/kallsyms (the
    /// function backend reads the full-scan counter there).
    pub ksm_scan: Option<u64>,
    pub ksm_rmap_items: Option<u64>,
}

/// Which mechanism produced each figure; the prose a report prints is derived from these
/// (`report::mechanisms`), never stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mechanisms {
    /// Where merges, unmerges, full scans and enter/exit come from.
    pub events: EventSource,
    pub merge_latency: MergeLatencyMechanism,
    pub batches: BatchMechanism,
    pub attribution: AttributionMechanism,
    /// Per-process copy-on-write breaks of KSM pages.
    pub cow: CowMechanism,
    /// TLB shootdowns ksmd sends per merge.
    pub tlb_shootdowns: ShootdownMechanism,
    /// The kernel's own unmerge calls, timed per process.
    pub unmerge: UnmergeMechanism,
    /// What the kernel refused or lacked and what was used instead, with the reason.
    pub fallbacks: Vec<Fallback>,
}

/// One thing a measurement could not use on this kernel, why, and what it did instead: the
/// reason as data; the report words it (`report::mechanisms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fallback {
    /// This ksm:* tracepoint cannot be attached: its events are not traced.
    KsmTracepoint { tracepoint: String, reason: Reason },
    /// Events come from function probes on mm/ksm.c (`via`: fentry/fexit or kprobes), not the
    /// ksm:* tracepoints: asked for with `--backend`, or the kernel has none (before 6.4).
    FunctionBackend { asked: bool, via: EventSource },
    /// fentry/fexit on the function backend's functions was refused: kprobes instead.
    KprobesForFentry { reason: Reason },
    /// The function backend's zero-page merges come from `via` on try_to_merge_one_page when
    /// its kpage is the zero page (`zero_pfn`).
    ZeroPageMergesFromFunction { via: EventSource, zero_pfn: u64 },
    /// The function backend cannot tell zero-page merges: they are not traced.
    ZeroPageMergesUntraced { reason: Reason },
    /// Batches are ksmd's on-CPU stretches from sched_switch, since ksm_do_scan is inlined
    /// (not in BTF) or, where it is a function, fentry on it is not implemented.
    BatchesFromSchedSwitch { ksm_do_scan_in_btf: bool },
    /// No ksmd batches nor ksmd CPU by sched_switch.
    BatchesUnavailable { reason: Reason },
    /// Merges are not attributed to processes.
    NotAttributed { reason: Reason },
    /// With the function backend a full scan's end is seen at ksmd's switch-out, and
    /// sched_switch is off: no full scans.
    FullScansUntraced,
    /// fentry/fexit on try_to_merge_one_page cannot be used: merge latency from the mmap_lock
    /// bracket instead.
    MergeLatencyFromBracket { reason: Reason },
    /// The mmap_lock bracket cannot be attached.
    BracketUnavailable { tracepoint: String, reason: Reason },
    /// No per-process COW breaks: only the global cow_ksm.
    CowUnavailable { reason: Reason },
    /// fentry/fexit on do_wp_page cannot be used: COW breaks from the page fault tracepoints.
    CowFromFaults { reason: Reason },
    /// The page fault tracepoints cannot be used for COW breaks either.
    CowFaultsUnavailable { reason: Reason },
    /// No kernel-side unmerge latency (unmerge_ksm_pages): the procs workload's `unmerge=F`
    /// still times its own calls.
    UnmergeUnavailable { reason: Reason },
    /// TLB flushes per merge are those ksmd asked for, not the IPIs it sent.
    IpisUntraced { tracepoint: String, reason: Reason },
    /// No TLB shootdowns per merge.
    TlbUnavailable { reason: Reason },
    /// No ksmd stack samples (flame graphs), or they could not be read back.
    ProfileUnavailable { reason: Reason },
    /// A fallback as recorded before version 9, in the words of the day.
    Recorded { text: String },
}

/// Why a program could not be used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reason {
    /// The tracepoint is not in this kernel.
    TracepointMissing,
    /// The tracepoint (or function) exists, but an argument the program reads differs.
    PrototypeDiffers { detail: String },
    /// The function is not in BTF: inlined on this build (or absent).
    NotInBtf { function: String },
    /// A kernel structure member the program reads is not in BTF.
    OffsetMissing { member: String },
    /// The kernel refused to load the program: what was observed and checked.
    Refused(Box<Refusal>),
    /// The kernel has no kprobes (CONFIG_KPROBES off, or no perf kprobe PMU).
    NoKprobes,
    /// fentry refused and no kprobes either.
    RefusedAndNoKprobes(Box<Refusal>),
    /// Turned away by an option the user gave (e.g. `--backend kprobes`).
    Asked { option: String },
    /// The program reads x86-64 page-table entries, and this is another architecture.
    NotX86,
    /// Anything else, in the loader's or the kernel's words.
    Error { message: String },
}

/// A load the kernel refused: the error, and what was checked about why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The program, and the function it attaches to.
    pub program: String,
    pub function: String,
    /// The errno BPF_PROG_LOAD returned (EPERM as root: a policy, not a missing privilege),
    /// with the loader's message.
    pub errno: Option<i32>,
    pub message: String,
    /// The lockdown mode and the active LSMs, where they could be read.
    pub lockdown: Option<String>,
    pub lsms: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UnmergeMechanism {
    /// No function probe on `unmerge_ksm_pages` loads here (fentry refused and no kprobes, or
    /// the function inlined), or not recorded (before version 6).
    Unavailable,
    /// fentry/fexit on `unmerge_ksm_pages`.
    Fentry,
    /// kprobe/kretprobe on `unmerge_ksm_pages`.
    Kprobes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ShootdownMechanism {
    /// Not asked for (`--tlb-shootdowns off`, the default), or not recorded (before version 5).
    Off,
    /// `tlb:tlb_flush` in ksmd with TLB_REMOTE_SEND_IPI (remote flushes asked for) and, where
    /// `ipis`, `ipi:ipi_send_cpu[mask]` (the IPIs really sent), handed to the next merge event.
    TlbFlush { ipis: bool },
    /// Asked for, but the kernel has no usable tlb_flush tracepoint (not x86).
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventSource {
    /// The `ksm:*` tracepoints (Linux 6.4 and later).
    Tracepoints,
    /// fentry/fexit on the functions the tracepoints later went into (older kernels); full
    /// scans end at ksmd's switch-out that sees `ksm_scan.seqnr` move.
    Functions,
    /// kprobes/kretprobes on the same functions, where fentry is refused.
    Kprobes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MergeLatencyMechanism {
    /// `--merge-latency off`.
    Off,
    /// fentry/fexit on try_to_merge_one_page.
    Fexit,
    /// fexit, with the mmap_lock bracket alongside on the same merges (`both`).
    FexitAndBracket,
    /// ksmd's mmap_lock acquire→release on the merged mm, attached as `attached` says.
    Bracket { attached: BracketAttach },
    /// Neither fentry/fexit nor the mmap_lock tracepoints.
    Unavailable,
}

/// When the mmap_lock bracket was attached (it costs ksmd a share of its scan rate while
/// attached, so `auto` samples).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BracketAttach {
    /// For the whole run (`always`): every merge timed.
    Always,
    /// While merges happened, detached after 2 s without (version 1's `auto`).
    WhileMerging,
    /// `on_ms` out of every `period_ms`, at a random moment of each period in which merges
    /// happened (`auto` before version 7).
    Sampled { on_ms: u32, period_ms: u32 },
    /// `on_ms` at a time, opened when merges start (woken by the first merge after a quiet
    /// spell), on a budget that earns one window per `period_ms` and saves up a few while
    /// nothing merges (`auto`): the merges of those windows are a sample of all merges,
    /// without the first of each burst.
    OnMerges { on_ms: u32, period_ms: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BatchMechanism {
    /// ksmd's on-CPU stretches from sched:sched_switch.
    SchedSwitch,
    /// Turned off by the user (`--batches off`).
    Off,
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AttributionMechanism {
    /// mm_struct.owner → task_struct tgid/comm at these BTF offsets.
    MmOwner {
        mm_owner: u32,
        task_tgid: u32,
        task_comm: u32,
    },
    /// No mm_struct.owner (CONFIG_MEMCG=n): merges are not attributed.
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CowMechanism {
    /// fentry/fexit on do_wp_page, counting faults on KSM pages only (the kernel's cow_ksm);
    /// `vmemmap_from_merges`: vmemmap's base was learned from the first traced merge, so breaks
    /// before it are missed.
    DoWpPage { vmemmap_from_merges: bool },
    /// x86's `exceptions:page_fault_user` (and `page_fault_kernel` where `kernel_writes`): write
    /// faults on a present PTE that maps a KSM page or KSM's zero page, by a page-table walk;
    /// each break's latency from the fault to the faulting thread's TLB flush that installs
    /// the copy.
    FaultTracepoint { kernel_writes: bool },
    /// Both at once (`--cow-probe both`), to compare them on the same faults.
    DoWpPageAndFaultTracepoint { kernel_writes: bool },
    /// Turned off by the user (`--cow-probe off`).
    Off,
    /// Only the global cow_ksm from /proc/vmstat.
    Unavailable,
}

impl MergeLatencyMechanism {
    /// Merge latency came from fentry/fexit on try_to_merge_one_page.
    pub fn is_fexit(self) -> bool {
        matches!(self, Self::Fexit | Self::FexitAndBracket)
    }
}

impl Mechanisms {
    /// Whether per-process COW breaks were traced (else only the global cow_ksm exists).
    pub fn cow_traced(&self) -> bool {
        !matches!(self.cow, CowMechanism::Off | CowMechanism::Unavailable)
    }
}
