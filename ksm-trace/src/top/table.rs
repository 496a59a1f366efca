//! What `top` shows, as text cells: the header lines and one row per process, sorted. The
//! terminal view and `--batch` output both lay out this one table.
use crate::{
    kernel::page_size,
    live::{Frame, ProcessFigures},
    report::histogram::fmt_ns,
};

/// What the rows are sorted by (`s` cycles through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    MergedPages,
    Merges,
    Unmerges,
    CowBreaks,
    P99,
}

impl SortKey {
    pub fn next(self) -> Self {
        match self {
            Self::MergedPages => Self::Merges,
            Self::Merges => Self::Unmerges,
            Self::Unmerges => Self::CowBreaks,
            Self::CowBreaks => Self::P99,
            Self::P99 => Self::MergedPages,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MergedPages => "merged",
            Self::Merges => "merges/s",
            Self::Unmerges => "unmerges/s",
            Self::CowBreaks => "cow/s",
            Self::P99 => "p99",
        }
    }
}

pub const COLUMNS: [&str; 12] = [
    "PID",
    "COMM",
    "GUEST",
    "MERGES/s",
    "UNMERGE/s",
    "MERGED",
    "SAVED",
    "OWES",
    "PROFIT",
    "COW/s",
    "P50",
    "P99",
];

pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<[String; COLUMNS.len()]>,
}

fn mib(bytes: f64) -> String {
    format!("{:.1}M", bytes / (1u64 << 20) as f64)
}

/// The COW storm against what is available (SAVED and OWES are read every 10 s).
fn storm_line(sys: &crate::live::SystemFigures, page: f64) -> String {
    match (sys.storm_pages, sys.mem_available_bytes) {
        (Some(storm), Some(avail)) if storm as f64 * page > avail as f64 => format!(
            "WARNING: a COW storm (every merged page written now) needs {}, more than the {} available",
            mib(storm as f64 * page),
            mib(avail as f64)
        ),
        (Some(storm), Some(avail)) => format!(
            "COW storm (every merged page written now): {} of {} available  (SAVED, OWES: page tables, every 10 s)",
            mib(storm as f64 * page),
            mib(avail as f64)
        ),
        _ => "SAVED, OWES: not on this kernel (its /proc/kpageflags cannot tell KSM pages)".into(),
    }
}

/// The table for `frame`, rates since `previous`, at most `limit` rows.
pub fn table(frame: &Frame, previous: Option<&Frame>, sort: SortKey, limit: usize) -> Table {
    let sys = &frame.system;
    let rates = frame.system_rates(previous);
    let knob = |name: &str| sys.sysfs.get(name).copied().unwrap_or(0);
    let full_scan = sys.last_full_scan_ns.map_or("-".into(), fmt_ns);
    let page = page_size() as f64;
    let cow = if sys.cow_traced {
        "per process"
    } else {
        "machine-wide only (cow_ksm)"
    };
    let timed = if sys.merges > 0 {
        format!(
            "{:.1} % of {} merges",
            sys.timed_merges as f64 * 100.0 / sys.merges as f64,
            sys.merges
        )
    } else {
        "no merges yet".into()
    };
    let header = vec![
        format!(
            "ksmd CPU {:5.1}%  scanned {:>8.0} pages/s  last full scan {full_scan}  run={} pages_to_scan={} sleep_millisecs={}",
            rates.ksmd_cpu_percent,
            rates.pages_scanned,
            knob("run"),
            knob("pages_to_scan"),
            knob("sleep_millisecs"),
        ),
        format!(
            "saving {} (general_profit)  pages_sharing {}  pages_shared {}  COW breaks {:.0}/s ({cow})",
            mib(knob("general_profit") as f64),
            knob("pages_sharing"),
            knob("pages_shared"),
            rates.cow_ksm,
        ),
        format!(
            "merge latency: {timed} timed ({})  lost events {}  sort: {}  [s]ort [p]ause [q]uit",
            sys.latency_mechanism,
            sys.lost_events,
            sort.name()
        ),
        storm_line(sys, page),
    ];

    let mut rows: Vec<(&ProcessFigures, _)> = frame
        .processes
        .iter()
        .map(|p| (p, frame.process_rates(previous, p)))
        .collect();
    let key = |(p, r): &(&ProcessFigures, crate::live::frame::ProcessRates)| match sort {
        SortKey::MergedPages => p.merging_pages as f64,
        SortKey::Merges => r.merges,
        SortKey::Unmerges => r.unmerges,
        SortKey::CowBreaks => r.cow_breaks,
        SortKey::P99 => p.latency_ns.percentile(99.0) as f64,
    };
    rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.0.id.pid.cmp(&b.0.id.pid)));
    let latency = |p: &ProcessFigures, q: f64| {
        if p.latency_ns.is_empty() {
            "-".into()
        } else {
            fmt_ns(p.latency_ns.percentile(q))
        }
    };
    let rows = rows
        .into_iter()
        .take(limit)
        .map(|(p, r)| {
            [
                p.id.pid.to_string(),
                p.id.comm.clone(),
                p.id.guest.clone().unwrap_or_else(|| "-".into()),
                format!("{:.0}", r.merges),
                format!("{:.0}", r.unmerges),
                mib(p.merging_pages as f64 * page),
                p.saved_bytes.map_or("-".into(), |b| mib(b as f64)),
                p.owes_pages.map_or("-".into(), |o| mib(o as f64 * page)),
                mib(p.profit_bytes as f64),
                if sys.cow_traced {
                    format!("{:.0}", r.cow_breaks)
                } else {
                    "-".into()
                },
                latency(p, 50.0),
                latency(p, 99.0),
            ]
        })
        .collect();
    Table { header, rows }
}

impl Table {
    /// Plain text: the header lines, the column names and the rows, aligned.
    pub fn to_text(&self) -> String {
        let mut widths = COLUMNS.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.zip(widths).enumerate() {
                // Names left-aligned, numbers right-aligned.
                if i == 1 || i == 2 {
                    out.push_str(&format!("{cell:<w$} "));
                } else {
                    out.push_str(&format!("{cell:>w$} "));
                }
            }
            out.trim_end().to_owned()
        };
        let mut text = self.header.join("\n");
        text.push_str("\n\n");
        text.push_str(&line(&mut COLUMNS.iter().copied()));
        text.push('\n');
        for row in &self.rows {
            text.push_str(&line(&mut row.iter().map(String::as_str)));
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::frame::tests::{frame, process};

    #[test]
    fn rows_sorted_by_the_chosen_key_and_limited() {
        let before = frame(0.0, vec![process(1, 0, 0), process(2, 0, 0)], 0);
        // pid 1 merged more pages in all; pid 2 merges faster now.
        let now = frame(1.0, vec![process(1, 10, 900), process(2, 50, 100)], 0);
        let by_merged = table(&now, Some(&before), SortKey::MergedPages, 10);
        assert_eq!(by_merged.rows[0][0], "1");
        let by_rate = table(&now, Some(&before), SortKey::Merges, 10);
        assert_eq!(by_rate.rows[0][0], "2");
        assert_eq!(by_rate.rows[0][3], "50");
        assert_eq!(table(&now, Some(&before), SortKey::Merges, 1).rows.len(), 1);
        let text = by_rate.to_text();
        assert!(text.contains("PID COMM"), "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("2 p2")),
            "{text}"
        );
    }

    #[test]
    fn cow_column_says_when_it_is_not_traced() {
        let mut now = frame(1.0, vec![process(1, 10, 10)], 0);
        now.system.merges = 10;
        now.system.timed_merges = 10;
        let t = table(&now, None, SortKey::default(), 10);
        assert_eq!(t.rows[0][9], "-");
        // No page-table walk in this frame: SAVED and OWES say so rather than 0.
        assert_eq!((t.rows[0][6].as_str(), t.rows[0][7].as_str()), ("-", "-"));
        assert!(
            t.header[3].contains("not on this kernel"),
            "{}",
            t.header[3]
        );
        assert!(t.header[1].contains("machine-wide only"));
        assert!(
            t.header[2].contains("100.0 % of 10 merges"),
            "{}",
            t.header[2]
        );
    }

    #[test]
    fn a_storm_that_does_not_fit_is_a_warning() {
        let mut f = frame(1.0, vec![process(1, 10, 10)], 0);
        f.system.storm_pages = Some(1000);
        f.system.mem_available_bytes = Some(1000 * 4096 - 1);
        assert!(storm_line(&f.system, 4096.0).starts_with("WARNING: a COW storm"));
        f.system.mem_available_bytes = Some(4000 * 4096);
        let line = storm_line(&f.system, 4096.0);
        assert!(
            line.starts_with("COW storm (every merged page written now): 3.9M of 15.6M"),
            "{line}"
        );
    }

    #[test]
    fn sort_keys_cycle() {
        let mut k = SortKey::default();
        for _ in 0..5 {
            k = k.next();
        }
        assert_eq!(k, SortKey::default());
    }
}
