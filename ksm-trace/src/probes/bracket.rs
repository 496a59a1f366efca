//! When the mmap_lock bracket is attached. It fires on every lock ksmd takes (~1.65 per scanned
//! page, > 99.8 % of them on pages that do not merge) and each hit costs about the same
//! filtered or not, so while attached it costs ksmd roughly a third of its scan rate; the only
//! lever is how long it is attached. `--merge-latency auto` therefore samples: while merges
//! happen it attaches the bracket for [`SAMPLE_ON`] out of every [`SAMPLE_PERIOD`] (5 %), so
//! ksmd keeps ~98 % of its scan rate, and the merges of those windows are the latency sample;
//! without merges it stays detached. `always` keeps it attached (every merge timed). The
//! windows it was attached are recorded, so a report can say what share of the run and of the
//! merges was timed.
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{LatencyMode, Probes};
use crate::kernel;

/// How long each sampling window attaches the bracket.
pub const SAMPLE_ON: Duration = Duration::from_secs(1);
/// One sampling window starts at most this often (while merges happen).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(20);

pub struct BracketPolicy {
    mode: LatencyMode,
    /// When the current or last sampling window began.
    last_armed: Option<Instant>,
    /// CLOCK_MONOTONIC ns since which the bracket has been attached.
    since: Option<u64>,
    windows: Vec<(u64, u64)>,
}

impl BracketPolicy {
    /// Attaches the bracket when `mode` wants it and the probes can provide it: for the whole
    /// run (`always`, `both`), or the first sampling window (`auto`: a workload's first merges
    /// come right after start).
    pub fn start(probes: &mut Probes, mode: LatencyMode) -> Result<Self> {
        let mut policy = Self {
            mode,
            last_armed: None,
            since: None,
            windows: Vec::new(),
        };
        if mode != LatencyMode::Off && probes.bracket_usable {
            policy.arm(probes)?;
        }
        Ok(policy)
    }

    /// The recording window opened at `start_ns`: attached time before it does not count, and
    /// the first sampling window starts now.
    pub fn window_opened(&mut self, start_ns: u64) {
        if let Some(since) = self.since.as_mut() {
            *since = start_ns;
            self.last_armed = Some(Instant::now());
        }
    }

    /// Called every drain with the merges seen since the previous call.
    pub fn update(&mut self, probes: &mut Probes, merges: u64) -> Result<()> {
        if self.mode != LatencyMode::Auto || !probes.bracket_usable {
            return Ok(());
        }
        let now = Instant::now();
        match (probes.bracket_armed(), self.last_armed) {
            (true, Some(at)) if now.duration_since(at) >= SAMPLE_ON => self.disarm(probes)?,
            (false, last)
                if merges > 0 && last.is_none_or(|at| now.duration_since(at) >= SAMPLE_PERIOD) =>
            {
                self.arm(probes)?
            }
            _ => {}
        }
        Ok(())
    }

    /// The windows the bracket was attached, the last one closed at `end_ns`.
    pub fn finish(mut self, end_ns: u64) -> Vec<(u64, u64)> {
        if let Some(since) = self.since.take() {
            self.windows.push((since, end_ns));
        }
        self.windows
    }

    fn arm(&mut self, probes: &mut Probes) -> Result<()> {
        probes.arm_bracket()?;
        self.last_armed = Some(Instant::now());
        self.since = Some(kernel::monotonic_ns());
        Ok(())
    }

    fn disarm(&mut self, probes: &mut Probes) -> Result<()> {
        probes.disarm_bracket()?;
        if let Some(since) = self.since.take() {
            self.windows.push((since, kernel::monotonic_ns()));
        }
        Ok(())
    }
}
