//! What each process, guest or cgroup saves and owes, as text (savings.rs computes it): one
//! renderer for `sharing --now` and record's report.
use std::{collections::BTreeMap, fmt::Write as _};

use crate::recording::schema::Savings;

/// What each group (`group_of` a pid) saves and owes, against the kernel's own figures.
pub fn text(s: &Savings, group_of: impl Fn(u32) -> String) -> String {
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let page = s.page_size as f64;
    let mut groups: BTreeMap<String, (f64, i64, i64, u64)> = BTreeMap::new();
    for p in &s.processes {
        let g = groups.entry(group_of(p.pid)).or_default();
        g.0 += p.saved_pages + p.zero_pages as f64;
        g.1 += p.saved_bytes;
        g.2 += p.kernel_profit_bytes;
        g.3 += p.owes_pages;
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nWhat each saves and owes (a KSM page mapped m times saves m − 1 pages, credited (m − 1)/m to each mapping; zero-page merges a page each; less {} B of rmap item per page KSM tracks):",
        s.rmap_item_bytes
    );
    let _ = writeln!(
        o,
        "  {:>12} {:>12} {:>14} {:>12}  group",
        "saved pages", "net MiB", "kernel's MiB", "owes MiB"
    );
    for (name, (pages, bytes, kernel, owes)) in &rows {
        let _ = writeln!(
            o,
            "  {pages:>12.1} {:>12.2} {:>14.2} {:>12.2}  {name}",
            mib(*bytes as f64),
            mib(*kernel as f64),
            mib(*owes as f64 * page)
        );
    }
    let _ = writeln!(
        o,
        "  (net: what the group saves less its rmap items; kernel's: ksm_process_profit summed, which credits every merged mapping a whole page; owes: what the host must find if the group wrote all its merged pages now)"
    );
    let _ = writeln!(
        o,
        "\nSplit saved pages: {:.1} of pages_sharing {}{}",
        s.saved_pages,
        s.pages_sharing,
        if s.stale_pages.abs() >= 0.5 {
            format!(
                "; {:.0} are stale: the kernel still counts mappings that are gone (a process exited, a page was written or unmerged) until ksmd passes them again",
                s.stale_pages
            )
        } else {
            " (all of it)".into()
        }
    );
    let _ = writeln!(
        o,
        "Net saving: {:.2} MiB; general_profit {}; the kernel's per-process profits sum to {:.2} MiB ({:+.2} MiB against the exact split)",
        mib(s.saved_bytes as f64),
        s.general_profit
            .map_or("not on this kernel".into(), |g| format!(
                "{:.2} MiB",
                mib(g as f64)
            )),
        mib(s.kernel_profit_bytes as f64),
        mib((s.kernel_profit_bytes - s.saved_bytes) as f64)
    );
    let storm = mib(s.storm_pages as f64 * page);
    match s.mem_available_bytes {
        Some(avail) if s.storm_exceeds_available() => {
            let _ = writeln!(
                o,
                "WARNING: a COW storm (every merged page written now) needs {storm:.2} MiB, more than the {:.2} MiB available: the host would reclaim, swap or OOM",
                mib(avail as f64)
            );
        }
        Some(avail) => {
            let _ = writeln!(
                o,
                "COW storm (every merged page written now): {storm:.2} MiB to find, of {:.2} MiB available ({:.1} %)",
                mib(avail as f64),
                storm / mib(avail as f64) * 100.0
            );
        }
        None => {
            let _ = writeln!(
                o,
                "COW storm (every merged page written now): {storm:.2} MiB to find"
            );
        }
    }
    o
}
