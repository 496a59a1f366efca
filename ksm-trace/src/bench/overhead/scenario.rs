//! One scenario: the workload started and settled, then the windows — long ones alternating
//! untraced and traced by each mode and bpftrace script, short pairs for the default's two
//! states, and windows of the kernel's own accounting.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Duty, FAST_PROFILE_HZ, Figures, KSM_TRACE_MODES, OverheadBench, Scenario, ShortState,
    TEARDOWN_GAP, Tracer, bpftrace,
    stats::against_neighbours,
    window::{OtherProcess, Window, merge_latencies, window},
};
use crate::{
    histogram::Histogram,
    kernel::sysfs,
    probes::{Capabilities, LatencyMode, ProbeOptions, Probes, bracket},
    run::{knobs::KnobSettings, mounts::TracefsMount, session::Preflight},
};

/// What every window of a scenario needs.
struct Run<'a> {
    b: &'a OverheadBench,
    caps: Capabilities,
    ksmd: u32,
    other: &'a OtherProcess,
}

impl Run<'_> {
    async fn untraced(&self, length: Duration) -> Result<Window> {
        window(None, length, self.ksmd, self.other).await
    }
}

pub(super) async fn run(
    b: &OverheadBench,
    scenario: Scenario,
    workload: String,
    other: &OtherProcess,
) -> Result<Figures> {
    let knobs = KnobSettings {
        pages_to_scan: Some(b.pages_to_scan),
        sleep_ms: Some(0),
        ..Default::default()
    };
    let pre = Preflight::run(Some(crate::workload::parse(&workload)?), &knobs)?;
    pre.caps.require_tracing()?;
    let ksmd = pre.ksmd;
    let mut tracers: Vec<Tracer> = KSM_TRACE_MODES
        .iter()
        .map(|&mode| Tracer::KsmTrace(mode))
        .collect();
    let bpftrace_bin = bpftrace::find();
    if bpftrace_bin.is_some() {
        tracers.extend(bpftrace::scripts(ksmd).map(Tracer::Bpftrace));
    }
    let _tracefs = match &bpftrace_bin {
        Some(_) => Some(TracefsMount::ensure()?),
        None => None,
    };
    let mut session = pre.start(&knobs, false)?;
    let fill = session
        .workload
        .iter()
        .flat_map(|w| w.workers())
        .map(|w| w.fill_gib_per_s())
        .collect();
    session.run_ksmd()?;
    let run = Run {
        b,
        caps: session.caps.clone(),
        ksmd,
        other,
    };
    settle(scenario).await?;
    let mut s = Figures::new(scenario, workload, &tracers, fill);
    run.long_windows(&tracers, bpftrace_bin.as_deref(), &mut s)
        .await?;
    run.short_windows(&mut s).await?;
    run.accounting(&mut s).await?;
    drop(session);
    Ok(s)
}

impl Figures {
    fn new(scenario: Scenario, workload: String, tracers: &[Tracer], fill: Vec<f64>) -> Self {
        Self {
            name: scenario.name(),
            workload,
            tracers: tracers
                .iter()
                .map(|t| match t {
                    Tracer::KsmTrace(mode) => (mode.name.to_string(), mode.latency, None),
                    Tracer::Bpftrace(script) => (
                        script.name.to_owned(),
                        script.same_as,
                        Some(script.measures),
                    ),
                })
                .collect(),
            untraced: Vec::new(),
            traced: (0..tracers.len()).map(|_| Vec::new()).collect(),
            program_stats: BTreeMap::new(),
            accounted: Vec::new(),
            sampled_windows: Vec::new(),
            always_latency: Vec::new(),
            head_lags: Histogram::new(),
            sampled_ages: Histogram::new(),
            switch_ns: Vec::new(),
            default_duty: Vec::new(),
            between: Vec::new(),
            armed: Vec::new(),
            fast_profile: Vec::new(),
            short_untraced: Vec::new(),
            sampled_merges: 0,
            fill,
        }
    }

    /// What a window of the sampled default or of `always` adds to the latency comparison.
    fn note_latency(
        &mut self,
        mode: LatencyMode,
        w: &Window,
        policy: &bracket::BracketPolicy,
        length: Duration,
    ) {
        match mode {
            LatencyMode::Auto => {
                self.sampled_windows.push(merge_latencies(&w.collector));
                self.sampled_merges += w.collector.merged_total();
                if let (Some(on), Some(off)) = policy.switch_ns() {
                    self.switch_ns.push((on, off));
                }
                self.default_duty.push(duty(policy, length));
                if let Some(lag) = policy.burst_head_ns() {
                    self.head_lags.record(lag);
                }
                for ages in w.collector.merges.burst_age_ns.values() {
                    self.sampled_ages.add(ages);
                }
            }
            LatencyMode::Always => self
                .always_latency
                .extend_from_slice(&w.collector.merges.aged_latencies),
            _ => {}
        }
    }
}

impl Run<'_> {
    /// Untraced and traced windows alternating: every tracer `repetitions` times, the default
    /// `default_repetitions` times.
    async fn long_windows(
        &self,
        tracers: &[Tracer],
        bpftrace_bin: Option<&std::path::Path>,
        s: &mut Figures,
    ) -> Result<()> {
        let b = self.b;
        s.untraced.push(self.untraced(b.window).await?.rates);
        for round in 0..b.repetitions.max(b.default_repetitions) {
            for (t, tracer) in tracers.iter().enumerate() {
                let is_default =
                    matches!(tracer, Tracer::KsmTrace(m) if m.latency == LatencyMode::Auto);
                if round >= b.repetitions && !is_default {
                    continue;
                }
                let w = self.traced_by(tracer, bpftrace_bin, s).await?;
                s.traced[t].push((s.untraced.len() - 1, w.rates));
                tokio::time::sleep(TEARDOWN_GAP).await;
                s.untraced.push(self.untraced(b.window).await?.rates);
            }
        }
        Ok(())
    }

    async fn traced_by(
        &self,
        tracer: &Tracer,
        bpftrace_bin: Option<&std::path::Path>,
        s: &mut Figures,
    ) -> Result<Window> {
        match tracer {
            Tracer::KsmTrace(mode) => {
                let length = window_length(mode.latency, self.b.window);
                let options = ProbeOptions {
                    cow: mode.cow,
                    ..mode_options(mode.latency, mode.batches)
                };
                let (w, _, policy) = self.traced(options, mode.latency, length).await?;
                s.note_latency(mode.latency, &w, &policy, length);
                Ok(w)
            }
            Tracer::Bpftrace(script) => {
                let bin = bpftrace_bin.expect("scripts only with bpftrace");
                let running = bpftrace::Running::start(bin, script).await?;
                let w = self.untraced(self.b.window).await?;
                // A script that attached but saw nothing would make bpftrace look free.
                if running.stop().await? == 0 {
                    bail!(
                        "bpftrace counted no ksmd batches in its window: its script is broken here"
                    );
                }
                Ok(w)
            }
        }
    }

    async fn traced(
        &self,
        options: ProbeOptions,
        bracket: LatencyMode,
        length: Duration,
    ) -> Result<(Window, Probes, bracket::BracketPolicy)> {
        traced_window(&self.caps, self.ksmd, options, bracket, length, self.other).await
    }

    /// The default's two states in short windows, each between untraced ones.
    async fn short_windows(&self, s: &mut Figures) -> Result<()> {
        let b = self.b;
        if b.short_pairs == 0 {
            return Ok(());
        }
        let mut before = self.untraced(b.short_window).await?.rates;
        s.short_untraced.push(before);
        for pair in 0..b.short_pairs {
            let default = mode_options(LatencyMode::Auto, true);
            let (options, bracket, ratios) = match ShortState::of_pair(pair) {
                ShortState::Between => (default, LatencyMode::Off, &mut s.between),
                ShortState::Armed => (default, LatencyMode::Always, &mut s.armed),
                ShortState::FastProfile => (
                    ProbeOptions {
                        profile_hz: FAST_PROFILE_HZ,
                        ..default
                    },
                    LatencyMode::Off,
                    &mut s.fast_profile,
                ),
            };
            let (w, _, _) = self.traced(options, bracket, b.short_window).await?;
            tokio::time::sleep(TEARDOWN_GAP).await;
            let after = self.untraced(b.short_window).await?.rates;
            s.short_untraced.push(after);
            ratios.push(against_neighbours(
                |r| r.pages_per_s,
                &w.rates,
                &before,
                &after,
            ));
            before = after;
        }
        Ok(())
    }

    /// The kernel's own accounting, in windows of their own (it adds ~50 ns to every run,
    /// which the ratio windows would count as tracing cost): `always` gives each program's ns
    /// per run; both give the share of ksmd's CPU time the programs ran — a figure without the
    /// machine's window-to-window noise.
    async fn accounting(&self, s: &mut Figures) -> Result<()> {
        let Ok(_stats) = aya::sys::enable_stats(aya::sys::Stats::RunTime) else {
            return Ok(());
        };
        for (name, mode) in [
            ("default", LatencyMode::Auto),
            ("always", LatencyMode::Always),
        ] {
            let length = window_length(mode, self.b.window);
            let (w, probes, _) = self.traced(mode_options(mode, true), mode, length).await?;
            let stats = probes.run_stats();
            let program_ns: u64 = stats.iter().map(|(_, (ns, _))| ns).sum();
            s.accounted
                .push((name, program_ns as f64 / w.ksmd_cpu_ns.max(1) as f64));
            if mode == LatencyMode::Always {
                s.program_stats = stats.into_iter().collect();
            }
        }
        Ok(())
    }
}

/// The programs ksm-trace loads in `mode`, with sched_switch if `batches`.
fn mode_options(mode: LatencyMode, batches: bool) -> ProbeOptions {
    ProbeOptions {
        batches,
        ..ProbeOptions::new(mode)
    }
}

/// How much of a window of `length`, just ended, `policy` had the bracket attached and spent
/// attaching and detaching it.
fn duty(policy: &bracket::BracketPolicy, length: Duration) -> Duty {
    let (closed, open) = policy.windows();
    let now = crate::kernel::monotonic_ns();
    let attached: u64 = closed
        .iter()
        .map(|(a, b)| b.saturating_sub(*a))
        .sum::<u64>()
        + open.map_or(0, |since| now.saturating_sub(since));
    let (on, off) = policy.switch_ns();
    let switching = policy.windows_opened() * (on.unwrap_or(0) + off.unwrap_or(0));
    let length = length.as_nanos() as f64;
    Duty {
        attached: attached as f64 / length,
        switching: switching as f64 / length,
        coverage_windows: policy.coverage_windows(),
    }
}

/// One window of `length` traced by ksm-trace with `options`' programs and the profiler,
/// the bracket driven as `bracket` says (`auto`: sampled; `always`: attached; `off`: never),
/// with the probes and bracket policy that traced it.
async fn traced_window(
    caps: &Capabilities,
    ksmd: u32,
    options: ProbeOptions,
    bracket: LatencyMode,
    length: Duration,
    other: &OtherProcess,
) -> Result<(Window, Probes, bracket::BracketPolicy)> {
    let mut probes = Probes::load_with(caps, ksmd, options)?;
    let mut policy = bracket::BracketPolicy::start(&mut probes, bracket)?;
    probes.start_profile(ksmd)?;
    let w = window(Some((&mut probes, &mut policy)), length, ksmd, other).await?;
    Ok((w, probes, policy))
}

/// The default samples in periods: a window of whole periods shows its share, a shorter one
/// would overstate or understate it.
fn window_length(mode: LatencyMode, window: Duration) -> Duration {
    match mode {
        LatencyMode::Auto => sampled_window(window),
        _ => window,
    }
}

/// The default's window: as many whole sampling periods as fit in `window`, at least one.
pub(super) fn sampled_window(window: Duration) -> Duration {
    let period = bracket::SAMPLE_PERIOD;
    period
        * window
            .as_secs_f64()
            .div_euclid(period.as_secs_f64())
            .max(1.0) as u32
}

/// Settled: wait until pages_sharing stops moving (the benchmark is about steady-state
/// scanning). Merging: give the first merges a few seconds; it never stops moving.
async fn settle(scenario: Scenario) -> Result<()> {
    if scenario == Scenario::Merging {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let sharing = sysfs::read_i64("pages_sharing")?;
        if sharing > 0 && sharing == last {
            break;
        }
        last = sharing;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_window_is_whole_sampling_periods() {
        let p = bracket::SAMPLE_PERIOD;
        assert_eq!(sampled_window(p / 2), p);
        assert_eq!(sampled_window(p), p);
        assert_eq!(sampled_window(p * 2 + p / 2), p * 2);
    }
}
