//! When the mmap_lock bracket is attached. It fires on every lock ksmd takes (~1.65 per scanned
//! page, > 99.8 % of them on pages that do not merge) and each hit costs about the same
//! filtered or not, so while attached it costs ksmd about half of its scan rate; the only lever
//! is how long it is attached. `--merge-latency auto` therefore samples: time is cut into
//! periods of [`SAMPLE_PERIOD`], and in each period in which merges happened the bracket is
//! attached once, for [`SAMPLE_ON`] (2 % of the time), starting at a random moment of the
//! period. The bracket then costs ksmd about 1 % of its scan rate (`bench overhead` measures
//! it), and the merges of those windows are the latency sample.
//!
//! Why a random start: merges come in bursts (a workload rewrites its pages every second, a
//! guest's allocator frees a batch), and a window opened when merges are seen, or at a fixed
//! phase of a period that is a multiple of the burst's, would always land at the same point of
//! the burst — after it, typically, timing nothing. Why short windows, often: the sample is
//! spread over the run. The first window opens at the start (a workload's first merges come
//! right after it). `always` keeps the bracket attached (every merge timed). The windows it was
//! attached are recorded, so a report can say what share of the run and of the merges was
//! timed.
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{LatencyMode, Probes};
use crate::kernel;

/// How long each sampling window attaches the bracket.
pub const SAMPLE_ON: Duration = Duration::from_millis(200);
/// At most one sampling window in each period of this length (one per period while merges
/// happen).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);
/// The policy runs on its callers' 100 ms drain ticks: a window ends at the tick nearest
/// [`SAMPLE_ON`], not the first one after it (which would make it a tick longer).
const TICK_SLACK: Duration = Duration::from_millis(50);

pub struct BracketPolicy {
    mode: LatencyMode,
    /// When the bracket was last attached, while it is.
    armed_at: Option<Instant>,
    /// The current period began here; its window opens `offset` into it, unless `done`.
    period_start: Instant,
    offset: Duration,
    done: bool,
    /// Merges seen since the last window closed: a period without any opens no window.
    merges_seen: u64,
    /// CLOCK_MONOTONIC ns since which the bracket has been attached.
    since: Option<u64>,
    windows: Vec<(u64, u64)>,
    /// Time spent in attach and in detach calls (ns, calls): what each sampling window costs
    /// the tracer itself (the kernel patches the tracepoints' call sites each time).
    attach: (u64, u64),
    detach: (u64, u64),
}

impl BracketPolicy {
    /// Attaches the bracket when `mode` wants it and the probes can provide it: for the whole
    /// run (`always`, `both`), or the first sampling window (`auto`).
    pub fn start(probes: &mut Probes, mode: LatencyMode) -> Result<Self> {
        let mut policy = Self {
            mode,
            armed_at: None,
            period_start: Instant::now(),
            offset: Duration::ZERO,
            done: true,
            merges_seen: 0,
            since: None,
            windows: Vec::new(),
            attach: (0, 0),
            detach: (0, 0),
        };
        if mode != LatencyMode::Off && probes.bracket_usable {
            policy.arm(probes)?;
        }
        Ok(policy)
    }

    /// The recording window opened at `start_ns`: attached time before it does not count, and
    /// the first sampling window and period start now.
    pub fn window_opened(&mut self, start_ns: u64) {
        if let Some(since) = self.since.as_mut() {
            *since = start_ns;
            self.armed_at = Some(Instant::now());
            self.period_start = Instant::now();
        }
    }

    /// Called every drain with the merges seen since the previous call.
    pub fn update(&mut self, probes: &mut Probes, merges: u64) -> Result<()> {
        if self.mode != LatencyMode::Auto || !probes.bracket_usable {
            return Ok(());
        }
        let now = Instant::now();
        self.merges_seen += merges;
        if let Some(at) = self.armed_at
            && now.duration_since(at) + TICK_SLACK >= SAMPLE_ON
        {
            self.disarm(probes)?;
        }
        if now.duration_since(self.period_start) >= SAMPLE_PERIOD {
            // After a stall of several periods, the next period starts now.
            self.period_start = match self.period_start.checked_add(SAMPLE_PERIOD) {
                Some(next) if now.duration_since(next) < SAMPLE_PERIOD => next,
                _ => now,
            };
            self.offset = random_offset();
            self.done = false;
        }
        if !self.done
            && self.armed_at.is_none()
            && now.duration_since(self.period_start) + TICK_SLACK >= self.offset
        {
            self.done = true;
            if self.merges_seen > 0 {
                self.arm(probes)?;
            }
        }
        Ok(())
    }

    /// How many times the bracket was attached so far: a change means a new sampling window.
    pub fn windows_opened(&self) -> u64 {
        self.attach.1
    }

    /// Mean ns per attach and per detach call so far (None before the first).
    pub fn switch_ns(&self) -> (Option<u64>, Option<u64>) {
        let mean = |(ns, n): (u64, u64)| (n > 0).then(|| ns / n);
        (mean(self.attach), mean(self.detach))
    }

    /// The windows the bracket was attached, the last one closed at `end_ns`.
    pub fn finish(mut self, end_ns: u64) -> Vec<(u64, u64)> {
        if let Some(since) = self.since.take() {
            self.windows.push((since, end_ns));
        }
        self.windows
    }

    fn arm(&mut self, probes: &mut Probes) -> Result<()> {
        let t = Instant::now();
        probes.arm_bracket()?;
        self.attach.0 += t.elapsed().as_nanos() as u64;
        self.attach.1 += 1;
        self.armed_at = Some(Instant::now());
        self.since = Some(kernel::monotonic_ns());
        Ok(())
    }

    fn disarm(&mut self, probes: &mut Probes) -> Result<()> {
        let t = Instant::now();
        probes.disarm_bracket()?;
        self.detach.0 += t.elapsed().as_nanos() as u64;
        self.detach.1 += 1;
        self.armed_at = None;
        self.merges_seen = 0;
        if let Some(since) = self.since.take() {
            self.windows.push((since, kernel::monotonic_ns()));
        }
        Ok(())
    }
}

/// Where in a period its window opens: uniform over the moments that leave room for the
/// whole window.
fn random_offset() -> Duration {
    let room = (SAMPLE_PERIOD - SAMPLE_ON).as_millis() as u64;
    Duration::from_millis(fastrand::u64(0..=room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_leave_room_for_the_window_and_spread_over_the_period() {
        let offsets: Vec<Duration> = (0..2000).map(|_| random_offset()).collect();
        assert!(offsets.iter().all(|o| *o + SAMPLE_ON <= SAMPLE_PERIOD));
        let early = offsets.iter().filter(|o| **o < SAMPLE_PERIOD / 2).count();
        // Uniform: about half in the first half (binomial sd ≈ 22 of 2000).
        assert!((850..=1150).contains(&early), "{early} of 2000 early");
    }
}
