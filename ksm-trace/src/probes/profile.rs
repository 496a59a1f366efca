//! ksmd's on-CPU profile: attaches the cpu-clock sampler to ksmd and, at the end, turns the
//! kernel's stack counts into folded stacks with symbols resolved now (kallsyms can change).
use std::collections::BTreeMap;

pub use crate::recording::schema::Profile;
use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, StackTraceMap},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use ksm_trace_common::names;

/// Samples per second by default, off the tick so sampling does not alias with timer-driven
/// work. Each sample interrupts ksmd for a timer interrupt and a stack walk: at 999 Hz the walk
/// alone ran 0.43 % of ksmd's CPU time (`bench overhead`'s kernel accounting), the largest
/// share of the default's cost. 99 Hz is perf's flame-graph habit (`perf record -F 99`): a
/// minute of busy ksmd gives ~6000 stacks.
pub const DEFAULT_HZ: u64 = 99;

impl Profile {
    pub fn samples(&self) -> u64 {
        self.stacks.values().sum()
    }
}

/// Attaches the sampler to ksmd only (a per-task perf event follows ksmd across CPUs),
/// sampling `hz` times per second of ksmd's CPU time.
pub fn attach(ebpf: &mut Ebpf, ksmd: u32, hz: u64) -> Result<()> {
    let prog: &mut PerfEvent = ebpf
        .program_mut("ksmd_profile")
        .ok_or_else(|| anyhow!("program ksmd_profile missing"))?
        .try_into()?;
    prog.load().context("loading the ksmd profiler")?;
    prog.attach(
        PerfEventConfig::Software(SoftwareEvent::CpuClock),
        PerfEventScope::OneProcess {
            pid: ksmd,
            cpu: None,
        },
        SamplePolicy::Frequency(hz),
        false,
    )
    .context("attaching the cpu-clock sampler to ksmd")?;
    Ok(())
}

/// Reads the stack counts and symbolizes them; `hz` is the rate they were sampled at.
pub fn collect(ebpf: &Ebpf, lost: u64, hz: u64) -> Result<Profile> {
    let counts: HashMap<_, u32, u64> = HashMap::try_from(
        ebpf.map(names::STACK_COUNTS)
            .ok_or_else(|| anyhow!("map {} missing", names::STACK_COUNTS))?,
    )?;
    let traces = StackTraceMap::try_from(
        ebpf.map(names::STACKS)
            .ok_or_else(|| anyhow!("map {} missing", names::STACKS))?,
    )?;
    let symbols = aya::util::kernel_symbols().context("reading /proc/kallsyms")?;
    let mut profile = Profile {
        frequency_hz: hz,
        lost,
        ..Default::default()
    };
    for entry in counts.iter() {
        let (id, count) = entry?;
        let Ok(trace) = traces.get(&id, 0) else {
            profile.lost += count;
            continue;
        };
        // The kernel gives the leaf first; folded stacks are root first. kallsyms names carry
        // a module suffix after a tab (`name\t[bpf]`), which the folded format cannot.
        let frames = trace
            .frames()
            .iter()
            .rev()
            .map(|f| crate::flame::frame(symbol(&symbols, f.ip)));
        let key = std::iter::once("ksmd".to_owned())
            .chain(frames)
            .collect::<Vec<_>>()
            .join(";");
        *profile.stacks.entry(key).or_default() += count;
    }
    Ok(profile)
}

fn symbol(symbols: &BTreeMap<u64, String>, ip: u64) -> &str {
    symbols
        .range(..=ip)
        .next_back()
        .map_or("[unknown]", |(_, name)| name.as_str())
}
