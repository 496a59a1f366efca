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
        let lo = if slot == 0 { 0 } else { 1u64 << slot };
        let hi = 1u64 << (slot + 1);
        let bar = (count * BAR_WIDTH).div_ceil(max) as usize;
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
