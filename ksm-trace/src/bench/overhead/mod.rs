//! `ksm-trace bench overhead`: what tracing costs ksmd and the rest of the machine. ksmd scans
//! flat out (sleep_millisecs=0) over a workload in two scenarios — settled (nothing left to
//! merge) and merging (the workers keep un-sharing and restoring a share of their identical
//! pages, so ksmd keeps re-merging: when a user wants merge latency). Pages scanned per second
//! is measured in alternating windows, untraced and traced in each mode — ksm-trace's, and the
//! same measurements hand-written for bpftrace when it is installed — and each traced window is
//! divided by the mean of its untraced neighbours, so drift in the machine's speed cancels out;
//! a mode's figure is the mean of its windows' ratios with a 95 % confidence interval. The
//! default record gets extra windows: the 2 % target is about it. A control row puts each
//! untraced window against its untraced neighbours: the machine's own noise, which no ratio
//! can be read more finely than. Because that noise is slow drift, the default is also
//! composed from its two states measured in short windows side by side — between sampling
//! windows (every program but the bracket) and with the bracket attached — weighted by the
//! share of time it spends in each, less its attach and detach calls (see [`composed`]).
//! Alongside: another process's mmap/touch/munmap rate in the same windows (what the mmap_lock
//! tracepoints cost everyone else), what each attach and detach of the sampled bracket takes,
//! the kernel's own accounting (BPF_ENABLE_STATS, in windows of their own: it costs ~50 ns per
//! run, which would otherwise count as tracing cost) — each program's ns per run, and the share
//! of ksmd's CPU time all programs ran in the default and in `always`, which the machine's
//! noise does not blur — and, while merging, the sampled latency distribution against `always`.
//!
//! [`scenario`] runs the windows, [`window`] measures one, [`stats`] holds the ratios and
//! intervals, [`render`] prints them.
mod render;
mod scenario;
mod stats;
mod window;

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;

use super::bpftrace;
use crate::{
    histogram::Histogram,
    probes::{CowProbe, LatencyMode},
};
use window::{OtherProcess, Rates};

pub struct OverheadBench {
    pub workload: String,
    /// Fraction of identical pages each worker un-shares and restores per second in the
    /// merging scenario.
    pub merging_write: f64,
    pub scenarios: Vec<Scenario>,
    pub pages_to_scan: u32,
    pub window: Duration,
    pub repetitions: u32,
    /// Windows of the default record per scenario (at least `repetitions`).
    pub default_repetitions: u32,
    /// Pairs of short windows (traced, untraced) measuring the default's two states.
    pub short_pairs: u32,
    pub short_window: Duration,
}

/// Every this many short pairs, the traced window has the bracket attached: it weighs 1 % in
/// the composition, so it needs far fewer windows than the state between samples. As often,
/// the state between samples with the profiler at [`FAST_PROFILE_HZ`]: what the default's
/// profiling rate saves.
const ARMED_EVERY: u32 = 8;

/// The profiling rate the default's is compared with (perf's habit is 1000 Hz and more).
const FAST_PROFILE_HZ: u64 = 999;

/// Between a traced window and the untraced one after it: the kernel frees what the tracer
/// closed (programs, maps, perf events) partly after the close returns, and that work, on the
/// untraced window's clock, would flatter the traced one.
const TEARDOWN_GAP: Duration = Duration::from_millis(300);

/// What a short traced window measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ShortState {
    /// The default between its sampling windows: every program but the bracket.
    Between,
    /// The default with its bracket attached.
    Armed,
    /// [`ShortState::Between`] with the profiler at [`FAST_PROFILE_HZ`].
    FastProfile,
}

impl ShortState {
    fn of_pair(pair: u32) -> Self {
        match pair % ARMED_EVERY {
            p if p == ARMED_EVERY - 1 => Self::Armed,
            p if p == ARMED_EVERY / 2 - 1 => Self::FastProfile,
            _ => Self::Between,
        }
    }
}

/// What ksmd scans over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Settled,
    Merging,
}

impl Scenario {
    pub const ALL: [(Self, &'static str, &'static str); 2] = [
        (
            Self::Settled,
            "settled",
            "the workload merged and settled: nothing left to merge",
        ),
        (
            Self::Merging,
            "merging",
            "the workload kept merging (--merging-write)",
        ),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or("", |(_, n, _)| n)
    }
}

/// What a traced window attaches.
enum Tracer {
    KsmTrace(Mode),
    Bpftrace(bpftrace::Script),
}

/// A ksm-trace mode: its name, how it times merges, whether sched_switch (ksmd's batches) is
/// attached, and how COW breaks are traced.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    latency: LatencyMode,
    batches: bool,
    cow: CowProbe,
}

const fn mode(name: &'static str, latency: LatencyMode, batches: bool, cow: CowProbe) -> Mode {
    Mode {
        name,
        latency,
        batches,
        cow,
    }
}

/// ksm-trace's modes. `--batches off` beside `--merge-latency off` isolates what sched_switch,
/// which fires on every context switch of every process, costs; `--cow-probe off` what the
/// COW probe costs (the page fault tracepoints fire on every fault of every process).
const KSM_TRACE_MODES: [Mode; 5] = [
    mode(
        "ksm-trace --merge-latency off --batches off",
        LatencyMode::Off,
        false,
        CowProbe::Auto,
    ),
    mode(
        "ksm-trace --merge-latency off --cow-probe off",
        LatencyMode::Off,
        true,
        CowProbe::Off,
    ),
    mode(
        "ksm-trace --merge-latency off",
        LatencyMode::Off,
        true,
        CowProbe::Auto,
    ),
    mode(
        "ksm-trace default (auto: bracket sampled)",
        LatencyMode::Auto,
        true,
        CowProbe::Auto,
    ),
    mode(
        "ksm-trace --merge-latency always",
        LatencyMode::Always,
        true,
        CowProbe::Auto,
    ),
];

/// How a window of the sampled default spent its time on the bracket.
struct Duty {
    attached: f64,
    switching: f64,
    coverage_windows: u64,
}

/// One scenario's figures.
struct Figures {
    name: &'static str,
    workload: String,
    /// Per tracer: its name, the ksm-trace mode it measures like, and what the comparison
    /// line calls it when it is a bpftrace script.
    tracers: Vec<(String, LatencyMode, Option<&'static str>)>,
    untraced: Vec<Rates>,
    /// Per tracer: (index of the untraced window before it, its rates).
    traced: Vec<Vec<(usize, Rates)>>,
    /// Program → (run time ns, runs), from the accounting window (`always`).
    program_stats: BTreeMap<String, (u64, u64)>,
    /// Per accounted mode: all its programs' run time ÷ ksmd's CPU time in its window.
    accounted: Vec<(&'static str, f64)>,
    /// The sampled default's timed merges, per window (its sampling windows' clusters).
    sampled_windows: Vec<Histogram>,
    /// Merge latencies timed by `always`, with each merge's age in its burst (ns).
    always_latency: Vec<(u64, u64)>,
    /// How far into its burst each of the default's windows opened on merges came (the
    /// median per tracer window, ns), and its merges' ages in their bursts.
    head_lags: Histogram,
    sampled_ages: Histogram,
    /// Merges in the sampled default's windows, timed or not.
    sampled_merges: u64,
    /// The sampled default's attach and detach calls: mean ns of each, per window.
    switch_ns: Vec<(u64, u64)>,
    /// Per window of the sampled default (each a fresh recording): the share of it the
    /// bracket was attached, the share its attach and detach calls took, and the windows it
    /// opened for coverage (the first timed merges of each merging process).
    default_duty: Vec<Duty>,
    /// Short windows' ratios: the default between its sampling windows, with the bracket
    /// attached, and between them with the profiler at [`FAST_PROFILE_HZ`].
    between: Vec<f64>,
    armed: Vec<f64>,
    fast_profile: Vec<f64>,
    /// The untraced short windows, in order (each pair's traced window sits between two).
    short_untraced: Vec<Rates>,
    /// Each procs worker's fill rate (GiB/s) as the scenario's workload started.
    fill: Vec<f64>,
}

/// Measures ksmd's scan rate with and without tracing; Ctrl-C or SIGTERM ends it early with
/// an error, after everything it changed is put back (knobs, workload, probes, bpftrace,
/// tracefs).
pub async fn overhead(b: &OverheadBench) -> Result<String> {
    let mut interrupts = crate::run::interrupts::Interrupts::install()?;
    tokio::select! {
        result = measure(b) => result,
        why = interrupts.recv() => {
            anyhow::bail!("bench overhead stopped ({why}) before it had all its windows: no figures; knobs restored")
        }
    }
}

async fn measure(b: &OverheadBench) -> Result<String> {
    let other = OtherProcess::start();
    let mut results = Vec::new();
    for &scenario in &b.scenarios {
        let workload = match scenario {
            Scenario::Settled => b.workload.clone(),
            Scenario::Merging => format!("{},write={}", b.workload, b.merging_write),
        };
        results.push(scenario::run(b, scenario, workload, &other).await?);
    }
    drop(other);
    Ok(render::render(b, &results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_pairs_are_mostly_between_samples() {
        let states: Vec<_> = (0..16).map(ShortState::of_pair).collect();
        let count = |s| states.iter().filter(|x| **x == s).count();
        assert_eq!(count(ShortState::Between), 12);
        assert_eq!(count(ShortState::Armed), 2);
        assert_eq!(count(ShortState::FastProfile), 2);
        assert!(states[7] == ShortState::Armed && states[3] == ShortState::FastProfile);
    }
}
