//! Unmerging as the kernel does it: `unmerge_ksm_pages(vma, start, end, ...)` breaks every KSM
//! page in a range back into private copies. It runs behind MADV_UNMERGEABLE,
//! prctl(PR_SET_MEMORY_MERGE, 0) and run=2, in the caller's context (any process). Entry keeps
//! the start time, the mm and the range's pages by thread; exit emits one event per call.
//! Attached through fentry/fexit where allowed, else kprobe/kretprobe: the same bodies. Only
//! the first three arguments are read, the same on every kernel since 5.x (6.4 added a fourth,
//! which moves fexit's return value; it is not read).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::HashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use ksm_trace_common::{Event, NO_OFFSET, kind};

use crate::{
    maps::{config, emit, now, read_u64},
    owner::fill_owner,
};

/// A call in progress: start ns, mm, pages.
#[map]
static UNMERGING: HashMap<u64, [u64; 3]> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
fn on_entry(vma: u64, start: u64, end: u64) {
    let off = config().vma_mm;
    if vma == 0 || off == NO_OFFSET {
        return;
    }
    let mm = read_u64(vma + off as u64);
    let pages = end.saturating_sub(start) >> 12;
    let _ = UNMERGING.insert(&bpf_get_current_pid_tgid(), &[now(), mm, pages], 0);
}

#[inline(always)]
fn on_exit() {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: a copy is taken before the entry is removed.
    let Some([start, mm, pages]) = (unsafe { UNMERGING.get(&tid) }).copied() else {
        return;
    };
    let _ = UNMERGING.remove(&tid);
    let t = now();
    let mut event = Event {
        ts_ns: t,
        kind: kind::UNMERGE_CALL,
        mm,
        arg0: t.saturating_sub(start),
        arg1: pages,
        ..Event::default()
    };
    fill_owner(&mut event, mm);
    emit(&event);
}

#[fentry(function = "unmerge_ksm_pages")]
pub fn unmerge_entry(ctx: FEntryContext) -> u32 {
    on_entry(
        crate::functions::scalar(ctx.arg(0)),
        crate::functions::scalar(ctx.arg(1)),
        crate::functions::scalar(ctx.arg(2)),
    );
    0
}

#[fexit(function = "unmerge_ksm_pages")]
pub fn unmerge_exit(_ctx: FExitContext) -> u32 {
    on_exit();
    0
}

#[kprobe]
pub fn kp_unmerge_entry(ctx: ProbeContext) -> u32 {
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    on_entry(arg(0), arg(1), arg(2));
    0
}

#[kretprobe]
pub fn krp_unmerge_exit(_ctx: RetProbeContext) -> u32 {
    on_exit();
    0
}
