//! Scan metrics: full scans (ksm_start_scan → ksm_stop_scan), ksmd batches as on-CPU stretches
//! of the ksmd thread (ksm_do_scan is inlined on some kernels, so sched_switch is the portable
//! boundary), and the advisor's decisions.
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use ksm_trace_common::{Event, kind};

use crate::{
    maps::{config, emit, now, read_u64},
    owner::task_pid,
};

fn scan_event(ctx: &RawTracePointContext, kind: u32) -> u32 {
    let seq: i32 = ctx.arg(0);
    let rmap_entries: u32 = ctx.arg(1);
    emit(&Event {
        ts_ns: now(),
        kind,
        arg0: seq as u32 as u64,
        arg1: rmap_entries as u64,
        ..Event::default()
    });
    0
}

#[raw_tracepoint(tracepoint = "ksm_start_scan")]
pub fn ksm_start_scan(ctx: RawTracePointContext) -> u32 {
    scan_event(&ctx, kind::START_SCAN)
}

#[raw_tracepoint(tracepoint = "ksm_stop_scan")]
pub fn ksm_stop_scan(ctx: RawTracePointContext) -> u32 {
    scan_event(&ctx, kind::STOP_SCAN)
}

#[raw_tracepoint(tracepoint = "ksm_advisor")]
pub fn ksm_advisor(ctx: RawTracePointContext) -> u32 {
    let scan_time: i64 = ctx.arg(0);
    let pages_to_scan: u64 = ctx.arg(1);
    let cpu_percent: u32 = ctx.arg(2);
    emit(&Event {
        ts_ns: now(),
        kind: kind::ADVISOR,
        arg0: scan_time as u64,
        arg1: pages_to_scan,
        arg2: cpu_percent as u64,
        ..Event::default()
    });
    0
}

/// ksmd's current batch: when it last came on-CPU, when the batch began, on-CPU time so far.
/// One task, so one slot: its switch-out always precedes its next switch-in.
#[repr(C)]
#[derive(Clone, Copy)]
struct Batch {
    on_cpu_since: u64,
    started: u64,
    on_cpu_ns: u64,
}

#[map]
static KSMD_BATCH: Array<Batch> = Array::with_max_entries(1, 0);

/// A task state of 0 (TASK_RUNNING) at switch-out is a preemption, not the end of a batch.
const TASK_RUNNING: u32 = 0;

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn ksmd_sched_switch(ctx: RawTracePointContext) -> u32 {
    let ksmd = config().ksmd_pid;
    if ksmd == 0 {
        return 0;
    }
    let Some(batch) = KSMD_BATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: single-element array only ksmd's own switches write.
    let batch = unsafe { &mut *batch };
    let next: u64 = ctx.arg(2);
    // At sched_switch, `current` is still `prev`.
    let ksmd_leaves = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32 == ksmd;
    if ksmd_leaves {
        full_scan_ended();
    }
    if ksmd_leaves && batch.on_cpu_since != 0 {
        let t = now();
        batch.on_cpu_ns += t - batch.on_cpu_since;
        batch.on_cpu_since = 0;
        let prev_state: u32 = ctx.arg(3);
        if prev_state != TASK_RUNNING {
            emit(&Event {
                ts_ns: t,
                kind: kind::KSMD_BATCH,
                arg0: batch.on_cpu_ns,
                arg1: t - batch.started,
                ..Event::default()
            });
            batch.on_cpu_ns = 0;
            batch.started = 0;
        }
        return 0;
    }
    if task_pid(next) == ksmd {
        let t = now();
        batch.on_cpu_since = t;
        if batch.started == 0 {
            batch.started = t;
        }
    }
    0
}

/// `ksm_scan.seqnr` + 1 as ksmd's last switch-out saw it (0: not seen yet).
#[map]
static LAST_SEQ: Array<u64> = Array::with_max_entries(1, 0);

/// The function backend's ksm_stop_scan: a full scan ends with `ksm_scan.seqnr++` and ksmd's
/// batch returns right after it, so the switch-out that first sees the counter one higher
/// reports the end of scan `seqnr - 1` (microseconds late). Only a step of one counts: run=2
/// resets the counter to 0.
#[inline(always)]
fn full_scan_ended() {
    let cfg = config();
    if cfg.ksm_scan_seqnr_addr == 0 {
        return;
    }
    let Some(last) = LAST_SEQ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: single-element array only ksmd's own switches write.
    let last = unsafe { &mut *last };
    let seq = read_u64(cfg.ksm_scan_seqnr_addr);
    if *last != 0 && seq == *last {
        emit(&Event {
            ts_ns: now(),
            kind: kind::STOP_SCAN,
            arg0: seq - 1,
            arg1: if cfg.ksm_rmap_items_addr != 0 {
                read_u64(cfg.ksm_rmap_items_addr)
            } else {
                0
            },
            ..Event::default()
        });
    }
    *last = seq + 1;
}
