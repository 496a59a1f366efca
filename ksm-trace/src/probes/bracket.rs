//! When the mmap_lock bracket is attached. It fires on every lock ksmd takes (~1.65 per scanned
//! page, > 99.8 % of them on pages that do not merge) and each hit costs about the same
//! filtered or not, so while attached it costs ksmd about a third of its scan rate; the only
//! lever is how long it is attached. `--merge-latency auto` therefore samples, on a budget:
//! a window attaches the bracket for [`SAMPLE_ON`], at most one window in any
//! [`SAMPLE_PERIOD`] (1 % of the time), and a window opens when merges are happening and the
//! budget holds a whole window. The bracket then costs ksmd about 0.3 % of its scan rate
//! (`bench overhead` measures it), and the merges of those windows are the latency sample.
//!
//! Why open on merges rather than at random moments: merges come in bursts (a workload
//! rewrites its pages every second, a guest's allocator frees a batch), and the bracket costs
//! the same whether ksmd merges while it is attached or not. A window at a random moment
//! catches a 40 ms burst in each second about one time in four at 200 ms, and a run of such
//! windows can all miss: the bench's twelve once timed none. The first merge after
//! `MERGE_QUIET_NS` without one wakes the tracer at once, so a window opens a few milliseconds
//! into the burst (attaching takes 1–5 ms) and times the rest of it; merges that never pause
//! are seen at the next drain. A drain that finds only the tail of a burst that has ended
//! opens no window. What that leaves out, and the report says so: the first merges
//! of each burst, and bursts that come while the budget is spent. `always` keeps the bracket
//! attached (every merge timed). The windows it was attached are recorded, so a report can say
//! what share of the run and of the merges was timed.
use std::time::{Duration, Instant};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use ksm_trace_common::MERGE_QUIET_NS;

use super::{LatencyMode, Probes};
use crate::kernel;

/// How long each sampling window attaches the bracket.
pub const SAMPLE_ON: Duration = Duration::from_millis(100);
/// At most one sampling window in any period of this length: the budget refills one window's
/// worth in it.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(10);

/// The events ring buffer as a tracer that samples merge latency holds it: readable when merges
/// start after a quiet spell (every other event waits for the next drain).
pub type EventRing = AsyncFd<RingBuf<MapData>>;

/// Waits until the ring buffer wakes the reader: merges have started.
pub async fn merges_started(ring: &EventRing) {
    match ring.readable().await {
        Ok(mut guard) => guard.clear_ready(),
        // Not pollable: the drains alone drive the policy.
        Err(_) => std::future::pending().await,
    }
}

/// Waits until `deadline` (forever when there is none).
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The time the bracket may still be attached: a token bucket that refills [`SAMPLE_ON`] per
/// [`SAMPLE_PERIOD`] and holds at most one window, so unused time is not saved up into a
/// longer or denser run of windows later.
#[derive(Clone, Copy, Debug)]
struct Budget {
    left: Duration,
    at: Instant,
}

impl Budget {
    fn full(now: Instant) -> Self {
        Self {
            left: SAMPLE_ON,
            at: now,
        }
    }

    /// Takes a whole window if the budget holds one at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_nanos() * SAMPLE_ON.as_nanos()
            / SAMPLE_PERIOD.as_nanos();
        let earned = Duration::from_nanos(earned.min(u64::MAX as u128) as u64);
        self.left = (self.left + earned).min(SAMPLE_ON);
        self.at = now;
        if self.left < SAMPLE_ON {
            return false;
        }
        self.left = Duration::ZERO;
        true
    }
}

pub struct BracketPolicy {
    mode: LatencyMode,
    /// When the bracket was last attached, while it is.
    armed_at: Option<Instant>,
    budget: Budget,
    /// Callers that only look in every so often (`top`, `serve`) close a window at the look
    /// nearest [`SAMPLE_ON`] rather than the first one after it (which would make it longer).
    slack: Duration,
    /// CLOCK_MONOTONIC ns since which the bracket has been attached.
    since: Option<u64>,
    windows: Vec<(u64, u64)>,
    /// Time spent in attach and in detach calls (ns, calls): what each sampling window costs
    /// the tracer itself (the kernel patches the tracepoints' call sites each time).
    attach: (u64, u64),
    detach: (u64, u64),
}

impl BracketPolicy {
    /// Attaches the bracket for the whole run when `mode` wants it (`always`, `both`) and the
    /// probes can provide it; `auto` waits for merges. The caller calls [`Self::update`] when
    /// merges start (the ring buffer wakes it) and at [`Self::deadline`].
    pub fn start(probes: &mut Probes, mode: LatencyMode) -> Result<Self> {
        let mut policy = Self {
            mode,
            armed_at: None,
            budget: Budget::full(Instant::now()),
            slack: Duration::ZERO,
            since: None,
            windows: Vec::new(),
            attach: (0, 0),
            detach: (0, 0),
        };
        if matches!(mode, LatencyMode::Always | LatencyMode::Both) && probes.bracket_usable {
            policy.arm(probes)?;
        }
        Ok(policy)
    }

    /// For a caller that calls [`Self::update`] only every `every`, not at the deadline.
    pub fn polled_every(mut self, every: Duration) -> Self {
        self.slack = every / 2;
        self
    }

    /// The recording window opened at `start_ns`: attached time before it does not count.
    pub fn window_opened(&mut self, start_ns: u64) {
        if let Some(since) = self.since.as_mut() {
            *since = start_ns;
            self.armed_at = Some(Instant::now());
        }
    }

    /// When the open sampling window is due to close (None when none is open, or the bracket
    /// stays attached).
    pub fn deadline(&self) -> Option<Instant> {
        (self.mode == LatencyMode::Auto)
            .then_some(self.armed_at?)
            .map(|at| at + SAMPLE_ON)
    }

    /// Called with when the latest merge happened (CLOCK_MONOTONIC ns, 0 before any): when
    /// merges start, at each drain, and at the deadline. A window opens only while merges are
    /// still coming, not on the tail of a burst a drain finds after it ended.
    pub fn update(&mut self, probes: &mut Probes, last_merge_ns: u64) -> Result<()> {
        if self.mode != LatencyMode::Auto || !probes.bracket_usable {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(at) = self.armed_at
            && now.saturating_duration_since(at) + self.slack >= SAMPLE_ON
        {
            self.disarm(probes)?;
        }
        let recent = Duration::from_nanos(MERGE_QUIET_NS).max(self.slack);
        let merging = last_merge_ns != 0
            && kernel::monotonic_ns().saturating_sub(last_merge_ns) <= recent.as_nanos() as u64;
        if self.armed_at.is_none() && merging && self.budget.take(now) {
            self.arm(probes)?;
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
        if let Some(since) = self.since.take() {
            self.windows.push((since, kernel::monotonic_ns()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_gives_one_window_then_one_per_period() {
        let t0 = Instant::now();
        let mut budget = Budget::full(t0);
        assert!(budget.take(t0), "a whole window to start with");
        assert!(!budget.take(t0 + Duration::from_millis(1)));
        assert!(!budget.take(t0 + SAMPLE_PERIOD - Duration::from_millis(1)));
        assert!(budget.take(t0 + SAMPLE_PERIOD));
        // Asked every 100 ms for a minute: one window per period, none saved up.
        let mut budget = Budget::full(t0);
        let taken = (0..600)
            .filter(|i| budget.take(t0 + Duration::from_millis(100 * i)))
            .count();
        assert_eq!(taken, 6);
    }

    #[test]
    fn an_idle_stretch_saves_up_no_more_than_one_window() {
        let t0 = Instant::now();
        let mut budget = Budget::full(t0);
        assert!(budget.take(t0));
        let later = t0 + 100 * SAMPLE_PERIOD;
        assert!(budget.take(later));
        assert!(!budget.take(later + Duration::from_millis(100)));
    }
}
