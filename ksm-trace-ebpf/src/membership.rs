//! Which mms join and leave KSM (ksm_enter/ksm_exit) and what leaves the stable tree
//! (ksm_remove_ksm_page, ksm_remove_rmap_item).
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use ksm_trace_common::{Event, kind};

use crate::{
    maps::{emit, now},
    owner::fill_owner,
};

#[inline(always)]
pub(crate) fn mm_event(kind: u32, mm: u64, pfn: u64) {
    let mut event = Event {
        ts_ns: now(),
        kind,
        mm,
        pfn,
        ..Event::default()
    };
    fill_owner(&mut event, mm);
    emit(&event);
}

#[raw_tracepoint(tracepoint = "ksm_enter")]
pub fn ksm_enter(ctx: RawTracePointContext) -> u32 {
    mm_event(kind::ENTER, ctx.arg(0), 0);
    0
}

#[raw_tracepoint(tracepoint = "ksm_exit")]
pub fn ksm_exit(ctx: RawTracePointContext) -> u32 {
    mm_event(kind::EXIT, ctx.arg(0), 0);
    0
}

#[raw_tracepoint(tracepoint = "ksm_remove_ksm_page")]
pub fn ksm_remove_ksm_page(ctx: RawTracePointContext) -> u32 {
    mm_event(kind::REMOVE_KSM_PAGE, 0, ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "ksm_remove_rmap_item")]
pub fn ksm_remove_rmap_item(ctx: RawTracePointContext) -> u32 {
    mm_event(kind::REMOVE_RMAP_ITEM, ctx.arg(2), ctx.arg(0));
    0
}
