//! TLB shootdowns ksmd sends while it merges. Write-protecting a page and replacing it with the
//! KSM page each flush the merged process's TLB entries on every CPU that may hold them: x86's
//! `tlb:tlb_flush` with TLB_REMOTE_SEND_IPI says a remote flush was asked for. Whether it
//! really interrupts another CPU depends on that CPU: one running the process must take the IPI
//! and answer while ksmd waits (a VM exit on a virtual machine); one idle or in lazy TLB mode is
//! skipped. The IPIs actually sent are `ipi:ipi_send_cpu`/`ipi_send_cpumask` with a callback
//! (function-call IPIs; reschedule IPIs have none). Both are counted here and handed to the
//! next merge event, which they belong to: the flushes come before the merge tracepoint fires
//! at the end of the merge.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use ksm_trace_common::programs::TLB_REMOTE_SEND_IPI;

use crate::owner::current_is_ksmd;

const FLUSHES: u32 = 0;
const IPIS: u32 = 1;

/// Counts since the last merge event. Global slots: only ksmd writes them (as the merge
/// latency slots).
#[map]
static SHOOTDOWNS: Array<u64> = Array::with_max_entries(2, 0);

#[inline(always)]
fn add(slot: u32, n: u64) {
    if let Some(count) = SHOOTDOWNS.get_ptr_mut(slot) {
        // SAFETY: only ksmd's programs touch the slots.
        unsafe { *count += n };
    }
}

#[raw_tracepoint(tracepoint = "tlb_flush")]
pub fn ksmd_tlb_flush(ctx: RawTracePointContext) -> u32 {
    if ctx.arg::<u64>(0) as u32 == TLB_REMOTE_SEND_IPI && current_is_ksmd() {
        add(FLUSHES, 1);
    }
    0
}

#[raw_tracepoint(tracepoint = "ipi_send_cpu")]
pub fn ksmd_ipi_send_cpu(ctx: RawTracePointContext) -> u32 {
    if ctx.arg::<u64>(2) != 0 && current_is_ksmd() {
        add(IPIS, 1);
    }
    0
}

#[raw_tracepoint(tracepoint = "ipi_send_cpumask")]
pub fn ksmd_ipi_send_cpumask(ctx: RawTracePointContext) -> u32 {
    if ctx.arg::<u64>(2) != 0 && current_is_ksmd() {
        // The first 64 CPUs of the mask.
        let mask: u64 =
            unsafe { bpf_probe_read_kernel(ctx.arg::<u64>(0) as *const u64) }.unwrap_or(0);
        add(IPIS, mask.count_ones() as u64);
    }
    0
}

/// (remote flushes asked for, IPIs sent) since the previous merge event, starting again.
#[inline(always)]
pub fn take_shootdowns() -> (u64, u64) {
    let take = |slot| match SHOOTDOWNS.get_ptr_mut(slot) {
        // SAFETY: only ksmd's programs touch the slots.
        Some(n) => unsafe { core::mem::replace(&mut *n, 0) },
        None => 0,
    };
    (take(FLUSHES), take(IPIS))
}
