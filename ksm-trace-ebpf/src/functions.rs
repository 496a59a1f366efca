//! The function backend: kernels without the ksm tracepoints (before 6.4) get the same events
//! from fentry/fexit on the functions the tracepoints later went into (the table, and why each
//! function, is `ksm_trace_common::programs::FUNCTIONS`). Each program emits exactly what its
//! tracepoint would, so the collector cannot tell the backends apart. A full scan's end is
//! reported by ksmd's switch-out (`scan.rs`), which sees `ksm_scan.seqnr` move.
//!
//! Where fentry is refused but kprobes exist, kprobes/kretprobes on the same functions run the
//! same bodies (`on_*`). A kretprobe sees no arguments, so the kprobe keeps them: in one slot
//! for `try_to_merge_with_ksm_page` (only ksmd calls it), by thread for `__ksm_enter`.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{Array, HashMap},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ksm_trace_common::{Event, NO_OFFSET, kind};

use crate::{
    maps::{config, emit, now, read_u64, vmemmap_base},
    membership::mm_event,
    merge::{merge_event, vma_mm},
    owner::current_is_ksmd,
};

/// fentry/fexit arguments are typed pointers to the verifier, which refuses arithmetic such as
/// division on them; a copy read back through the stack is a plain number.
#[inline(always)]
pub(crate) fn scalar(value: u64) -> u64 {
    // SAFETY: reads our own stack slot.
    unsafe { bpf_probe_read_kernel(&value as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn page_to_pfn(page: u64) -> u64 {
    let size = config().page_size_of as u64;
    let base = vmemmap_base();
    if page < base || size == 0 || base == 0 {
        return 0;
    }
    (page - base) / size
}

/// `int try_to_merge_with_ksm_page(struct ksm_rmap_item *rmap_item, struct page *page,
/// struct page *kpage)`: at its end 6.4+ fires ksm_merge_with_ksm_page(kpage,
/// pfn(kpage ?: page), rmap_item, rmap_item->mm, err).
#[fexit(function = "try_to_merge_with_ksm_page")]
// Inlined into the program: Linux 6.1's verifier refuses a subprogram taking the context
// struct ("reg type unsupported for arg#0").
#[inline(always)]
pub fn fn_merge_with_ksm_page(ctx: FExitContext) -> u32 {
    on_merge_with_ksm_page(
        scalar(ctx.arg(0)),
        scalar(ctx.arg(1)),
        scalar(ctx.arg(2)),
        ctx.arg(3),
    );
    0
}

#[inline(always)]
fn on_merge_with_ksm_page(rmap_item: u64, page: u64, kpage: u64, err: i64) {
    let cfg = config();
    if cfg.rmap_item_mm == NO_OFFSET {
        return;
    }
    let mm = read_u64(rmap_item + cfg.rmap_item_mm as u64);
    let pfn = page_to_pfn(if kpage != 0 { kpage } else { page });
    merge_event(kind::MERGE_WITH_KSM_PAGE, kpage, pfn, mm, err as i32);
}

/// `int try_to_merge_one_page(struct vm_area_struct *vma, struct page *page, struct page
/// *kpage)`, every merge's last step: a zero-page merge when `kpage` is the zero page, where
/// 6.4+ fires ksm_merge_one_page(pfn(kpage), rmap_item, mm, err) right after it. The loader
/// attaches this only where BTF gives the function these three arguments.
#[fexit(function = "try_to_merge_one_page")]
// Inlined into the program (see fn_merge_with_ksm_page).
#[inline(always)]
pub fn fn_merge_zero_page(ctx: FExitContext) -> u32 {
    if current_is_ksmd() {
        on_merge_one_page(scalar(ctx.arg(0)), scalar(ctx.arg(2)), ctx.arg(3));
    }
    0
}

#[inline(always)]
fn on_merge_one_page(vma: u64, kpage: u64, err: i64) {
    let zero_pfn = config().zero_pfn;
    if zero_pfn == 0 || page_to_pfn(kpage) != zero_pfn {
        return;
    }
    merge_event(kind::MERGE_ONE_PAGE, 0, zero_pfn, vma_mm(vma), err as i32);
}

/// ksmd calls `lru_add_drain_all()` once per full scan, where 6.4+ fires ksm_start_scan.
#[fentry(function = "lru_add_drain_all")]
// Inlined into the program: Linux 6.1's verifier refuses a subprogram taking the context
// struct ("reg type unsupported for arg#0").
#[inline(always)]
pub fn fn_start_scan(_ctx: FEntryContext) -> u32 {
    on_start_scan();
    0
}

#[inline(always)]
fn on_start_scan() {
    let cfg = config();
    if !current_is_ksmd() || cfg.ksm_scan_seqnr_addr == 0 {
        return;
    }
    emit(&Event {
        ts_ns: now(),
        kind: kind::START_SCAN,
        arg0: read_u64(cfg.ksm_scan_seqnr_addr),
        arg1: if cfg.ksm_rmap_items_addr != 0 {
            read_u64(cfg.ksm_rmap_items_addr)
        } else {
            0
        },
        ..Event::default()
    });
}

/// `void remove_node_from_stable_tree(struct ksm_stable_node *)`: 6.4+ fires
/// ksm_remove_rmap_item for every sharer on its hlist but the last, then ksm_remove_ksm_page.
/// Walking the hlist here would need a loop that 6.1's verifier explores per iteration; one
/// event with the sharer count serves as well, since the collector knows who merged into
/// that KSM page while traced and counts the others as unattributed.
#[fentry(function = "remove_node_from_stable_tree")]
// Inlined into the program (see fn_merge_with_ksm_page).
#[inline(always)]
pub fn fn_remove_stable_node(ctx: FEntryContext) -> u32 {
    on_remove_stable_node(scalar(ctx.arg(0)));
    0
}

#[inline(always)]
fn on_remove_stable_node(node: u64) {
    let cfg = config();
    if cfg.stable_node_kpfn == NO_OFFSET || cfg.stable_node_sharers == NO_OFFSET {
        return;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let sharers: i32 =
        unsafe { bpf_probe_read_kernel((node + cfg.stable_node_sharers as u64) as *const i32) }
            .unwrap_or(0);
    emit(&Event {
        ts_ns: now(),
        kind: kind::REMOVE_KSM_PAGE,
        pfn: read_u64(node + cfg.stable_node_kpfn as u64),
        arg0: sharers.max(0) as u64,
        ..Event::default()
    });
}

/// `int __ksm_enter(struct mm_struct *)`: ksm_enter fires at its end when it succeeded.
#[fexit(function = "__ksm_enter")]
// Inlined into the program: Linux 6.1's verifier refuses a subprogram taking the context
// struct ("reg type unsupported for arg#0").
#[inline(always)]
pub fn fn_ksm_enter(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    if ret == 0 {
        mm_event(kind::ENTER, scalar(ctx.arg(0)), 0);
    }
    0
}

/// `void __ksm_exit(struct mm_struct *)`.
#[fentry(function = "__ksm_exit")]
// Inlined into the program: Linux 6.1's verifier refuses a subprogram taking the context
// struct ("reg type unsupported for arg#0").
#[inline(always)]
pub fn fn_ksm_exit(ctx: FEntryContext) -> u32 {
    mm_event(kind::EXIT, scalar(ctx.arg(0)), 0);
    0
}

/// Arguments from a kprobe to its kretprobe, one slot per function: only ksmd calls them, and
/// try_to_merge_one_page runs inside try_to_merge_with_ksm_page.
#[map]
static MERGE_ARGS: Array<[u64; 3]> = Array::with_max_entries(2, 0);
const WITH_KSM_PAGE: u32 = 0;
const ONE_PAGE: u32 = 1;

/// `__ksm_enter`'s mm by thread, from its kprobe to its kretprobe (it may sleep and migrate).
#[map]
static ENTER_MM: HashMap<u64, u64> = HashMap::with_max_entries(1024, 0);

#[kprobe]
pub fn kp_merge_with_ksm_page(ctx: ProbeContext) -> u32 {
    if !current_is_ksmd() {
        return 0;
    }
    if let Some(slot) = MERGE_ARGS.get_ptr_mut(WITH_KSM_PAGE) {
        let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
        // SAFETY: the one slot, written only by ksmd's single thread.
        unsafe { *slot = [arg(0), arg(1), arg(2)] };
    }
    0
}

#[kretprobe]
pub fn krp_merge_with_ksm_page(ctx: RetProbeContext) -> u32 {
    if !current_is_ksmd() {
        return 0;
    }
    let Some(&[rmap_item, page, kpage]) = MERGE_ARGS.get(WITH_KSM_PAGE) else {
        return 0;
    };
    let err: i64 = ctx.ret();
    on_merge_with_ksm_page(rmap_item, page, kpage, err as i32 as i64);
    0
}

#[kprobe]
pub fn kp_merge_one_page(ctx: ProbeContext) -> u32 {
    if !current_is_ksmd() {
        return 0;
    }
    if let Some(slot) = MERGE_ARGS.get_ptr_mut(ONE_PAGE) {
        let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
        // SAFETY: the one slot, written only by ksmd's single thread.
        unsafe { *slot = [arg(0), arg(1), arg(2)] };
    }
    0
}

#[kretprobe]
pub fn krp_merge_one_page(ctx: RetProbeContext) -> u32 {
    if !current_is_ksmd() {
        return 0;
    }
    let Some(&[vma, _, kpage]) = MERGE_ARGS.get(ONE_PAGE) else {
        return 0;
    };
    let err: i64 = ctx.ret();
    on_merge_one_page(vma, kpage, err as i32 as i64);
    0
}

#[kprobe]
pub fn kp_start_scan(_ctx: ProbeContext) -> u32 {
    on_start_scan();
    0
}

#[kprobe]
pub fn kp_remove_stable_node(ctx: ProbeContext) -> u32 {
    on_remove_stable_node(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[kprobe]
pub fn kp_ksm_enter(ctx: ProbeContext) -> u32 {
    let mm = ctx.arg::<u64>(0).unwrap_or(0);
    let _ = ENTER_MM.insert(&bpf_get_current_pid_tgid(), &mm, 0);
    0
}

#[kretprobe]
pub fn krp_ksm_enter(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: a copy is taken before the entry is removed.
    let Some(mm) = (unsafe { ENTER_MM.get(&tid) }).copied() else {
        return 0;
    };
    let _ = ENTER_MM.remove(&tid);
    let ret: i64 = ctx.ret();
    if ret as i32 == 0 {
        mm_event(kind::ENTER, mm, 0);
    }
    0
}

#[kprobe]
pub fn kp_ksm_exit(ctx: ProbeContext) -> u32 {
    mm_event(kind::EXIT, ctx.arg::<u64>(0).unwrap_or(0), 0);
    0
}
