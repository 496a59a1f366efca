//! The kernel's own unmerge calls (`unmerge_ksm_pages`: MADV_UNMERGEABLE, prctl off, run=2),
//! timed per process through fentry/fexit, else kprobes. It runs only when something
//! unmerges, so it is attached wherever it can be.
use anyhow::Result;
use ksm_trace_common::programs;

use super::{events::kprobes_available, load::Loader};
use crate::recording::schema::{EventSource, Fallback, Reason, UnmergeMechanism};

pub(super) fn attach(l: &mut Loader, events: EventSource) -> Result<UnmergeMechanism> {
    if let Err(reason) = l.function_in_btf(programs::UNMERGE_FUNCTION) {
        l.fallback(Fallback::UnmergeUnavailable { reason });
        return Ok(UnmergeMechanism::Unavailable);
    }
    let fentry = if events == EventSource::Kprobes {
        Err(Reason::Asked {
            option: "--backend kprobes".into(),
        })
    } else {
        l.attach_fentry_pair(
            programs::UNMERGE_ENTRY,
            programs::UNMERGE_EXIT,
            programs::UNMERGE_FUNCTION,
        )
    };
    match fentry {
        Ok(()) => Ok(UnmergeMechanism::Fentry),
        Err(_) if kprobes_available() => {
            l.attach_kprobes(&[
                (programs::UNMERGE_KPROBE, programs::UNMERGE_FUNCTION),
                (programs::UNMERGE_KRETPROBE, programs::UNMERGE_FUNCTION),
            ])?;
            Ok(UnmergeMechanism::Kprobes)
        }
        Err(reason) => {
            let reason = match reason {
                Reason::Refused(r) => Reason::RefusedAndNoKprobes(r),
                other => other,
            };
            l.fallback(Fallback::UnmergeUnavailable { reason });
            Ok(UnmergeMechanism::Unavailable)
        }
    }
}
