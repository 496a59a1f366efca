//! One run that changes the system, shared by `record`, `bench overhead` and `workload`:
//! [`Preflight`] checks everything that can be checked without changing anything (root, KSM,
//! the spec, the knobs, the recorder lock, what the kernel allows); [`Preflight::start`] then
//! saves the knobs, pauses ksmd, applies the run's knobs and starts the workload. Dropping the
//! [`Session`] stops the workload and puts every knob back.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{
    knobs::{KnobGuard, KnobSettings, ScanPlan},
    lock::{self, RecorderLock},
    workload::{RunningWorkload, Workload},
};
use crate::{
    kernel::{self, sysfs},
    probes::Capabilities,
    recording::schema::Worker,
};

/// Every command that traces needs root (eBPF, KSM's sysfs) and a kernel with KSM.
pub fn require_root_and_ksm() -> Result<()> {
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
    Ok(())
}

/// What the running kernel allows, with the lockdown mode and the active LSMs (which say why a
/// tracing program may be refused), mounting securityfs for that read where it is not mounted.
pub fn detect_capabilities() -> Capabilities {
    let mut caps = Capabilities::detect();
    super::mounts::read_security(&mut caps);
    caps
}

/// What was checked before anything changed.
pub struct Preflight {
    pub spec: Option<Box<dyn Workload>>,
    /// What the running kernel allows (its BTF read once, here).
    pub caps: Capabilities,
    pub ksmd: u32,
    lock: RecorderLock,
}

impl Preflight {
    /// Sizes the workload, validates the knobs, detects the kernel's capabilities and takes the
    /// recorder lock; fails with one line, having changed nothing.
    pub fn run(spec: Option<Box<dyn Workload>>, knobs: &KnobSettings) -> Result<Self> {
        require_root_and_ksm()?;
        if let Some(spec) = &spec {
            spec.check_fits()?;
        }
        knobs.validate()?;
        if sysfs::read_i64("run")? == 2 {
            bail!(
                "ksmd is unmerging everything (run=2): write 0 or 1 to {}/run first",
                sysfs::KSM_DIR
            );
        }
        let lock = lock::acquire()?;
        // Holding the lock: no live ksm-trace is changing what a dead one left behind.
        for line in super::recovery::recover_stale()? {
            eprintln!("ksm-trace: {line}");
        }
        Ok(Self {
            spec,
            caps: detect_capabilities(),
            ksmd: kernel::ksmd_pid()?,
            lock,
        })
    }

    /// The scan rate for the run: the user's knobs, plus a pages_to_scan that reaches the
    /// workload ksm-trace starts when the user chose none (see [`ScanPlan`]).
    pub fn scan_plan(&self, knobs: &KnobSettings) -> Result<ScanPlan> {
        let page = kernel::page_size();
        let workload_pages = self.spec.as_ref().map_or(0, |s| s.mergeable_pages(page));
        let tracked: i64 = [
            "pages_shared",
            "pages_sharing",
            "pages_unshared",
            "pages_volatile",
        ]
        .iter()
        .map(|c| sysfs::read_i64(c).unwrap_or(0))
        .sum();
        let advisor_on = sysfs::read("advisor_mode").is_ok_and(|m| m.contains("[scan-time]"));
        Ok(ScanPlan::new(
            knobs,
            workload_pages + tracked.max(0) as u64,
            (
                sysfs::read_i64("pages_to_scan")? as u64,
                sysfs::read_i64("sleep_millisecs")? as u64,
            ),
            advisor_on,
            self.spec.is_some(),
        ))
    }

    /// Saves the knobs, pauses ksmd, applies `knobs` and starts the workload (if any), waiting
    /// until it is ready. ksmd stays paused until [`Session::run_ksmd`].
    pub fn start(self, knobs: &KnobSettings, refresh: bool) -> Result<Session> {
        let mut guard = KnobGuard::new()?;
        guard.pause_ksmd()?;
        guard.apply(knobs)?;
        let workload = self.spec.as_ref().map(|s| s.start(refresh)).transpose()?;
        // The workers die with ksm-trace (PR_SET_PDEATHSIG); listed too, in case they do not.
        for w in workload.iter().flat_map(|w| w.workers()) {
            super::recovery::process_started(w.pid);
        }
        Ok(Session {
            spec: self.spec,
            caps: self.caps,
            ksmd: self.ksmd,
            workload,
            guard,
            _lock: self.lock,
        })
    }
}

/// A run in progress: the knobs it changed, the workload it started, the lock it holds.
pub struct Session {
    pub spec: Option<Box<dyn Workload>>,
    pub caps: Capabilities,
    pub ksmd: u32,
    /// Declared before `guard` so it is dropped (workers ended) before the knobs go back.
    pub workload: Option<Box<dyn RunningWorkload>>,
    pub guard: KnobGuard,
    _lock: RecorderLock,
}

impl Session {
    /// ksmd was off when the run began: this run starts it and stops it again.
    pub fn ksmd_started_for_run(&self) -> bool {
        self.guard.original_run == 0
    }

    pub fn run_ksmd(&mut self) -> Result<()> {
        self.guard.run_ksmd()
    }

    pub fn pause_ksmd(&mut self) -> Result<()> {
        self.guard.pause_ksmd()
    }

    /// Stops the workload (workers hand over their own measurements) and returns its workers.
    pub fn stop_workload(&mut self) -> Vec<Worker> {
        match self.workload.as_mut() {
            Some(w) => {
                w.stop();
                for worker in w.workers() {
                    super::recovery::process_ended(worker.pid);
                }
                w.workers().to_vec()
            }
            None => Vec::new(),
        }
    }
}

impl Drop for Session {
    /// An error or an interrupt can end a run before `stop_workload`: the workload's own drop
    /// ends the workers, then they leave the crash-recovery state (the knob guard follows).
    fn drop(&mut self) {
        if let Some(workload) = self.workload.take() {
            let pids: Vec<u32> = workload.workers().iter().map(|w| w.pid).collect();
            drop(workload);
            for pid in pids {
                super::recovery::process_ended(pid);
            }
        }
    }
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
