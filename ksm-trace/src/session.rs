//! What `record` and `workload` share: the checks made before anything on the system changes,
//! and the progress line printed while a run goes on.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{
    kernel::{self, sysfs},
    knobs::{KnobGuard, KnobSettings},
    lock::{self, RecorderLock},
    workload::{Workload, WorkloadSpec},
};

/// Parses and sizes the workload, validates the knobs and takes the recorder lock; fails with
/// one line, having changed nothing.
pub fn preflight(
    workload: Option<&str>,
    knobs: &KnobSettings,
) -> Result<(Option<WorkloadSpec>, RecorderLock)> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "ksm-trace must run as root (it loads eBPF programs and sets KSM knobs): run it as root, e.g. with sudo"
        );
    }
    if !sysfs::available() {
        bail!(
            "this kernel has no KSM ({} is missing): use a kernel built with CONFIG_KSM=y",
            sysfs::KSM_DIR
        );
    }
    let spec = workload.map(WorkloadSpec::parse).transpose()?;
    if let Some(spec) = &spec {
        Workload::check_fits(spec)?;
    }
    knobs.validate()?;
    if sysfs::read_i64("run")? == 2 {
        bail!(
            "ksmd is unmerging everything (run=2): write 0 or 1 to {}/run first",
            sysfs::KSM_DIR
        );
    }
    Ok((spec, lock::acquire()?))
}

/// Saves the knobs, pauses ksmd, applies `knobs` and starts the workload (if any), waiting
/// until it is ready. ksmd stays paused: the caller runs it (`run_ksmd`) once it is ready to
/// measure. Dropping the guard puts every knob back.
pub fn prepare(
    knobs: &KnobSettings,
    spec: Option<&WorkloadSpec>,
    refresh: bool,
) -> Result<(KnobGuard, Option<Workload>)> {
    let mut guard = KnobGuard::new()?;
    guard.pause_ksmd()?;
    guard.apply(knobs)?;
    let workload = spec.map(|s| Workload::start(s, refresh)).transpose()?;
    Ok((guard, workload))
}

/// Elapsed time, memory saved and ksmd's CPU share since the previous line.
pub struct Progress {
    started: Instant,
    ksmd: u32,
    last: Option<(Instant, u64)>,
}

impl Progress {
    pub fn new(ksmd: u32) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            ksmd,
            last: kernel::cpu_time_ns(ksmd).ok().map(|cpu| (now, cpu)),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn line(&mut self, merges: Option<u64>) -> String {
        let now = Instant::now();
        let cpu = kernel::cpu_time_ns(self.ksmd).unwrap_or(0);
        let cpu_percent = match self.last {
            Some((at, before)) => {
                cpu.saturating_sub(before) as f64 * 100.0 / (now - at).as_nanos().max(1) as f64
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        let sharing = sysfs::read_i64("pages_sharing").unwrap_or(0);
        let profit = sysfs::read_i64("general_profit").unwrap_or(0);
        let merges = merges
            .map(|m| format!("  merges {m:>8}"))
            .unwrap_or_default();
        format!(
            "{:>7.1}s  pages_sharing {sharing:>9}  general_profit {:>8.1} MiB  ksmd CPU {cpu_percent:>5.1}%{merges}",
            self.started.elapsed().as_secs_f64(),
            profit as f64 / (1u64 << 20) as f64,
        )
    }
}
