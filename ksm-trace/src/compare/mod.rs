//! `compare`: two sets of recordings (one or more runs each) side by side — first what differs
//! between them (kernel, knobs, workload, mechanisms), then each figure normalised to the work
//! done ([`figures`]), the difference B − A with its 95 % interval, and a verdict: better,
//! worse, or cannot tell.
//!
//! The unit that makes runs comparable: with two or more runs on each side, the runs (Welch's
//! t over the runs' values: the machine's run-to-run noise is in it). With one run on each
//! side, the units inside each run (its 1 s samples, or its full scans; for a phase, the
//! interval of its share of the stack samples combined with that of the run's ns per page);
//! those cannot see how runs differ from each other, so a difference must also exceed
//! [`NOISE`], the run-to-run noise `bench overhead`'s control rows measure on this kind of
//! machine, before it is told (for a phase's ns per page, [`NOISE`] of the run's ns per page
//! overall: how ksmd's time splits between phases moves between runs too).
pub mod figures;
pub mod text;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{recording::Recording, stats};
use figures::{Better, Figure};

/// What one run may differ from another without a cause: untraced 10 s windows of ksmd's scan
/// rate differ by about ±10 % here (docs/overhead.md: the control rows), so a difference between
/// two single runs under 15 % is not told.
pub const NOISE: f64 = 0.15;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub a: Vec<PathBuf>,
    pub b: Vec<PathBuf>,
    /// What differs between the sides' first runs: name → (A, B).
    pub differs: BTreeMap<String, (String, String)>,
    /// How the intervals were made.
    pub unit: String,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub unit: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// B − A, and the half-width of its 95 % interval (None: not enough units).
    pub difference: Option<f64>,
    pub half: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Better,
    Worse,
    /// Told apart, but the figure follows the workload, not ksmd's efficiency.
    Higher,
    Lower,
    CannotTell,
}

/// Compares the runs in `a` with those in `b`; refuses, in one line, sides whose workloads
/// differ unless `force`.
pub fn compare(a: &[PathBuf], b: &[PathBuf], force: bool) -> Result<Comparison> {
    if a.is_empty() || b.is_empty() {
        bail!("compare needs a recording on each side: compare A.json B.json, or A1 A2 -- B1 B2");
    }
    let read = |paths: &[PathBuf]| -> Result<Vec<Recording>> {
        paths.iter().map(|p| Recording::read(p)).collect()
    };
    let (ra, rb) = (read(a)?, read(b)?);
    let differs = differences(&ra[0], &rb[0]);
    if let Some((wa, wb)) = differs.get("workload")
        && !force
    {
        bail!(
            "the runs drove different workloads ({wa} vs {wb}): their figures would compare the workloads, not ksmd; give --force to compare them anyway"
        );
    }
    let (fa, fb): (Vec<Vec<Figure>>, Vec<Vec<Figure>>) = (
        ra.iter().map(figures::of).collect(),
        rb.iter().map(figures::of).collect(),
    );
    let repeated = ra.len() >= 2 && rb.len() >= 2;
    let rows = fa[0]
        .iter()
        .filter_map(|first| {
            // Phases a side never sampled have no row on it; match rows by name.
            let side = |runs: &[Vec<Figure>]| -> Vec<Figure> {
                runs.iter()
                    .filter_map(|f| f.iter().find(|g| g.name == first.name).cloned())
                    .collect()
            };
            let (sa, sb) = (side(&fa), side(&fb));
            (!sb.is_empty()).then(|| row(&sa, &sb, repeated))
        })
        .collect();
    Ok(Comparison {
        a: a.to_vec(),
        b: b.to_vec(),
        differs,
        unit: if repeated {
            format!(
                "runs ({} against {}): Welch's t over the runs' values",
                ra.len(),
                rb.len()
            )
        } else {
            format!(
                "one run per side: the units inside each run (1 s samples, full scans, a phase's share of the stack samples, told only when known within ±{:.0} points in both runs: more samples with --profile-hz or a longer run), and a difference must exceed {:.0} %, this machine's run-to-run noise, to be told; several runs per side (A1 A2 -- B1 B2) judge by the runs",
                crate::report::phases::WIDE * 100.0,
                NOISE * 100.0
            )
        },
        rows,
    })
}

/// One figure over the runs of each side.
fn row(a: &[Figure], b: &[Figure], repeated: bool) -> Row {
    let first = &a[0];
    let values = |side: &[Figure]| side.iter().filter_map(|f| f.value).collect::<Vec<_>>();
    let (va, vb) = (values(a), values(b));
    let (ma, mb) = (
        (!va.is_empty()).then(|| stats::mean(&va)),
        (!vb.is_empty()).then(|| stats::mean(&vb)),
    );
    let (difference, half, floor) = match (ma, mb) {
        (Some(_), Some(_)) if repeated => {
            let (d, h) = stats::welch(&va, &vb);
            (Some(d), h, 0.0)
        }
        (Some(x), Some(y)) if first.units_are == "share's interval" => {
            // A phase: each side's value ± the half-width its share's interval gives.
            let half_of = |f: &Figure| match f.units.as_slice() {
                [lo, hi] => Some((hi - lo) / 2.0),
                _ => None,
            };
            let h = half_of(&a[0]).zip(half_of(&b[0])).map(|(p, q)| p.hypot(q));
            (Some(y - x), h, NOISE * first.floor_of.unwrap_or(x).abs())
        }
        (Some(x), Some(y)) => {
            // The units' mean need not be the run's value (a ratio of sums): the difference
            // shown is the runs' values', the interval the units'.
            let (_, h) = stats::welch(&a[0].units, &b[0].units);
            (Some(y - x), h, NOISE * x.abs())
        }
        _ => (None, None, 0.0),
    };
    let verdict = match (difference, half) {
        (Some(d), Some(h)) if d.abs() > h && d.abs() > floor => match (first.better, d > 0.0) {
            (Better::Higher, true) | (Better::Lower, false) => Verdict::Better,
            (Better::Higher, false) | (Better::Lower, true) => Verdict::Worse,
            (Better::Neither, true) => Verdict::Higher,
            (Better::Neither, false) => Verdict::Lower,
        },
        _ => Verdict::CannotTell,
    };
    Row {
        name: first.name.clone(),
        unit: first.unit.to_owned(),
        a: ma,
        b: mb,
        difference,
        half,
        verdict,
    }
}

/// What differs between two runs: kernel, knobs, workload, mechanisms, sampling rate.
fn differences(a: &Recording, b: &Recording) -> BTreeMap<String, (String, String)> {
    let mut d = BTreeMap::new();
    let mut note = |name: &str, x: String, y: String| {
        if x != y {
            d.insert(name.to_owned(), (x, y));
        }
    };
    note(
        "kernel",
        a.meta.kernel_release.clone(),
        b.meta.kernel_release.clone(),
    );
    let spec = |r: &Recording| {
        r.meta
            .workload
            .as_ref()
            .map_or("(the machine's own processes)".to_owned(), |w| {
                w.spec_text.clone()
            })
    };
    note("workload", spec(a), spec(b));
    let knobs: std::collections::BTreeSet<&String> =
        a.meta.knobs.keys().chain(b.meta.knobs.keys()).collect();
    for k in knobs {
        let v = |r: &Recording| r.meta.knobs.get(k).cloned().unwrap_or_else(|| "-".into());
        // run is always 1 in the window (ksmd runs while recording).
        if k != "run" {
            note(&format!("knob {k}"), v(a), v(b));
        }
    }
    let m = |r: &Recording| serde_json::to_value(&r.mechanisms).unwrap_or_default();
    let (ma, mb) = (m(a), m(b));
    for key in ["events", "merge_latency", "batches", "cow", "unmerge"] {
        note(
            &format!("mechanism {key}"),
            ma[key]["kind"].to_string(),
            mb[key]["kind"].to_string(),
        );
    }
    note(
        "profile Hz",
        a.profile.frequency_hz.to_string(),
        b.profile.frequency_hz.to_string(),
    );
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(value: f64, half: Option<f64>, floor_of: Option<f64>) -> Figure {
        Figure {
            name: "ns per page: checksum".to_owned(),
            unit: "ns",
            better: Better::Lower,
            value: Some(value),
            units: half.map_or(Vec::new(), |h| vec![value - h, value + h]),
            units_are: "share's interval",
            floor_of,
        }
    }

    #[test]
    fn a_phase_without_a_known_share_is_not_told_from_one_run() {
        // 140 against 397 ns: far apart, but the shares were not known within ±3 points.
        let r = row(
            &[phase(140.0, None, Some(1300.0))],
            &[phase(397.0, None, Some(1300.0))],
            false,
        );
        assert_eq!(r.verdict, Verdict::CannotTell);
    }

    #[test]
    fn a_phase_must_move_by_the_noise_of_the_whole_run() {
        // Tight intervals, a 100 ns rise: 15 % of a 1300 ns run is 195 ns, so not told...
        let (a, b) = (
            phase(200.0, Some(10.0), Some(1300.0)),
            phase(300.0, Some(10.0), Some(1300.0)),
        );
        assert_eq!(row(&[a], &[b], false).verdict, Verdict::CannotTell);
        // ...and a 400 ns rise is, as worse.
        let (a, b) = (
            phase(200.0, Some(10.0), Some(1300.0)),
            phase(600.0, Some(10.0), Some(1300.0)),
        );
        assert_eq!(row(&[a], &[b], false).verdict, Verdict::Worse);
    }
}
