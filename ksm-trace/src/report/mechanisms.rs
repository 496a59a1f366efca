//! The prose for each mechanism, derived from the typed [`Mechanisms`] a recording stores: what
//! reports, `doctor` and the lab print.
use crate::recording::schema::{
    AttributionMechanism, BatchMechanism, BracketAttach, CowMechanism, EventSource, Mechanisms,
    MergeLatencyMechanism, ShootdownMechanism, UnmergeMechanism,
};

/// Where the events come from, and how they reach user space.
pub fn events(e: EventSource) -> &'static str {
    match e {
        EventSource::Tracepoints => {
            "raw tracepoints on ksm:* (no tracefs needed), ring buffer drained every 100 ms"
        }
        EventSource::Functions => {
            "function backend: fentry/fexit on try_to_merge_with_ksm_page, lru_add_drain_all (full scan start), remove_node_from_stable_tree, __ksm_enter/__ksm_exit; a full scan's end at ksmd's switch-out that sees ksm_scan.seqnr move; ring buffer drained every 100 ms"
        }
        EventSource::Kprobes => {
            "function backend through kprobes: kprobe/kretprobe on try_to_merge_with_ksm_page and __ksm_enter, kprobes on lru_add_drain_all (full scan start), remove_node_from_stable_tree, __ksm_exit; a full scan's end at ksmd's switch-out that sees ksm_scan.seqnr move; ring buffer drained every 100 ms"
        }
    }
}

pub fn merge_latency(m: MergeLatencyMechanism) -> String {
    const BRACKET: &str = "mmap_lock bracket (mmap_lock_acquire_returned → mmap_lock_released in ksmd on the merged mm)";
    match m {
        MergeLatencyMechanism::Off => "off (--merge-latency off)".into(),
        MergeLatencyMechanism::Fexit => "fentry/fexit on try_to_merge_one_page".into(),
        MergeLatencyMechanism::FexitAndBracket => {
            "fexit on try_to_merge_one_page, and the mmap_lock bracket alongside for comparison"
                .into()
        }
        MergeLatencyMechanism::Bracket { attached } => match attached {
            BracketAttach::Always => format!("{BRACKET}, attached for the whole run"),
            BracketAttach::WhileMerging => {
                format!(
                    "{BRACKET}, attached while merges were happening, detached after 2 s without"
                )
            }
            BracketAttach::Sampled { on_ms, period_ms } => format!(
                "{BRACKET}, sampled: attached {} s of every {} s while merges happen, so ksmd keeps its scan rate; the merges timed are a sample",
                on_ms as f64 / 1000.0,
                period_ms as f64 / 1000.0
            ),
            BracketAttach::OnMerges { on_ms, period_ms } => format!(
                "{BRACKET}, sampled: attached for {} s when merges start, on a budget of one window per {} s (a few saved up while nothing merges), so ksmd keeps its scan rate; the merges timed are a sample, without the first merges of each burst",
                on_ms as f64 / 1000.0,
                period_ms as f64 / 1000.0
            ),
        },
        MergeLatencyMechanism::Unavailable => {
            "unavailable (no fentry/fexit and no mmap_lock tracepoints)".into()
        }
    }
}

/// The same in a few words, for a one-line header (`top`) or a metric's help.
pub fn merge_latency_short(m: MergeLatencyMechanism) -> String {
    match m {
        MergeLatencyMechanism::Off => "off".into(),
        MergeLatencyMechanism::Fexit | MergeLatencyMechanism::FexitAndBracket => {
            "fexit, every merge".into()
        }
        MergeLatencyMechanism::Bracket { attached } => match attached {
            BracketAttach::Always => "mmap_lock bracket, every merge".into(),
            BracketAttach::WhileMerging => "mmap_lock bracket, while merging".into(),
            BracketAttach::Sampled { on_ms, period_ms } => format!(
                "mmap_lock bracket, sampled {} s of every {} s",
                on_ms as f64 / 1000.0,
                period_ms as f64 / 1000.0
            ),
            BracketAttach::OnMerges { on_ms, period_ms } => format!(
                "mmap_lock bracket, {} s when merges start, one per {} s",
                on_ms as f64 / 1000.0,
                period_ms as f64 / 1000.0
            ),
        },
        MergeLatencyMechanism::Unavailable => "unavailable".into(),
    }
}

pub fn batches(m: BatchMechanism) -> &'static str {
    match m {
        BatchMechanism::SchedSwitch => {
            "sched:sched_switch: ksmd's on-CPU time from wake-up to sleep (one batch of pages_to_scan pages)"
        }
        BatchMechanism::Off => "off (--batches off)",
        BatchMechanism::Unavailable => {
            "unavailable (no usable sched_switch tracepoint or task_struct.pid offset)"
        }
    }
}

pub fn attribution(m: AttributionMechanism) -> String {
    match m {
        AttributionMechanism::MmOwner {
            mm_owner,
            task_tgid,
            task_comm,
        } => format!(
            "mm_struct.owner → task_struct tgid/comm (BTF offsets {mm_owner}/{task_tgid}/{task_comm})"
        ),
        AttributionMechanism::Unavailable => {
            "unavailable (no mm_struct.owner: CONFIG_MEMCG=n)".into()
        }
    }
}

pub fn cow(m: CowMechanism) -> &'static str {
    match m {
        CowMechanism::DoWpPage {
            vmemmap_from_merges: false,
        } => "fentry/fexit on do_wp_page, faults on KSM pages only (the kernel's cow_ksm)",
        CowMechanism::DoWpPage {
            vmemmap_from_merges: true,
        } => {
            "fentry/fexit on do_wp_page, faults on KSM pages only (the kernel's cow_ksm); vmemmap's base is learned from the first traced merge, so breaks before it are missed"
        }
        CowMechanism::Off => "off (--cow-probe off): only the global cow_ksm from /proc/vmstat",
        CowMechanism::Unavailable => {
            "per-process COW breaks unavailable: only the global cow_ksm from /proc/vmstat"
        }
    }
}

pub fn tlb_shootdowns(m: ShootdownMechanism) -> &'static str {
    match m {
        ShootdownMechanism::Off => "off (--tlb-shootdowns on counts them per merge)",
        ShootdownMechanism::TlbFlush { ipis: true } => {
            "tlb:tlb_flush in ksmd (remote flushes asked for) and ipi:ipi_send_cpu[mask] (the IPIs sent: CPUs idle or in lazy TLB mode are skipped), each counted for the merge it preceded"
        }
        ShootdownMechanism::TlbFlush { ipis: false } => {
            "tlb:tlb_flush in ksmd (remote flushes asked for; no ipi tracepoints on this kernel, so not the IPIs sent), each counted for the merge it preceded"
        }
        ShootdownMechanism::Unavailable => "unavailable (no usable tlb_flush tracepoint)",
    }
}

pub fn unmerge(m: UnmergeMechanism) -> &'static str {
    match m {
        UnmergeMechanism::Unavailable => {
            "no kernel-side unmerge latency here (needs fentry or kprobes on unmerge_ksm_pages)"
        }
        UnmergeMechanism::Fentry => {
            "fentry/fexit on unmerge_ksm_pages (MADV_UNMERGEABLE, prctl off, run=2), per call"
        }
        UnmergeMechanism::Kprobes => {
            "kprobe/kretprobe on unmerge_ksm_pages (MADV_UNMERGEABLE, prctl off, run=2), per call"
        }
    }
}

/// `  name: prose` lines for every mechanism, then the fallbacks.
pub fn lines(m: &Mechanisms) -> String {
    let mut o = format!(
        "  events: {}\n  merge latency: {}\n  batches: {}\n  attribution: {}\n  COW breaks: {}\n  TLB shootdowns: {}\n  unmerge calls: {}\n",
        events(m.events),
        merge_latency(m.merge_latency),
        batches(m.batches),
        attribution(m.attribution),
        cow(m.cow),
        tlb_shootdowns(m.tlb_shootdowns),
        unmerge(m.unmerge)
    );
    for f in &m.fallbacks {
        o.push_str(&format!("  fallback: {f}\n"));
    }
    o
}
