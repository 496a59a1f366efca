//! The one histogram type: an HDR histogram of nanoseconds (3 significant digits) that
//! serializes as `[[value, count], ...]` so a recording is readable without this crate.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

/// Percentile summary as printed and put into JSON reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        // 3 significant digits, auto-resizing: never drops a value for being large.
        Self(hdrhistogram::Histogram::new(3).expect("3 significant digits is valid"))
    }

    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    pub fn record_n(&mut self, value: u64, count: u64) {
        // Auto-resize is on, so recording cannot fail.
        let _ = self.0.record_n(value, count);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn percentile(&self, p: f64) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.0.value_at_quantile(p / 100.0)
        }
    }

    /// A 95 % confidence interval for the `p`th percentile of the distribution these values
    /// were sampled from, by order statistics (the ranks n·q ± 1.96·√(n·q·(1−q))): valid when
    /// the sample is representative, which the caller must say how it was drawn. None when
    /// empty.
    pub fn percentile_ci(&self, p: f64) -> Option<(u64, u64)> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let (nf, q) = (n as f64, p / 100.0);
        let half = 1.96 * (nf * q * (1.0 - q)).sqrt();
        let lo = (nf * q - half).floor().max(1.0);
        let hi = (nf * q + half).ceil().min(nf);
        Some((
            self.0.value_at_quantile(lo / nf),
            self.0.value_at_quantile(hi / nf),
        ))
    }

    pub fn summary(&self) -> Summary {
        if self.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.count(),
            min: self.0.min(),
            p50: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            max: self.0.max(),
            mean: self.0.mean(),
        }
    }

    /// How many values are at most `value` (as exact as the histogram: 3 significant digits).
    pub fn count_at_most(&self, value: u64) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.0.count_between(0, value)
        }
    }

    /// Recorded (value, count) pairs, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
    }

    /// Counts per power-of-two slot: `(slot, count)` where slot k holds values in [2^k, 2^(k+1))
    /// and slot 0 also holds 0.
    pub fn log2_slots(&self) -> Vec<(u32, u64)> {
        let mut slots: Vec<(u32, u64)> = Vec::new();
        for (value, count) in self.buckets() {
            let slot = 63 - value.max(1).leading_zeros();
            match slots.last_mut() {
                Some((s, c)) if *s == slot => *c += count,
                _ => slots.push((slot, count)),
            }
        }
        slots
    }

    /// Adds `other`'s samples; a sum whose count would overflow u64 keeps `self` as it was
    /// (no real run gets near it; a crafted recording must not panic).
    pub fn add(&mut self, other: &Histogram) {
        if self.count().checked_add(other.count()).is_some() {
            let _ = self.0.add(&other.0);
        }
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.buckets().map(|(v, c)| [v, c]))
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<[u64; 2]>::deserialize(d)?;
        let mut h = Histogram::new();
        for [v, c] in pairs {
            h.record_n(v, c);
        }
        Ok(h)
    }
}

impl PartialEq for Histogram {
    fn eq(&self, other: &Self) -> bool {
        self.buckets().eq(other.buckets())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_round_trip() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((499_000..=501_000).contains(&s.p50), "p50 {}", s.p50);
        assert!((989_000..=991_000).contains(&s.p99), "p99 {}", s.p99);
        let json = serde_json::to_string(&h).unwrap();
        let back: Histogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.summary(), s);
    }

    #[test]
    fn log2_slots_partition_values() {
        let mut h = Histogram::new();
        for v in [0u64, 1, 2, 3, 4, 7, 8, 1023, 1024] {
            h.record(v);
        }
        assert_eq!(
            h.log2_slots(),
            vec![(0, 2), (1, 2), (2, 2), (3, 1), (9, 1), (10, 1)]
        );
        assert_eq!(h.log2_slots().iter().map(|s| s.1).sum::<u64>(), h.count());
    }

    #[test]
    fn percentile_intervals_narrow_with_the_sample() {
        // 1..=10000 µs uniformly: the true p50 is 5000 µs, p99 9900 µs.
        let mut big = Histogram::new();
        for v in 1..=10_000u64 {
            big.record(v * 1000);
        }
        let (lo, hi) = big.percentile_ci(50.0).unwrap();
        assert!(lo <= 5_000_000 && hi >= 5_000_000, "{lo}..{hi}");
        // ±1.96·√2500 = ±98 ranks of 10000: about ±1 %.
        assert!(hi - lo < 250_000, "{lo}..{hi}");
        let mut small = Histogram::new();
        for v in (1..=10_000u64).step_by(100) {
            small.record(v * 1000);
        }
        let (slo, shi) = small.percentile_ci(50.0).unwrap();
        assert!(slo <= 5_001_000 && shi >= 4_901_000, "{slo}..{shi}");
        assert!(shi - slo > hi - lo, "fewer samples, wider interval");
        let (plo, phi) = big.percentile_ci(99.0).unwrap();
        assert!(plo <= 9_900_000 && phi >= 9_900_000, "{plo}..{phi}");
        assert_eq!(Histogram::new().percentile_ci(50.0), None);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Histogram::new().summary(), Summary::default());
    }
}
