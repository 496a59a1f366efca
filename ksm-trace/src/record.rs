//! `ksm-trace record`: checks everything that can be checked without changing the system,
//! attaches the programs, opens the window on a paused ksmd, runs, closes the window on a paused
//! ksmd, and writes the recording. Pausing ksmd (run=0 returns only between batches) at both
//! edges makes the kernel's counters and the traced events describe exactly the same interval.
use std::{
    collections::BTreeSet,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::maps::{MapData, RingBuf};

use crate::{
    collect::Collector,
    interrupts::Interrupts,
    kernel::{self, KsmStat, sysfs},
    knobs::KnobSettings,
    probes::{Capabilities, LatencyMode, Probes},
    recording::{
        self, EventCounts, LatencyCoverage, Meta, ProcessRecord, Recording, ScanRecord,
        WorkloadRecord,
    },
    report::model::SETTLE_THRESHOLD,
    sample::{Sampler, settle_time_s},
    session::{self, Progress},
};

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub duration: Option<Duration>,
    pub workload: Option<String>,
    pub pids: Vec<u32>,
    pub output: PathBuf,
    pub knobs: KnobSettings,
    pub merge_latency: LatencyMode,
    pub progress: bool,
    /// Rebuild cached workload assets (guest kernel, initramfs).
    pub refresh: bool,
    /// Interval of the counter time series.
    pub interval: Duration,
    /// Stop when KSM has settled.
    pub until_settled: bool,
    /// Stop once this many full scans have completed in the window.
    pub until_full_scans: Option<u64>,
}

/// How long without merges before the auto-armed bracket is detached again.
const BRACKET_IDLE: Duration = Duration::from_secs(2);
const DRAIN_EVERY: Duration = Duration::from_millis(100);

pub async fn record(opts: &RecordOptions, command_line: Vec<String>) -> Result<Recording> {
    // Signals first, so a Ctrl-C or SIGTERM during set-up still takes the orderly path.
    let mut interrupts = Interrupts::install()?;

    // Checks that change nothing.
    let (spec, _lock) = session::preflight(opts.workload.as_deref(), &opts.knobs)?;
    let caps = Capabilities::detect();
    caps.require_tracing()?;
    for pid in &opts.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}: give the pid of a running process");
        }
    }
    recording::check_writable(&opts.output)?;
    let ksmd = kernel::ksmd_pid()?;

    let mut probes = Probes::load(&caps, caps.config(ksmd), opts.merge_latency)?;
    let mut ring = probes.take_events()?;
    let mut collector = Collector::default();
    let mut bracket_windows = Vec::new();
    let mut bracket_since = None;
    if opts.merge_latency != LatencyMode::Off && probes.bracket_usable {
        probes.arm_bracket()?;
        bracket_since = Some(kernel::monotonic_ns());
    }

    // Open the window on a paused ksmd.
    let (mut knobs, mut workload) = session::prepare(&opts.knobs, spec.as_ref(), opts.refresh)?;
    let ksmd_started_for_run = knobs.original_run == 0;
    let mut pids: BTreeSet<u32> = opts.pids.iter().copied().collect();
    if let Some(w) = &workload {
        pids.extend(w.workers().iter().map(|w| w.pid));
    }
    let (mut sampler, first) = Sampler::start(opts.interval, ksmd, &pids)?;
    let start_ns = sampler.window_start_ns();
    let counters_start = first.counters.clone();
    let stat_start = first.processes.clone();
    let mut timeseries = vec![first];
    collector.open_window(start_ns);
    drain(&mut ring, &mut collector);
    if let Some(since) = bracket_since.as_mut() {
        *since = start_ns;
    }
    if let Err(e) = probes.start_profile(ksmd) {
        probes
            .mechanisms
            .fallbacks
            .push(format!("no ksmd profile (flame graphs): {e:#}"));
    }
    knobs.run_ksmd()?;
    if ksmd_started_for_run && opts.progress {
        eprintln!(
            "ksm-trace: ksmd was off (run=0): started it for this run; it is stopped again afterwards"
        );
    }
    let knob_values = sysfs::knob_values();

    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    let mut last_merge = Instant::now();
    let mut last_progress = Instant::now();
    let progress = opts.progress && std::io::stderr().is_terminal();
    let mut progress_line = Progress::new(ksmd);
    let ended_by = loop {
        tokio::select! {
            _ = tick.tick() => {
                drain(&mut ring, &mut collector);
                if sampler.due() {
                    pids.extend(collector.merges.by_pid.keys().copied().filter(|&p| p != 0));
                    timeseries.push(sampler.take(&pids, collector.merged_total())?);
                    if opts.until_settled && settle_time_s(&timeseries, SETTLE_THRESHOLD).is_some() {
                        break "settled";
                    }
                }
                if opts.merge_latency == LatencyMode::Auto && probes.bracket_usable {
                    if collector.take_recent_merges() > 0 {
                        last_merge = Instant::now();
                        if !probes.bracket_armed() {
                            probes.arm_bracket()?;
                            bracket_since = Some(kernel::monotonic_ns());
                        }
                    } else if probes.bracket_armed() && last_merge.elapsed() > BRACKET_IDLE {
                        probes.disarm_bracket()?;
                        if let Some(since) = bracket_since.take() {
                            bracket_windows.push((since, kernel::monotonic_ns()));
                        }
                    }
                }
                if progress && last_progress.elapsed() >= Duration::from_secs(1) {
                    last_progress = Instant::now();
                    let merges = collector.merged_total();
                    eprint!("\r{}   ", progress_line.line(Some(merges)));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break "duration";
                }
                if opts.until_full_scans.is_some_and(|n| {
                    collector.scans.scans_in_window(counters_start.ksm("full_scans") as u64, u64::MAX).len() as u64 >= n
                }) {
                    break "full-scans";
                }
                if workload.as_mut().is_some_and(|w| w.finished()) {
                    break "workload-finished";
                }
            }
            why = interrupts.recv() => break why,
        }
    };
    if progress {
        eprintln!();
    }

    // Close the window on a paused ksmd.
    knobs.pause_ksmd()?;
    if let Some(w) = &workload {
        w.freeze();
    }
    let end_ns = kernel::monotonic_ns();
    collector.close_window(end_ns);
    drain(&mut ring, &mut collector);
    let end_sample = sampler.take(&pids, collector.merged_total())?;
    let counters_end = end_sample.counters.clone();
    timeseries.push(end_sample);
    collector.merges.finish();
    if let Some(since) = bracket_since.take() {
        bracket_windows.push((since, end_ns));
    }
    let lost = probes.lost_events()?;
    let profile = probes.profile().unwrap_or_else(|e| {
        probes
            .mechanisms
            .fallbacks
            .push(format!("ksmd profile unreadable: {e:#}"));
        Default::default()
    });
    let mechanisms = probes.mechanisms.clone();
    drop(ring);
    drop(probes);
    // pid 0: activity whose mm had no owner any more (pages of exited processes being pruned).
    pids.extend(collector.merges.by_pid.keys().copied());
    if !opts.pids.is_empty() {
        pids.retain(|p| opts.pids.contains(p));
    }
    let processes = pids
        .iter()
        .map(|&pid| ProcessRecord {
            pid,
            stats: collector
                .merges
                .by_pid
                .get(&pid)
                .cloned()
                .unwrap_or_default(),
            ksm_stat_start: stat_start.get(&pid).copied(),
            ksm_stat_end: (pid != 0).then(|| KsmStat::read(pid).ok()).flatten(),
        })
        .map(|mut p| {
            if p.pid == 0 {
                p.stats.comm = "(exited)".into();
            } else if p.stats.comm.is_empty() {
                p.stats.comm = process_comm(p.pid);
            }
            p
        })
        .collect();
    if let Some(w) = &workload {
        w.thaw();
    }
    // Stopping first: procs workers hand over their write-fault histograms when stopped.
    if let Some(w) = workload.as_mut() {
        w.stop();
    }
    let workers = workload
        .as_ref()
        .map(|w| w.workers().to_vec())
        .unwrap_or_default();
    drop(workload);
    drop(knobs);

    let first_scan = counters_start.ksm("full_scans") as u64;
    let last_scan = counters_end.ksm("full_scans") as u64;
    let scans = &collector.scans;
    Ok(Recording {
        format: recording::FORMAT.into(),
        version: recording::VERSION,
        meta: Meta {
            tool_version: env!("CARGO_PKG_VERSION").into(),
            command_line,
            kernel_release: caps.kernel_release.clone(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .saturating_sub(started.elapsed().as_secs()),
            start_ns,
            end_ns,
            page_size: kernel::page_size(),
            ksmd_pid: ksmd,
            ended_by: ended_by.into(),
            ksmd_started_for_run,
            knobs: knob_values,
            workload: spec.map(|spec| WorkloadRecord {
                spec_text: opts.workload.clone().unwrap_or_default(),
                spec,
                workers,
            }),
            pid_filter: opts.pids.clone(),
            capabilities: caps,
        },
        mechanisms,
        processes,
        scans: ScanRecord {
            full_scans: scans.scans_in_window(first_scan, last_scan),
            batch_on_cpu_ns: scans.batch_on_cpu_ns.clone(),
            batch_wall_ns: scans.batch_wall_ns.clone(),
            ksmd_on_cpu_ns: scans.ksmd_on_cpu_ns,
            advisor: scans.advisor.clone(),
        },
        counters_start,
        counters_end,
        events: EventCounts {
            received: collector
                .received
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            lost,
            unpaired: collector.merges.unpaired,
            unattributed_unmerges: collector.merges.unattributed_unmerges,
        },
        profile,
        timeseries,
        latency: LatencyCoverage {
            mode: opts.merge_latency,
            bracket_windows,
        },
    })
}

pub fn drain(ring: &mut RingBuf<MapData>, collector: &mut Collector) {
    while let Some(item) = ring.next() {
        if let Some(event) = Collector::decode(&item) {
            collector.handle(&event);
        }
    }
}

fn process_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
