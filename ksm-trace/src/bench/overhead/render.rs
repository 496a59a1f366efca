//! The bench's printout: per scenario the untraced rates, a row per tracer (ksmd's ratio, per
//! CPU-second, the other process), the default's estimates and verdict, ksm-trace against
//! bpftrace, the sampled bracket's switches, the sampled latency against `always`, and the
//! kernel's accounting.
use std::fmt::Write as _;

use super::{
    ARMED_EVERY, Duty, FAST_PROFILE_HZ, Figures, OverheadBench, bpftrace,
    scenario::sampled_window,
    stats::{
        Estimate, against_neighbours, bracket_duty, composed, control, mean, mean_ci, range,
        ratio_text, steady_duty, verdict,
    },
    window::Rates,
};
use crate::{
    histogram::{Histogram, clustered_percentile_cis},
    probes::{LatencyMode, bracket},
};

pub(super) fn render(b: &OverheadBench, scenarios: &[Figures]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "ksm-trace bench overhead: pages_to_scan={} sleep_millisecs=0, {} s windows ({} s for the sampled default, whose bracket is attached {} ms when merges start, one window earned per {} s), {} repetitions ({} of the default), {} pairs of {} s windows for the default's two states (of every {ARMED_EVERY}, one with the bracket attached, one with the profiler at {FAST_PROFILE_HZ} Hz); ratio = traced ÷ mean of the untraced windows either side, mean over the windows with its 95 % confidence interval",
        b.pages_to_scan,
        b.window.as_secs_f64(),
        sampled_window(b.window).as_secs_f64(),
        bracket::SAMPLE_ON.as_millis(),
        bracket::SAMPLE_PERIOD.as_secs_f64(),
        b.repetitions,
        b.repetitions.max(b.default_repetitions),
        b.short_pairs,
        b.short_window.as_secs_f64(),
    );
    for s in scenarios {
        untraced(&mut o, s);
        let (ratios, default_ksmd) = tracer_rows(&mut o, s);
        default_estimates(&mut o, b, s, default_ksmd);
        against_bpftrace(&mut o, s, &ratios);
        switches(&mut o, s);
        latency(&mut o, s);
        accounting(&mut o, s);
    }
    if bpftrace::find().is_none() {
        let _ = writeln!(
            o,
            "bpftrace: not installed, no comparison (`cargo xtask bench` installs it)"
        );
    }
    o
}

const ROW: usize = 52;

/// The scenario's untraced rates, the procs workers' fill rates and the table's header.
fn untraced(o: &mut String, s: &Figures) {
    let untraced = |pick: fn(&Rates) -> f64| s.untraced.iter().map(pick).collect::<Vec<_>>();
    let (pages, per_cpu) = (untraced(|r| r.pages_per_s), untraced(|r| r.pages_per_cpu_s));
    let (min, max) = range(&pages);
    let _ = writeln!(
        o,
        "\n{} ({}): untraced {:.0} pages scanned/s (windows {:.0}–{:.0}; {:.0} per second ksmd ran); other process {:.0} mmap/touch/munmap per s",
        s.name,
        s.workload,
        mean(&pages),
        min,
        max,
        mean(&per_cpu),
        mean(&untraced(|r| r.other_per_s))
    );
    if !s.fill.is_empty() {
        let (lo, hi) = range(&s.fill);
        let _ = writeln!(
            o,
            "  procs fill rate: {lo:.2}–{hi:.2} GiB/s per worker ({} workers filling at once)",
            s.fill.len()
        );
    }
    let _ = writeln!(
        o,
        "  {:<ROW$} {:>28} {:>28} {:>28}",
        "tracer", "ksmd ratio", "ksmd per CPU-second", "other process"
    );
    if s.untraced.len() > 2 {
        let _ = writeln!(
            o,
            "  {:<ROW$} {:>28} {:>28} {:>28}",
            "untraced (control: ÷ the untraced windows beside)",
            ratio_text(&control(&s.untraced, |r| r.pages_per_s)),
            ratio_text(&control(&s.untraced, |r| r.pages_per_cpu_s)),
            ratio_text(&control(&s.untraced, |r| r.other_per_s))
        );
    }
}

/// A row per tracer; returns each tracer's mean ksmd ratio (NaN: not measured) and the
/// default's per-window ratios.
fn tracer_rows(o: &mut String, s: &Figures) -> (Vec<f64>, Vec<f64>) {
    let mut ratios = Vec::new();
    let mut default_ksmd = Vec::new();
    for (t, windows) in s.traced.iter().enumerate() {
        if windows.is_empty() {
            // `--repetitions 0`: only the default was measured.
            ratios.push(f64::NAN);
            continue;
        }
        let per_window = |pick: fn(&Rates) -> f64| {
            windows
                .iter()
                .map(|(i, r)| against_neighbours(pick, r, &s.untraced[*i], &s.untraced[i + 1]))
                .collect::<Vec<_>>()
        };
        let ksmd = per_window(|r| r.pages_per_s);
        ratios.push(mean(&ksmd));
        if s.tracers[t].1 == LatencyMode::Auto && s.tracers[t].2.is_none() {
            default_ksmd = ksmd.clone();
        }
        let _ = writeln!(
            o,
            "  {:<ROW$} {:>28} {:>28} {:>28}",
            s.tracers[t].0,
            ratio_text(&ksmd),
            ratio_text(&per_window(|r| r.pages_per_cpu_s)),
            ratio_text(&per_window(|r| r.other_per_s))
        );
    }
    (ratios, default_ksmd)
}

/// The default's figure two ways — its own long windows, and composed from its two states in
/// short windows — and the verdict on the target by the narrower.
fn default_estimates(o: &mut String, b: &OverheadBench, s: &Figures, default_ksmd: Vec<f64>) {
    let mut estimates = Vec::new();
    if !default_ksmd.is_empty() {
        let (mean, half) = mean_ci(&default_ksmd);
        estimates.push(Estimate {
            how: format!(
                "in its {} s windows",
                sampled_window(b.window).as_secs_f64()
            ),
            mean,
            half,
            control: control(&s.untraced, |r| r.pages_per_s),
        });
    }
    let switches: Vec<f64> = s
        .switch_ns
        .iter()
        .map(|(on, off)| (on + off) as f64)
        .collect();
    let short_control = control(&s.short_untraced, |r| r.pages_per_s);
    if short_control.len() > 1 {
        let _ = writeln!(
            o,
            "  {:<ROW$} {:>28}",
            format!(
                "untraced, {} s windows (control)",
                b.short_window.as_secs_f64()
            ),
            ratio_text(&short_control)
        );
    }
    let long = composed(
        &s.between,
        &s.armed,
        steady_duty(mean(&switches)),
        "composed from short windows at a long recording's duty",
        short_control.clone(),
    );
    if let Some(c) = long {
        composed_rows(o, b, s, &c, &switches);
        estimates.push(c);
    }
    let fresh = own_duty(o, b, s, short_control);
    if !s.fast_profile.is_empty() {
        let _ = writeln!(
            o,
            "    between samples with the profiler at {FAST_PROFILE_HZ} Hz instead of {} Hz: {}",
            crate::probes::profile::DEFAULT_HZ,
            ratio_text(&s.fast_profile)
        );
    }
    if !estimates.is_empty() {
        let _ = writeln!(o, "  {}", verdict(&estimates));
    }
    if let Some(fresh) = fresh {
        let _ = writeln!(
            o,
            "  a {} s recording, coverage windows included: {}",
            sampled_window(b.window).as_secs_f64(),
            verdict(&[fresh])
        );
    }
}

/// The default composed at the bracket duty its own windows had, each a fresh recording: a
/// recording's first seconds also open coverage windows (every merging process's first timed
/// merges), so a short recording costs more than a long one's steady state.
fn own_duty(o: &mut String, b: &OverheadBench, s: &Figures, control: Vec<f64>) -> Option<Estimate> {
    if s.default_duty.is_empty() {
        return None;
    }
    let pick = |f: fn(&Duty) -> f64| s.default_duty.iter().map(f).collect::<Vec<_>>();
    let (attached, switching) = (pick(|d| d.attached), pick(|d| d.switching));
    let coverage = pick(|d| d.coverage_windows as f64);
    let (lo, hi) = range(&attached);
    let length = sampled_window(b.window).as_secs_f64();
    let c = composed(
        &s.between,
        &s.armed,
        (mean(&attached), mean(&switching)),
        &format!("composed at its {length} s windows' own duty"),
        control,
    )?;
    let _ = writeln!(
        o,
        "    the default's {length} s windows, each a fresh recording: bracket attached {:.1} % of the time ({:.1}–{:.1} %), {:.1} coverage windows each, attach+detach {:.2} %; composed at that duty: {}",
        100.0 * mean(&attached),
        100.0 * lo,
        100.0 * hi,
        mean(&coverage),
        100.0 * mean(&switching),
        estimate_text(&c),
    );
    Some(c)
}

/// "0.987 (0.980–0.993)".
fn estimate_text(c: &Estimate) -> String {
    match c.half {
        Some(h) => format!("{:.3} ({:.3}–{:.3})", c.mean, c.mean - h, c.mean + h),
        None => format!("{:.3}", c.mean),
    }
}

fn composed_rows(o: &mut String, b: &OverheadBench, s: &Figures, c: &Estimate, switches: &[f64]) {
    let text = estimate_text(c);
    let _ = writeln!(
        o,
        "  {:<ROW$} {:>28}",
        format!(
            "default, composed from {} s windows",
            b.short_window.as_secs_f64()
        ),
        text
    );
    let d = bracket_duty();
    let _ = writeln!(
        o,
        "    = {:.2} × between samples {} + {d:.2} × bracket attached {} − attach+detach {} per {} s period (all counted as ksmd's)",
        1.0 - d,
        ratio_text(&s.between),
        ratio_text(&s.armed),
        if switches.is_empty() {
            "(not measured: the default's windows opened no sampling window)".to_owned()
        } else {
            format!("{:.0} µs", mean(switches) / 1e3)
        },
        bracket::SAMPLE_PERIOD.as_secs_f64(),
    );
}

/// Each bpftrace script against the ksm-trace mode measuring the same things (the last of a
/// latency mode: the one with batches on, as the scripts have).
fn against_bpftrace(o: &mut String, s: &Figures, ratios: &[f64]) {
    for (b_idx, (_, mode, measures)) in s.tracers.iter().enumerate() {
        let Some(measures) = measures else { continue };
        let Some(k) = s
            .tracers
            .iter()
            .rposition(|(_, m, script)| script.is_none() && m == mode)
        else {
            continue;
        };
        if ratios[k].is_nan() || ratios[b_idx].is_nan() {
            continue;
        }
        let _ = writeln!(
            o,
            "  ksm-trace vs bpftrace, {measures}: ksmd keeps {:.2} vs {:.2} of its untraced scan rate, ksm-trace ÷ bpftrace = {:.2}",
            ratios[k],
            ratios[b_idx],
            ratios[k] / ratios[b_idx]
        );
    }
}

fn switches(o: &mut String, s: &Figures) {
    if s.switch_ns.is_empty() {
        return;
    }
    let on: Vec<f64> = s.switch_ns.iter().map(|w| w.0 as f64 / 1e3).collect();
    let off: Vec<f64> = s.switch_ns.iter().map(|w| w.1 as f64 / 1e3).collect();
    let ((on_lo, on_hi), (off_lo, off_hi)) = (range(&on), range(&off));
    let _ = writeln!(
        o,
        "  the sampled bracket's switches: attach {on_lo:.0}–{on_hi:.0} µs, detach {off_lo:.0}–{off_hi:.0} µs per call (the tracer's own time; what they cost ksmd is in the default's ratio)"
    );
}

/// The sampled default's merge latency against `always`'s on the same workload.
fn latency(o: &mut String, s: &Figures) {
    let sampled = s
        .sampled_windows
        .iter()
        .fold(Histogram::new(), |mut all, w| {
            all.add(w);
            all
        });
    let always = s
        .always_latency
        .iter()
        .fold(Histogram::new(), |mut all, &(_, ns)| {
            all.record(ns);
            all
        });
    if always.is_empty() {
        return;
    }
    if sampled.is_empty() {
        let _ = writeln!(
            o,
            "  merge latency, sampled default vs always: the default's {} windows timed none of their {} merges, always timed {}: no comparison in this run",
            s.sampled_windows.len(),
            s.sampled_merges,
            always.count()
        );
    } else {
        let _ = writeln!(o, "{}", latency_accuracy(s, &sampled, &always));
    }
}

fn accounting(o: &mut String, s: &Figures) {
    if !s.accounted.is_empty() {
        let shares = s
            .accounted
            .iter()
            .map(|(name, share)| {
                format!(
                    "{name} {:.2} % (ksmd keeps ≈ {:.3})",
                    100.0 * share,
                    1.0 - share
                )
            })
            .collect::<Vec<_>>();
        let _ = writeln!(
            o,
            "  programs' run time ÷ ksmd's CPU time (kernel accounting, a window per mode; every process's runs counted against ksmd, tracepoint dispatch and attach/detach not included): {}",
            shares.join(", ")
        );
    }
    if !s.program_stats.is_empty() {
        let _ = writeln!(
            o,
            "  ns per run (kernel accounting, in a window of its own with every program attached):"
        );
        for (program, (ns, runs)) in &s.program_stats {
            if *runs > 0 {
                let _ = writeln!(
                    o,
                    "    {program:<28} {:>8.0} ns × {runs} runs",
                    *ns as f64 / *runs as f64
                );
            }
        }
    }
}

/// The sampled default's merge latency held against `always` on the same workload. The
/// sample's intervals are for the merges after a burst's head (the windows open a little into
/// each burst), so `always`'s merges are split at the same age and its others are compared.
fn latency_accuracy(s: &Figures, sampled: &Histogram, always: &Histogram) -> String {
    let (a, b) = (sampled.summary(), always.summary());
    let mut line = format!(
        "  merge latency, sampled default vs always on the same workload: p50 {} vs {} ns, p99 {} vs {} ns (the default timed {} of the {} merges in its windows, {:.1} %; always timed {})",
        a.p50,
        b.p50,
        a.p99,
        b.p99,
        a.count,
        s.sampled_merges,
        100.0 * a.count as f64 / s.sampled_merges.max(1) as f64,
        b.count,
    );
    let head = (!s.head_lags.is_empty()).then(|| s.head_lags.percentile(50.0));
    let (target, whose) = match head {
        Some(head) => {
            let mut rest = Histogram::new();
            for &(_, ns) in s.always_latency.iter().filter(|(age, _)| *age > head) {
                rest.record(ns);
            }
            let early = b.count - rest.count();
            let r = rest.summary();
            line += &format!(
                "\n    the default's windows opened {head} ns into a burst (median): {:.1} % of its merges and {:.1} % of always's came that early in their burst, outside the sample; always without them: p50 {} ns, p99 {} ns",
                100.0 * s.sampled_ages.count_at_most(head) as f64
                    / s.sampled_ages.count().max(1) as f64,
                100.0 * early as f64 / b.count.max(1) as f64,
                r.p50,
                r.p99
            );
            (r, "always's merges after a burst's head")
        }
        None => {
            line += "\n    no window opened on a burst's first merges";
            (b, "always's")
        }
    };
    if let Some([p50, p99]) = clustered_percentile_cis(&s.sampled_windows, [50.0, 99.0]) {
        let inside = |v: u64, (lo, hi): (u64, u64)| {
            if (lo..=hi).contains(&v) {
                "inside"
            } else {
                "outside"
            }
        };
        line += &format!(
            "\n    the sample's 95 % intervals (bootstrap over its windows): p50 {}–{} ns, p99 {}–{} ns: {whose} p50 {}, p99 {}",
            p50.0,
            p50.1,
            p99.0,
            p99.1,
            inside(target.p50, p50),
            inside(target.p99, p99)
        );
    }
    line
}
