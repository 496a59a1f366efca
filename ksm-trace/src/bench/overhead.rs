//! `ksm-trace bench overhead`: what tracing costs ksmd and the rest of the machine. ksmd scans
//! flat out (sleep_millisecs=0) over a workload in two scenarios — settled (nothing left to
//! merge) and merging (the workers keep un-sharing and restoring a share of their identical
//! pages, so ksmd keeps re-merging: when a user wants merge latency). Pages scanned per second
//! is measured in alternating windows, untraced and traced in each mode — ksm-trace's, and the
//! same measurements hand-written for bpftrace when it is installed — and each traced window is
//! divided by the mean of its untraced neighbours, so drift in the machine's speed cancels out.
//! Alongside: another process's mmap/touch/munmap rate in the same windows (what the mmap_lock
//! tracepoints cost everyone else), each program's ns per run from the kernel's own accounting
//! (BPF_ENABLE_STATS), and, while merging, the sampled latency distribution against `always`.
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

use super::bpftrace;
use crate::{
    collect::Collector,
    histogram::Histogram,
    kernel::{sysfs, tracefs::TracefsMount},
    knobs::KnobSettings,
    probes::{LatencyMode, Probes, bracket},
    session::Preflight,
};

pub struct OverheadBench {
    pub workload: String,
    /// Fraction of identical pages each worker un-shares and restores per second in the
    /// merging scenario (0: settled scenario only).
    pub merging_write: f64,
    pub pages_to_scan: u32,
    pub window: Duration,
    pub repetitions: u32,
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
        "ksm-trace default (auto: bracket sampled 1 s in 20 s)",
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
struct Scenario {
    name: &'static str,
    workload: String,
    /// Per tracer: its name, the ksm-trace mode it measures like, and what the comparison
    /// line calls it when it is a bpftrace script.
    tracers: Vec<(String, LatencyMode, Option<&'static str>)>,
    untraced: Vec<f64>,
    other_untraced: Vec<f64>,
    /// Per tracer: (index of the untraced window before it, pages/s, other process ops/s).
    traced: Vec<Vec<(usize, f64, f64)>>,
    /// Program → (run time ns, runs), summed over ksm-trace's `always` windows.
    program_stats: BTreeMap<String, (u64, u64)>,
    /// Merge latencies timed by the sampled default and by `always`.
    latency: [Histogram; 2],
    /// Each procs worker's fill rate (GiB/s) as the scenario's workload started.
    fill: Vec<f64>,
}

/// Measures ksmd's scan rate with and without tracing; Ctrl-C or SIGTERM ends it early with
/// an error, after everything it changed is put back (knobs, workload, probes, bpftrace,
/// tracefs).
pub async fn overhead(b: &OverheadBench) -> Result<String> {
    let mut interrupts = crate::interrupts::Interrupts::install()?;
    tokio::select! {
        result = measure(b) => result,
        why = interrupts.recv() => {
            anyhow::bail!("bench overhead stopped ({why}) before it had all its windows: no figures; knobs restored")
        }
    }
}

async fn measure(b: &OverheadBench) -> Result<String> {
    // Per-program run time, from the kernel, for as long as the fd lives.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let other = OtherProcess::start();
    let mut scenarios = vec![("settled", b.workload.clone())];
    if b.merging_write > 0.0 {
        scenarios.push((
            "merging",
            format!("{},write={}", b.workload, b.merging_write),
        ));
    }
    let mut results = Vec::new();
    for (name, workload) in scenarios {
        results.push(scenario(b, name, workload, &other).await?);
    }
    drop(other);
    Ok(render(b, &results, stats.is_some()))
}

async fn scenario(
    b: &OverheadBench,
    name: &'static str,
    workload: String,
    other: &OtherProcess,
) -> Result<Scenario> {
    let knobs = KnobSettings {
        pages_to_scan: Some(b.pages_to_scan),
        sleep_ms: Some(0),
        ..Default::default()
    };
    let pre = Preflight::run(Some(&workload), &knobs)?;
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
    settle(name).await?;

    let mut s = Scenario {
        name,
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
        other_untraced: Vec::new(),
        traced: (0..tracers.len()).map(|_| Vec::new()).collect(),
        program_stats: BTreeMap::new(),
        latency: [Histogram::new(), Histogram::new()],
        fill,
    };
    let untraced = |s: &mut Scenario, w: Window| {
        s.untraced.push(w.pages_per_s);
        s.other_untraced.push(w.other_per_s);
    };
    untraced(&mut s, window(None, b.window, other).await?);
    for _ in 0..b.repetitions {
        for (t, tracer) in tracers.iter().enumerate() {
            let w = match tracer {
                Tracer::KsmTrace(_, mode, batches) => {
                    let options = crate::probes::ProbeOptions {
                        batches: *batches,
                        ..crate::probes::ProbeOptions::new(*mode)
                    };
                    let mut probes = Probes::load_with(&caps, ksmd, options)?;
                    let mut policy = bracket::BracketPolicy::start(&mut probes, *mode)?;
                    probes.start_profile(ksmd)?;
                    // The default samples 1 s in every 20 s: a shorter window would overstate
                    // its share.
                    let length = match mode {
                        LatencyMode::Auto => b.window.max(bracket::SAMPLE_PERIOD),
                        _ => b.window,
                    };
                    let w = window(Some((&mut probes, &mut policy)), length, other).await?;
                    let timed = merge_latencies(&w.collector);
                    match mode {
                        LatencyMode::Auto => s.latency[0].add(&timed),
                        LatencyMode::Always => {
                            s.latency[1].add(&timed);
                            for (program, (ns, runs)) in probes.run_stats() {
                                let sum = s.program_stats.entry(program).or_default();
                                sum.0 += ns;
                                sum.1 += runs;
                            }
                        }
                        _ => {}
                    }
                    w
                }
                Tracer::Bpftrace(script) => {
                    let bin = bpftrace_bin.as_deref().expect("scripts only with bpftrace");
                    let running = bpftrace::Running::start(bin, script).await?;
                    let w = window(None, b.window, other).await?;
                    // A script that attached but saw nothing would make bpftrace look free.
                    if running.stop().await? == 0 {
                        bail!(
                            "bpftrace counted no ksmd batches in its window: its script is broken here"
                        );
                    }
                    w
                }
            };
            s.traced[t].push((s.untraced.len() - 1, w.pages_per_s, w.other_per_s));
            untraced(&mut s, window(None, b.window, other).await?);
        }
    }
    drop(session);
    Ok(s)
}

/// Settled: wait until pages_sharing stops moving (the benchmark is about steady-state
/// scanning). Merging: give the first merges a few seconds; it never stops moving.
async fn settle(scenario: &str) -> Result<()> {
    if scenario == "merging" {
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

struct Window {
    pages_per_s: f64,
    other_per_s: f64,
    collector: Collector,
}

/// ksmd's pages scanned per second and the other process's operations per second over
/// `length`, draining the probes' events (and running the bracket policy) if tracing.
async fn window(
    mut probes: Option<(&mut Probes, &mut bracket::BracketPolicy)>,
    length: Duration,
    other: &OtherProcess,
) -> Result<Window> {
    let mut ring = match probes.as_mut() {
        Some((p, _)) => Some(p.take_events()?),
        None => None,
    };
    let mut collector = Collector::default();
    let start = sysfs::read_i64("pages_scanned")?;
    let ops = other.ops();
    let t0 = Instant::now();
    while t0.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(ring) = ring.as_mut() {
            collector.drain(ring);
        }
        if let Some((p, policy)) = probes.as_mut() {
            let merges = collector.take_recent_merges();
            policy.update(p, merges)?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(Window {
        pages_per_s: (sysfs::read_i64("pages_scanned")? - start) as f64 / secs,
        other_per_s: other.ops().saturating_sub(ops) as f64 / secs,
        collector,
    })
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

/// (min, max) of a non-empty list.
fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

fn render(b: &OverheadBench, scenarios: &[Scenario], stats: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ksm-trace bench overhead: pages_to_scan={} sleep_millisecs=0, {} s windows ({} s for the sampled default), {} repetitions; ratio = traced ÷ mean of the untraced windows either side",
        b.pages_to_scan,
        b.window.as_secs_f64(),
        b.window.max(bracket::SAMPLE_PERIOD).as_secs_f64(),
        b.repetitions
    );
    for s in scenarios {
        let (min, max) = range(&s.untraced);
        let _ = writeln!(
            o,
            "\n{} ({}): untraced {:.0} pages scanned/s (windows {:.0}–{:.0}); other process {:.0} mmap/touch/munmap per s",
            s.name,
            s.workload,
            mean(&s.untraced),
            min,
            max,
            mean(&s.other_untraced)
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
            "  {:<58} {:>11} {:>14}",
            "tracer", "ksmd ratio", "other process"
        );
        let mut ratios = Vec::new();
        for (t, windows) in s.traced.iter().enumerate() {
            let ratio = |pick: fn(&(usize, f64, f64)) -> f64, base: &[f64]| {
                mean(
                    &windows
                        .iter()
                        .map(|w| pick(w) / ((base[w.0] + base[w.0 + 1]) / 2.0))
                        .collect::<Vec<_>>(),
                )
            };
            let ksmd = ratio(|w| w.1, &s.untraced);
            let other = ratio(|w| w.2, &s.other_untraced);
            ratios.push(ksmd);
            let _ = writeln!(o, "  {:<58} {ksmd:>11.2} {other:>14.2}", s.tracers[t].0);
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
            let _ = writeln!(
                o,
                "  ksm-trace vs bpftrace, {measures}: ksmd keeps {:.2} vs {:.2} of its untraced scan rate, ksm-trace ÷ bpftrace = {:.2}",
                ratios[k],
                ratios[b_idx],
                ratios[k] / ratios[b_idx]
            );
        }
        let [sampled, always] = &s.latency;
        if !sampled.is_empty() && !always.is_empty() {
            let (a, b) = (sampled.summary(), always.summary());
            let _ = writeln!(
                o,
                "  merge latency, sampled default vs always on the same workload: p50 {} vs {} ns, p99 {} vs {} ns ({} vs {} merges timed); sampled p50 95% CI {:?}",
                a.p50,
                b.p50,
                a.p99,
                b.p99,
                a.count,
                b.count,
                sampled.percentile_ci(50.0)
            );
        }
        if stats && !s.program_stats.is_empty() {
            let _ = writeln!(
                o,
                "  ns per run (kernel accounting, --merge-latency always windows):"
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
