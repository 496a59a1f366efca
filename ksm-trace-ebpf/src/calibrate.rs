//! Start-up measurements where the kernel does not say (no `page_offset_base` or `vmemmap_base`
//! in kallsyms without CONFIG_KALLSYMS_ALL): user space writes a value into a page of its own,
//! looks up the page's pfn, and makes syscalls; `calibrate_direct_map` then tries the
//! direct-map bases a kernel can have (1 GiB aligned, below a direct-map pointer: the current
//! task), a few per syscall, until it reads the value there. `calibrate_pages` keeps the struct page pointers of
//! the first pages the calibrating thread allocates; with their pfns they give vmemmap's base.
//! Both are attached for that one moment only.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use ksm_trace_common::calibration::{
    DIRECT_MAP, DIRECT_MAP_TRIES, FROM_STEP, MAGIC, PAGE_COUNT, PAGES, PAGES_MAX, PFN, SLOTS, TID,
};

use crate::maps::read_u64;

#[map]
static CALIBRATION: Array<u64> = Array::with_max_entries(SLOTS, 0);

const GIB: u64 = 1 << 30;

#[inline(always)]
fn slot(i: u32) -> u64 {
    CALIBRATION.get(i).copied().unwrap_or(0)
}

#[inline(always)]
fn set(i: u32, v: u64) {
    if let Some(p) = CALIBRATION.get_ptr_mut(i) {
        // SAFETY: only the calibrating thread's programs write, one at a time.
        unsafe { *p = v };
    }
}

#[inline(always)]
fn calibrating() -> bool {
    let tid = slot(TID);
    tid != 0 && bpf_get_current_pid_tgid() as u32 as u64 == tid
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn calibrate_direct_map(_ctx: RawTracePointContext) -> u32 {
    if !calibrating() || slot(DIRECT_MAP) != 0 {
        return 0;
    }
    let (pfn, magic, from) = (slot(PFN), slot(MAGIC), slot(FROM_STEP));
    // SAFETY: the helper returns the current task's address (slab memory, in the direct map).
    let hint = unsafe { bpf_get_current_task() } & !(GIB - 1);
    for step in 0..DIRECT_MAP_TRIES {
        let below = (from + step) * GIB;
        if below > hint {
            break;
        }
        let base = hint - below;
        if read_u64(base + pfn * 4096) == magic {
            set(DIRECT_MAP, base);
            break;
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn calibrate_pages(ctx: RawTracePointContext) -> u32 {
    let order: u64 = ctx.arg(1);
    if !calibrating() || order as u32 != 0 {
        return 0;
    }
    let n = slot(PAGE_COUNT);
    if n < PAGES_MAX as u64 {
        set(PAGES + n as u32, ctx.arg(0));
        set(PAGE_COUNT, n + 1);
    }
    0
}
