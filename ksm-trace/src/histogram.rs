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

/// Fewer windows than this give no interval: a bootstrap over three or four draws is a guess.
pub const MIN_CLUSTERS: usize = 5;
const RESAMPLES: usize = 1000;

/// 95 % confidence intervals for the percentiles `ps` of the distribution the values of
/// `clusters` were drawn from, when they were drawn in clusters — the merges one sampling
/// window times are consecutive, alike, not independent draws, so the interval must come from
/// how the windows differ: whole clusters are resampled with replacement, and the 2.5th and
/// 97.5th of [`RESAMPLES`] pooled percentiles bound it (a percentile bootstrap, seeded: the same
/// recording always gives the same report). Valid as far as the windows are representative of
/// the run. None with fewer than [`MIN_CLUSTERS`] non-empty clusters.
pub fn clustered_percentile_cis<const N: usize>(
    clusters: &[Histogram],
    ps: [f64; N],
) -> Option<[(u64, u64); N]> {
    let clusters: Vec<Vec<(u64, u64)>> = clusters
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| h.buckets().collect())
        .collect();
    if clusters.len() < MIN_CLUSTERS {
        return None;
    }
    let mut rng = fastrand::Rng::with_seed(0x6b73_6d74);
    let mut pool = Vec::new();
    let mut estimates = [(); N].map(|_| Vec::with_capacity(RESAMPLES));
    for _ in 0..RESAMPLES {
        pool.clear();
        for _ in 0..clusters.len() {
            pool.extend_from_slice(&clusters[rng.usize(..clusters.len())]);
        }
        pool.sort_unstable_by_key(|&(value, _)| value);
        // Saturating: a recording is read from a file, and must not make this overflow.
        let total = pool
            .iter()
            .fold(0u64, |n, &(_, count)| n.saturating_add(count));
        for (p, estimates) in ps.iter().zip(estimates.iter_mut()) {
            let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            let value = pool
                .iter()
                .find(|&&(_, count)| {
                    seen = seen.saturating_add(count);
                    seen >= rank
                })
                .map_or(0, |&(value, _)| value);
            estimates.push(value);
        }
    }
    Some(estimates.map(|mut e| {
        e.sort_unstable();
        (e[RESAMPLES * 25 / 1000], e[RESAMPLES * 975 / 1000 - 1])
    }))
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

    /// `n` windows of 100 merges each, window `i` centred on `centre(i)` ns (±50 ns).
    fn windows(n: u64, centre: impl Fn(u64) -> u64) -> Vec<Histogram> {
        (0..n)
            .map(|i| {
                let mut h = Histogram::new();
                for j in 0..100 {
                    h.record(centre(i) - 50 + j);
                }
                h
            })
            .collect()
    }

    #[test]
    fn windows_that_differ_widen_the_interval_beyond_their_pooled_sample() {
        // Alike windows: the interval is as narrow as the values.
        let alike = windows(10, |_| 1000);
        let (lo, hi) = clustered_percentile_cis(&alike, [50.0]).unwrap()[0];
        assert!(
            (940..=1060).contains(&lo) && (940..=1060).contains(&hi),
            "{lo}..{hi}"
        );
        // Windows centred 1000..1900 ns: their 1000 merges pooled would give an
        // order-statistics interval ~±30 ranks (a few tens of ns) around 1450; ten windows
        // whose means spread ±290 ns know it to about ±290/√10·2 ≈ ±180 ns.
        let differ = windows(10, |i| 1000 + 100 * i);
        let [(lo, hi), (_, hi99)] = clustered_percentile_cis(&differ, [50.0, 99.0]).unwrap();
        assert!(hi99 >= 1800, "{hi99}");
        assert!(hi - lo >= 200 && lo < 1450 && 1450 < hi, "{lo}..{hi}");
        let pooled = differ.iter().fold(Histogram::new(), |mut all, h| {
            all.add(h);
            all
        });
        assert!(lo <= pooled.percentile(50.0) && pooled.percentile(50.0) <= hi);
        // The same recording, the same interval.
        assert_eq!(clustered_percentile_cis(&differ, [50.0]), Some([(lo, hi)]));
    }

    #[test]
    fn too_few_windows_give_no_interval() {
        let mut few = windows(MIN_CLUSTERS as u64 - 1, |i| 1000 + 100 * i);
        assert_eq!(clustered_percentile_cis(&few, [50.0]), None);
        // Empty windows do not count.
        few.push(Histogram::new());
        assert_eq!(clustered_percentile_cis(&few, [99.0]), None);
        few.push(windows(1, |_| 1000).remove(0));
        assert!(clustered_percentile_cis(&few, [99.0]).is_some());
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Histogram::new().summary(), Summary::default());
    }
}
