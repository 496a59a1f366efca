//! `ksm-trace bench merge`: the kernel selftest's merge-time measurement (`ksm_tests -P/-H`:
//! one region of identical pages, sleep_millisecs=0, time until two full scans complete,
//! MiB/s), run as a recording so the distributions the selftest cannot show come with it.
//! Unlike the selftest it does not write run=2 (which would unmerge every process on the host):
//! ksmd is paused instead while the region is prepared.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{
    knobs::KnobSettings,
    probes::LatencyMode,
    record::{self, RecordOptions},
    recording::Recording,
    report::{Report, histogram::fmt_ns},
};

pub struct MergeBench {
    pub size: u64,
    pub thp: bool,
    /// The selftest's default `-p` is 10.
    pub pages_to_scan: u32,
    pub merge_latency: LatencyMode,
    pub timeout: Duration,
    pub output: PathBuf,
}

/// The selftest waits for two full scans: merging needs a page to look the same on two.
const FULL_SCANS: u64 = 2;

pub async fn merge(b: &MergeBench, command_line: Vec<String>) -> Result<(Recording, String)> {
    let page = crate::kernel::page_size();
    if b.size < page {
        bail!("--size must be at least one page ({page} bytes)");
    }
    let opts = RecordOptions {
        duration: Some(b.timeout),
        workload: Some(format!(
            "procs:1,pages={},pattern=same,thp={}",
            b.size / page,
            if b.thp { "on" } else { "off" }
        )),
        pids: Vec::new(),
        output: b.output.clone(),
        knobs: KnobSettings {
            pages_to_scan: Some(b.pages_to_scan),
            sleep_ms: Some(0),
            ..Default::default()
        },
        merge_latency: b.merge_latency,
        progress: false,
        refresh: false,
        interval: Duration::from_millis(500),
        until_settled: false,
        until_full_scans: Some(FULL_SCANS),
    };
    let rec = record::record(&opts, command_line).await?;
    rec.write(&b.output)?;
    let summary = summarize(&rec, b)?;
    Ok((rec, summary))
}

fn summarize(rec: &Recording, b: &MergeBench) -> Result<String> {
    let Some(second) = rec.scans.full_scans.get(FULL_SCANS as usize - 1) else {
        bail!(
            "ksmd did not complete {FULL_SCANS} full scans within {:?}: raise --timeout or --pages-to-scan",
            b.timeout
        );
    };
    let secs = second.stop_ns.saturating_sub(rec.meta.start_ns) as f64 / 1e9;
    let mib = b.size as f64 / (1u64 << 20) as f64;
    let r = Report::from_recording(rec);
    let merges: u64 = r.processes.iter().map(|p| p.merges).sum();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "KSM merge time ({} pages, pages_to_scan={}, sleep_millisecs=0{})",
        b.size / rec.meta.page_size,
        b.pages_to_scan,
        if b.thp { ", THP" } else { "" }
    );
    let _ = writeln!(o, "Total size:    {mib:.0} MiB");
    let _ = writeln!(
        o,
        "Total time:    {secs:.9} s   (ksmd started → second full scan complete)"
    );
    let _ = writeln!(o, "Average speed: {:.3} MiB/s", mib / secs);
    let _ = writeln!(o, "Beyond the selftest:");
    let _ = writeln!(
        o,
        "  merges {merges}; full scans p50 {} max {}",
        fmt_ns(r.scans.full_scan_ns.p50),
        fmt_ns(r.scans.full_scan_ns.max)
    );
    let _ = writeln!(
        o,
        "  ksmd batches {} (on-CPU p50 {} p99 {}); ksmd CPU {:.1}% (schedstat)",
        r.scans.batches,
        fmt_ns(r.scans.batch_ns.p50),
        fmt_ns(r.scans.batch_ns.p99),
        r.scans.ksmd_cpu_percent_schedstat
    );
    let l = &r.merge_latency.all_ns;
    if l.count > 0 {
        let _ = writeln!(
            o,
            "  merge latency p50 {} p90 {} p99 {} max {} ({} of {merges} timed)",
            fmt_ns(l.p50),
            fmt_ns(l.p90),
            fmt_ns(l.p99),
            fmt_ns(l.max),
            l.count
        );
    }
    let _ = writeln!(
        o,
        "  recording: {} (ksm-trace report / flame / plot read it)",
        b.output.display()
    );
    Ok(o)
}

/// `ksm-trace bench overhead`: what tracing costs ksmd. A settled workload keeps ksmd scanning
/// flat out (sleep_millisecs=0); pages scanned per second is measured in alternating windows,
/// untraced and traced in each mode, and each traced window is divided by the mean of its
/// untraced neighbours, so drift in the machine's speed cancels out.
pub struct OverheadBench {
    pub workload: String,
    pub pages_to_scan: u32,
    pub window: Duration,
    pub repetitions: u32,
}

/// What a traced window attaches.
const MODES: [(&str, Option<LatencyMode>); 3] = [
    (
        "ksm:* tracepoints, sched_switch, profiler (--merge-latency off)",
        Some(LatencyMode::Off),
    ),
    (
        "as record's default (--merge-latency auto; bracket idle at steady state)",
        Some(LatencyMode::Auto),
    ),
    (
        "with the mmap_lock bracket always attached (--merge-latency always)",
        Some(LatencyMode::Always),
    ),
];

/// Measures ksmd's scan rate with and without tracing; Ctrl-C or SIGTERM ends it early with
/// an error, after everything it changed is put back (knobs, workload, probes).
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
        kernel::{self, sysfs},
        probes::{Capabilities, Probes},
        session,
    };
    let knobs = KnobSettings {
        pages_to_scan: Some(b.pages_to_scan),
        sleep_ms: Some(0),
        ..Default::default()
    };
    let (spec, _lock) = session::preflight(Some(&b.workload), &knobs)?;
    let caps = Capabilities::detect();
    caps.require_tracing()?;
    let spec = spec.expect("a spec was given");
    let ksmd = kernel::ksmd_pid()?;
    let (mut guard, workload) = session::prepare(&knobs, Some(&spec), false)?;
    let mut workload = workload.expect("a spec was given");
    guard.run_ksmd()?;

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
    let mut traced: Vec<Vec<(usize, f64)>> = vec![Vec::new(); MODES.len()];
    untraced.push(scan_rate(None, b.window).await?);
    for _ in 0..b.repetitions {
        for (m, (_, mode)) in MODES.iter().enumerate() {
            let mut probes =
                Probes::load(&caps, caps.config(ksmd), mode.unwrap_or(LatencyMode::Off))?;
            if *mode == Some(LatencyMode::Always) {
                probes.arm_bracket()?;
            }
            probes.start_profile(ksmd)?;
            let r = scan_rate(Some(&mut probes), b.window).await?;
            drop(probes);
            traced[m].push((untraced.len() - 1, r));
            untraced.push(scan_rate(None, b.window).await?);
        }
    }
    workload.stop();
    drop(guard);

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
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
        untraced.iter().cloned().fold(f64::MAX, f64::min),
        untraced.iter().cloned().fold(0.0, f64::max)
    );
    for (m, (name, _)) in MODES.iter().enumerate() {
        // Each traced window against the untraced windows just before and after it.
        let ratios: Vec<f64> = traced[m]
            .iter()
            .map(|&(i, r)| r / ((untraced[i] + untraced[i + 1]) / 2.0))
            .collect();
        let rates: Vec<f64> = traced[m].iter().map(|&(_, r)| r).collect();
        let _ = writeln!(
            o,
            "  {name}: {:.0} pages/s, ratio to untraced {:.2} (min {:.2}, max {:.2})",
            mean(&rates),
            mean(&ratios),
            ratios.iter().cloned().fold(f64::MAX, f64::min),
            ratios.iter().cloned().fold(0.0, f64::max)
        );
    }
    Ok(o)
}

/// ksmd's pages scanned per second over `window`, draining the probes' events if tracing.
async fn scan_rate(probes: Option<&mut crate::probes::Probes>, window: Duration) -> Result<f64> {
    use crate::{collect::Collector, kernel::sysfs};
    let mut ring = probes.map(|p| p.take_events()).transpose()?;
    let mut collector = Collector::default();
    let start = sysfs::read_i64("pages_scanned")?;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(ring) = ring.as_mut() {
            record::drain(ring, &mut collector);
        }
    }
    Ok((sysfs::read_i64("pages_scanned")? - start) as f64 / t0.elapsed().as_secs_f64())
}
