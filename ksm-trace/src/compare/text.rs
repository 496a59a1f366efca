//! The comparison as text: what differs, then a row per figure.
use std::fmt::Write as _;

use super::{Comparison, Row, Verdict};

pub fn render(c: &Comparison) -> String {
    let mut o = String::new();
    let names = |p: &[std::path::PathBuf]| {
        p.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(o, "compare: A = {}; B = {}", names(&c.a), names(&c.b));
    if c.differs.is_empty() {
        let _ = writeln!(
            o,
            "what differs: nothing recorded (same kernel, knobs, workload and mechanisms)"
        );
    } else {
        let _ = writeln!(o, "what differs:");
        for (name, (a, b)) in &c.differs {
            let _ = writeln!(o, "  {name}: {a} → {b}");
        }
    }
    let _ = writeln!(o, "intervals: {}", c.unit);
    let _ = writeln!(
        o,
        "\n  {:<44} {:>12} {:>12}  {:<28} VERDICT",
        "FIGURE", "A", "B", "B − A (95% CI)"
    );
    for r in &c.rows {
        let _ = writeln!(
            o,
            "  {:<44} {:>12} {:>12}  {:<28} {}",
            format!("{} ({})", r.name, r.unit),
            value(r.a),
            value(r.b),
            difference(r),
            verdict(r.verdict)
        );
    }
    o
}

fn value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1e6 => format!("{:.2} M", v / 1e6),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn difference(r: &Row) -> String {
    let Some(d) = r.difference else {
        return "-".into();
    };
    let rel =
        r.a.filter(|a| *a != 0.0)
            .map_or(String::new(), |a| format!(" {:+.1}%", 100.0 * d / a));
    match r.half {
        Some(h) => format!("{}{rel} (±{})", value(Some(d)), value(Some(h))),
        None => format!("{}{rel} (no interval)", value(Some(d))),
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Better => "better",
        Verdict::Worse => "worse",
        Verdict::Higher => "higher",
        Verdict::Lower => "lower",
        Verdict::CannotTell => "cannot tell",
    }
}
