//! The figures a report shows, computed once from a recording; the text and JSON renderers only
//! format them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    histogram::{Histogram, Summary, clustered_percentile_cis},
    kernel::KsmStat,
    kernel::process::By,
    recording::{
        ProcessRecord, Recording,
        schema::{
            BatchMechanism, CowMechanism, Mechanisms, MergeCounts, MergeStats, ShootdownMechanism,
        },
    },
    sample::SETTLE_THRESHOLD,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub duration_s: f64,
    pub kernel_release: String,
    pub workload: Option<String>,
    /// The workload's processes (or guests), with their own measurements.
    pub workers: Vec<WorkerReport>,
    pub ended_by: String,
    pub knobs: BTreeMap<String, String>,
    /// Every process that merged, unmerged or was tracked by KSM in the window; the
    /// workload's first.
    pub processes: Vec<ProcessReport>,
    /// Totals of the workload's processes and of the machine's other processes.
    pub groups: Vec<GroupReport>,
    /// Pages ksmd removed from the stable tree for processes that had exited before the window
    /// (their mm has no owner: the `(exited)` row, pid 0), counted apart from every group.
    #[serde(default)]
    pub exited_cleanup_pages: u64,
    /// The KSM advisor's scorecard, when it ran (ksm_advisor events seen).
    #[serde(default)]
    pub advisor: Option<super::advisor::AdvisorReport>,
    /// What each process saves and owes at the window's end (the end snapshot's split).
    #[serde(default)]
    pub savings: Option<crate::recording::schema::Savings>,
    /// Totals per guest (QEMU's `-name`; other processes as one group) and per cgroup v2
    /// path, most merging pages first: `report --by guest|cgroup`.
    pub by_guest: Vec<GroupReport>,
    pub by_cgroup: Vec<GroupReport>,
    /// Memory KSM saves at the end: (pages_sharing + ksm_zero_pages) × page size, MiB.
    pub saved_mib_end: f64,
    /// general_profit at the end, MiB (None: the kernel has no general_profit file, e.g. 6.1).
    pub general_profit_mib_end: Option<f64>,
    pub scans: ScansReport,
    /// end − start of /sys/kernel/mm/ksm counters and /proc/vmstat's cow_ksm, ksm_swpin_copy.
    pub kernel_deltas: BTreeMap<String, i64>,
    /// Knobs another process changed, and full_scans resets (run=2), during the window.
    pub other_actors: super::others::OtherActors,
    /// Seconds until pages_sharing changed by less than 5 % over a full scan (None: not settled).
    pub settle_s: Option<f64>,
    /// Who shares with whom, in brief (None: not recorded, before format version 5).
    #[serde(default)]
    pub sharing: Option<SharingReport>,
    pub lost_events: u64,
    /// False when events were lost: every figure traced from events is then a lower bound and
    /// the exactness checks against the kernel's counters do not hold.
    pub complete: bool,
    /// The figures lost events make incomplete (empty when complete).
    pub incomplete: Vec<String>,
    pub unpaired_merges: u64,
    /// ksmd's cost by phase, from its stack samples (None: no samples).
    #[serde(default)]
    pub phases: Option<super::phases::PhasesReport>,
    /// ksmd samples (flame graphs) and samples whose stack was lost.
    pub profile_samples: u64,
    pub profile_lost: u64,
    pub merge_latency: LatencyReport,
    pub mechanisms: Mechanisms,
    /// The same, in words: figure → mechanism.
    pub mechanism_descriptions: BTreeMap<String, String>,
    /// Each fallback in words, in the order of `mechanisms.fallbacks`.
    #[serde(default)]
    pub fallback_descriptions: Vec<String>,
}

/// The traced sharing matrix in brief; `ksm-trace sharing FILE` has it whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SharingReport {
    /// KSM pages merged in the window and still mapped at its end by a recorded process.
    pub ksm_pages: u64,
    /// Of those, the pages two or more recorded processes map.
    pub shared_pages: u64,
    /// The processes that share most, and how many pages (at most three pairs).
    pub top_pairs: Vec<(String, String, u64)>,
    /// Reconciled with the end snapshot (sharers that left without an event removed).
    pub reconciled: bool,
}

impl SharingReport {
    fn of(rec: &Recording) -> Option<Self> {
        let sharing = rec.sharing.as_ref()?;
        let m = crate::sharing::traced_matrix(rec, By::Process)?;
        Some(Self {
            ksm_pages: m.ksm_pages,
            shared_pages: m.ksm_pages - m.pages_by_sharers.get(&1).copied().unwrap_or(0),
            top_pairs: m.pairs.into_iter().take(3).collect(),
            reconciled: sharing.end_snapshot.is_some(),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: String,
    /// The guest's name, for a QEMU process.
    pub guest: Option<String>,
    pub cgroup: Option<String>,
    /// One of the workload ksm-trace started (else another process on the machine).
    pub workload: bool,
    /// The recording's counts for it, as they are.
    #[serde(flatten)]
    pub counts: MergeCounts,
    /// merges − unmerges − Δksm_merging_pages: sharers that left a KSM page others still map,
    /// which no tracepoint reports. 0 for a workload that does not write after merging.
    pub silent_unmerges: Option<i64>,
    pub ksm_merging_pages_start: Option<u64>,
    pub ksm_merging_pages_end: Option<u64>,
    pub ksm_zero_pages_start: Option<u64>,
    pub ksm_zero_pages_end: Option<u64>,
    /// ksm_process_profit at the end, MiB: what KSM saves this process net of its rmap items
    /// (None where the kernel has no such figure, e.g. 6.1, or the process was gone).
    pub profit_mib_end: Option<f64>,
    pub merge_latency_ns: Summary,
    pub untimed_merges: u64,
    /// Its successful merges that came while the sampled bracket was attached (None: not
    /// counted): why a process has few timed merges.
    #[serde(default)]
    pub merges_in_windows: Option<u64>,
    /// Copy-on-write breaks of KSM pages by this process; None where they were not traced
    /// (`--cow-probe off`, or no mechanism here): not measured, rather than zero. With the
    /// page fault tracepoints, also the breaks of KSM's zero page and how many breaks closed
    /// (their TLB flush seen: they have a latency).
    pub cow_breaks: Option<u64>,
    pub cow_fault_ns: Summary,
    #[serde(default)]
    pub zero_page_breaks: Option<u64>,
    #[serde(default)]
    pub cow_closed: Option<u64>,
    /// With `--cow-probe both`: the fault tracepoints' count and latency beside do_wp_page's.
    #[serde(default)]
    pub cow_breaks_at_fault: Option<u64>,
    #[serde(default)]
    pub cow_at_fault_ns: Option<Summary>,
    /// The kernel's unmerge_ksm_pages calls on its memory (with `mechanisms.unmerge`): each
    /// call's duration, and the pages their ranges covered.
    pub unmerge_call_ns: Summary,
    pub unmerge_call_pages: u64,
    /// TLB shootdowns ksmd sent merging this process's pages (None: not recorded).
    #[serde(default)]
    pub tlb: Option<ShootdownReport>,
}

/// TLB shootdowns ksmd sent merging one process's pages, and what they cost its merges.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShootdownReport {
    /// Remote TLB flushes ksmd asked for, and per successful merge (zero-page merges included).
    pub remote_flushes: u64,
    pub flushes_per_merge: f64,
    /// The IPIs it sent for them (None: the kernel has no ipi tracepoints), per merge.
    pub shootdowns: Option<u64>,
    pub per_merge: Option<f64>,
    pub merges_with: u64,
    /// The timed merges that sent shootdowns.
    pub with_ns: Summary,
    /// Mean latency of the timed merges that sent none (None: every timed merge sent some).
    pub without_mean_ns: Option<f64>,
    /// Share of the timed merges' total time that the shootdowns explain: (mean with − mean
    /// without) × merges with, over the total (from the histograms' means).
    pub share_of_merge_time: Option<f64>,
}

impl ShootdownReport {
    fn of(stats: &crate::recording::schema::MergeStats, ipis: bool) -> Self {
        let (all, with) = (
            stats.merge_latency_ns.summary(),
            stats.merge_latency_shootdown_ns.summary(),
        );
        let without_n = all.count.saturating_sub(with.count);
        let without_mean_ns = (without_n > 0).then(|| {
            (all.mean * all.count as f64 - with.mean * with.count as f64) / without_n as f64
        });
        let total = all.mean * all.count as f64;
        let share_of_merge_time = without_mean_ns
            .filter(|_| total > 0.0)
            .map(|without| ((with.mean - without) * with.count as f64 / total).max(0.0));
        let merges = (stats.counts.merges + stats.counts.zero_page_merges).max(1) as f64;
        Self {
            remote_flushes: stats.tlb_remote_flushes,
            flushes_per_merge: stats.tlb_remote_flushes as f64 / merges,
            shootdowns: ipis.then_some(stats.tlb_shootdowns),
            per_merge: ipis.then(|| stats.tlb_shootdowns as f64 / merges),
            merges_with: stats.merges_with_shootdowns,
            with_ns: with,
            without_mean_ns,
            share_of_merge_time,
        }
    }
}

impl GroupReport {
    /// The processes summed per guest or per cgroup, most merging pages first.
    fn by(by: By, processes: &[ProcessReport], page: f64) -> Vec<Self> {
        let key =
            |p: &ProcessReport| by.key(p.pid, &p.comm, p.guest.as_deref(), p.cgroup.as_deref());
        // pid 0 (processes that exited before the window) belongs to no guest or cgroup.
        let owned = || processes.iter().filter(|p| p.pid != 0);
        let keys: std::collections::BTreeSet<String> = owned().map(key).collect();
        let mut sums: Vec<Self> = keys
            .into_iter()
            .map(|k| Self::of(&k, owned().filter(|p| key(p) == k), page))
            .collect();
        sums.sort_by_key(|g| std::cmp::Reverse(g.merging_pages_end));
        sums
    }

    fn of<'a>(name: &str, members: impl Iterator<Item = &'a ProcessReport>, page: f64) -> Self {
        let mut g = Self {
            name: name.into(),
            processes: 0,
            merges: 0,
            unmerges: 0,
            merging_pages_end: 0,
            merging_mib_end: 0.0,
            cow_breaks: None,
        };
        for p in members {
            g.processes += 1;
            g.merges += p.counts.merges;
            g.unmerges += p.counts.unmerges;
            g.merging_pages_end += p.ksm_merging_pages_end.unwrap_or(0);
            if let Some(c) = p.cow_breaks {
                *g.cow_breaks.get_or_insert(0) += c;
            }
        }
        g.merging_mib_end = g.merging_pages_end as f64 * page / MIB;
        g
    }
}

/// The sums over one group of processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupReport {
    /// `workload` or `other`.
    pub name: String,
    pub processes: u64,
    pub merges: u64,
    pub unmerges: u64,
    /// Σ ksm_merging_pages at the end, and in MiB.
    pub merging_pages_end: u64,
    pub merging_mib_end: f64,
    /// Σ COW breaks of KSM pages (None: not traced).
    #[serde(default)]
    pub cow_breaks: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerReport {
    pub pid: u32,
    pub comm: String,
    /// procs: fill time; vms: boot to ready.
    pub ready_ns: u64,
    /// procs: the worker's writes to pages that were KSM pages (copy-on-write breaks).
    pub write_fault_ns: Summary,
    /// Memory the worker was given (procs: its pages; vms: guest RAM), MiB.
    pub mib: f64,
    /// Its ksm_process_profit at the end, MiB, and as a share of its memory.
    pub profit_mib_end: Option<f64>,
    pub profit_percent_of_memory: Option<f64>,
    /// vms with a load: what the benchmark inside the guest measured.
    pub load: Option<crate::recording::schema::LoadResult>,
    /// procs with `unmerge=F`: its timed MADV_UNMERGEABLE calls.
    pub unmerge: Option<UnmergeReport>,
    /// procs with `zero=F`: zero-page merges its rewrites undid (see the recording's worker).
    pub zero_pages_broken: Option<u64>,
}

/// A worker's own unmerge calls, with the kernel's count beside them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnmergeReport {
    pub call_ns: Summary,
    pub pages: u64,
    /// Pages that were KSM pages before their call (kpageflags), and the kernel's own count:
    /// cow_ksm's rise during the calls; None where not readable.
    pub ksm_pages: Option<u64>,
    pub cow_ksm_during: Option<u64>,
    /// MiB covered per second of call time (the selftest's `ksm_tests -D` figure).
    pub mib_per_s: f64,
}

impl UnmergeReport {
    pub fn of(t: &crate::recording::schema::UnmergeTiming, page_size: u64) -> Self {
        Self {
            call_ns: t.call_ns.summary(),
            pages: t.pages,
            ksm_pages: t.ksm_pages,
            cow_ksm_during: t.cow_ksm_during,
            mib_per_s: (t.pages * page_size) as f64 / MIB / (t.total_ns.max(1) as f64 / 1e9),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScansReport {
    pub full_scans: u64,
    pub full_scan_ns: Summary,
    pub batches: u64,
    pub batch_ns: Summary,
    /// ksmd's on-CPU share from sched_switch (wall time between switch-in and switch-out, so it
    /// includes hypervisor steal time on a VM).
    /// None where batches were not traced (turned off or unavailable): not measured.
    pub ksmd_cpu_percent: Option<f64>,
    /// The scheduler's own figure (/proc/<ksmd>/schedstat; excludes steal), as a cross-check.
    pub ksmd_cpu_percent_schedstat: f64,
    /// None where the kernel has no pages_scanned counter (older kernels): not measured.
    pub pages_scanned: Option<i64>,
    pub pages_scanned_per_sec: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyReport {
    pub all_ns: Summary,
    pub timed: u64,
    pub untimed: u64,
    /// Share of the window the mmap_lock bracket was attached (auto mode samples).
    pub bracket_attached_percent: f64,
    /// Share of the merges that were timed.
    pub timed_percent: f64,
    /// Sampling windows of the bracket that timed merges.
    pub timed_windows: usize,
    /// When only a sample of the merges was timed, from enough windows: 95 % confidence
    /// intervals of the p50 and p99 of all merges, by a bootstrap over the windows (each
    /// window's merges are consecutive, not independent), valid as far as the windows are
    /// representative of the run.
    pub p50_ci_ns: Option<(u64, u64)>,
    pub p99_ci_ns: Option<(u64, u64)>,
    /// When windows opened on merges: how far into a burst they typically opened (ns), and the
    /// share of all merges that came that early in their burst — outside the sample, so the
    /// intervals above cover the other merges only (a burst's first merges can be slower).
    #[serde(default)]
    pub burst_head_ns: Option<u64>,
    #[serde(default)]
    pub burst_head_percent: Option<f64>,
    /// Of the windows, those opened for processes short of timed merges.
    #[serde(default)]
    pub coverage_windows: Option<u64>,
}

impl Report {
    pub fn from_recording(rec: &Recording) -> Self {
        let duration_ns = rec.meta.duration_ns().max(1);
        let page = rec.meta.page_size as f64;
        let processes = ProcessReport::all(rec);
        let groups = ["workload", "other"]
            .map(|name| {
                let members = processes
                    .iter()
                    .filter(|p| p.pid != 0 && p.workload == (name == "workload"));
                GroupReport::of(name, members, page)
            })
            .to_vec();
        let kernel_deltas = kernel_deltas(rec);
        let phases = super::phases::PhasesReport::of(
            rec,
            kernel_deltas.get("pages_scanned").copied(),
            rec.processes.iter().map(|p| p.stats.counts.merges).sum(),
        );
        let end = &rec.counters_end;
        Report {
            duration_s: duration_ns as f64 / 1e9,
            kernel_release: rec.meta.kernel_release.clone(),
            workload: rec.meta.workload.as_ref().map(|w| w.spec_text.clone()),
            workers: WorkerReport::all(rec, &processes),
            ended_by: rec.meta.ended_by.clone(),
            knobs: rec.meta.knobs.clone(),
            advisor: super::advisor::AdvisorReport::of(rec),
            savings: rec
                .sharing
                .as_ref()
                .and_then(|s| s.end_snapshot.as_ref())
                .and_then(|e| e.savings.clone()),
            exited_cleanup_pages: processes
                .iter()
                .filter(|p| p.pid == 0)
                .map(|p| p.counts.unmerges)
                .sum(),
            by_guest: GroupReport::by(By::Guest, &processes, page),
            by_cgroup: GroupReport::by(By::Cgroup, &processes, page),
            processes,
            groups,
            saved_mib_end: (end.ksm("pages_sharing") + end.ksm("ksm_zero_pages")) as f64 * page
                / MIB,
            general_profit_mib_end: end.ksm.get("general_profit").map(|&p| p as f64 / MIB),
            scans: ScansReport::of(rec, &kernel_deltas),
            kernel_deltas,
            other_actors: super::others::OtherActors::from_samples(&rec.timeseries),
            settle_s: crate::sample::settle_time_s(&rec.timeseries, SETTLE_THRESHOLD),
            sharing: SharingReport::of(rec),
            phases,
            profile_samples: rec.profile.samples(),
            profile_lost: rec.profile.lost,
            lost_events: rec.events.lost,
            complete: rec.events.lost == 0,
            incomplete: if rec.events.lost == 0 {
                Vec::new()
            } else {
                INCOMPLETE_WHEN_LOST.iter().map(|s| s.to_string()).collect()
            },
            unpaired_merges: rec.events.unpaired,
            merge_latency: LatencyReport::of(rec),
            mechanisms: rec.mechanisms.clone(),
            mechanism_descriptions: descriptions(&rec.mechanisms),
            fallback_descriptions: rec
                .mechanisms
                .fallbacks
                .iter()
                .map(super::mechanisms::fallback)
                .collect(),
        }
    }
}

impl ProcessReport {
    /// Every recorded process, the workload's first, then by merges.
    fn all(rec: &Recording) -> Vec<Self> {
        let workers: Vec<u32> = rec
            .meta
            .workload
            .iter()
            .flat_map(|w| &w.workers)
            .map(|w| w.pid)
            .collect();
        let mut processes: Vec<Self> = rec
            .processes
            .iter()
            .map(|p| {
                Self::of(rec, p, workers.contains(&p.pid)).with_cow(rec.mechanisms.cow, &p.stats)
            })
            .collect();
        processes.sort_by(|a, b| {
            (b.workload, b.counts.merges)
                .cmp(&(a.workload, a.counts.merges))
                .then(a.pid.cmp(&b.pid))
        });
        processes
    }

    /// The COW figures of the mechanism that traced them; with the fault tracepoints, also
    /// their zero-page breaks and how many breaks closed.
    fn with_cow(mut self, cow: CowMechanism, s: &MergeStats) -> Self {
        if let Some((breaks, latency)) = cow.breaks(s) {
            self.cow_breaks = Some(breaks);
            self.cow_fault_ns = latency.summary();
        }
        if matches!(
            cow,
            CowMechanism::FaultTracepoint { .. } | CowMechanism::DoWpPageAndFaultTracepoint { .. }
        ) {
            self.zero_page_breaks = Some(s.zero_page_breaks);
            self.cow_closed = Some(s.cow_at_fault_ns.count());
        }
        if let CowMechanism::DoWpPageAndFaultTracepoint { .. } = cow {
            self.cow_breaks_at_fault = Some(s.cow_breaks_at_fault);
            self.cow_at_fault_ns = Some(s.cow_at_fault_ns.summary());
        }
        self
    }

    fn of(rec: &Recording, p: &ProcessRecord, workload: bool) -> Self {
        // ksm_process_profit came with general_profit (6.6), the per-process ksm_zero_pages
        // with the global one: without them ksm_stat reads 0, which must show as not available.
        let has_profit = rec.counters_end.ksm.contains_key("general_profit");
        let has_zero_pages = rec.counters_end.ksm.contains_key("ksm_zero_pages");
        let zero_pages =
            |s: Option<KsmStat>| s.filter(|_| has_zero_pages).map(|s| s.ksm_zero_pages);
        let s = &p.stats;
        Self {
            pid: p.pid,
            comm: s.comm.clone(),
            guest: p.guest.clone(),
            cgroup: p.cgroup.clone(),
            workload,
            counts: s.counts,
            silent_unmerges: match (p.ksm_stat_start, p.ksm_stat_end) {
                (Some(a), Some(b)) => Some(
                    s.counts.merges as i64
                        - s.counts.unmerges as i64
                        - (b.ksm_merging_pages as i64 - a.ksm_merging_pages as i64),
                ),
                _ => None,
            },
            ksm_merging_pages_start: p.ksm_stat_start.map(|s| s.ksm_merging_pages),
            ksm_merging_pages_end: p.ksm_stat_end.map(|s| s.ksm_merging_pages),
            ksm_zero_pages_start: zero_pages(p.ksm_stat_start),
            ksm_zero_pages_end: zero_pages(p.ksm_stat_end),
            profit_mib_end: p
                .ksm_stat_end
                .filter(|_| has_profit)
                .map(|s| s.ksm_process_profit as f64 / MIB),
            merge_latency_ns: s.merge_latency_ns.summary(),
            untimed_merges: s.untimed_merges,
            merges_in_windows: s.merges_in_windows,
            cow_breaks: None,
            cow_fault_ns: Summary::default(),
            zero_page_breaks: None,
            cow_closed: None,
            cow_breaks_at_fault: None,
            cow_at_fault_ns: None,
            unmerge_call_ns: s.unmerge_call_ns.summary(),
            unmerge_call_pages: s.unmerge_call_pages,
            tlb: match rec.mechanisms.tlb_shootdowns {
                ShootdownMechanism::TlbFlush { ipis } => Some(ShootdownReport::of(s, ipis)),
                _ => None,
            },
        }
    }
}

impl WorkerReport {
    fn all(rec: &Recording, processes: &[ProcessReport]) -> Vec<Self> {
        let workers = rec.meta.workload.iter().flat_map(|w| &w.workers);
        workers
            .map(|w| {
                let profit = processes
                    .iter()
                    .find(|p| p.pid == w.pid)
                    .and_then(|p| p.profit_mib_end);
                let mib = w.bytes as f64 / MIB;
                WorkerReport {
                    pid: w.pid,
                    comm: w.comm.clone(),
                    ready_ns: w.ready_ns,
                    write_fault_ns: w.write_fault_ns.summary(),
                    mib,
                    profit_mib_end: profit,
                    profit_percent_of_memory: profit.filter(|_| mib > 0.0).map(|p| p * 100.0 / mib),
                    load: w.load.clone(),
                    zero_pages_broken: w.zero_pages_broken,
                    unmerge: w
                        .unmerge
                        .as_ref()
                        .map(|t| UnmergeReport::of(t, rec.meta.page_size)),
                }
            })
            .collect()
    }
}

/// end − start of the /sys/kernel/mm/ksm counters (not the knobs) and of /proc/vmstat's.
fn kernel_deltas(rec: &Recording) -> BTreeMap<String, i64> {
    let (start, end) = (&rec.counters_start, &rec.counters_end);
    let ksm = end
        .ksm
        .iter()
        .filter(|(name, _)| !crate::kernel::sysfs::KNOBS.contains(&name.as_str()))
        .map(|(name, v)| (name, v - start.ksm.get(name).copied().unwrap_or(0)));
    let vmstat = end
        .vmstat
        .iter()
        .map(|(name, v)| (name, v - start.vmstat.get(name).copied().unwrap_or(0)));
    ksm.chain(vmstat).map(|(n, d)| (n.clone(), d)).collect()
}

impl ScansReport {
    fn of(rec: &Recording, kernel_deltas: &BTreeMap<String, i64>) -> Self {
        let duration_ns = rec.meta.duration_ns().max(1);
        let pages_scanned = kernel_deltas.get("pages_scanned").copied();
        let ksmd_cpu_ns = rec
            .counters_end
            .ksmd_cpu_ns
            .saturating_sub(rec.counters_start.ksmd_cpu_ns);
        Self {
            full_scans: rec.scans.full_scans.len() as u64,
            full_scan_ns: full_scan_histogram(rec).summary(),
            batches: rec.scans.batch_on_cpu_ns.count(),
            batch_ns: rec.scans.batch_on_cpu_ns.summary(),
            ksmd_cpu_percent: (rec.mechanisms.batches == BatchMechanism::SchedSwitch)
                .then(|| rec.scans.ksmd_on_cpu_ns as f64 * 100.0 / duration_ns as f64),
            ksmd_cpu_percent_schedstat: ksmd_cpu_ns as f64 * 100.0 / duration_ns as f64,
            pages_scanned,
            pages_scanned_per_sec: pages_scanned.map(|p| p as f64 / (duration_ns as f64 / 1e9)),
        }
    }
}

impl LatencyReport {
    fn of(rec: &Recording) -> Self {
        let duration_ns = rec.meta.duration_ns().max(1);
        let all = all_latencies(rec);
        let timed = all.count();
        let untimed: u64 = rec.processes.iter().map(|p| p.stats.untimed_merges).sum();
        let merges = (timed + untimed).max(1) as f64;
        let sampled_cis = (untimed > 0)
            .then(|| clustered_percentile_cis(&rec.latency.window_histograms, [50.0, 99.0]))
            .flatten();
        let attached: u64 = rec
            .latency
            .bracket_windows
            .iter()
            .map(|(a, b)| b.saturating_sub(*a))
            .sum();
        Self {
            all_ns: all.summary(),
            timed,
            untimed,
            bracket_attached_percent: attached as f64 * 100.0 / duration_ns as f64,
            timed_percent: timed as f64 * 100.0 / merges,
            timed_windows: rec.latency.window_histograms.len(),
            p50_ci_ns: sampled_cis.map(|[p50, _]| p50),
            p99_ci_ns: sampled_cis.map(|[_, p99]| p99),
            burst_head_ns: rec.latency.burst_head.map(|h| h.ns),
            burst_head_percent: rec
                .latency
                .burst_head
                .map(|h| h.merges as f64 * 100.0 / merges),
            coverage_windows: rec.latency.coverage_windows,
        }
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// What lost events leave short: everything counted from events. The kernel's own counters
/// (deltas, time series) and the stack profile (counted in the kernel) are not affected.
const INCOMPLETE_WHEN_LOST: [&str; 6] = [
    "per-process merges, joins, failed and zero-page merges (lower bounds)",
    "unmerges (lower bounds)",
    "merge latency distributions (fewer samples)",
    "full scans and their durations",
    "ksmd batches and ksmd CPU by sched_switch",
    "COW breaks per process",
];

pub fn all_latencies(rec: &Recording) -> Histogram {
    let mut all = Histogram::new();
    for p in &rec.processes {
        all.add(&p.stats.merge_latency_ns);
    }
    all
}

pub fn full_scan_histogram(rec: &Recording) -> Histogram {
    let mut h = Histogram::new();
    for d in rec.scans.full_scans.iter().filter_map(|s| s.duration_ns()) {
        h.record(d);
    }
    h
}

fn descriptions(m: &Mechanisms) -> BTreeMap<String, String> {
    use super::mechanisms as text;
    [
        ("events", text::events(m.events).to_owned()),
        ("merge_latency", text::merge_latency(m.merge_latency)),
        ("batches", text::batches(m.batches).to_owned()),
        ("attribution", text::attribution(m.attribution)),
        ("cow", text::cow(m.cow).to_owned()),
        (
            "tlb_shootdowns",
            text::tlb_shootdowns(m.tlb_shootdowns).to_owned(),
        ),
        ("unmerge", text::unmerge(m.unmerge).to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::schema::MergeStats;

    #[test]
    fn shootdowns_explain_the_extra_time_of_the_merges_that_sent_them() {
        let mut stats = MergeStats {
            counts: MergeCounts {
                merges: 4,
                ..Default::default()
            },
            tlb_remote_flushes: 8,
            tlb_shootdowns: 6,
            merges_with_shootdowns: 2,
            ..Default::default()
        };
        // Two merges at 1000 ns without shootdowns, two at 2000 ns with (exact below 2048).
        for ns in [1000, 1000, 2000, 2000] {
            stats.merge_latency_ns.record(ns);
        }
        for ns in [2000, 2000] {
            stats.merge_latency_shootdown_ns.record(ns);
        }
        let r = ShootdownReport::of(&stats, true);
        assert_eq!((r.flushes_per_merge, r.per_merge), (2.0, Some(1.5)));
        assert_eq!(r.without_mean_ns, Some(1000.0));
        // (2000 − 1000) × 2 of 6000 ns.
        assert!((r.share_of_merge_time.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        // Every timed merge sent some: nothing to compare with.
        stats.merge_latency_ns = stats.merge_latency_shootdown_ns.clone();
        assert_eq!(ShootdownReport::of(&stats, true).share_of_merge_time, None);
        assert_eq!(ShootdownReport::of(&stats, false).shootdowns, None);
    }
}
