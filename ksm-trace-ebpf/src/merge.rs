//! Merges and their latency.
//!
//! The merge tracepoints fire at the end of `try_to_merge_with_ksm_page` and of the zero-page
//! merge. Their latency comes from whichever producer the loader attached:
//! - fentry/fexit on `try_to_merge_one_page`, where the kernel allows it;
//! - otherwise the mmap_lock bracket: `try_to_merge_with_ksm_page` holds the target mm's mmap
//!   read lock around the merge, so ksmd's last acquire → release on that mm brackets it.
//!
//! Producers only write an [`Interval`]; the tracepoint consumes it if it is on the same mm.
//! Only ksmd writes, so one global slot per producer is exact even when ksmd is preempted at
//! `mmap_read_unlock` and resumes on another CPU (a per-CPU slot would miss those merges).
//! Pairing of new-page merges and outcomes is left to the collector.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::{
    macros::{fentry, fexit, map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::{FEntryContext, FExitContext, RawTracePointContext},
};
use ksm_trace_common::{Event, MAX_BRACKET_GAP_NS, MERGE_QUIET_NS, NO_OFFSET, kind};

use crate::{
    maps::{VMEMMAP, config, emit, emit_and_wake, now},
    owner::{current_is_ksmd, fill_owner},
};

use ksm_trace_common::{
    Interval,
    interval::{BRACKET, FEXIT},
};

#[map]
static INTERVALS: Array<Interval> = Array::with_max_entries(2, 0);

/// When the last merge event fired (only ksmd merges, so one global slot).
#[map]
static LAST_MERGE: Array<u64> = Array::with_max_entries(1, 0);

/// The mms whose next merge wakes the reader at once: user space lists the processes whose
/// merges still lack timed ones, so the sampled bracket opens a window on them.
#[map]
static WAKE_ON_MM: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// The mms that merged since tracing began: a process's first merge wakes the reader too.
#[map]
static SEEN_MM: LruHashMap<u64, u8> = LruHashMap::with_max_entries(8192, 0);

/// Whether a merge on `mm` should wake the reader now: its process's first, or one user space
/// asked for (once).
#[inline(always)]
fn wakes(mm: u64) -> bool {
    if mm == 0 {
        return false;
    }
    // SAFETY: a lookup; the value is not kept.
    if unsafe { SEEN_MM.get(&mm) }.is_none() {
        let _ = SEEN_MM.insert(&mm, &1, 0);
        return true;
    }
    if unsafe { WAKE_ON_MM.get(&mm) }.is_some() {
        let _ = WAKE_ON_MM.remove(&mm);
        return true;
    }
    false
}

/// Whether the merge at `t` follows a quiet spell; notes `t` as the last merge.
#[inline(always)]
fn after_quiet(t: u64) -> bool {
    let Some(last) = LAST_MERGE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: only ksmd's merge events touch the slot.
    let last = unsafe { &mut *last };
    let quiet = t.saturating_sub(*last) > MERGE_QUIET_NS;
    *last = t;
    quiet
}

/// Latency of the merge on `mm` that just finished, from producer `slot`; 0 if none matches.
#[inline(always)]
fn take_latency(slot: u32, mm: u64, t: u64) -> u64 {
    let Some(iv) = INTERVALS.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: only ksmd's programs touch the slot, and ksmd runs on one CPU at a time.
    let iv = unsafe { &mut *iv };
    if iv.mm != mm || iv.start == 0 {
        return 0;
    }
    // The zero-page merge fires its tracepoint with the lock still held.
    let end = if iv.end == 0 { t } else { iv.end };
    if t - end > MAX_BRACKET_GAP_NS || end < iv.start {
        return 0;
    }
    let latency = end - iv.start;
    iv.mm = 0;
    iv.start = 0;
    latency
}

#[inline(always)]
pub(crate) fn merge_event(kind: u32, ksm_page: u64, pfn: u64, mm: u64, err: i32) {
    let t = now();
    let lat_lock_ns = take_latency(BRACKET, mm, t);
    let lat_fexit_ns = take_latency(FEXIT, mm, t);
    let (flushes, ipis) = crate::tlb::take_shootdowns();
    let mut event = Event {
        ts_ns: t,
        kind,
        mm,
        pfn,
        ksm_page,
        lat_lock_ns,
        lat_fexit_ns,
        arg0: flushes,
        arg1: ipis,
        err,
        ..Event::default()
    };
    fill_owner(&mut event, mm);
    let quiet = after_quiet(t);
    if wakes(mm) || quiet {
        emit_and_wake(&event);
    } else {
        emit(&event);
    }
}

/// `ksm_page` is a `struct page *` and `pfn` its frame number: together they give vmemmap's
/// base, which the COW probe needs where kallsyms does not list `vmemmap_base`.
#[inline(always)]
fn learn_vmemmap(ksm_page: u64, pfn: u64) {
    let size = config().page_size_of as u64;
    if ksm_page == 0 || size == 0 {
        return;
    }
    if let Some(base) = VMEMMAP.get_ptr_mut(0) {
        // SAFETY: one u64, written only here; readers tolerate any value.
        unsafe { *base = ksm_page - pfn * size };
    }
}

#[raw_tracepoint(tracepoint = "ksm_merge_with_ksm_page")]
pub fn ksm_merge_with_ksm_page(ctx: RawTracePointContext) -> u32 {
    learn_vmemmap(ctx.arg(0), ctx.arg(1));
    merge_event(
        kind::MERGE_WITH_KSM_PAGE,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(3),
        ctx.arg::<i64>(4) as i32,
    );
    0
}

#[raw_tracepoint(tracepoint = "ksm_merge_one_page")]
pub fn ksm_merge_one_page(ctx: RawTracePointContext) -> u32 {
    merge_event(
        kind::MERGE_ONE_PAGE,
        0,
        ctx.arg(0),
        ctx.arg(2),
        ctx.arg::<i64>(3) as i32,
    );
    0
}

#[inline(always)]
fn open(slot: u32, mm: u64) {
    if let Some(iv) = INTERVALS.get_ptr_mut(slot) {
        let t = now();
        // SAFETY: only ksmd's programs touch the slot.
        unsafe {
            *iv = Interval {
                mm,
                start: t,
                end: 0,
            }
        };
    }
}

#[inline(always)]
fn close(slot: u32, mm: u64) {
    if let Some(iv) = INTERVALS.get_ptr_mut(slot) {
        // SAFETY: only ksmd's programs touch the slot.
        let iv = unsafe { &mut *iv };
        if iv.mm == mm && iv.end == 0 {
            iv.end = now();
        }
    }
}

#[raw_tracepoint(tracepoint = "mmap_lock_acquire_returned")]
pub fn ksmd_mmap_lock_acquired(ctx: RawTracePointContext) -> u32 {
    if current_is_ksmd() {
        open(BRACKET, ctx.arg(0));
    }
    0
}

#[raw_tracepoint(tracepoint = "mmap_lock_released")]
pub fn ksmd_mmap_lock_released(ctx: RawTracePointContext) -> u32 {
    if current_is_ksmd() {
        close(BRACKET, ctx.arg(0));
    }
    0
}

/// `try_to_merge_one_page(vma, page, kpage)`: the mm comes from `vma->vm_mm`.
#[inline(always)]
pub(crate) fn vma_mm(vma: u64) -> u64 {
    let off = config().vma_mm;
    if vma == 0 || off == NO_OFFSET {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((vma + off as u64) as *const u64) }.unwrap_or(0)
}

#[fentry(function = "try_to_merge_one_page")]
pub fn merge_one_page_entry(ctx: FEntryContext) -> u32 {
    if current_is_ksmd() {
        open(FEXIT, vma_mm(ctx.arg(0)));
    }
    0
}

#[fexit(function = "try_to_merge_one_page")]
pub fn merge_one_page_exit(ctx: FExitContext) -> u32 {
    if current_is_ksmd() {
        close(FEXIT, vma_mm(ctx.arg(0)));
    }
    0
}
