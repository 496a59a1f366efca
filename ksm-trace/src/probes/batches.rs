//! ksmd's batches and CPU time: its on-CPU stretches from `sched_switch` (ksm_do_scan, the
//! batch function, is inlined on the kernels seen so far). sched_switch fires on every context
//! switch of every process, hence its own switch (`--batches off`).
use anyhow::Result;
use ksm_trace_common::{NO_OFFSET, programs};

use super::load::Loader;
use crate::recording::schema::{BatchMechanism, Fallback, Reason};

pub(super) fn attach(l: &mut Loader, wanted: bool, task_pid: u32) -> Result<BatchMechanism> {
    if !wanted {
        return Ok(BatchMechanism::Off);
    }
    if let Err(reason) = l.tracepoint_usable(&programs::SCHED_SWITCH) {
        l.fallback(Fallback::BatchesUnavailable { reason });
        return Ok(BatchMechanism::Unavailable);
    }
    if task_pid == NO_OFFSET {
        l.fallback(Fallback::BatchesUnavailable {
            reason: Reason::OffsetMissing {
                member: "task_struct.pid".into(),
            },
        });
        return Ok(BatchMechanism::Unavailable);
    }
    l.attach_raw(&programs::SCHED_SWITCH)?;
    l.fallback(Fallback::BatchesFromSchedSwitch {
        ksm_do_scan_in_btf: l.function_in_btf("ksm_do_scan").is_ok(),
    });
    Ok(BatchMechanism::SchedSwitch)
}
