//! Copy-on-write breaks of KSM pages, two ways.
//!
//! Where the kernel allows fentry/fexit: `do_wp_page` entered on a PTE that maps a KSM page is
//! exactly a fault the kernel counts as cow_ksm (KSM pages are never reused in place); entry
//! time is kept per thread until `do_wp_page` returns.
//!
//! Everywhere else: x86's `exceptions:page_fault_user` (and `page_fault_kernel`, for the
//! kernel's writes into user memory) fire before the fault is handled, with the address and
//! the error code. A write (PROT|WRITE) to an mm that has KSM pages gets its PTE walked; a
//! present, write-protected PTE that maps a KSM page (or, 6.6+, the KSM zero page: the zero pfn
//! with the dirty bit KSM sets) is a break about to happen. Its end is the faulting thread's
//! local TLB flush from ptep_clear_flush, as the copy replaces the page: the last tracepoint
//! inside the break.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
    },
    macros::{fentry, fexit, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, RawTracePointContext},
};
use ksm_trace_common::{
    Event, NO_OFFSET, cow,
    kind::{COW_BREAK, COW_DONE, COW_FAULT},
    programs::TLB_LOCAL_MM_SHOOTDOWN,
};

use crate::{
    maps::{config, emit, now, read_u64},
    pagetable::{self, PFN_MASK, PRESENT, WRITABLE, is_ksm_page},
};

/// pid_tgid → (entry time, pfn) of a fault on a KSM page in progress.
#[map]
static COW_IN_FLIGHT: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

/// The break in progress on this CPU: (pid_tgid, time of its COW_FAULT), zeroed by its flush.
/// The flush comes on the faulting thread's CPU (ptep_clear_flush's local flush) a few µs
/// later, so a per-CPU slot finds it without a hash lookup on every TLB flush of the machine;
/// a thread that moves to another CPU in between, or another fault on this CPU first, leaves
/// the break without a latency (the report counts the breaks that closed).
#[map]
static COW_PENDING: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// X86_PF_PROT | X86_PF_WRITE: a write to a present page.
const WRITE_TO_PRESENT: u64 = 3;
const PF_USER: u64 = 4;
/// What KSM's zero-page PTE carries (`pte_mkdirty`): Dirty, or SavedDirty (bit 58, where x86
/// keeps Dirty on a read-only PTE since 6.6).
const DIRTY: u64 = 1 << 6 | 1 << 58;
/// The end of user space: 47 bits of address, or 56 with 5-level paging.
const USER_END_4: u64 = 0x0000_7fff_ffff_f000;
const USER_END_5: u64 = 0x00ff_ffff_ffff_f000;

/// The pfn of the KSM page `vmf->orig_pte` maps, if it maps one.
#[inline(always)]
fn ksm_pfn(vmf: u64) -> Option<u64> {
    let cfg = config();
    if vmf == 0 || cfg.vmf_orig_pte == NO_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let pte: u64 =
        unsafe { bpf_probe_read_kernel((vmf + cfg.vmf_orig_pte as u64) as *const u64) }.ok()?;
    if pte & PRESENT == 0 {
        return None;
    }
    let pfn = (pte & PFN_MASK) >> 12;
    is_ksm_page(pfn).then_some(pfn)
}

#[fentry(function = "do_wp_page")]
pub fn cow_entry(ctx: FEntryContext) -> u32 {
    if let Some(pfn) = ksm_pfn(ctx.arg(0)) {
        let _ = COW_IN_FLIGHT.insert(&bpf_get_current_pid_tgid(), &[now(), pfn], 0);
    }
    0
}

#[fexit(function = "do_wp_page")]
pub fn cow_exit(_ctx: FExitContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: a copy is taken before the entry is removed.
    let Some([start, pfn]) = (unsafe { COW_IN_FLIGHT.get(&key) }).copied() else {
        return 0;
    };
    let _ = COW_IN_FLIGHT.remove(&key);
    let t = now();
    emit(&Event {
        ts_ns: t,
        kind: COW_BREAK,
        tgid: (key >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
        pfn,
        arg0: t - start,
        ..Event::default()
    });
    0
}

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn cow_fault_user(ctx: RawTracePointContext) -> u32 {
    let (addr, err): (u64, u64) = (ctx.arg(0), ctx.arg(2));
    if err & WRITE_TO_PRESENT == WRITE_TO_PRESENT {
        cow_fault(addr);
    }
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn cow_fault_kernel(ctx: RawTracePointContext) -> u32 {
    let (addr, err): (u64, u64) = (ctx.arg(0), ctx.arg(2));
    let user_end = if config().la57 != 0 {
        USER_END_5
    } else {
        USER_END_4
    };
    if err & WRITE_TO_PRESENT == WRITE_TO_PRESENT && err & PF_USER == 0 && addr < user_end {
        cow_fault(addr);
    }
    0
}

/// A write fault on a present page at `addr` in the current mm: a COW break of a KSM page if
/// its PTE says so.
#[inline(always)]
fn cow_fault(addr: u64) {
    let cfg = config();
    if cfg.task_mm == NO_OFFSET || cfg.mm_pgd == NO_OFFSET || cfg.mm_ksm_merging_pages == NO_OFFSET
    {
        return;
    }
    // SAFETY: the helper returns the current task; reads go through bpf_probe_read_kernel.
    let mm = read_u64(unsafe { bpf_get_current_task() } + cfg.task_mm as u64);
    if mm == 0 {
        return;
    }
    // Most faults are in processes without KSM pages: one read, and out.
    let merging = read_u64(mm + cfg.mm_ksm_merging_pages as u64);
    let zero = match cfg.mm_ksm_zero_pages {
        NO_OFFSET => 0,
        off => read_u64(mm + off as u64),
    };
    if merging == 0 && zero == 0 {
        return;
    }
    let Some(pte) = pagetable::pte(read_u64(mm + cfg.mm_pgd as u64), addr) else {
        return;
    };
    if pte & PRESENT == 0 || pte & WRITABLE != 0 {
        return;
    }
    let pfn = (pte & PFN_MASK) >> 12;
    let what = if pfn == cfg.zero_pfn && cfg.zero_pfn != 0 {
        // Only kernels that mark KSM's zero page (ksm_zero_pages, 6.6+) tell it apart.
        if cfg.mm_ksm_zero_pages == NO_OFFSET || pte & DIRTY == 0 {
            return;
        }
        cow::ZERO
    } else if is_ksm_page(pfn) {
        cow::KSM
    } else {
        return;
    };
    let key = bpf_get_current_pid_tgid();
    let t = now();
    if let Some(slot) = COW_PENDING.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a program runs to its end without migrating.
        unsafe { *slot = [key, t] };
    }
    emit(&Event {
        ts_ns: t,
        kind: COW_FAULT,
        tgid: (key >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
        pfn,
        arg0: addr,
        arg1: what,
        ..Event::default()
    });
}

#[raw_tracepoint(tracepoint = "tlb_flush")]
pub fn cow_tlb_flush(ctx: RawTracePointContext) -> u32 {
    if ctx.arg::<u64>(0) as u32 != TLB_LOCAL_MM_SHOOTDOWN {
        return 0;
    }
    let Some(slot) = COW_PENDING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; a program runs to its end without migrating.
    let [key, start] = unsafe { *slot };
    if start == 0 || key != bpf_get_current_pid_tgid() {
        return 0;
    }
    unsafe { *slot = [0, 0] };
    let t = now();
    if t.saturating_sub(start) > cow::MAX_BREAK_NS {
        return 0;
    }
    emit(&Event {
        ts_ns: t,
        kind: COW_DONE,
        tgid: (key >> 32) as u32,
        arg0: t - start,
        ..Event::default()
    });
    0
}
