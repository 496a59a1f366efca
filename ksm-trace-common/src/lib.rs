//! The ABI shared by ksm-trace's eBPF programs and its collector.
//!
//! Only what both sides must agree on lives here: the event record streamed through the ring
//! buffer, the start-up configuration passed in as an eBPF global, counter indices and the names
//! of programs and maps. No logic.
#![no_std]

/// Length of `task_struct.comm`.
pub const TASK_COMM_LEN: usize = 16;

/// Marks a kernel structure offset that the running kernel's BTF does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// What an [`Event`] reports (`Event::kind`).
pub mod kind {
    /// `ksm:ksm_start_scan`: `arg0` = seq, `arg1` = rmap entries.
    pub const START_SCAN: u32 = 1;
    /// `ksm:ksm_stop_scan`: `arg0` = seq (the full_scans value before it completes), `arg1` =
    /// rmap entries.
    pub const STOP_SCAN: u32 = 2;
    /// `ksm:ksm_merge_with_ksm_page`: `ksm_page` (0 for the first half of a new-page pair),
    /// `pfn`, `mm`, `err`, latencies; since the previous merge event (while the TLB programs
    /// are attached) `arg0` = remote TLB flushes ksmd asked for, `arg1` = IPIs it sent.
    pub const MERGE_WITH_KSM_PAGE: u32 = 3;
    /// `ksm:ksm_merge_one_page` (only zero-page merges): as MERGE_WITH_KSM_PAGE.
    pub const MERGE_ONE_PAGE: u32 = 4;
    /// `ksm:ksm_remove_ksm_page`: `pfn`; from the function backend also `arg0` = the KSM
    /// page's sharers (its `rmap_hlist_len`), since no per-sharer event precedes it there.
    pub const REMOVE_KSM_PAGE: u32 = 5;
    /// `ksm:ksm_remove_rmap_item`: `pfn`, `mm`.
    pub const REMOVE_RMAP_ITEM: u32 = 6;
    /// `ksm:ksm_enter`: `mm`.
    pub const ENTER: u32 = 7;
    /// `ksm:ksm_exit`: `mm`.
    pub const EXIT: u32 = 8;
    /// `ksm:ksm_advisor`: `arg0` = scan time (s), `arg1` = pages_to_scan, `arg2` = cpu %.
    pub const ADVISOR: u32 = 9;
    /// ksmd went to sleep: `arg0` = on-CPU ns since it last woke, `arg1` = wall ns.
    pub const KSMD_BATCH: u32 = 10;
    /// A write fault copied a KSM page (what /proc/vmstat counts as cow_ksm): `tgid`/`comm` of
    /// the faulting process, `pfn` of the KSM page, `arg0` = do_wp_page's duration in ns.
    pub const COW_BREAK: u32 = 11;
    /// `unmerge_ksm_pages` returned (MADV_UNMERGEABLE, prctl off, run=2): `tgid`/`comm` and
    /// `mm` of the range's process, `arg0` = the call's ns, `arg1` = pages in the range.
    pub const UNMERGE_CALL: u32 = 12;
    /// A write fault on a present, write-protected PTE that maps a KSM page (`arg1` =
    /// [`super::cow::KSM`]) or the KSM zero page ([`super::cow::ZERO`]): a copy-on-write break
    /// about to happen, seen at `exceptions:page_fault_user|kernel`. `tgid`/`comm` of the
    /// faulting process, `pfn`, `arg0` = the faulting address.
    pub const COW_FAULT: u32 = 13;
    /// The faulting thread's local TLB flush that installs the copy (`tlb:tlb_flush`
    /// TLB_LOCAL_MM_SHOOTDOWN, from ptep_clear_flush in wp_page_copy), the last tracepoint
    /// inside the break: `tgid`, `arg0` = ns since its COW_FAULT.
    pub const COW_DONE: u32 = 14;
}

/// What a [`kind::COW_FAULT`] broke (`Event::arg1`).
pub mod cow {
    pub const KSM: u64 = 1;
    /// The zero page KSM mapped for a zero-filled page (use_zero_pages=1): not in cow_ksm, but
    /// in ksm_zero_pages.
    pub const ZERO: u64 = 2;
    /// A COW_FAULT waits this long at most for its TLB flush; beyond, it has no latency.
    pub const MAX_BREAK_NS: u64 = 10_000_000;
}

/// One record in the `EVENTS` ring buffer. Fields a kind does not use are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub kind: u32,
    /// tgid of the mm's owner (0 if unknown).
    pub tgid: u32,
    /// comm of the mm's owner.
    pub comm: [u8; TASK_COMM_LEN],
    pub mm: u64,
    pub pfn: u64,
    pub ksm_page: u64,
    /// Merge latency from the mmap_lock bracket (0 = not measured).
    pub lat_lock_ns: u64,
    /// Merge latency from fentry/fexit on try_to_merge_one_page (0 = not measured).
    pub lat_fexit_ns: u64,
    pub arg0: u64,
    pub arg1: u64,
    pub arg2: u64,
    pub err: i32,
    pub _pad: u32,
}

/// A timed stretch of ksmd's on one mm (the mmap_lock bracket, or fentry → fexit): `end == 0`
/// while still open. User space clears the bracket's slot when it detaches the bracket, so an
/// interval cut off by the detach cannot time a later merge.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interval {
    pub mm: u64,
    pub start: u64,
    pub end: u64,
}

/// Slots of the `INTERVALS` array.
pub mod interval {
    pub const BRACKET: u32 = 0;
    pub const FEXIT: u32 = 1;
}

/// Configuration written into the `CONFIG` global before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// pid of the ksmd kernel thread.
    pub ksmd_pid: u32,
    /// `mm_struct.owner` (needs CONFIG_MEMCG), or [`NO_OFFSET`].
    pub mm_owner: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_comm: u32,
    /// `vm_area_struct.vm_mm`.
    pub vma_mm: u32,
    /// `vm_fault.orig_pte`, `page.mapping` and `sizeof(struct page)`: finding whether a write
    /// fault hits a KSM page.
    pub vmf_orig_pte: u32,
    pub page_mapping: u32,
    pub page_size_of: u32,
    /// The function backend (kernels without the ksm tracepoints): `ksm_rmap_item.mm`.
    pub rmap_item_mm: u32,
    /// Address of the kernel's `vmemmap_base` variable (0: unknown, COW probes stay off).
    pub vmemmap_base_addr: u64,
    /// The function backend: `ksm_stable_node.kpfn` and `.rmap_hlist_len` (its sharers).
    pub stable_node_kpfn: u32,
    pub stable_node_sharers: u32,
    /// Addresses of `ksm_scan.seqnr` (the full-scan counter) and `ksm_rmap_items`, set only
    /// for the function backend: then ksmd's switch-outs also report full scans ending.
    pub ksm_scan_seqnr_addr: u64,
    pub ksm_rmap_items_addr: u64,
    /// The zero page's pfn (from our own pagemap), set for the function backend (its
    /// `try_to_merge_one_page` probe reports the merges whose KSM page is the zero page) and for
    /// the COW fault tracepoints (a write to the KSM zero page).
    pub zero_pfn: u64,
    /// The COW fault tracepoints' page-table walk: `task_struct.mm`, `mm_struct.pgd`,
    /// `mm_struct.ksm_merging_pages` and `.ksm_zero_pages` (6.6+; NO_OFFSET: zero-page breaks
    /// are not told apart), `page.compound_head`; `la57`: 5-level paging is on.
    pub task_mm: u32,
    pub mm_pgd: u32,
    pub mm_ksm_merging_pages: u32,
    pub mm_ksm_zero_pages: u32,
    pub page_compound_head: u32,
    pub la57: u32,
}

impl Config {
    pub const fn empty() -> Self {
        Self {
            ksmd_pid: 0,
            mm_owner: NO_OFFSET,
            task_tgid: NO_OFFSET,
            task_pid: NO_OFFSET,
            task_comm: NO_OFFSET,
            vma_mm: NO_OFFSET,
            vmf_orig_pte: NO_OFFSET,
            page_mapping: NO_OFFSET,
            page_size_of: 0,
            rmap_item_mm: NO_OFFSET,
            vmemmap_base_addr: 0,
            stable_node_kpfn: NO_OFFSET,
            stable_node_sharers: NO_OFFSET,
            ksm_scan_seqnr_addr: 0,
            ksm_rmap_items_addr: 0,
            zero_pfn: 0,
            task_mm: NO_OFFSET,
            mm_pgd: NO_OFFSET,
            mm_ksm_merging_pages: NO_OFFSET,
            mm_ksm_zero_pages: NO_OFFSET,
            page_compound_head: NO_OFFSET,
            la57: 0,
        }
    }
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Ring buffer full: an event was dropped.
    pub const EVENTS_LOST: u32 = 0;
    /// A ksmd sample whose stack could not be stored (stack map or count map full).
    pub const STACKS_LOST: u32 = 1;
    /// Number of counters.
    pub const COUNT: u32 = 2;
}

/// Names of maps and globals, as the loader looks them up.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONFIG: &str = "CONFIG";
    pub const STACKS: &str = "STACKS";
    pub const STACK_COUNTS: &str = "STACK_COUNTS";
    pub const INTERVALS: &str = "INTERVALS";
    pub const VMEMMAP: &str = "VMEMMAP";
    pub const DIRECT_MAP: &str = "DIRECT_MAP";
    pub const CALIBRATION: &str = "CALIBRATION";
    pub const WAKE_ON_MM: &str = "WAKE_ON_MM";
}

/// Slots of the `CALIBRATION` array, which user space fills before it makes the calibrating
/// thread enter a syscall or fault a page, and reads after.
pub mod calibration {
    /// In: the calibrating thread (pid_tgid's low half).
    pub const TID: u32 = 0;
    /// In: the pfn of a page of ours, and the 8 bytes written at its start.
    pub const PFN: u32 = 1;
    pub const MAGIC: u32 = 2;
    /// Out: the direct map's base, where `MAGIC` was found at `base + PFN × 4096`.
    pub const DIRECT_MAP: u32 = 3;
    /// In: the first of the [`DIRECT_MAP_TRIES`] 1 GiB steps below the current task that one
    /// syscall tries (the verifier bounds one run's loop: user space steps through them).
    pub const FROM_STEP: u32 = 4;
    pub const DIRECT_MAP_TRIES: u64 = 32;
    /// Out: the first struct page pointers the thread allocated (order 0), and their count.
    pub const PAGES: u32 = 5;
    pub const PAGES_MAX: u32 = 8;
    pub const PAGE_COUNT: u32 = PAGES + PAGES_MAX;
    pub const SLOTS: u32 = PAGE_COUNT + 1;
}

/// What the eBPF programs read from a raw tracepoint's arguments: the loader checks each
/// program's expectation against the running kernel's `btf_trace_<tracepoint>` prototype and
/// refuses a kernel whose argument list differs, rather than misread it.
pub mod programs {
    /// One argument of a tracepoint's prototype.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Arg {
        /// Any pointer.
        Ptr,
        /// An integer (or bool, or enum) of this many bytes.
        Int(u8),
    }
    use Arg::{Int, Ptr};

    /// A raw tracepoint program: its name in the eBPF object, the tracepoint it attaches to and
    /// the arguments it reads, as (position, kind) — exactly the `ctx.arg(i)` calls of the
    /// program. Arguments it does not read may differ between kernels (6.12's mmap_lock
    /// tracepoints carry a memcg path that 6.18's do not).
    #[derive(Clone, Copy, Debug)]
    pub struct RawTracepoint {
        pub program: &'static str,
        pub tracepoint: &'static str,
        pub reads: &'static [(usize, Arg)],
    }

    const fn tp(name: &'static str, reads: &'static [(usize, Arg)]) -> RawTracepoint {
        RawTracepoint {
            program: name,
            tracepoint: name,
            reads,
        }
    }

    /// The `ksm:*` tracepoints (include/trace/events/ksm.h), each with the program of the same
    /// name.
    pub const KSM: [RawTracepoint; 9] = [
        // (int seq, u32 rmap_entries)
        tp("ksm_start_scan", &[(0, Int(4)), (1, Int(4))]),
        tp("ksm_stop_scan", &[(0, Int(4)), (1, Int(4))]),
        // (void *ksm_page, unsigned long pfn, void *rmap_item, void *mm, int err)
        tp(
            "ksm_merge_with_ksm_page",
            &[(0, Ptr), (1, Int(8)), (3, Ptr), (4, Int(4))],
        ),
        // (unsigned long pfn, void *rmap_item, void *mm, int err)
        tp("ksm_merge_one_page", &[(0, Int(8)), (2, Ptr), (3, Int(4))]),
        // (unsigned long pfn)
        tp("ksm_remove_ksm_page", &[(0, Int(8))]),
        // (unsigned long pfn, void *rmap_item, void *mm)
        tp("ksm_remove_rmap_item", &[(0, Int(8)), (2, Ptr)]),
        // (void *mm)
        tp("ksm_enter", &[(0, Ptr)]),
        tp("ksm_exit", &[(0, Ptr)]),
        // (s64 scan_time, unsigned long pages_to_scan, unsigned int cpu_percent)
        tp("ksm_advisor", &[(0, Int(8)), (1, Int(8)), (2, Int(4))]),
    ];

    /// ksmd's batches and CPU time: (bool preempt, struct task_struct *prev, struct
    /// task_struct *next, unsigned int prev_state).
    pub const SCHED_SWITCH: RawTracepoint = RawTracepoint {
        program: "ksmd_sched_switch",
        tracepoint: "sched_switch",
        reads: &[(2, Ptr), (3, Int(4))],
    };

    /// TLB shootdowns ksmd sends while merging: (int reason, unsigned long pages), counted
    /// when reason is [`TLB_REMOTE_SEND_IPI`] (x86: native_flush_tlb_multi).
    pub const TLB_FLUSH: RawTracepoint = RawTracepoint {
        program: "ksmd_tlb_flush",
        tracepoint: "tlb_flush",
        reads: &[(0, Int(4))],
    };
    /// `enum tlb_flush_reason` (include/linux/mm_types.h): a flush that sends IPIs.
    pub const TLB_REMOTE_SEND_IPI: u32 = 4;
    /// IPIs actually sent (6.6 and later, kernel/smp.c): (unsigned int cpu, unsigned long
    /// callsite, void *callback) and (struct cpumask *mask, callsite, callback); counted when
    /// the callback is set (a function call: the TLB flush), not for reschedule IPIs.
    pub const IPI_SEND: [RawTracepoint; 2] = [
        RawTracepoint {
            program: "ksmd_ipi_send_cpu",
            tracepoint: "ipi_send_cpu",
            reads: &[(2, Ptr)],
        },
        RawTracepoint {
            program: "ksmd_ipi_send_cpumask",
            tracepoint: "ipi_send_cpumask",
            reads: &[(0, Ptr), (2, Ptr)],
        },
    ];

    /// The mmap_lock bracket that times merges where fentry/fexit is refused: both read the
    /// mm, their first argument.
    pub const BRACKET: [RawTracepoint; 2] = [
        RawTracepoint {
            program: "ksmd_mmap_lock_acquired",
            tracepoint: "mmap_lock_acquire_returned",
            reads: &[(0, Ptr)],
        },
        RawTracepoint {
            program: "ksmd_mmap_lock_released",
            tracepoint: "mmap_lock_released",
            reads: &[(0, Ptr)],
        },
    ];

    /// COW breaks where tracing programs are refused: x86's page faults, (unsigned long
    /// address, struct pt_regs *regs, unsigned long error_code); the kernel's is user-mode
    /// writes done by the kernel (copy_to_user into a merged page).
    pub const COW_FAULTS: [RawTracepoint; 2] = [
        RawTracepoint {
            program: "cow_fault_user",
            tracepoint: "page_fault_user",
            reads: &[(0, Int(8)), (2, Int(8))],
        },
        RawTracepoint {
            program: "cow_fault_kernel",
            tracepoint: "page_fault_kernel",
            reads: &[(0, Int(8)), (2, Int(8))],
        },
    ];
    /// The faulting thread's local flush that installs the copy: (int reason, pages).
    pub const COW_FLUSH: RawTracepoint = RawTracepoint {
        program: "cow_tlb_flush",
        tracepoint: "tlb_flush",
        reads: &[(0, Int(4))],
    };
    /// `enum tlb_flush_reason`: a flush of the current mm on this CPU (ptep_clear_flush).
    pub const TLB_LOCAL_MM_SHOOTDOWN: u32 = 3;
    /// Start-up measurements of where the kernel keeps its direct map (a syscall of ours:
    /// (struct pt_regs *regs, long id)) and its struct pages (a page of ours allocated:
    /// (struct page *page, unsigned int order, gfp_t, int migratetype)).
    pub const CALIBRATE_DIRECT_MAP: RawTracepoint = RawTracepoint {
        program: "calibrate_direct_map",
        tracepoint: "sys_enter",
        reads: &[],
    };
    pub const CALIBRATE_PAGES: RawTracepoint = RawTracepoint {
        program: "calibrate_pages",
        tracepoint: "mm_page_alloc",
        reads: &[(0, Ptr), (1, Int(4))],
    };

    /// fentry/fexit programs and the functions they attach to.
    pub const MERGE_ENTRY: &str = "merge_one_page_entry";
    pub const MERGE_EXIT: &str = "merge_one_page_exit";
    pub const MERGE_FUNCTION: &str = "try_to_merge_one_page";
    pub const COW_ENTRY: &str = "cow_entry";
    pub const COW_EXIT: &str = "cow_exit";
    pub const COW_FUNCTION: &str = "do_wp_page";
    /// Unmerge latency: `unmerge_ksm_pages`, through fentry/fexit or kprobe/kretprobe.
    pub const UNMERGE_FUNCTION: &str = "unmerge_ksm_pages";
    pub const UNMERGE_ENTRY: &str = "unmerge_entry";
    pub const UNMERGE_EXIT: &str = "unmerge_exit";
    pub const UNMERGE_KPROBE: &str = "kp_unmerge_entry";
    pub const UNMERGE_KRETPROBE: &str = "krp_unmerge_exit";
    /// fentry or fexit.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Hook {
        Entry,
        Exit,
    }
    /// A program of the function backend: its name, the kernel function, and why that
    /// function (which tracepoint it stands in for).
    #[derive(Clone, Copy, Debug)]
    pub struct FunctionProbe {
        pub program: &'static str,
        pub function: &'static str,
        pub hook: Hook,
        pub stands_in_for: &'static str,
        /// The same measurement where fentry is refused but kprobes exist: a kprobe on the
        /// function's entry, and for an exit hook a kretprobe that the kprobe hands the
        /// arguments to.
        pub kprobe: &'static str,
        pub kretprobe: Option<&'static str>,
    }
    /// Zero-page merges (`use_zero_pages=1`) on the function backend. Before 6.4 the zero-page
    /// merge is a call `try_to_merge_one_page(vma, page, ZERO_PAGE(addr))` inside
    /// cmp_and_merge_page (inlined); from 6.4 it is the same call in try_to_merge_with_zero_page,
    /// where ksm_merge_one_page fires right after it. Every other merge also goes through
    /// try_to_merge_one_page, so the probe reports only calls whose `kpage` is the zero page.
    /// Optional: where the function is inlined or its prototype differs, zero-page merges are
    /// said to be untraced and the rest of the backend runs.
    pub const ZERO_PAGE_MERGE: FunctionProbe = FunctionProbe {
        program: "fn_merge_zero_page",
        function: "try_to_merge_one_page",
        hook: Hook::Exit,
        stands_in_for: "ksm_merge_one_page (fires after it when kpage is the zero page: pfn, rmap_item, mm, err)",
        kprobe: "kp_merge_one_page",
        kretprobe: Some("krp_merge_one_page"),
    };
    /// What the zero-page probe reads of `try_to_merge_one_page`: `(struct vm_area_struct *vma,
    /// struct page *page, struct page *kpage)`, then its int return (fexit's next argument).
    pub const ZERO_PAGE_MERGE_ARGS: [Arg; 3] = [Arg::Ptr, Arg::Ptr, Arg::Ptr];

    /// The function backend, for kernels without the ksm tracepoints (before 6.4): each
    /// function is where the tracepoint it stands in for fires in later kernels (mm/ksm.c),
    /// and is out of line in Debian 12's 6.1 (the others there — ksm_do_scan,
    /// scan_get_next_rmap_item, cmp_and_merge_page — are inlined into ksm_scan_thread). A full
    /// scan's end has no function of its own: ksmd's next switch-out reports it, seeing
    /// `ksm_scan.seqnr` moved (the batch ends right after the increment).
    pub const FUNCTIONS: [FunctionProbe; 5] = [
        FunctionProbe {
            program: "fn_merge_with_ksm_page",
            function: "try_to_merge_with_ksm_page",
            hook: Hook::Exit,
            stands_in_for: "ksm_merge_with_ksm_page (fires at its end: kpage, page, rmap_item->mm, err)",
            kprobe: "kp_merge_with_ksm_page",
            kretprobe: Some("krp_merge_with_ksm_page"),
        },
        FunctionProbe {
            program: "fn_start_scan",
            function: "lru_add_drain_all",
            hook: Hook::Entry,
            stands_in_for: "ksm_start_scan (ksmd calls it once per full scan, where the tracepoint fires)",
            kprobe: "kp_start_scan",
            kretprobe: None,
        },
        FunctionProbe {
            program: "fn_remove_stable_node",
            function: "remove_node_from_stable_tree",
            hook: Hook::Entry,
            stands_in_for: "ksm_remove_ksm_page (fires in it, after ksm_remove_rmap_item for every sharer but the last: here one event carries the sharer count)",
            kprobe: "kp_remove_stable_node",
            kretprobe: None,
        },
        FunctionProbe {
            program: "fn_ksm_enter",
            function: "__ksm_enter",
            hook: Hook::Exit,
            stands_in_for: "ksm_enter (fires at its end when it succeeds)",
            kprobe: "kp_ksm_enter",
            kretprobe: Some("krp_ksm_enter"),
        },
        FunctionProbe {
            program: "fn_ksm_exit",
            function: "__ksm_exit",
            hook: Hook::Entry,
            stands_in_for: "ksm_exit",
            kprobe: "kp_ksm_exit",
            kretprobe: None,
        },
    ];
    /// The perf_event program sampling ksmd's stacks.
    pub const PROFILE: &str = "ksmd_profile";
}

/// Distinct ksmd kernel stacks kept by the profiler.
pub const PROFILE_STACKS: u32 = 16384;

/// Ring buffer size in bytes (a power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 8 << 20;

/// Sanity bound: a bracket that closed longer ago than this when the merge tracepoint fires is
/// not used. Typically 0.1-1 µs; ksmd preempted right after the unlock can take milliseconds.
pub const MAX_BRACKET_GAP_NS: u64 = 50_000_000;

/// A merge after this long without one wakes the reader at once (every other event waits for
/// its next drain): `--merge-latency auto` opens its sampling window when merges start, and a
/// burst of merges can be over before a 100 ms drain would see it.
pub const MERGE_QUIET_NS: u64 = 20_000_000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays, no padding holes left uninitialised.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Interval {}
}
