//! Who owns an mm: `mm_struct.owner` → `task_struct.tgid` and `.comm`, with offsets taken from the
//! running kernel's BTF at start-up. Works for processes that joined KSM before tracing began.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use ksm_trace_common::{Event, NO_OFFSET, TASK_COMM_LEN};

use crate::maps::config;

/// Fills `tgid` and `comm` of `event` from the owner of `mm`; leaves them zero if unknown.
#[inline(always)]
pub fn fill_owner(event: &mut Event, mm: u64) {
    let cfg = config();
    if mm == 0 || cfg.mm_owner == NO_OFFSET {
        return;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let task: u64 = match unsafe { bpf_probe_read_kernel((mm + cfg.mm_owner as u64) as *const u64) }
    {
        Ok(task) if task != 0 => task,
        _ => return,
    };
    if let Ok(tgid) = unsafe { bpf_probe_read_kernel((task + cfg.task_tgid as u64) as *const u32) }
    {
        event.tgid = tgid;
    }
    if let Ok(comm) = unsafe {
        bpf_probe_read_kernel((task + cfg.task_comm as u64) as *const [u8; TASK_COMM_LEN])
    } {
        event.comm = comm;
    }
}

/// `task_struct.pid` of `task`, or 0.
#[inline(always)]
pub fn task_pid(task: u64) -> u32 {
    let cfg = config();
    if task == 0 || cfg.task_pid == NO_OFFSET {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((task + cfg.task_pid as u64) as *const u32) }.unwrap_or(0)
}

/// True when the current task is ksmd.
#[inline(always)]
pub fn current_is_ksmd() -> bool {
    let pid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    pid != 0 && pid == config().ksmd_pid
}
