//! The one place histograms are drawn: log2 rows with bars, the way bpftrace and libbpf-tools
//! print them.
use std::fmt::Write as _;

use crate::histogram::Histogram;

const BAR_WIDTH: u64 = 40;

/// Renders `h` as rows `[lo, hi)  count |@@@@   |`, values scaled by `unit`.
pub fn render_log2(h: &Histogram, unit: Unit) -> String {
    let slots = h.log2_slots();
    let Some(max) = slots.iter().map(|s| s.1).max() else {
        return "    (no samples)\n".into();
    };
    let (first, last) = (slots[0].0, slots[slots.len() - 1].0);
    let mut out = String::new();
    for slot in first..=last {
        let count = slots.iter().find(|s| s.0 == slot).map_or(0, |s| s.1);
        let (lo, hi) = slot_bounds(slot);
        // In u128: a crafted recording's counts may be near u64::MAX.
        let bar = (u128::from(count) * u128::from(BAR_WIDTH)).div_ceil(u128::from(max)) as usize;
        let _ = writeln!(
            out,
            "    [{:>6}, {:>6}) {:>8} |{:<width$}|",
            unit.short(lo),
            unit.short(hi),
            count,
            "@".repeat(bar),
            width = BAR_WIDTH as usize
        );
    }
    out
}

/// `[lo, hi)` of log2 slot `slot`: slot 0 also holds 0, and the last slot (63) ends at
/// u64::MAX, since 2^64 does not fit (slots above 63 cannot come from a u64 value, but a crafted
/// recording is clamped rather than trusted).
fn slot_bounds(slot: u32) -> (u64, u64) {
    let lo = if slot == 0 {
        0
    } else {
        1u64.checked_shl(slot).unwrap_or(u64::MAX)
    };
    let hi = 1u64.checked_shl(slot + 1).unwrap_or(u64::MAX);
    (lo, hi)
}

#[derive(Clone, Copy, Debug)]
pub enum Unit {
    Nanoseconds,
}

impl Unit {
    /// Compact power-of-two label: 512, 1K, 2M ... (ns shown as ns/µs/ms/s).
    fn short(self, v: u64) -> String {
        match self {
            Unit::Nanoseconds => match v {
                0..1_000 => format!("{v}ns"),
                1_000..1_000_000 => format!("{}us", v / 1_000),
                1_000_000..1_000_000_000 => format!("{}ms", v / 1_000_000),
                _ => format!("{}s", v / 1_000_000_000),
            },
        }
    }
}

/// Human duration: 850ns, 12.3us, 4.56ms, 1.20s.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_cover_every_slot_between_first_and_last() {
        let mut h = Histogram::new();
        h.record_n(1500, 4); // [1us, 2us)
        h.record_n(5000, 2); // [4us, 8us)
        let text = render_log2(&h, Unit::Nanoseconds);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(
            rows[0]
                .contains("[   1us,    2us)        4 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|"),
            "{text}"
        );
        assert!(rows[1].contains("[   2us,    4us)        0 |"), "{text}");
        assert!(
            rows[2].contains("        2 |@@@@@@@@@@@@@@@@@@@@ "),
            "{text}"
        );
    }

    #[test]
    fn values_of_2_to_the_63_and_above_render() {
        let mut h = Histogram::new();
        h.record_n(1500, 1);
        h.record_n(1 << 63, 3);
        h.record_n(u64::MAX, 1);
        let text = render_log2(&h, Unit::Nanoseconds);
        let last = text.lines().last().unwrap();
        assert!(last.contains("[9223372036s, 18446744073s)"), "{text}");
        assert!(text.lines().count() > 50, "{text}");
        assert_eq!(slot_bounds(63), (1 << 63, u64::MAX));
        assert_eq!(slot_bounds(64), (u64::MAX, u64::MAX));
        assert_eq!(slot_bounds(0), (0, 2));
    }

    #[test]
    fn empty_histogram_says_so() {
        assert_eq!(
            render_log2(&Histogram::new(), Unit::Nanoseconds),
            "    (no samples)\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_ns(850), "850ns");
        assert_eq!(fmt_ns(12_345), "12.3us");
        assert_eq!(fmt_ns(4_560_000), "4.56ms");
        assert_eq!(fmt_ns(1_200_000_000), "1.20s");
    }
}
