//! Merge latency: fentry/fexit on `try_to_merge_one_page` where the kernel allows it, else the
//! mmap_lock bracket (ksmd's acquire → release on the merged mm), which is loaded here but
//! attached only while [`super::bracket`]'s policy says so: it costs ksmd a third of its scan
//! rate while attached.
use anyhow::{Context as _, Result, anyhow};
use aya::programs::{RawTracePoint, raw_trace_point::RawTracePointLinkId};
use ksm_trace_common::{names, programs};

use super::{bracket, load::Loader, load::program};
use crate::recording::schema::{
    BracketAttach, Fallback, LatencyMode, MergeLatencyMechanism, Reason,
};

impl LatencyMode {
    /// Every mode: its name (as `--merge-latency` takes it) and what it does.
    pub const ALL: [(LatencyMode, &'static str, &'static str); 4] = [
        (
            LatencyMode::Auto,
            "auto",
            "fentry/fexit where allowed; else the mmap_lock bracket, sampled: 50 ms when merges start, one window per 5 s",
        ),
        (
            LatencyMode::Always,
            "always",
            "fentry/fexit where allowed; else the mmap_lock bracket for the whole run",
        ),
        (
            LatencyMode::Both,
            "both",
            "fentry/fexit and the bracket on the same merges, to compare them",
        ),
        (LatencyMode::Off, "off", "no merge latency"),
    ];
}

/// What merge latency will use, and whether the bracket can be attached at all.
pub(super) struct Choice {
    pub mechanism: MergeLatencyMechanism,
    pub fexit_attached: bool,
    pub bracket_usable: bool,
}

pub(super) fn attach(l: &mut Loader, mode: LatencyMode) -> Result<Choice> {
    if mode == LatencyMode::Off {
        return Ok(Choice {
            mechanism: MergeLatencyMechanism::Off,
            fexit_attached: false,
            bracket_usable: false,
        });
    }
    let fexit = attach_fexit(l);
    let fexit_attached = fexit.is_ok();
    if let Err(reason) = fexit {
        l.fallback(Fallback::MergeLatencyFromBracket { reason });
    }
    let bracket_present = load_bracket(l)?;
    let mechanism = match (mode, fexit_attached, bracket_present) {
        (LatencyMode::Both, true, true) => MergeLatencyMechanism::FexitAndBracket,
        (_, true, _) => MergeLatencyMechanism::Fexit,
        (mode, false, true) => MergeLatencyMechanism::Bracket {
            attached: if mode == LatencyMode::Auto {
                BracketAttach::OnMerges {
                    on_ms: bracket::SAMPLE_ON.as_millis() as u32,
                    period_ms: bracket::SAMPLE_PERIOD.as_millis() as u32,
                }
            } else {
                BracketAttach::Always
            },
        },
        (_, false, false) => MergeLatencyMechanism::Unavailable,
    };
    Ok(Choice {
        mechanism,
        fexit_attached,
        bracket_usable: bracket_present && !(fexit_attached && mode != LatencyMode::Both),
    })
}

fn attach_fexit(l: &mut Loader) -> Result<(), Reason> {
    l.function_in_btf(programs::MERGE_FUNCTION)?;
    l.offsets_in_btf(&["vm_area_struct.vm_mm"])?;
    l.attach_fentry_pair(
        programs::MERGE_ENTRY,
        programs::MERGE_EXIT,
        programs::MERGE_FUNCTION,
    )
}

/// Loads the bracket's programs, unattached, where both tracepoints can take them.
fn load_bracket(l: &mut Loader) -> Result<bool> {
    let missing = programs::BRACKET
        .iter()
        .find_map(|tp| Some((tp, l.tracepoint_usable(tp).err()?)));
    if let Some((tp, reason)) = missing {
        l.fallback(Fallback::BracketUnavailable {
            tracepoint: tp.tracepoint.to_owned(),
            reason,
        });
        return Ok(false);
    }
    for tp in &programs::BRACKET {
        l.load_raw(tp)?;
    }
    Ok(true)
}

/// Attaches the bracket's programs, keeping their links.
pub(super) fn arm(
    ebpf: &mut aya::Ebpf,
    links: &mut Vec<(&'static str, RawTracePointLinkId)>,
) -> Result<()> {
    for tp in &programs::BRACKET {
        let link = program::<RawTracePoint>(ebpf, tp.program)?
            .attach(tp.tracepoint)
            .with_context(|| format!("attaching {} to {}", tp.program, tp.tracepoint))?;
        links.push((tp.program, link));
    }
    Ok(())
}

/// Detaches the bracket and forgets the interval it may have left open: an interval the detach
/// cut off (acquired, never released) would otherwise time the next merge on that mm, however
/// much later, as one long merge.
pub(super) fn disarm(
    ebpf: &mut aya::Ebpf,
    links: &mut Vec<(&'static str, RawTracePointLinkId)>,
) -> Result<()> {
    for (prog, link) in std::mem::take(links) {
        program::<RawTracePoint>(ebpf, prog)?.detach(link)?;
    }
    let map = ebpf
        .map_mut(names::INTERVALS)
        .ok_or_else(|| anyhow!("map {} missing from the eBPF object", names::INTERVALS))?;
    aya::maps::Array::<_, ksm_trace_common::Interval>::try_from(map)?.set(
        ksm_trace_common::interval::BRACKET,
        ksm_trace_common::Interval::default(),
        0,
    )?;
    Ok(())
}
