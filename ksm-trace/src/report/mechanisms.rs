//! The prose for each mechanism, derived from the typed [`Mechanisms`] a recording stores: what
//! reports, `doctor` and the lab print.
use crate::recording::schema::{
    AttributionMechanism, BatchMechanism, BracketAttach, CowMechanism, EventSource, Fallback,
    Mechanisms, MergeLatencyMechanism, Reason, Refusal, ShootdownMechanism, UnmergeMechanism,
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
        CowMechanism::FaultTracepoint { kernel_writes } => fault_tracepoint(kernel_writes),
        CowMechanism::DoWpPageAndFaultTracepoint { .. } => {
            "fentry/fexit on do_wp_page, and the page fault tracepoints alongside on the same faults for comparison"
        }
        CowMechanism::Off => "off (--cow-probe off): only the global cow_ksm from /proc/vmstat",
        CowMechanism::Unavailable => {
            "per-process COW breaks unavailable: only the global cow_ksm from /proc/vmstat"
        }
    }
}

fn fault_tracepoint(kernel_writes: bool) -> &'static str {
    if kernel_writes {
        "exceptions:page_fault_user and page_fault_kernel: write faults on a PTE that maps a KSM page (or KSM's zero page), by a page-table walk; latency from the fault to the faulting thread's TLB flush that installs the copy. Not seen: writes through get_user_pages (/proc/PID/mem, process_vm_writev, O_DIRECT into merged pages) and a guest's writes under KVM (resolved in KVM's fault path): the rest of cow_ksm is shown as not attributed"
    } else {
        "exceptions:page_fault_user: user-mode write faults on a PTE that maps a KSM page (or KSM's zero page), by a page-table walk; latency from the fault to the faulting thread's TLB flush that installs the copy. Not seen: the kernel's writes into user memory (no page_fault_kernel here), writes through get_user_pages and a guest's writes under KVM: the rest of cow_ksm is shown as not attributed"
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
        o.push_str(&format!("  fallback: {}\n", fallback(f)));
    }
    o
}

/// One fallback in words: what could not be used, why, and what was used instead.
pub fn fallback(f: &Fallback) -> String {
    match f {
        Fallback::KsmTracepoint { tracepoint, reason } => {
            format!("ksm:{tracepoint}: not traced ({})", self::reason(reason))
        }
        Fallback::FunctionBackend { asked, via } => {
            let why = match (asked, via) {
                (true, EventSource::Kprobes) => "--backend kprobes",
                (true, _) => "--backend functions",
                (false, _) => "no ksm:* tracepoints (Linux < 6.4)",
            };
            let how = match via {
                EventSource::Kprobes => "kprobes/kretprobes",
                _ => "fentry/fexit",
            };
            let functions = ksm_trace_common::programs::FUNCTIONS.map(|f| f.function);
            format!(
                "{why}: events from {how} on {}; full scans end at ksmd's switch-out that sees ksm_scan.seqnr move",
                functions.join(", ")
            )
        }
        Fallback::KprobesForFentry { reason } => format!(
            "fentry/fexit on the KSM functions refused ({}): kprobes instead",
            self::reason(reason)
        ),
        Fallback::ZeroPageMergesFromFunction { via, zero_pfn } => format!(
            "zero-page merges (use_zero_pages) from {} on {} whose kpage is the zero page (pfn {zero_pfn})",
            match via {
                EventSource::Kprobes => "kprobe/kretprobe",
                _ => "fexit",
            },
            ksm_trace_common::programs::ZERO_PAGE_MERGE.function
        ),
        Fallback::ZeroPageMergesUntraced { reason } => format!(
            "zero-page merges (use_zero_pages) are not traced: {}",
            self::reason(reason)
        ),
        Fallback::BatchesFromSchedSwitch {
            ksm_do_scan_in_btf: true,
        } => "ksm_do_scan is a function on this kernel, but batches still come from sched_switch (fentry on it is not implemented)".into(),
        Fallback::BatchesFromSchedSwitch {
            ksm_do_scan_in_btf: false,
        } => "ksm_do_scan is inlined on this kernel (not in BTF): batches are ksmd's on-CPU stretches from sched_switch".into(),
        Fallback::BatchesUnavailable { reason } => {
            format!("no ksmd batches: {}", about("sched_switch", reason))
        }
        Fallback::NotAttributed { reason } => format!(
            "{}{}: merges are not attributed to processes",
            self::reason(reason),
            match reason {
                Reason::OffsetMissing { member } if member == "mm_struct.owner" => {
                    " (CONFIG_MEMCG=n)"
                }
                _ => "",
            }
        ),
        Fallback::FullScansUntraced => "full scans are not traced: with the function backend their end is seen at ksmd's switch-out (sched_switch), which is off".into(),
        Fallback::MergeLatencyFromBracket { reason } => format!(
            "fentry/fexit on {} unavailable ({}); merge latency from the mmap_lock tracepoint bracket instead",
            ksm_trace_common::programs::MERGE_FUNCTION,
            self::reason(reason)
        ),
        Fallback::BracketUnavailable { tracepoint, reason } => {
            format!("no mmap_lock bracket: {}", about(tracepoint, reason))
        }
        Fallback::CowUnavailable { reason } => format!(
            "fentry/fexit on {} unavailable ({}): COW breaks only as the global cow_ksm",
            ksm_trace_common::programs::COW_FUNCTION,
            self::reason(reason)
        ),
        Fallback::CowFromFaults { reason } => format!(
            "fentry/fexit on {} unavailable ({}): COW breaks from the page fault tracepoints instead",
            ksm_trace_common::programs::COW_FUNCTION,
            self::reason(reason)
        ),
        Fallback::CowFaultsUnavailable { reason } => format!(
            "no COW breaks from the page fault tracepoints ({}): only the global cow_ksm",
            self::reason(reason)
        ),
        Fallback::UnmergeUnavailable {
            reason: reason @ Reason::NotInBtf { .. },
        } => format!("no unmerge latency from the kernel: {}", self::reason(reason)),
        Fallback::UnmergeUnavailable { reason } => format!(
            "no unmerge latency from the kernel: fentry/fexit on {} unavailable ({}); the procs workload's `unmerge=F` times its own calls",
            ksm_trace_common::programs::UNMERGE_FUNCTION,
            self::reason(reason)
        ),
        Fallback::IpisUntraced { tracepoint, reason } => format!(
            "TLB flushes per merge are those asked for, not the IPIs sent: {}",
            about(tracepoint, reason)
        ),
        Fallback::TlbUnavailable { reason } => {
            format!("no TLB shootdowns per merge: {}", about("tlb_flush", reason))
        }
        Fallback::ProfileUnavailable { reason } => {
            format!("no ksmd profile (flame graphs): {}", self::reason(reason))
        }
        Fallback::Recorded { text } => text.clone(),
    }
}

/// A reason about a tracepoint, naming it.
fn about(tracepoint: &str, r: &Reason) -> String {
    match r {
        Reason::TracepointMissing | Reason::PrototypeDiffers { .. } => {
            format!("{tracepoint} {}", reason(r))
        }
        other => reason(other),
    }
}

/// Why a program could not be used, in words.
pub fn reason(r: &Reason) -> String {
    match r {
        Reason::TracepointMissing => "missing on this kernel".into(),
        Reason::PrototypeDiffers { detail } => format!("argument list changed: {detail}"),
        Reason::NotInBtf { function } => format!("{function} is not in BTF (inlined)"),
        Reason::OffsetMissing { member } => format!("{member} missing from BTF"),
        Reason::Refused(r) => refusal(r),
        Reason::RefusedAndNoKprobes(r) => format!("{}; and no kprobes", refusal(r)),
        Reason::NoKprobes => "no kprobes (CONFIG_KPROBES off, or no perf kprobe PMU)".into(),
        Reason::Asked { option } => option.clone(),
        Reason::NotX86 => "the KSM-page check reads x86-64 page table entries".into(),
        Reason::Error { message } => message.clone(),
    }
}

/// A refused load: what the kernel returned, what was checked, and only then the likely cause,
/// said to be likely.
pub fn refusal(r: &Refusal) -> String {
    if r.errno != Some(libc::EPERM) {
        return format!("loading {} on {}: {}", r.program, r.function, r.message);
    }
    let lockdown = match r.lockdown.as_deref() {
        Some(mode @ "confidentiality") => format!("lockdown is {mode}"),
        Some(mode) => format!("lockdown is {mode}, which refuses no tracing program"),
        None => "the lockdown mode could not be read".to_owned(),
    };
    let lsms = r
        .lsms
        .as_deref()
        .map_or("the active LSMs could not be read".to_owned(), |l| {
            format!("active LSMs {l}")
        });
    let bpf_lsm = r
        .lsms
        .as_deref()
        .is_some_and(|l| l.split(',').any(|m| m == "bpf"));
    let likely = match r.lockdown.as_deref() {
        Some("confidentiality") => {
            "likely the lockdown (confidentiality refuses BPF programs that read kernel memory)"
        }
        _ if bpf_lsm => "likely a BPF LSM program denying the load (a platform policy)",
        None => "possibly lockdown, whose mode could not be read",
        Some(_) => "cause not known",
    };
    format!(
        "BPF_PROG_LOAD of {} on {} returned EPERM as root; {lockdown}; {lsms}: {likely}",
        r.program, r.function
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eperm(lockdown: Option<&str>, lsms: Option<&str>) -> Refusal {
        Refusal {
            program: "cow_entry".into(),
            function: "do_wp_page".into(),
            errno: Some(libc::EPERM),
            message: "the BPF_PROG_LOAD syscall failed".into(),
            lockdown: lockdown.map(str::to_owned),
            lsms: lsms.map(str::to_owned),
        }
    }

    #[test]
    fn a_refusal_says_what_was_seen_and_checked_before_a_likely_cause() {
        let bpf_lsm = refusal(&eperm(
            Some("integrity"),
            Some("lockdown,capability,landlock,bpf"),
        ));
        assert_eq!(
            bpf_lsm,
            "BPF_PROG_LOAD of cow_entry on do_wp_page returned EPERM as root; lockdown is integrity, which refuses no tracing program; active LSMs lockdown,capability,landlock,bpf: likely a BPF LSM program denying the load (a platform policy)"
        );
        let locked = refusal(&eperm(Some("confidentiality"), Some("lockdown,capability")));
        assert!(
            locked.ends_with(
                "likely the lockdown (confidentiality refuses BPF programs that read kernel memory)"
            ),
            "{locked}"
        );
        let unread = refusal(&eperm(None, None));
        assert!(
            unread.contains("the lockdown mode could not be read"),
            "{unread}"
        );
        assert!(
            unread.ends_with("possibly lockdown, whose mode could not be read"),
            "{unread}"
        );
        let unknown = refusal(&eperm(Some("none"), Some("capability,yama")));
        assert!(unknown.ends_with("cause not known"), "{unknown}");
        // Another errno is the loader's own message.
        let other = Refusal {
            errno: Some(libc::EINVAL),
            ..eperm(None, None)
        };
        assert_eq!(
            refusal(&other),
            "loading cow_entry on do_wp_page: the BPF_PROG_LOAD syscall failed"
        );
    }
}
