//! `ksm-trace bench overhead`: what tracing costs ksmd. A settled workload keeps ksmd scanning
//! flat out (sleep_millisecs=0); pages scanned per second is measured in alternating windows,
//! untraced and traced in each mode — ksm-trace's, and the same measurements hand-written for
//! bpftrace when it is installed — and each traced window is divided by the mean of its
//! untraced neighbours, so drift in the machine's speed cancels out.
use std::{fmt::Write as _, time::Duration};

use anyhow::{Result, bail};

use super::bpftrace;
use crate::{collect::Collector, knobs::KnobSettings, probes::LatencyMode};

pub struct OverheadBench {
    pub workload: String,
    pub pages_to_scan: u32,
    pub window: Duration,
    pub repetitions: u32,
}

/// What a traced window attaches.
enum Tracer {
    KsmTrace(&'static str, LatencyMode),
    Bpftrace(bpftrace::Script),
}

impl Tracer {
    fn name(&self) -> &str {
        match self {
            Self::KsmTrace(name, _) => name,
            Self::Bpftrace(s) => s.name,
        }
    }
}

const KSM_TRACE_MODES: [(&str, LatencyMode); 3] = [
    (
        "ksm:* tracepoints, sched_switch, profiler (--merge-latency off)",
        LatencyMode::Off,
    ),
    (
        "as record's default (--merge-latency auto; bracket idle at steady state)",
        LatencyMode::Auto,
    ),
    (
        "with the mmap_lock bracket always attached (--merge-latency always)",
        LatencyMode::Always,
    ),
];

/// Measures ksmd's scan rate with and without tracing; Ctrl-C or SIGTERM ends it early with
/// an error, after everything it changed is put back (knobs, workload, probes, bpftrace,
/// tracefs).
pub async fn overhead(b: &OverheadBench) -> Result<String> {
    let mut interrupts = crate::interrupts::Interrupts::install()?;
    tokio::select! {
        result = measure_overhead(b) => result,
        why = interrupts.recv() => {
            anyhow::bail!("bench overhead stopped ({why}) before it had all its windows: no figures; knobs restored")
        }
    }
}

async fn measure_overhead(b: &OverheadBench) -> Result<String> {
    use crate::{
        kernel::{sysfs, tracefs::TracefsMount},
        probes::Probes,
        session::Preflight,
    };
    let knobs = KnobSettings {
        pages_to_scan: Some(b.pages_to_scan),
        sleep_ms: Some(0),
        ..Default::default()
    };
    let pre = Preflight::run(Some(&b.workload), &knobs)?;
    pre.caps.require_tracing()?;
    let ksmd = pre.ksmd;
    let mut tracers: Vec<Tracer> = KSM_TRACE_MODES
        .iter()
        .map(|&(name, mode)| Tracer::KsmTrace(name, mode))
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
    session.run_ksmd()?;
    let caps = session.caps.clone();

    // Let KSM settle first: the benchmark is about steady-state scanning.
    let settle_deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = -1;
    while std::time::Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sharing = sysfs::read_i64("pages_sharing")?;
        if sharing > 0 && sharing == last {
            break;
        }
        last = sharing;
    }

    let mut untraced: Vec<f64> = Vec::new();
    let mut traced: Vec<Vec<(usize, f64)>> = (0..tracers.len()).map(|_| Vec::new()).collect();
    untraced.push(scan_rate(None, b.window).await?);
    for _ in 0..b.repetitions {
        for (t, tracer) in tracers.iter().enumerate() {
            let r = match tracer {
                Tracer::KsmTrace(_, mode) => {
                    let mut probes = Probes::load(&caps, caps.config(ksmd), *mode)?;
                    if *mode == LatencyMode::Always {
                        probes.arm_bracket()?;
                    }
                    probes.start_profile(ksmd)?;
                    scan_rate(Some(&mut probes), b.window).await?
                }
                Tracer::Bpftrace(script) => {
                    let bin = bpftrace_bin.as_deref().expect("scripts only with bpftrace");
                    let running = bpftrace::Running::start(bin, script).await?;
                    let r = scan_rate(None, b.window).await?;
                    // A script that attached but saw nothing would make bpftrace look free.
                    if running.stop().await? == 0 {
                        bail!(
                            "bpftrace counted no ksmd batches in its window: its script is broken here"
                        );
                    }
                    r
                }
            };
            traced[t].push((untraced.len() - 1, r));
            untraced.push(scan_rate(None, b.window).await?);
        }
    }
    drop(session);

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ksmd overhead: {} with pages_to_scan={} sleep_millisecs=0, {} s windows, {} repetitions",
        b.workload,
        b.pages_to_scan,
        b.window.as_secs_f64(),
        b.repetitions
    );
    let _ = writeln!(
        o,
        "  untraced: {:.0} pages scanned/s (windows {:.0}–{:.0})",
        mean(&untraced),
        min(&untraced),
        max(&untraced)
    );
    // Each traced window against the untraced windows just before and after it.
    let ratios: Vec<Vec<f64>> = traced
        .iter()
        .map(|windows| {
            windows
                .iter()
                .map(|&(i, r)| r / ((untraced[i] + untraced[i + 1]) / 2.0))
                .collect()
        })
        .collect();
    for (t, tracer) in tracers.iter().enumerate() {
        let rates: Vec<f64> = traced[t].iter().map(|&(_, r)| r).collect();
        let _ = writeln!(
            o,
            "  {}: {:.0} pages/s, ratio to untraced {:.2} (min {:.2}, max {:.2})",
            tracer.name(),
            mean(&rates),
            mean(&ratios[t]),
            min(&ratios[t]),
            max(&ratios[t])
        );
    }
    if bpftrace_bin.is_none() {
        let _ = writeln!(
            o,
            "  bpftrace: not installed, no comparison (`cargo xtask bench` installs it)"
        );
    } else {
        // Each bpftrace script against the ksm-trace mode measuring the same things.
        for (b, tracer) in tracers.iter().enumerate() {
            let Tracer::Bpftrace(script) = tracer else {
                continue;
            };
            let Some(k) = tracers
                .iter()
                .position(|t| matches!(t, Tracer::KsmTrace(_, mode) if *mode == script.same_as))
            else {
                continue;
            };
            let what = script.measures;
            let _ = writeln!(
                o,
                "  ksm-trace vs bpftrace, {what}: ksmd keeps {:.2} vs {:.2} of its untraced scan rate, ksm-trace ÷ bpftrace = {:.2}",
                mean(&ratios[k]),
                mean(&ratios[b]),
                mean(&ratios[k]) / mean(&ratios[b])
            );
        }
    }
    Ok(o)
}

/// ksmd's pages scanned per second over `window`, draining the probes' events if tracing.
async fn scan_rate(probes: Option<&mut crate::probes::Probes>, window: Duration) -> Result<f64> {
    use crate::kernel::sysfs;
    let mut ring = probes.map(|p| p.take_events()).transpose()?;
    let mut collector = Collector::default();
    let start = sysfs::read_i64("pages_scanned")?;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(ring) = ring.as_mut() {
            collector.drain(ring);
        }
    }
    Ok((sysfs::read_i64("pages_scanned")? - start) as f64 / t0.elapsed().as_secs_f64())
}
