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
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::bpftrace;
use crate::{
    collect::Collector,
    histogram::{Histogram, clustered_percentile_cis},
    kernel::sysfs,
    probes::{Capabilities, LatencyMode, ProbeOptions, Probes, bracket},
    run::{knobs::KnobSettings, mounts::TracefsMount, session::Preflight},
};

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
    /// Its name, how it times merges, and whether sched_switch (ksmd's batches) is attached.
    KsmTrace(&'static str, LatencyMode, bool),
    Bpftrace(bpftrace::Script),
}

/// ksm-trace's modes. `--batches off` beside `--merge-latency off` isolates what sched_switch,
/// which fires on every context switch of every process, costs.
const KSM_TRACE_MODES: [(&str, LatencyMode, bool); 4] = [
    (
        "ksm-trace --merge-latency off --batches off",
        LatencyMode::Off,
        false,
    ),
    ("ksm-trace --merge-latency off", LatencyMode::Off, true),
    (
        "ksm-trace default (auto: bracket sampled)",
        LatencyMode::Auto,
        true,
    ),
    (
        "ksm-trace --merge-latency always",
        LatencyMode::Always,
        true,
    ),
];

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
        results.push(run_scenario(b, scenario, workload, &other).await?);
    }
    drop(other);
    Ok(render(b, &results))
}

async fn run_scenario(
    b: &OverheadBench,
    scenario: Scenario,
    workload: String,
    other: &OtherProcess,
) -> Result<Figures> {
    let knobs = KnobSettings {
        pages_to_scan: Some(b.pages_to_scan),
        sleep_ms: Some(0),
        ..Default::default()
    };
    let pre = Preflight::run(Some(crate::workload::parse(&workload)?), &knobs)?;
    pre.caps.require_tracing()?;
    let ksmd = pre.ksmd;
    let mut tracers: Vec<Tracer> = KSM_TRACE_MODES
        .iter()
        .map(|&(name, mode, batches)| Tracer::KsmTrace(name, mode, batches))
        .collect();
    let bpftrace_bin = bpftrace::find();
    if bpftrace_bin.is_some() {
        tracers.extend(bpftrace::scripts(ksmd).map(Tracer::Bpftrace));
    }
    let _tracefs = match &bpftrace_bin {
        Some(_) => Some(TracefsMount::ensure()?),
        None => None,
    };
    let mut session = pre.start(&knobs, false)?;
    let fill = session
        .workload
        .iter()
        .flat_map(|w| w.workers())
        .map(|w| w.fill_gib_per_s())
        .collect();
    session.run_ksmd()?;
    let caps = session.caps.clone();
    settle(scenario).await?;

    let mut s = Figures {
        name: scenario.name(),
        workload,
        tracers: tracers
            .iter()
            .map(|t| match t {
                Tracer::KsmTrace(name, mode, _) => (name.to_string(), *mode, None),
                Tracer::Bpftrace(script) => (
                    script.name.to_owned(),
                    script.same_as,
                    Some(script.measures),
                ),
            })
            .collect(),
        untraced: Vec::new(),
        traced: (0..tracers.len()).map(|_| Vec::new()).collect(),
        program_stats: BTreeMap::new(),
        accounted: Vec::new(),
        sampled_windows: Vec::new(),
        always_latency: Vec::new(),
        head_lags: Histogram::new(),
        sampled_ages: Histogram::new(),
        switch_ns: Vec::new(),
        between: Vec::new(),
        armed: Vec::new(),
        fast_profile: Vec::new(),
        short_untraced: Vec::new(),
        sampled_merges: 0,
        fill,
    };
    let untraced = |s: &mut Figures, w: Window| s.untraced.push(w.rates);
    untraced(&mut s, window(None, b.window, ksmd, other).await?);
    for round in 0..b.repetitions.max(b.default_repetitions) {
        for (t, tracer) in tracers.iter().enumerate() {
            let is_default = matches!(tracer, Tracer::KsmTrace(_, LatencyMode::Auto, _));
            if round >= b.repetitions && !is_default {
                continue;
            }
            let w = match tracer {
                Tracer::KsmTrace(_, mode, batches) => {
                    let (w, _, policy) = traced_window(
                        &caps,
                        ksmd,
                        mode_options(*mode, *batches),
                        *mode,
                        window_length(*mode, b.window),
                        other,
                    )
                    .await?;
                    let timed = merge_latencies(&w.collector);
                    match mode {
                        LatencyMode::Auto => {
                            s.sampled_windows.push(timed);
                            s.sampled_merges += w.collector.merged_total();
                            if let (Some(on), Some(off)) = policy.switch_ns() {
                                s.switch_ns.push((on, off));
                            }
                            if let Some(lag) = policy.burst_head_ns() {
                                s.head_lags.record(lag);
                            }
                            for ages in w.collector.merges.burst_age_ns.values() {
                                s.sampled_ages.add(ages);
                            }
                        }
                        LatencyMode::Always => s
                            .always_latency
                            .extend_from_slice(&w.collector.merges.aged_latencies),
                        _ => {}
                    }
                    w
                }
                Tracer::Bpftrace(script) => {
                    let bin = bpftrace_bin.as_deref().expect("scripts only with bpftrace");
                    let running = bpftrace::Running::start(bin, script).await?;
                    let w = window(None, b.window, ksmd, other).await?;
                    // A script that attached but saw nothing would make bpftrace look free.
                    if running.stop().await? == 0 {
                        bail!(
                            "bpftrace counted no ksmd batches in its window: its script is broken here"
                        );
                    }
                    w
                }
            };
            s.traced[t].push((s.untraced.len() - 1, w.rates));
            tokio::time::sleep(TEARDOWN_GAP).await;
            untraced(&mut s, window(None, b.window, ksmd, other).await?);
        }
    }
    // The default's two states in short windows, each between untraced ones.
    if b.short_pairs > 0 {
        let mut before = window(None, b.short_window, ksmd, other).await?.rates;
        s.short_untraced.push(before);
        for pair in 0..b.short_pairs {
            let state = ShortState::of_pair(pair);
            let default = mode_options(LatencyMode::Auto, true);
            let (options, bracket, ratios) = match state {
                ShortState::Between => (default, LatencyMode::Off, &mut s.between),
                ShortState::Armed => (default, LatencyMode::Always, &mut s.armed),
                ShortState::FastProfile => (
                    ProbeOptions {
                        profile_hz: FAST_PROFILE_HZ,
                        ..default
                    },
                    LatencyMode::Off,
                    &mut s.fast_profile,
                ),
            };
            let (w, _, _) =
                traced_window(&caps, ksmd, options, bracket, b.short_window, other).await?;
            tokio::time::sleep(TEARDOWN_GAP).await;
            let after = window(None, b.short_window, ksmd, other).await?.rates;
            s.short_untraced.push(after);
            ratios.push(against_neighbours(
                |r| r.pages_per_s,
                &w.rates,
                &before,
                &after,
            ));
            before = after;
        }
    }
    // The kernel's own accounting, in windows of their own (it adds ~50 ns to every run,
    // which the ratio windows would count as tracing cost): `always` gives each program's ns
    // per run; both give the share of ksmd's CPU time the programs ran — a figure without the
    // machine's window-to-window noise.
    if let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        for (name, mode) in [
            ("default", LatencyMode::Auto),
            ("always", LatencyMode::Always),
        ] {
            let (w, probes, _) = traced_window(
                &caps,
                ksmd,
                mode_options(mode, true),
                mode,
                window_length(mode, b.window),
                other,
            )
            .await?;
            let stats = probes.run_stats();
            let program_ns: u64 = stats.iter().map(|(_, (ns, _))| ns).sum();
            s.accounted
                .push((name, program_ns as f64 / w.ksmd_cpu_ns.max(1) as f64));
            if mode == LatencyMode::Always {
                s.program_stats = stats.into_iter().collect();
            }
        }
    }
    drop(session);
    Ok(s)
}

/// The programs ksm-trace loads in `mode`, with sched_switch if `batches`.
fn mode_options(mode: LatencyMode, batches: bool) -> ProbeOptions {
    ProbeOptions {
        batches,
        ..ProbeOptions::new(mode)
    }
}

/// One window of `length` traced by ksm-trace with `options`' programs and the profiler,
/// the bracket driven as `bracket` says (`auto`: sampled; `always`: attached; `off`: never),
/// with the probes and bracket policy that traced it.
async fn traced_window(
    caps: &Capabilities,
    ksmd: u32,
    options: ProbeOptions,
    bracket: LatencyMode,
    length: Duration,
    other: &OtherProcess,
) -> Result<(Window, Probes, bracket::BracketPolicy)> {
    let mut probes = Probes::load_with(caps, ksmd, options)?;
    let mut policy = bracket::BracketPolicy::start(&mut probes, bracket)?;
    probes.start_profile(ksmd)?;
    let w = window(Some((&mut probes, &mut policy)), length, ksmd, other).await?;
    Ok((w, probes, policy))
}

/// The default samples in periods: a window of whole periods shows its share, a shorter one
/// would overstate or understate it.
fn window_length(mode: LatencyMode, window: Duration) -> Duration {
    match mode {
        LatencyMode::Auto => sampled_window(window),
        _ => window,
    }
}

/// The default's window: as many whole sampling periods as fit in `window`, at least one.
fn sampled_window(window: Duration) -> Duration {
    let period = bracket::SAMPLE_PERIOD;
    period
        * window
            .as_secs_f64()
            .div_euclid(period.as_secs_f64())
            .max(1.0) as u32
}

/// Settled: wait until pages_sharing stops moving (the benchmark is about steady-state
/// scanning). Merging: give the first merges a few seconds; it never stops moving.
async fn settle(scenario: Scenario) -> Result<()> {
    if scenario == Scenario::Merging {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sharing = sysfs::read_i64("pages_sharing")?;
        if sharing > 0 && sharing == last {
            break;
        }
        last = sharing;
    }
    Ok(())
}

/// What one window measured.
#[derive(Clone, Copy)]
struct Rates {
    /// ksmd's pages scanned per second: the figure the overhead target is about.
    pages_per_s: f64,
    /// ksmd's pages scanned per second it ran (its own scheduler time): the cost tracing adds
    /// inside ksmd, without the noise of how much CPU the scheduler gave ksmd.
    pages_per_cpu_s: f64,
    /// The other process's mmap/touch/munmap per second.
    other_per_s: f64,
}

struct Window {
    rates: Rates,
    /// ksmd's CPU time in the window.
    ksmd_cpu_ns: u64,
    collector: Collector,
}

/// ksmd's pages scanned per second and the other process's operations per second over
/// `length`, draining the probes' events (and running the bracket policy) if tracing.
async fn window(
    mut probes: Option<(&mut Probes, &mut bracket::BracketPolicy)>,
    length: Duration,
    ksmd: u32,
    other: &OtherProcess,
) -> Result<Window> {
    let mut ring = match probes.as_mut() {
        Some((p, _)) => Some(p.take_event_ring()?),
        None => None,
    };
    let mut collector = Collector::default();
    // Kept for holding the sampled default against `always` (merges' ages in their bursts).
    collector.merges.keep_latency_windows = true;
    collector.merges.keep_aged_latencies = true;
    let start = sysfs::read_i64("pages_scanned")?;
    let cpu_start = crate::kernel::cpu_time_ns(ksmd)?;
    let ops = other.ops();
    let t0 = Instant::now();
    let end = tokio::time::sleep(length);
    tokio::pin!(end);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // As `record` drives the bracket: when merges start, at each drain, at the deadline.
        let deadline = probes.as_ref().and_then(|(_, policy)| policy.deadline());
        tokio::select! {
            () = &mut end => break,
            () = bracket::wake(ring.as_ref(), deadline) => {}
            _ = tick.tick() => {}
        }
        if let Some(ring) = ring.as_mut() {
            collector.drain(ring.get_mut());
        }
        if let Some((p, policy)) = probes.as_mut() {
            policy.update(p, collector.merge_clock())?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let pages = (sysfs::read_i64("pages_scanned")? - start) as f64;
    let ksmd_cpu_ns = crate::kernel::cpu_time_ns(ksmd)?.saturating_sub(cpu_start);
    let cpu_s = ksmd_cpu_ns as f64 / 1e9;
    Ok(Window {
        rates: Rates {
            pages_per_s: pages / secs,
            pages_per_cpu_s: pages / cpu_s.max(1e-9),
            other_per_s: other.ops().saturating_sub(ops) as f64 / secs,
        },
        ksmd_cpu_ns,
        collector,
    })
}

/// The sampled default's merge latency held against `always` on the same workload. The
/// sample's intervals are for the merges after a burst's head (the windows open a little into
/// each burst), so `always`'s merges are split at the same age and its others are compared.
fn latency_accuracy(s: &Figures, sampled: &Histogram, always: &Histogram) -> String {
    let (a, b) = (sampled.summary(), always.summary());
    let mut line = format!(
        "  merge latency, sampled default vs always on the same workload: p50 {} vs {} ns, p99 {} vs {} ns (the default timed {} of the {} merges in its windows, {:.1} %; always timed {})",
        a.p50,
        b.p50,
        a.p99,
        b.p99,
        a.count,
        s.sampled_merges,
        100.0 * a.count as f64 / s.sampled_merges.max(1) as f64,
        b.count,
    );
    let head = (!s.head_lags.is_empty()).then(|| s.head_lags.percentile(50.0));
    let (target, whose) = match head {
        Some(head) => {
            let mut rest = Histogram::new();
            for &(_, ns) in s.always_latency.iter().filter(|(age, _)| *age > head) {
                rest.record(ns);
            }
            let early = b.count - rest.count();
            let r = rest.summary();
            line += &format!(
                "\n    the default's windows opened {head} ns into a burst (median): {:.1} % of its merges and {:.1} % of always's came that early in their burst, outside the sample; always without them: p50 {} ns, p99 {} ns",
                100.0 * s.sampled_ages.count_at_most(head) as f64
                    / s.sampled_ages.count().max(1) as f64,
                100.0 * early as f64 / b.count.max(1) as f64,
                r.p50,
                r.p99
            );
            (r, "always's merges after a burst's head")
        }
        None => {
            line += "\n    no window opened on a burst's first merges";
            (b, "always's")
        }
    };
    if let Some([p50, p99]) = clustered_percentile_cis(&s.sampled_windows, [50.0, 99.0]) {
        let inside = |v: u64, (lo, hi): (u64, u64)| {
            if (lo..=hi).contains(&v) {
                "inside"
            } else {
                "outside"
            }
        };
        line += &format!(
            "\n    the sample's 95 % intervals (bootstrap over its windows): p50 {}–{} ns, p99 {}–{} ns: {whose} p50 {}, p99 {}",
            p50.0,
            p50.1,
            p99.0,
            p99.1,
            inside(target.p50, p50),
            inside(target.p99, p99)
        );
    }
    line
}

fn merge_latencies(c: &Collector) -> Histogram {
    let mut h = Histogram::new();
    for stats in c.merges.by_pid.values() {
        h.add(&stats.merge_latency_ns);
    }
    h
}

/// Another process's work, as the mmap_lock tracepoints see it: map 16 pages, touch each,
/// unmap, in a loop on its own thread (each mmap/munmap takes mmap_lock for writing).
struct OtherProcess {
    ops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtherProcess {
    fn start() -> Self {
        let (ops, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, s) = (ops.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let len = 16 * crate::kernel::page_size() as usize;
            while !s.load(Ordering::Relaxed) {
                // SAFETY: a private anonymous mapping of our own, written then unmapped.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        continue;
                    }
                    for off in (0..len).step_by(4096) {
                        std::ptr::write_volatile((p as *mut u8).add(off), 1);
                    }
                    libc::munmap(p, len);
                }
                o.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            ops,
            stop,
            thread: Some(thread),
        }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The mean of `v` and the half-width of its 95 % confidence interval (Student's t; None with
/// fewer than two values).
fn mean_ci(v: &[f64]) -> (f64, Option<f64>) {
    let m = mean(v);
    let n = v.len() as f64;
    if v.len() < 2 {
        return (m, None);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    let t = StudentsT::new(0.0, 1.0, n - 1.0)
        .map(|d| d.inverse_cdf(0.975))
        .ok();
    (m, t.map(|t| t * (var / n).sqrt()))
}

/// What the default must keep of ksmd's untraced scan rate.
const TARGET: f64 = 0.98;

/// A figure for the default's ratio: how it was measured, its mean and 95 % half-width, and
/// the control ratios of the untraced windows of the same design (its noise).
struct Estimate {
    how: String,
    mean: f64,
    half: Option<f64>,
    control: Vec<f64>,
}

/// The default's ratio composed from its two states: `between` (every program but the bracket)
/// for 1 − d of the time and `armed` (the bracket attached) for d = SAMPLE_ON ÷ SAMPLE_PERIOD,
/// as the default spends its time while merging, less its attach and detach calls' time per
/// period (`switch_ns`), counted as if all of it were taken from ksmd. The half-width combines
/// the two means' intervals (independent windows). None without windows of both states.
fn composed(between: &[f64], armed: &[f64], switch_ns: f64, control: Vec<f64>) -> Option<Estimate> {
    if between.is_empty() || armed.is_empty() {
        return None;
    }
    let d = bracket_duty();
    let ((mb, hb), (ma, ha)) = (mean_ci(between), mean_ci(armed));
    let switches = switch_ns / bracket::SAMPLE_PERIOD.as_nanos() as f64;
    Some(Estimate {
        how: "composed from short windows".to_owned(),
        mean: (1.0 - d) * mb + d * ma - switches,
        half: hb.zip(ha).map(|(hb, ha)| ((1.0 - d) * hb).hypot(d * ha)),
        control,
    })
}

/// Whether the default keeps [`TARGET`], by the estimate with the narrowest interval: only
/// when its whole 95 % interval is on one side; otherwise the machine's noise (the control's
/// interval) is why not.
fn verdict(estimates: &[Estimate]) -> String {
    let Some((
        h,
        Estimate {
            how,
            mean: m,
            control,
            ..
        },
    )) = estimates
        .iter()
        .filter_map(|e| Some((e.half?, e)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
    else {
        return format!("target ≥ {TARGET}: one window of the default, no verdict");
    };
    let m = *m;
    let (lo, hi) = (m - h, m + h);
    if lo >= TARGET {
        format!(
            "target ≥ {TARGET}: met (the default {how}: 95 % interval {lo:.3}–{hi:.3}, above it)"
        )
    } else if hi < TARGET {
        format!(
            "target ≥ {TARGET}: missed (the default {how}: 95 % interval {lo:.3}–{hi:.3}, below it)"
        )
    } else {
        let noise = mean_ci(control)
            .1
            .map_or("unknown".to_owned(), |c| format!("±{:.1} %", 100.0 * c));
        format!(
            "target ≥ {TARGET}: cannot be told in this run (the default {how}: 95 % interval {lo:.3}–{hi:.3} spans it; the machine's own noise, the control row's interval with n={}, is {noise}: more windows or a steadier machine)",
            control.len()
        )
    }
}

/// The share of a merging period the sampled default has its bracket attached.
fn bracket_duty() -> f64 {
    bracket::SAMPLE_ON.as_secs_f64() / bracket::SAMPLE_PERIOD.as_secs_f64()
}

/// Each untraced window against the untraced windows either side of it (a traced window away,
/// so if anything a wider spread than the tracers' own): the noise floor.
fn control(untraced: &[Rates], pick: fn(&Rates) -> f64) -> Vec<f64> {
    (1..untraced.len().saturating_sub(1))
        .map(|i| against_neighbours(pick, &untraced[i], &untraced[i - 1], &untraced[i + 1]))
        .collect()
}

/// `r`'s figure ÷ the mean of the untraced windows either side of it.
fn against_neighbours(pick: fn(&Rates) -> f64, r: &Rates, before: &Rates, after: &Rates) -> f64 {
    pick(r) / ((pick(before) + pick(after)) / 2.0)
}

/// (min, max) of a non-empty list.
fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// "0.99 (0.98–1.00, 10 windows)".
fn ratio_text(ratios: &[f64]) -> String {
    match mean_ci(ratios) {
        (m, Some(h)) => format!("{m:.3} ({:.3}–{:.3}, n={})", m - h, m + h, ratios.len()),
        (m, None) => format!("{m:.3} (n={})", ratios.len()),
    }
}

fn render(b: &OverheadBench, scenarios: &[Figures]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ksm-trace bench overhead: pages_to_scan={} sleep_millisecs=0, {} s windows ({} s for the sampled default, whose bracket is attached {} ms when merges start, one window earned per {} s), {} repetitions ({} of the default), {} pairs of {} s windows for the default's two states (of every {ARMED_EVERY}, one with the bracket attached, one with the profiler at {FAST_PROFILE_HZ} Hz); ratio = traced ÷ mean of the untraced windows either side, mean over the windows with its 95 % confidence interval",
        b.pages_to_scan,
        b.window.as_secs_f64(),
        sampled_window(b.window).as_secs_f64(),
        bracket::SAMPLE_ON.as_millis(),
        bracket::SAMPLE_PERIOD.as_secs_f64(),
        b.repetitions,
        b.repetitions.max(b.default_repetitions),
        b.short_pairs,
        b.short_window.as_secs_f64(),
    );
    for s in scenarios {
        let untraced = |pick: fn(&Rates) -> f64| s.untraced.iter().map(pick).collect::<Vec<_>>();
        let (pages, per_cpu) = (untraced(|r| r.pages_per_s), untraced(|r| r.pages_per_cpu_s));
        let (min, max) = range(&pages);
        let _ = writeln!(
            o,
            "\n{} ({}): untraced {:.0} pages scanned/s (windows {:.0}–{:.0}; {:.0} per second ksmd ran); other process {:.0} mmap/touch/munmap per s",
            s.name,
            s.workload,
            mean(&pages),
            min,
            max,
            mean(&per_cpu),
            mean(&untraced(|r| r.other_per_s))
        );
        if !s.fill.is_empty() {
            let (lo, hi) = range(&s.fill);
            let _ = writeln!(
                o,
                "  procs fill rate: {lo:.2}–{hi:.2} GiB/s per worker ({} workers filling at once)",
                s.fill.len()
            );
        }
        let _ = writeln!(
            o,
            "  {:<52} {:>28} {:>28} {:>28}",
            "tracer", "ksmd ratio", "ksmd per CPU-second", "other process"
        );
        if s.untraced.len() > 2 {
            let _ = writeln!(
                o,
                "  {:<52} {:>28} {:>28} {:>28}",
                "untraced (control: ÷ the untraced windows beside)",
                ratio_text(&control(&s.untraced, |r| r.pages_per_s)),
                ratio_text(&control(&s.untraced, |r| r.pages_per_cpu_s)),
                ratio_text(&control(&s.untraced, |r| r.other_per_s))
            );
        }
        let mut ratios = Vec::new();
        let mut default_ksmd = Vec::new();
        for (t, windows) in s.traced.iter().enumerate() {
            if windows.is_empty() {
                // `--repetitions 0`: only the default was measured.
                ratios.push(f64::NAN);
                continue;
            }
            let per_window = |pick: fn(&Rates) -> f64| {
                windows
                    .iter()
                    .map(|(i, r)| against_neighbours(pick, r, &s.untraced[*i], &s.untraced[i + 1]))
                    .collect::<Vec<_>>()
            };
            let ksmd = per_window(|r| r.pages_per_s);
            ratios.push(mean(&ksmd));
            if s.tracers[t].1 == LatencyMode::Auto && s.tracers[t].2.is_none() {
                default_ksmd = ksmd.clone();
            }
            let _ = writeln!(
                o,
                "  {:<52} {:>28} {:>28} {:>28}",
                s.tracers[t].0,
                ratio_text(&ksmd),
                ratio_text(&per_window(|r| r.pages_per_cpu_s)),
                ratio_text(&per_window(|r| r.other_per_s))
            );
        }
        let mut estimates = Vec::new();
        if !default_ksmd.is_empty() {
            let (mean, half) = mean_ci(&default_ksmd);
            estimates.push(Estimate {
                how: format!(
                    "in its {} s windows",
                    sampled_window(b.window).as_secs_f64()
                ),
                mean,
                half,
                control: control(&s.untraced, |r| r.pages_per_s),
            });
        }
        let switches: Vec<f64> = s
            .switch_ns
            .iter()
            .map(|(on, off)| (on + off) as f64)
            .collect();
        let short_control = control(&s.short_untraced, |r| r.pages_per_s);
        if short_control.len() > 1 {
            let _ = writeln!(
                o,
                "  {:<52} {:>28}",
                format!(
                    "untraced, {} s windows (control)",
                    b.short_window.as_secs_f64()
                ),
                ratio_text(&short_control)
            );
        }
        if let Some(c) = composed(&s.between, &s.armed, mean(&switches), short_control) {
            let text = match c.half {
                Some(h) => format!("{:.3} ({:.3}–{:.3})", c.mean, c.mean - h, c.mean + h),
                None => format!("{:.3}", c.mean),
            };
            let _ = writeln!(
                o,
                "  {:<52} {:>28}",
                format!(
                    "default, composed from {} s windows",
                    b.short_window.as_secs_f64()
                ),
                text
            );
            let d = bracket_duty();
            let _ = writeln!(
                o,
                "    = {:.2} × between samples {} + {d:.2} × bracket attached {} − attach+detach {} per {} s period (all counted as ksmd's)",
                1.0 - d,
                ratio_text(&s.between),
                ratio_text(&s.armed),
                if switches.is_empty() {
                    "(not measured: the default's windows opened no sampling window)".to_owned()
                } else {
                    format!("{:.0} µs", mean(&switches) / 1e3)
                },
                bracket::SAMPLE_PERIOD.as_secs_f64(),
            );
            estimates.push(c);
        }
        if !s.fast_profile.is_empty() {
            let _ = writeln!(
                o,
                "    between samples with the profiler at {FAST_PROFILE_HZ} Hz instead of {} Hz: {}",
                crate::probes::profile::DEFAULT_HZ,
                ratio_text(&s.fast_profile)
            );
        }
        if !estimates.is_empty() {
            let _ = writeln!(o, "  {}", verdict(&estimates));
        }
        // Each bpftrace script against the ksm-trace mode measuring the same things (the
        // last of a latency mode: the one with batches on, as the scripts have).
        for (b_idx, (_, mode, measures)) in s.tracers.iter().enumerate() {
            let Some(measures) = measures else { continue };
            let Some(k) = s
                .tracers
                .iter()
                .rposition(|(_, m, script)| script.is_none() && m == mode)
            else {
                continue;
            };
            if ratios[k].is_nan() || ratios[b_idx].is_nan() {
                continue;
            }
            let _ = writeln!(
                o,
                "  ksm-trace vs bpftrace, {measures}: ksmd keeps {:.2} vs {:.2} of its untraced scan rate, ksm-trace ÷ bpftrace = {:.2}",
                ratios[k],
                ratios[b_idx],
                ratios[k] / ratios[b_idx]
            );
        }
        if !s.switch_ns.is_empty() {
            let on: Vec<f64> = s.switch_ns.iter().map(|w| w.0 as f64 / 1e3).collect();
            let off: Vec<f64> = s.switch_ns.iter().map(|w| w.1 as f64 / 1e3).collect();
            let ((on_lo, on_hi), (off_lo, off_hi)) = (range(&on), range(&off));
            let _ = writeln!(
                o,
                "  the sampled bracket's switches: attach {on_lo:.0}–{on_hi:.0} µs, detach {off_lo:.0}–{off_hi:.0} µs per call (the tracer's own time; what they cost ksmd is in the default's ratio)"
            );
        }
        let sampled = s
            .sampled_windows
            .iter()
            .fold(Histogram::new(), |mut all, w| {
                all.add(w);
                all
            });
        let always = s
            .always_latency
            .iter()
            .fold(Histogram::new(), |mut all, &(_, ns)| {
                all.record(ns);
                all
            });
        if sampled.is_empty() && !always.is_empty() {
            let _ = writeln!(
                o,
                "  merge latency, sampled default vs always: the default's {} windows timed none of their {} merges, always timed {}: no comparison in this run",
                s.sampled_windows.len(),
                s.sampled_merges,
                always.count()
            );
        }
        if !sampled.is_empty() && !always.is_empty() {
            let _ = writeln!(o, "{}", latency_accuracy(s, &sampled, &always));
        }
        if !s.accounted.is_empty() {
            let shares = s
                .accounted
                .iter()
                .map(|(name, share)| {
                    format!(
                        "{name} {:.2} % (ksmd keeps ≈ {:.3})",
                        100.0 * share,
                        1.0 - share
                    )
                })
                .collect::<Vec<_>>();
            let _ = writeln!(
                o,
                "  programs' run time ÷ ksmd's CPU time (kernel accounting, a window per mode; every process's runs counted against ksmd, tracepoint dispatch and attach/detach not included): {}",
                shares.join(", ")
            );
        }
        if !s.program_stats.is_empty() {
            let _ = writeln!(
                o,
                "  ns per run (kernel accounting, in a window of its own with every program attached):"
            );
            for (program, (ns, runs)) in &s.program_stats {
                if *runs > 0 {
                    let _ = writeln!(
                        o,
                        "    {program:<28} {:>8.0} ns × {runs} runs",
                        *ns as f64 / *runs as f64
                    );
                }
            }
        }
    }
    if bpftrace::find().is_none() {
        let _ = writeln!(
            o,
            "bpftrace: not installed, no comparison (`cargo xtask bench` installs it)"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_ci_is_students_t_interval() {
        // 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.303 → half-width 4.303 / √3 = 2.484.
        let (m, half) = mean_ci(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((half.unwrap() - 2.484).abs() < 0.001, "{half:?}");
        // One window has no interval; identical windows have a zero-width one.
        assert_eq!(mean_ci(&[0.9]), (0.9, None));
        assert_eq!(mean_ci(&[0.9, 0.9]).1, Some(0.0));
    }

    #[test]
    fn a_window_is_compared_with_the_mean_of_its_neighbours() {
        let rates = |p: f64| Rates {
            pages_per_s: p,
            pages_per_cpu_s: 2.0 * p,
            other_per_s: 0.0,
        };
        let (before, traced, after) = (rates(100.0), rates(99.0), rates(120.0));
        assert_eq!(
            against_neighbours(|r| r.pages_per_s, &traced, &before, &after),
            0.9
        );
        assert_eq!(
            against_neighbours(|r| r.pages_per_cpu_s, &traced, &before, &after),
            0.9
        );
    }

    #[test]
    fn ratio_text_gives_the_interval_and_the_windows() {
        assert_eq!(ratio_text(&[1.0, 2.0, 3.0]), "2.000 (-0.484–4.484, n=3)");
        assert_eq!(ratio_text(&[0.97]), "0.970 (n=1)");
    }

    const CONTROL: [f64; 4] = [1.0, 0.98, 1.02, 1.0];

    fn windows(v: &[f64]) -> Estimate {
        let (mean, half) = mean_ci(v);
        Estimate {
            how: "in windows".to_owned(),
            mean,
            half,
            control: CONTROL.to_vec(),
        }
    }

    #[test]
    fn the_verdict_needs_the_whole_interval_on_one_side() {
        assert!(verdict(&[windows(&[0.99, 0.991, 0.989])]).contains("met"));
        assert!(verdict(&[windows(&[0.95, 0.951, 0.949])]).contains("missed"));
        let unsure = verdict(&[windows(&[0.95, 1.01, 0.98])]);
        assert!(unsure.contains("cannot be told"), "{unsure}");
        assert!(unsure.contains("n=4, is ±"), "{unsure}");
        assert!(verdict(&[windows(&[0.99])]).contains("no verdict"));
    }

    #[test]
    fn the_verdict_takes_the_narrowest_estimate() {
        let wide = windows(&[0.95, 1.01, 0.98]);
        let narrow = Estimate {
            how: "composed".to_owned(),
            mean: 0.99,
            half: Some(0.005),
            control: Vec::new(),
        };
        let v = verdict(&[wide, narrow]);
        assert!(v.contains("met (the default composed"), "{v}");
    }

    #[test]
    fn short_pairs_are_mostly_between_samples() {
        let states: Vec<_> = (0..16).map(ShortState::of_pair).collect();
        let count = |s| states.iter().filter(|x| **x == s).count();
        assert_eq!(count(ShortState::Between), 12);
        assert_eq!(count(ShortState::Armed), 2);
        assert_eq!(count(ShortState::FastProfile), 2);
        assert!(states[7] == ShortState::Armed && states[3] == ShortState::FastProfile);
    }

    #[test]
    fn the_composition_weighs_the_states_by_their_time_and_charges_the_switches() {
        // 99 % of the time at 0.99 (mean of 0.98, 1.00), 1 % at 0.5 (mean of 0.4, 0.6), and
        // 2 ms of attach + detach per sampling period: 0.9801 + 0.005 − 2 ms ÷ period.
        let c = composed(&[0.98, 1.0], &[0.4, 0.6], 2e6, Vec::new()).unwrap();
        let switches = 2e6 / bracket::SAMPLE_PERIOD.as_nanos() as f64;
        assert!((c.mean - (0.9851 - switches)).abs() < 1e-9, "{}", c.mean);
        // t(0.975, 1 df) = 12.706; each mean's half-width 12.706 × 0.1414 / √2.
        let (hb, ha): (f64, f64) = (12.706 * 0.01, 12.706 * 0.1);
        let expect = (0.99 * hb).hypot(0.01 * ha);
        assert!((c.half.unwrap() - expect).abs() < 1e-3, "{:?}", c.half);
        assert!(composed(&[0.99], &[], 0.0, Vec::new()).is_none());
        assert_eq!(
            composed(&[0.99], &[0.5], 0.0, Vec::new()).unwrap().half,
            None
        );
    }

    #[test]
    fn the_default_window_is_whole_sampling_periods() {
        let p = bracket::SAMPLE_PERIOD;
        assert_eq!(sampled_window(p / 2), p);
        assert_eq!(sampled_window(p), p);
        assert_eq!(sampled_window(p * 2 + p / 2), p * 2);
    }
}
