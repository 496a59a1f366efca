//! The recorder, shared by `record`, `sweep` and `bench merge|unmerge`: checks everything that
//! can be checked without changing the system, attaches the programs, opens the window on a
//! paused ksmd, runs, closes the window on a paused ksmd, and assembles the recording. Pausing ksmd (run=0 returns only between batches) at both
//! edges makes the kernel's counters and the traced events describe exactly the same interval.
mod assemble;
mod window;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};

use crate::{
    probes::{ProbeOptions, Probes, bracket::BracketPolicy},
    recording::{self, Recording},
    run::{interrupts::Interrupts, knobs::KnobSettings, session::Preflight},
    workload,
};

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub duration: Option<Duration>,
    pub workload: Option<String>,
    pub pids: Vec<u32>,
    pub output: PathBuf,
    pub knobs: KnobSettings,
    pub progress: bool,
    /// Rebuild cached workload assets (guest kernel, initramfs).
    pub refresh: bool,
    /// Interval of the counter time series.
    pub interval: Duration,
    /// Stop when KSM has settled (then `duration` is the timeout).
    pub until_settled: bool,
    /// With `until_settled`: full scans to wait after settling, to see that it holds.
    pub settle_margin: u64,
    /// Pick a scan rate that reaches the workload when the user chose none ([`ScanPlan`]).
    ///
    /// [`ScanPlan`]: crate::run::knobs::ScanPlan
    pub auto_scan: bool,
    /// Stop once this many full scans have completed in the window.
    pub until_full_scans: Option<u64>,
    /// Which probes, how to time merges, the ring buffer's size.
    pub probes: ProbeOptions,
    /// Keep ksmd stopped for the whole window: the workload without KSM, the baseline a
    /// sweep compares its configurations with.
    pub ksm_off: bool,
}

/// How long a workload run with no end given may take to settle.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Full scans a workload run with no end given waits after settling.
pub const DEFAULT_SETTLE_MARGIN: u64 = 2;

pub async fn record(opts: &RecordOptions, command_line: Vec<String>) -> Result<Recording> {
    // Signals first, so a Ctrl-C or SIGTERM during set-up still takes the orderly path.
    let mut interrupts = Interrupts::install()?;
    let spec = opts.workload.as_deref().map(workload::parse).transpose()?;
    let pre = Preflight::run(spec, &opts.knobs)?;
    pre.caps.require_tracing()?;
    opts.probes.backend.check(&pre.caps)?;
    for pid in &opts.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}: give the pid of a running process");
        }
    }
    recording::check_writable(&opts.output)?;
    let knobs = if opts.auto_scan {
        let plan = pre.scan_plan(&opts.knobs)?;
        if let Some(line) = plan.message.as_ref().filter(|_| opts.progress) {
            eprintln!("ksm-trace: {line}");
        }
        plan.settings
    } else {
        opts.knobs.clone()
    };
    let mut probes = Probes::load_with(&pre.caps, pre.ksmd, opts.probes)?;
    let ring = probes.take_event_ring()?;
    let bracket = BracketPolicy::start(&mut probes, opts.probes.latency)?;

    let session = pre.start(&knobs, opts.refresh)?;
    let mut window = window::Window::open(opts, session, probes, ring, bracket)?;
    let ended_by = window.run(opts, &mut interrupts).await?;
    let closed = window.close(&opts.pids)?;
    Ok(closed.into_recording(opts, command_line, ended_by))
}
