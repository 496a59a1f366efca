//! TLB shootdowns ksmd sends per merge: `tlb:tlb_flush` with TLB_REMOTE_SEND_IPI (the remote
//! flushes asked for) and, where the kernel has them (6.6+), `ipi:ipi_send_cpu[mask]` (the
//! IPIs really sent). They fire for every process's flushes and IPIs: only when asked for
//! (`--tlb-shootdowns on`).
use anyhow::Result;
use ksm_trace_common::programs;

use super::load::Loader;
use crate::recording::schema::{Fallback, ShootdownMechanism};

pub(super) fn attach(l: &mut Loader, wanted: bool) -> Result<ShootdownMechanism> {
    if !wanted {
        return Ok(ShootdownMechanism::Off);
    }
    if let Err(reason) = l.tracepoint_usable(&programs::TLB_FLUSH) {
        l.fallback(Fallback::TlbUnavailable { reason });
        return Ok(ShootdownMechanism::Unavailable);
    }
    l.attach_raw(&programs::TLB_FLUSH)?;
    // The first one missing says why (a kernel before 6.6 has neither).
    let missing = programs::IPI_SEND
        .iter()
        .find_map(|tp| Some((tp, l.tracepoint_usable(tp).err()?)));
    let ipis = missing.is_none();
    if let Some((tp, reason)) = missing {
        l.fallback(Fallback::IpisUntraced {
            tracepoint: tp.tracepoint.to_owned(),
            reason,
        });
    }
    if ipis {
        for tp in &programs::IPI_SEND {
            l.attach_raw(tp)?;
        }
    }
    Ok(ShootdownMechanism::TlbFlush { ipis })
}
