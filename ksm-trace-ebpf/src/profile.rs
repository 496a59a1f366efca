//! Where ksmd spends its CPU: cpu-clock samples of ksmd with kernel stacks, counted per stack
//! in the kernel, so only stack ids and counts cross to user space (as bpftrace's profile does).
use aya_ebpf::{
    bindings::BPF_F_REUSE_STACKID,
    macros::{map, perf_event},
    maps::{HashMap, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext as _},
};
use ksm_trace_common::{PROFILE_STACKS, counter};

use crate::{maps::bump, owner::current_is_ksmd};

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(PROFILE_STACKS, 0);

/// Stack id → samples. Only ksmd's samples land here and ksmd runs on one CPU at a time, so
/// the plain increment cannot race.
#[map]
static STACK_COUNTS: HashMap<u32, u64> = HashMap::with_max_entries(PROFILE_STACKS, 0);

#[perf_event]
pub fn ksmd_profile(ctx: PerfEventContext) -> u32 {
    if !current_is_ksmd() {
        return 0;
    }
    // BPF_F_REUSE_STACKID: a stack whose hash bucket holds a different stack replaces it
    // instead of failing with EEXIST, so a collision is not a lost sample. The id is the bucket,
    // so the older stack's count stays under that id and is shown with the newer frames: with
    // PROFILE_STACKS buckets for a few hundred distinct ksmd stacks that is rare, and a sample
    // kept under a neighbouring stack is worth more than one dropped.
    let Ok(id) = ctx.get_stackid(&STACKS, BPF_F_REUSE_STACKID as u64) else {
        bump(counter::STACKS_LOST);
        return 0;
    };
    let id = id as u32;
    match STACK_COUNTS.get_ptr_mut(&id) {
        // SAFETY: see STACK_COUNTS.
        Some(count) => unsafe { *count += 1 },
        None => {
            if STACK_COUNTS.insert(&id, &1, 0).is_err() {
                bump(counter::STACKS_LOST);
            }
        }
    }
    0
}
