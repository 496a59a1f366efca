//! Means and their 95 % confidence intervals (Student's t), and the difference of two means
//! (Welch's): what `bench overhead` and `compare` put beside their figures.
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

#[cfg(test)]
mod tests {
    use super::*;

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
