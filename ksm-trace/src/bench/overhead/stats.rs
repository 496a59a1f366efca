//! The figures' arithmetic: a traced window against its untraced neighbours, means with their
//! 95 % confidence intervals, the default composed from its two states, and the verdict on the
//! target.

use super::window::Rates;
use crate::probes::bracket;
pub(super) use crate::stats::{mean, mean_ci};

/// What the default must keep of ksmd's untraced scan rate while merging.
pub(super) const TARGET: f64 = 0.99;

/// A figure for the default's ratio: how it was measured, its mean and 95 % half-width, and
/// the control ratios of the untraced windows of the same design (its noise).
pub(super) struct Estimate {
    pub(super) how: String,
    pub(super) mean: f64,
    pub(super) half: Option<f64>,
    pub(super) control: Vec<f64>,
}

/// The default's ratio composed from its two states: `between` (every program but the bracket)
/// for 1 − d of the time and `armed` (the bracket attached) for the share d (`duty.0`), less the
/// share of time its attach and detach calls took (`duty.1`), counted as if all of it were
/// taken from ksmd. The half-width combines the two means' intervals (independent windows).
/// None without windows of both states.
pub(super) fn composed(
    between: &[f64],
    armed: &[f64],
    (d, switches): (f64, f64),
    how: &str,
    control: Vec<f64>,
) -> Option<Estimate> {
    if between.is_empty() || armed.is_empty() {
        return None;
    }
    let ((mb, hb), (ma, ha)) = (mean_ci(between), mean_ci(armed));
    Some(Estimate {
        how: how.to_owned(),
        mean: (1.0 - d) * mb + d * ma - switches,
        half: hb.zip(ha).map(|(hb, ha)| ((1.0 - d) * hb).hypot(d * ha)),
        control,
    })
}

/// Whether the default keeps [`TARGET`], by the estimate with the narrowest interval: only
/// when its whole 95 % interval is on one side; otherwise the machine's noise (the control's
/// interval) is why not.
pub(super) fn verdict(estimates: &[Estimate]) -> String {
    let Some((
        h,
        Estimate {
            how,
            mean: m,
            control,
            ..
        },
    )) = estimates
        .iter()
        .filter_map(|e| Some((e.half?, e)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
    else {
        return format!("target ≥ {TARGET}: one window of the default, no verdict");
    };
    let m = *m;
    let (lo, hi) = (m - h, m + h);
    if lo >= TARGET {
        format!(
            "target ≥ {TARGET}: met (the default {how}: 95 % interval {lo:.3}–{hi:.3}, above it)"
        )
    } else if hi < TARGET {
        format!(
            "target ≥ {TARGET}: missed (the default {how}: 95 % interval {lo:.3}–{hi:.3}, below it)"
        )
    } else {
        let noise = mean_ci(control)
            .1
            .map_or("unknown".to_owned(), |c| format!("±{:.1} %", 100.0 * c));
        format!(
            "target ≥ {TARGET}: cannot be told in this run (the default {how}: 95 % interval {lo:.3}–{hi:.3} spans it; the machine's own noise, the control row's interval with n={}, is {noise}: more windows or a steadier machine)",
            control.len()
        )
    }
}

/// The share of a merging period the sampled default has its bracket attached once every
/// merging process has its timed merges (no more coverage windows): a long recording's.
pub(super) fn bracket_duty() -> f64 {
    bracket::SAMPLE_ON.as_secs_f64() / bracket::SAMPLE_PERIOD.as_secs_f64()
}

/// The steady state's duty and its attach and detach calls' share of time (`switch_ns`, one
/// window per period).
pub(super) fn steady_duty(switch_ns: f64) -> (f64, f64) {
    (
        bracket_duty(),
        switch_ns / bracket::SAMPLE_PERIOD.as_nanos() as f64,
    )
}

/// Each untraced window against the untraced windows either side of it (a traced window away,
/// so if anything a wider spread than the tracers' own): the noise floor.
pub(super) fn control(untraced: &[Rates], pick: fn(&Rates) -> f64) -> Vec<f64> {
    (1..untraced.len().saturating_sub(1))
        .map(|i| against_neighbours(pick, &untraced[i], &untraced[i - 1], &untraced[i + 1]))
        .collect()
}

/// `r`'s figure ÷ the mean of the untraced windows either side of it.
pub(super) fn against_neighbours(
    pick: fn(&Rates) -> f64,
    r: &Rates,
    before: &Rates,
    after: &Rates,
) -> f64 {
    pick(r) / ((pick(before) + pick(after)) / 2.0)
}

/// (min, max) of a non-empty list.
pub(super) fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// "0.99 (0.98–1.00, 10 windows)".
pub(super) fn ratio_text(ratios: &[f64]) -> String {
    match mean_ci(ratios) {
        (m, Some(h)) => format!("{m:.3} ({:.3}–{:.3}, n={})", m - h, m + h, ratios.len()),
        (m, None) => format!("{m:.3} (n={})", ratios.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_compared_with_the_mean_of_its_neighbours() {
        let rates = |p: f64| Rates {
            pages_per_s: p,
            pages_per_cpu_s: 2.0 * p,
            other_per_s: 0.0,
        };
        let (before, traced, after) = (rates(100.0), rates(99.0), rates(120.0));
        assert_eq!(
            against_neighbours(|r| r.pages_per_s, &traced, &before, &after),
            0.9
        );
        assert_eq!(
            against_neighbours(|r| r.pages_per_cpu_s, &traced, &before, &after),
            0.9
        );
    }
    #[test]
    fn ratio_text_gives_the_interval_and_the_windows() {
        assert_eq!(ratio_text(&[1.0, 2.0, 3.0]), "2.000 (-0.484–4.484, n=3)");
        assert_eq!(ratio_text(&[0.97]), "0.970 (n=1)");
    }

    const CONTROL: [f64; 4] = [1.0, 0.98, 1.02, 1.0];

    fn windows(v: &[f64]) -> Estimate {
        let (mean, half) = mean_ci(v);
        Estimate {
            how: "in windows".to_owned(),
            mean,
            half,
            control: CONTROL.to_vec(),
        }
    }

    #[test]
    fn the_verdict_needs_the_whole_interval_on_one_side() {
        assert!(verdict(&[windows(&[0.995, 0.996, 0.994])]).contains("met"));
        assert!(verdict(&[windows(&[0.95, 0.951, 0.949])]).contains("missed"));
        let unsure = verdict(&[windows(&[0.95, 1.01, 0.98])]);
        assert!(unsure.contains("cannot be told"), "{unsure}");
        assert!(unsure.contains("n=4, is ±"), "{unsure}");
        assert!(verdict(&[windows(&[0.99])]).contains("no verdict"));
    }
    #[test]
    fn the_verdict_takes_the_narrowest_estimate() {
        let wide = windows(&[0.95, 1.01, 0.98]);
        let narrow = Estimate {
            how: "composed".to_owned(),
            mean: 0.997,
            half: Some(0.005),
            control: Vec::new(),
        };
        let v = verdict(&[wide, narrow]);
        assert!(v.contains("met (the default composed"), "{v}");
    }
    #[test]
    fn the_composition_weighs_the_states_by_their_time_and_charges_the_switches() {
        // 99 % of the time at 0.99 (mean of 0.98, 1.00), 1 % at 0.5 (mean of 0.4, 0.6), and
        // 2 ms of attach + detach per sampling period: 0.9801 + 0.005 − 2 ms ÷ period.
        let c = composed(&[0.98, 1.0], &[0.4, 0.6], steady_duty(2e6), "", Vec::new()).unwrap();
        let switches = 2e6 / bracket::SAMPLE_PERIOD.as_nanos() as f64;
        assert!((c.mean - (0.9851 - switches)).abs() < 1e-9, "{}", c.mean);
        // t(0.975, 1 df) = 12.706; each mean's half-width 12.706 × 0.1414 / √2.
        let (hb, ha): (f64, f64) = (12.706 * 0.01, 12.706 * 0.1);
        let expect = (0.99 * hb).hypot(0.01 * ha);
        assert!((c.half.unwrap() - expect).abs() < 1e-3, "{:?}", c.half);
        assert!(composed(&[0.99], &[], steady_duty(0.0), "", Vec::new()).is_none());
        assert_eq!(
            composed(&[0.99], &[0.5], steady_duty(0.0), "", Vec::new())
                .unwrap()
                .half,
            None
        );
        // A short recording's own duty: 3 % attached, 0.1 % switching.
        let c = composed(&[1.0], &[0.5], (0.03, 0.001), "", Vec::new()).unwrap();
        assert!((c.mean - (0.97 + 0.015 - 0.001)).abs() < 1e-9, "{}", c.mean);
    }
}
