//! When the mmap_lock bracket is attached. It fires on every lock ksmd takes, so while attached
//! it costs ksmd a large share of its scan rate: `--merge-latency auto` attaches it from the
//! start, detaches it after [`IDLE`] without merges and attaches it again when merges resume;
//! `always` keeps it attached. The windows it was attached are recorded, so a report can say
//! what share of the run was timed.
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{LatencyMode, Probes};
use crate::kernel;

/// How long without merges before the auto-armed bracket is detached again.
pub const IDLE: Duration = Duration::from_secs(2);

pub struct BracketPolicy {
    mode: LatencyMode,
    last_merge: Instant,
    /// CLOCK_MONOTONIC ns since which the bracket has been attached.
    since: Option<u64>,
    windows: Vec<(u64, u64)>,
}

impl BracketPolicy {
    /// Attaches the bracket when `mode` wants it and the probes can provide it.
    pub fn start(probes: &mut Probes, mode: LatencyMode) -> Result<Self> {
        let mut policy = Self {
            mode,
            last_merge: Instant::now(),
            since: None,
            windows: Vec::new(),
        };
        if mode != LatencyMode::Off && probes.bracket_usable {
            policy.arm(probes)?;
        }
        Ok(policy)
    }

    /// The recording window opened at `start_ns`: attached time before it does not count.
    pub fn window_opened(&mut self, start_ns: u64) {
        if let Some(since) = self.since.as_mut() {
            *since = start_ns;
        }
    }

    /// Called every drain with the merges seen since the previous call.
    pub fn update(&mut self, probes: &mut Probes, merges: u64) -> Result<()> {
        if self.mode != LatencyMode::Auto || !probes.bracket_usable {
            return Ok(());
        }
        if merges > 0 {
            self.last_merge = Instant::now();
            if !probes.bracket_armed() {
                self.arm(probes)?;
            }
        } else if probes.bracket_armed() && self.last_merge.elapsed() > IDLE {
            probes.disarm_bracket()?;
            if let Some(since) = self.since.take() {
                self.windows.push((since, kernel::monotonic_ns()));
            }
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
        self.since = Some(kernel::monotonic_ns());
        Ok(())
    }
}
