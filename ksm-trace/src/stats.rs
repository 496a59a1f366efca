//! Means and their 95 % confidence intervals (Student's t), the difference of two means
//! (Welch's), and proportions (Wilson's): what `bench overhead`, `compare`, the report's phases
//! and `explain`'s sampled counts put beside their figures.
use statrs::distribution::{ContinuousCDF, StudentsT};

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn variance(v: &[f64], m: f64) -> f64 {
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)
}

/// The 97.5 % quantile of Student's t with `df` degrees of freedom.
fn t975(df: f64) -> Option<f64> {
    StudentsT::new(0.0, 1.0, df)
        .map(|d| d.inverse_cdf(0.975))
        .ok()
}

/// The mean of `v` and the half-width of its 95 % confidence interval (Student's t; None with
/// fewer than two values).
pub fn mean_ci(v: &[f64]) -> (f64, Option<f64>) {
    let m = mean(v);
    if v.len() < 2 {
        return (m, None);
    }
    let n = v.len() as f64;
    (m, t975(n - 1.0).map(|t| t * (variance(v, m) / n).sqrt()))
}

/// mean(b) − mean(a) and the half-width of its 95 % interval (Welch's t, unequal variances;
/// None with fewer than two values on a side).
pub fn welch(a: &[f64], b: &[f64]) -> (f64, Option<f64>) {
    let (ma, mb) = (mean(a), mean(b));
    if a.len() < 2 || b.len() < 2 {
        return (mb - ma, None);
    }
    let (va, vb) = (
        variance(a, ma) / a.len() as f64,
        variance(b, mb) / b.len() as f64,
    );
    let se2 = va + vb;
    if se2 == 0.0 {
        return (mb - ma, Some(0.0));
    }
    // Welch–Satterthwaite degrees of freedom.
    let df = se2 * se2 / (va * va / (a.len() as f64 - 1.0) + vb * vb / (b.len() as f64 - 1.0));
    (mb - ma, t975(df).map(|t| t * se2.sqrt()))
}

/// Wilson's 95 % interval of a proportion `k` of `n`.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The 95 % interval of how many of `population` items have a property that `k` of a uniform
/// random sample of `n` of them have: Wilson's interval, narrowed by the finite-population
/// correction (a sample of everything is exact), in whole items.
pub fn sampled_total(k: u64, n: u64, population: u64) -> (u64, u64) {
    if n == 0 {
        return (0, population);
    }
    if n >= population {
        return (k, k);
    }
    let (lo, hi) = wilson(k, n);
    let share = k as f64 / n as f64;
    let fpc = ((population - n) as f64 / (population as f64 - 1.0).max(1.0)).sqrt();
    let total =
        |x: f64| ((share + (x - share) * fpc) * population as f64).clamp(0.0, population as f64);
    // The sampled items are known: the total is at least the ones seen.
    (
        total(lo).floor().max(k as f64) as u64,
        total(hi).ceil() as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_holds_the_share() {
        let (lo, hi) = wilson(50, 100);
        assert!(lo < 0.5 && hi > 0.5 && hi - lo < 0.2, "{lo} {hi}");
        let (lo, hi) = wilson(0, 100);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.0 && hi < 0.05);
    }

    #[test]
    fn sampled_total_narrows_to_exact_as_the_sample_grows() {
        // Half of a 10 % sample: about half the population, within a few points.
        let (lo, hi) = sampled_total(500, 1000, 10_000);
        assert!(
            lo > 4_650 && lo < 5_000 && hi > 5_000 && hi < 5_350,
            "{lo}..{hi}"
        );
        // The whole population read: no error left.
        assert_eq!(sampled_total(500, 1000, 1000), (500, 500));
        // Nine tenths read: narrower than Wilson's alone.
        let (lo, hi) = sampled_total(450, 900, 1000);
        let (wlo, whi) = wilson(450, 900);
        assert!(hi - lo < ((whi - wlo) * 1000.0) as u64, "{lo}..{hi}");
        // None seen: at least none, and a bound above.
        let (lo, hi) = sampled_total(0, 100, 100_000);
        assert_eq!(lo, 0);
        assert!(hi > 0 && hi < 5_000, "{hi}");
    }

    #[test]
    fn mean_ci_is_students_t_interval() {
        // 1, 2, 3: mean 2, sd 1, t(0.975, 2 df) = 4.303 → half-width 4.303 / √3 = 2.484.
        let (m, half) = mean_ci(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((half.unwrap() - 2.484).abs() < 0.001, "{half:?}");
        // One value has no interval; identical values have a zero-width one.
        assert_eq!(mean_ci(&[0.9]), (0.9, None));
        assert_eq!(mean_ci(&[0.9, 0.9]).1, Some(0.0));
    }

    #[test]
    fn welch_interval_of_a_difference() {
        // Equal sizes and variances: df = 4, t = 2.776, se = √(1/3 + 1/3).
        let (d, half) = welch(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]);
        assert_eq!(d, 3.0);
        assert!(
            (half.unwrap() - 2.776 * (2.0f64 / 3.0).sqrt()).abs() < 0.01,
            "{half:?}"
        );
        assert_eq!(welch(&[1.0], &[2.0, 3.0]).1, None);
    }
}
