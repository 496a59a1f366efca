//! When the mmap_lock bracket is attached. It fires on every lock ksmd takes (~1.65 per scanned
//! page, > 99.8 % of them on pages that do not merge) and each hit costs about the same
//! filtered or not, so while attached it costs ksmd about a third of its scan rate; the only
//! lever is how long it is attached. `--merge-latency auto` therefore samples, on a budget:
//! a window attaches the bracket for [`SAMPLE_ON`]; the budget earns one window per
//! [`SAMPLE_PERIOD`] (1 % of the time) and can save up a few while nothing merges; a window
//! opens when merges are happening and the budget holds one (see [`Budget`]). While merges
//! keep coming the bracket then costs ksmd about 0.3 % of its scan rate (`bench overhead`
//! measures it), and the merges of those windows are the latency sample.
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
//! of each burst (how far into a burst windows came is kept, [`BracketPolicy::burst_head_ns`],
//! and the collector counts the merges that came that early), and bursts that come while the
//! budget is spent. `always` keeps the bracket
//! attached (every merge timed). The windows it was attached are recorded, so a report can say
//! what share of the run and of the merges was timed.
use std::time::{Duration, Instant};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use ksm_trace_common::MERGE_QUIET_NS;

use super::{LatencyMode, Probes};
use crate::{collect::MergeClock, histogram::Histogram, kernel};

/// How long each sampling window attaches the bracket.
pub const SAMPLE_ON: Duration = Duration::from_millis(50);
/// The budget earns one window in each period of this length (1 % of the time).
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(5);
/// Windows the budget can save up while no merges happen, to spend on a long burst when it
/// comes (a guest's first merges run for seconds).
const BANK: u32 = 5;
/// Saved-up windows are spread over a burst, not spent back to back.
const MIN_GAP: Duration = Duration::from_secs(1);
/// Windows for a process whose merges still lack timed ones (see
/// [`crate::collect::merges::COVERAGE_MERGES`]) come on top of the sample, at most one per this
/// long: they open when such a process merges (its merge wakes the tracer), and stop once every
/// merging process has its timed merges or has had its windows (`COVERAGE_WINDOWS` each), so
/// what they cost is bounded per process.
const COVERAGE_GAP: Duration = Duration::from_millis(200);

/// The events ring buffer as a tracer that samples merge latency holds it: readable when merges
/// start after a quiet spell (every other event waits for the next drain).
pub type EventRing = AsyncFd<RingBuf<MapData>>;

/// Waits until the policy needs an [`BracketPolicy::update`] that no drain on the caller's
/// timer would bring in time: merges started (`ring` woke the reader), or `deadline` (a
/// window's close, a random window's opening) came.
pub async fn wake(ring: Option<&EventRing>, deadline: Option<Instant>) {
    let merges_started = async {
        match ring.map(|ring| ring.readable()) {
            Some(readable) => match readable.await {
                Ok(mut guard) => guard.clear_ready(),
                // Not pollable: the drains and the deadline alone drive the policy.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    let until = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = merges_started => {}
        () = until => {}
    }
}

/// The time the bracket may still be attached: a token bucket that earns [`SAMPLE_ON`] per
/// [`SAMPLE_PERIOD`], starts with one window and holds at most [`BANK`], and opens windows at
/// least [`MIN_GAP`] apart. While merges keep coming it spends what it earns (1 % of the
/// time); after a quiet spell a burst gets up to [`BANK`] windows spread over it.
#[derive(Clone, Copy, Debug)]
struct Budget {
    left: Duration,
    at: Instant,
    last_window: Option<Instant>,
}

impl Budget {
    fn new(now: Instant) -> Self {
        Self {
            left: SAMPLE_ON,
            at: now,
            last_window: None,
        }
    }

    /// When the budget will hold a whole window and the gap since the last one has passed.
    fn ready_at(&self) -> Instant {
        let missing = SAMPLE_ON.saturating_sub(self.left);
        let earned_by = self.at
            + Duration::from_nanos(
                (missing.as_nanos() * SAMPLE_PERIOD.as_nanos() / SAMPLE_ON.as_nanos()) as u64,
            );
        match self.last_window {
            Some(last) => earned_by.max(last + MIN_GAP),
            None => earned_by,
        }
    }

    /// Takes a whole window if the budget holds one at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_nanos() * SAMPLE_ON.as_nanos()
            / SAMPLE_PERIOD.as_nanos();
        let earned = Duration::from_nanos(earned.min(u64::MAX as u128) as u64);
        self.left = (self.left + earned).min(SAMPLE_ON * BANK);
        self.at = now;
        let spaced = self
            .last_window
            .is_none_or(|last| now.saturating_duration_since(last) >= MIN_GAP);
        if self.left < SAMPLE_ON || !spaced {
            return false;
        }
        self.left -= SAMPLE_ON;
        self.last_window = Some(now);
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
    /// The last window saw no merge (the burst was over before the bracket was attached):
    /// the next one opens at this random moment instead of when merges start.
    random_at: Option<Instant>,
    windows: Vec<(u64, u64)>,
    /// For each window that opened on a burst's first merges: how long after the burst's first
    /// merge it was attached (ns). The merges before it are not in the sample.
    head_lags_ns: Histogram,
    /// Time spent in attach and in detach calls (ns, calls): what each sampling window costs
    /// the tracer itself (the kernel patches the tracepoints' call sites each time).
    attach: (u64, u64),
    detach: (u64, u64),
    /// When the last window opened for coverage did, and whether the latest window was one.
    last_coverage: Option<Instant>,
    coverage_now: bool,
    coverage_windows: u64,
}

impl BracketPolicy {
    /// Attaches the bracket for the whole run when `mode` wants it (`always`, `both`) and the
    /// probes can provide it; `auto` waits for merges. The caller calls [`Self::update`] when
    /// merges start (the ring buffer wakes it) and at [`Self::deadline`].
    pub fn start(probes: &mut Probes, mode: LatencyMode) -> Result<Self> {
        let mut policy = Self {
            mode,
            armed_at: None,
            budget: Budget::new(Instant::now()),
            slack: Duration::ZERO,
            since: None,
            random_at: None,
            windows: Vec::new(),
            head_lags_ns: Histogram::new(),
            attach: (0, 0),
            detach: (0, 0),
            last_coverage: None,
            coverage_now: false,
            coverage_windows: 0,
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

    /// When the policy next needs an [`Self::update`] that no merge will bring: the open
    /// window's close, or a random window's opening (None: none due).
    pub fn deadline(&self) -> Option<Instant> {
        if self.mode != LatencyMode::Auto {
            return None;
        }
        match self.armed_at {
            Some(at) => Some(at + SAMPLE_ON),
            None => self.random_at,
        }
    }

    /// Called with when merges happened: when merges start, at each drain, and at the
    /// deadline. A window opens while merges are
    /// still coming, not on the tail of a burst a drain finds after it ended. A window that
    /// saw no merge came too late for bursts shorter than the time it takes to attach (a
    /// workload whose merges fit in one ksmd batch of a few ms): the next window opens at a
    /// random moment of the next period instead, as likely to land on such a burst as the
    /// burst is long, until a window sees merges again.
    pub fn update(&mut self, probes: &mut Probes, merges: MergeClock) -> Result<()> {
        let last_merge_ns = merges.last_ns;
        if self.mode != LatencyMode::Auto || !probes.bracket_usable {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(at) = self.armed_at
            && now.saturating_duration_since(at) + self.slack >= SAMPLE_ON
        {
            let saw_merges = self.since.is_some_and(|since| last_merge_ns >= since);
            self.disarm(probes)?;
            // Random from when the next window is earned, so it does not keep a fixed phase
            // to the last one (a workload's bursts are often periodic).
            self.random_at = (!saw_merges).then(|| self.budget.ready_at() + random_offset());
        }
        if self.armed_at.is_some() {
            return Ok(());
        }
        let recent = Duration::from_nanos(MERGE_QUIET_NS).max(self.slack);
        let merging = last_merge_ns != 0
            && kernel::monotonic_ns().saturating_sub(last_merge_ns) <= recent.as_nanos() as u64;
        // A process whose merges still lack timed ones is merging: a window of its own.
        if merging
            && merges.last_uncovered
            && self
                .last_coverage
                .is_none_or(|last| now.saturating_duration_since(last) >= COVERAGE_GAP)
        {
            self.last_coverage = Some(now);
            self.coverage_now = true;
            self.coverage_windows += 1;
            return self.arm(probes);
        }
        let due = match self.random_at {
            Some(at) => now + self.slack >= at,
            None => merging,
        };
        if !due {
            return Ok(());
        }
        if self.budget.take(now) {
            let on_merges = self.random_at.take().is_none();
            self.coverage_now = false;
            self.arm(probes)?;
            let first_in_burst = self
                .windows
                .last()
                .is_none_or(|&(_, closed)| merges.burst_start_ns > closed);
            if on_merges
                && first_in_burst
                && let Some(since) = self.since
            {
                self.head_lags_ns
                    .record(since.saturating_sub(merges.burst_start_ns));
            }
        } else if self.random_at.is_some() {
            // Due but not yet earned (windows saved up were spent meanwhile): draw again.
            self.random_at = Some(self.budget.ready_at().max(now) + random_offset());
        }
        Ok(())
    }

    /// Whether the window opened last was one for a process's coverage.
    pub fn coverage_now(&self) -> bool {
        self.coverage_now
    }

    /// Windows opened for coverage so far.
    pub fn coverage_windows(&self) -> u64 {
        self.coverage_windows
    }

    /// The windows closed so far and, while one is open, since when the bracket is attached
    /// (CLOCK_MONOTONIC ns).
    pub fn windows(&self) -> (&[(u64, u64)], Option<u64>) {
        (&self.windows, self.since)
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

    /// How far into a burst the windows that opened on its first merges typically came (the
    /// median, ns; None when none did): merges that came that early in their burst are left
    /// out of the sample.
    pub fn burst_head_ns(&self) -> Option<u64> {
        (!self.head_lags_ns.is_empty()).then(|| self.head_lags_ns.percentile(50.0))
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

/// How far into the next period a random window opens: uniform over it.
fn random_offset() -> Duration {
    Duration::from_nanos(fastrand::u64(0..SAMPLE_PERIOD.as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks every 100 ms from `from` for `secs` seconds; the moments windows were given.
    fn asked(budget: &mut Budget, from: Instant, secs: u64) -> Vec<Duration> {
        (0..secs * 10)
            .map(|i| from + Duration::from_millis(100 * i))
            .filter(|&t| budget.take(t))
            .map(|t| t - from)
            .collect()
    }

    #[test]
    fn merging_all_the_time_gets_one_window_per_period() {
        let t0 = Instant::now();
        let mut budget = Budget::new(t0);
        let given = asked(&mut budget, t0, 60);
        let periods: Vec<Duration> = (0..12).map(|i| SAMPLE_PERIOD * i).collect();
        assert_eq!(
            given, periods,
            "one at the start, then one each time one is earned"
        );
    }

    #[test]
    fn a_quiet_spell_saves_up_windows_for_the_next_burst_spread_apart() {
        let t0 = Instant::now();
        let mut budget = Budget::new(t0);
        assert!(budget.take(t0));
        // Idle long enough to earn far more than the bank holds.
        let burst = t0 + SAMPLE_PERIOD * 100;
        let given = asked(&mut budget, burst, (MIN_GAP * BANK).as_secs());
        let expect: Vec<Duration> = (0..BANK).map(|i| MIN_GAP * i).collect();
        assert_eq!(given, expect, "the whole bank, a gap apart");
        assert_eq!(budget.ready_at(), burst + SAMPLE_PERIOD);
        // Spent: the next one only once earned, a period after the burst began.
        assert!(!budget.take(burst + SAMPLE_PERIOD - Duration::from_millis(1)));
        assert!(budget.take(burst + SAMPLE_PERIOD));
    }
}
