//! ksmd's cost by phase, from its stack samples: each sample goes to one phase by one table of
//! rules ([`RULES`]: a function name, or a prefix ending in `*`, → phase), matched on the whole
//! stack, the innermost match winning. Inlining differs by kernel (cmp_and_merge_page and the
//! tree searches are inlined into ksm_scan_thread on 6.18, their memcmp is not), so the rules
//! name the functions that stay out of line, and tests hold them against real stacks of the
//! host's 6.18 and the lab's Debian 6.12 and 6.1 (`tests/fixtures/profile-*.folded`).
//!
//! For each phase: its share of the samples with a 95 % interval (Wilson's, for a proportion:
//! a sample is a draw of where ksmd is at a clock tick), ksmd's CPU time in it (schedstat's
//! CPU time × share), and what it costs per page scanned (and per merge, for the merge phase).
use serde::{Deserialize, Serialize};

use crate::{recording::Recording, stats::wilson};

/// Where ksmd spends a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Walking a process's page tables to the next page to scan.
    PageTableWalk,
    /// The page's checksum (is it stable since the last scan?).
    Checksum,
    /// Comparing contents in the stable and unstable trees (and a merge's last check).
    Compare,
    /// Merging: write-protecting the page, replacing it, the TLB flushes and the wait for
    /// their IPIs, splitting a huge page first.
    Merge,
    /// Finding the VMA and mm of an rmap item.
    Lookup,
    /// Keeping the stable tree and the rmap items (stale KSM pages, chains, appends).
    StableTreeUpkeep,
    /// mmap_lock, spinlocks, rescheduling.
    LockingScheduling,
    /// Tracing programs running in ksmd (ksm-trace's own, or any other).
    Tracing,
    /// Anything else: the scan loop itself, freeing pages.
    Other,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::PageTableWalk,
        Phase::Checksum,
        Phase::Compare,
        Phase::Merge,
        Phase::Lookup,
        Phase::StableTreeUpkeep,
        Phase::LockingScheduling,
        Phase::Tracing,
        Phase::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::PageTableWalk => "page-table walk",
            Phase::Checksum => "checksum",
            Phase::Compare => "content compare",
            Phase::Merge => "merge",
            Phase::Lookup => "VMA and mm lookup",
            Phase::StableTreeUpkeep => "stable-tree and rmap upkeep",
            Phase::LockingScheduling => "locking and scheduling",
            Phase::Tracing => "tracing programs",
            Phase::Other => "other",
        }
    }
}

/// Function (or prefix, ending in `*`) → phase.
pub const RULES: &[(&str, Phase)] = &[
    ("walk_page_range*", Phase::PageTableWalk),
    ("__walk_page_range", Phase::PageTableWalk),
    ("walk_pgd_range", Phase::PageTableWalk),
    ("walk_p4d_range", Phase::PageTableWalk),
    ("walk_pud_range", Phase::PageTableWalk),
    ("walk_pmd_range", Phase::PageTableWalk),
    ("ksm_next_page_pmd_entry", Phase::PageTableWalk),
    ("folio_walk_start", Phase::PageTableWalk),
    ("follow_page*", Phase::PageTableWalk),
    ("vm_normal_page*", Phase::PageTableWalk),
    ("scan_get_next_rmap_item", Phase::PageTableWalk),
    ("xxh64", Phase::Checksum),
    ("xxhash*", Phase::Checksum),
    ("jhash2", Phase::Checksum),
    ("calc_checksum", Phase::Checksum),
    ("memcmp", Phase::Compare),
    ("memcmp_pages", Phase::Compare),
    ("stable_tree_search", Phase::Compare),
    ("unstable_tree_search_insert", Phase::Compare),
    ("stable_node_dup*", Phase::Compare),
    ("chain*", Phase::Compare),
    ("cmp_and_merge_page", Phase::Compare),
    ("try_to_merge_one_page", Phase::Merge),
    ("try_to_merge_with_ksm_page", Phase::Merge),
    ("try_to_merge_with_zero_page", Phase::Merge),
    ("try_to_merge_two_pages", Phase::Merge),
    ("write_protect_page", Phase::Merge),
    ("replace_page", Phase::Merge),
    ("ptep_clear_flush", Phase::Merge),
    ("flush_tlb_mm_range", Phase::Merge),
    ("native_flush_tlb_multi", Phase::Merge),
    ("on_each_cpu_cond_mask", Phase::Merge),
    ("smp_call_function_many_cond", Phase::Merge),
    ("__folio_split", Phase::Merge),
    ("split_huge_page*", Phase::Merge),
    ("split_folio*", Phase::Merge),
    ("mtree_load", Phase::Lookup),
    ("mas_*", Phase::Lookup),
    ("find_vma*", Phase::Lookup),
    ("vma_lookup", Phase::Lookup),
    ("find_mergeable_vma", Phase::Lookup),
    ("ksm_get_folio", Phase::StableTreeUpkeep),
    ("get_ksm_page", Phase::StableTreeUpkeep),
    ("stable_tree_append", Phase::StableTreeUpkeep),
    ("remove_rmap_item_from_tree", Phase::StableTreeUpkeep),
    ("remove_node_from_stable_tree", Phase::StableTreeUpkeep),
    ("remove_stable_node*", Phase::StableTreeUpkeep),
    ("free_stable_node", Phase::StableTreeUpkeep),
    ("alloc_stable_node*", Phase::StableTreeUpkeep),
    ("alloc_rmap_item", Phase::StableTreeUpkeep),
    ("free_rmap_item", Phase::StableTreeUpkeep),
    ("remove_trailing_rmap_items", Phase::StableTreeUpkeep),
    ("get_next_rmap_item", Phase::StableTreeUpkeep),
    ("down_read*", Phase::LockingScheduling),
    ("up_read", Phase::LockingScheduling),
    ("mmap_read_*", Phase::LockingScheduling),
    ("_raw_spin_*", Phase::LockingScheduling),
    (
        "__raw_callee_save___pv_queued_spin_unlock",
        Phase::LockingScheduling,
    ),
    ("native_queued_spin_lock_slowpath", Phase::LockingScheduling),
    ("__cond_resched", Phase::LockingScheduling),
    ("__schedule", Phase::LockingScheduling),
    ("schedule*", Phase::LockingScheduling),
    ("preempt_schedule*", Phase::LockingScheduling),
    ("bpf_prog_*", Phase::Tracing),
    ("bpf_trace_run*", Phase::Tracing),
    ("__bpf_trace_*", Phase::Tracing),
    ("__traceiter_*", Phase::Tracing),
    ("__mmap_lock_do_trace_*", Phase::Tracing),
    ("perf_trace_*", Phase::Tracing),
];

fn matches(rule: &str, frame: &str) -> bool {
    match rule.strip_suffix('*') {
        Some(prefix) => frame.starts_with(prefix),
        None => frame == rule,
    }
}

/// The phase of one stack (root first, `;` between frames): its innermost frame that a rule
/// names.
pub fn classify(stack: &str) -> Phase {
    stack
        .rsplit(';')
        .find_map(|frame| {
            // A kernel module's or BPF program's suffix (`name_[bpf]`) is not part of the name.
            let name = frame.split(' ').next().unwrap_or(frame);
            RULES
                .iter()
                .find(|(rule, _)| matches(rule, name))
                .map(|&(_, phase)| phase)
        })
        .unwrap_or(Phase::Other)
}

/// Half-width over which a share is too uncertain to read finely (3 percentage points).
pub const WIDE: f64 = 0.03;

/// One phase's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: Phase,
    pub name: String,
    pub samples: u64,
    /// Share of all samples, and its 95 % interval.
    pub share: f64,
    pub share_ci: (f64, f64),
    /// ksmd's CPU time in it (ms), and per page scanned (ns; None: pages not counted).
    pub cpu_ms: f64,
    pub ns_per_page: Option<f64>,
    /// The merge phase per merge (ns).
    pub ns_per_merge: Option<f64>,
}

/// ksmd's cost by phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhasesReport {
    pub samples: u64,
    pub frequency_hz: u64,
    pub phases: Vec<PhaseReport>,
    /// The widest interval's half-width; when over [`WIDE`], the sampling rate that would
    /// narrow it to that in a run as long (None: narrow enough already).
    pub widest_half: f64,
    pub profile_hz_for_wide: Option<u64>,
}

impl PhasesReport {
    /// None without samples.
    pub fn of(rec: &Recording, pages_scanned: Option<i64>, merges: u64) -> Option<Self> {
        let samples = rec.profile.samples();
        if samples == 0 {
            return None;
        }
        let mut counts = [0u64; Phase::ALL.len()];
        for (stack, n) in &rec.profile.stacks {
            counts[Phase::ALL
                .iter()
                .position(|p| *p == classify(stack))
                .unwrap_or(8)] += n;
        }
        let cpu_ns = rec
            .counters_end
            .ksmd_cpu_ns
            .saturating_sub(rec.counters_start.ksmd_cpu_ns) as f64;
        let pages = pages_scanned.filter(|&p| p > 0).map(|p| p as f64);
        let phases: Vec<PhaseReport> = Phase::ALL
            .iter()
            .zip(counts)
            .map(|(&phase, n)| {
                let share = n as f64 / samples as f64;
                let in_phase = cpu_ns * share;
                PhaseReport {
                    phase,
                    name: phase.name().to_owned(),
                    samples: n,
                    share,
                    share_ci: wilson(n, samples),
                    cpu_ms: in_phase / 1e6,
                    ns_per_page: pages.map(|p| in_phase / p),
                    ns_per_merge: (phase == Phase::Merge && merges > 0)
                        .then(|| in_phase / merges as f64),
                }
            })
            .collect();
        let widest_half = phases
            .iter()
            .map(|p| (p.share_ci.1 - p.share_ci.0) / 2.0)
            .fold(0.0, f64::max);
        let cpu_s = cpu_ns / 1e9;
        let profile_hz_for_wide = (widest_half > WIDE && cpu_s > 0.0).then(|| {
            // Samples a share of 1/2 needs for ±WIDE, spread over ksmd's CPU seconds.
            let needed = (1.96f64 / WIDE).powi(2) * 0.25;
            (needed / cpu_s).ceil() as u64
        });
        Some(Self {
            samples,
            frequency_hz: rec.profile.frequency_hz,
            phases,
            widest_half,
            profile_hz_for_wide,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real folded stacks of ksmd (`ksm-trace flame FILE --folded`), from a recording on each
    /// kernel: the host's 6.18, and the lab's Debian 6.12 and 6.1 guests.
    fn fixture(kernel: &str) -> Vec<(String, u64)> {
        let path = format!(
            "{}/tests/fixtures/profile-{kernel}.folded",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .map(|l| {
                let (stack, n) = l.rsplit_once(' ').unwrap();
                (stack.to_owned(), n.parse().unwrap())
            })
            .collect()
    }

    fn shares(kernel: &str) -> Vec<(Phase, f64)> {
        let stacks = fixture(kernel);
        let total: u64 = stacks.iter().map(|(_, n)| n).sum();
        Phase::ALL
            .iter()
            .map(|&phase| {
                let n: u64 = stacks
                    .iter()
                    .filter(|(s, _)| classify(s) == phase)
                    .map(|(_, n)| n)
                    .sum();
                (phase, n as f64 / total as f64)
            })
            .collect()
    }

    #[test]
    fn the_innermost_named_frame_decides() {
        let scan = "ksmd;ret_from_fork_asm;ret_from_fork;kthread;ksm_scan_thread";
        let c = |tail: &str| classify(&format!("{scan};{tail}"));
        assert_eq!(c("xxh64"), Phase::Checksum);
        assert_eq!(c("memcmp"), Phase::Compare);
        assert_eq!(
            c("walk_page_range_vma;__walk_page_range;walk_pgd_range;ksm_next_page_pmd_entry"),
            Phase::PageTableWalk
        );
        assert_eq!(
            c("folio_walk_start;_raw_spin_lock"),
            Phase::LockingScheduling
        );
        assert_eq!(
            c(
                "try_to_merge_with_ksm_page;try_to_merge_one_page;write_protect_page;ptep_clear_flush;flush_tlb_mm_range;on_each_cpu_cond_mask;smp_call_function_many_cond;x2apic_send_IPI;native_write_msr"
            ),
            Phase::Merge
        );
        assert_eq!(
            c(
                "try_to_merge_with_ksm_page;bpf_trace_run5;bpf_prog_c837088f045f1039_ksm_merge_with_ksm_page_[bpf];__bpf_ringbuf_reserve"
            ),
            Phase::Tracing
        );
        assert_eq!(c("mtree_load;__rcu_read_unlock"), Phase::Lookup);
        assert_eq!(c("ksm_get_folio"), Phase::StableTreeUpkeep);
        assert_eq!(classify(scan), Phase::Other);
    }

    #[test]
    fn the_rules_place_real_stacks_of_every_lab_kernel() {
        for kernel in ["host-6.18", "debian-6.12", "debian-6.1"] {
            let shares = shares(kernel);
            let total: f64 = shares.iter().map(|(_, s)| s).sum();
            assert!((total - 1.0).abs() < 1e-9, "{kernel}: {total}");
            let of = |p: Phase| shares.iter().find(|(q, _)| *q == p).unwrap().1;
            // A scanning ksmd walks page tables, sums and compares pages on every kernel, and
            // the rules leave no more than a third of its samples unplaced.
            for phase in [Phase::PageTableWalk, Phase::Checksum, Phase::Compare] {
                assert!(
                    of(phase) > 0.0,
                    "{kernel}: no {phase:?} samples: {shares:?}"
                );
            }
            assert!(of(Phase::Other) < 0.34, "{kernel}: {shares:?}");
        }
    }
}
