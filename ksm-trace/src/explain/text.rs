//! `explain` as text: the machine's state first, then a funnel per process or group with each
//! reason counted, then what merging everything identical would still save.
use std::fmt::Write as _;

use super::{Explanation, Funnel};

/// Each reason's words, in the order shown.
const REASONS: [(&str, &str); 7] = [
    (
        "identical_to_merged",
        "identical to a KSM page, not merged yet (changed between scans, skipped by smart_scan, or not reached by ksmd)",
    ),
    (
        "identical_not_merged",
        "identical to another unmerged page, not merged yet (volatile, skipped by smart_scan, or not reached by ksmd)",
    ),
    ("zero_filled", "zero-filled, not merged yet"),
    ("unique", "content unique among the pages read"),
    ("huge_page", "in a transparent huge page KSM has not split"),
    ("swapped", "swapped out"),
    (
        "not_read",
        "not read: the random sample took none of its pages",
    ),
];

pub fn render(e: &Explanation) -> String {
    let mut o = String::new();
    let mib = |pages: u64| pages as f64 * e.page_size as f64 / (1 << 20) as f64;
    let state = match e.run {
        0 => "KSM is OFF (run=0): ksmd merges nothing until it is started".to_owned(),
        2 => "KSM is UNMERGING (run=2): every merged page is being broken up".to_owned(),
        _ => "KSM is on (run=1)".to_owned(),
    };
    let _ = writeln!(
        o,
        "{state}; use_zero_pages={}, smart_scan={}, max_page_sharing={}",
        if e.use_zero_pages { "on" } else { "off" },
        e.smart_scan.map_or("n/a", |s| if s { "on" } else { "off" }),
        e.max_page_sharing
    );
    reading(&mut o, e);
    if !e.exited.is_empty() {
        let pids: Vec<String> = e.exited.iter().map(u32::to_string).collect();
        let _ = writeln!(o, "Skipped, exited while read: {}", pids.join(", "));
    }
    if e.groups.is_empty() {
        let _ = writeln!(
            o,
            "\nNo process has memory opted in to KSM (madvise MADV_MERGEABLE or prctl PR_SET_MEMORY_MERGE): nothing can merge. MADV_MERGEABLE on a shared mapping leaves no mark: name such a process with --pid"
        );
    }
    for g in &e.groups {
        funnel(&mut o, g, &mib);
    }
    let sampled = e.reading.plan.sampled();
    let _ = writeln!(
        o,
        "\nMerging every identical page{} would still save {}{} pages ({:.1} MiB).",
        if sampled { "" } else { " read" },
        if sampled { "at least about " } else { "" },
        e.would_save_pages,
        mib(e.would_save_pages)
    );
    if let Some(extra) = e.ksm_pages_over_max_sharing.filter(|&d| d > 0) {
        let _ = writeln!(
            o,
            "{extra} more KSM pages than contents: a content mapped more than max_page_sharing={} times takes another KSM page, each a page not saved (the kernel's stable_node_dups less stable_node_chains; {} among the KSM pages read)",
            e.max_page_sharing, e.reading.ksm_pages_duplicated
        );
    }
    o
}

/// What was read, how fast, and — from a sample — how exact the counts are.
fn reading(o: &mut String, e: &Explanation) {
    let r = &e.reading;
    let p = &r.plan;
    if !p.sampled() {
        let _ = writeln!(
            o,
            "Read {} unmerged and {} KSM pages in {:.2} s ({:.0} pages/s; hashes only, nothing written)",
            r.pages_read, r.ksm_pages_read, r.seconds, r.pages_per_second
        );
        return;
    }
    let _ = writeln!(
        o,
        "Read a uniform random sample (--max-pages {}, seed {}): {} of {} unmerged pages ({:.2} %) and {} KSM pages{}, in {:.2} s ({:.0} pages/s; hashes only, nothing written)",
        r.budget.unwrap_or(0),
        p.seed,
        r.pages_read,
        r.pages_eligible,
        p.rate * 100.0,
        r.ksm_pages_read,
        if p.ksm_rate < 1.0 {
            format!(" ({:.2} % of them)", p.ksm_rate * 100.0)
        } else {
            " (all)".to_owned()
        },
        r.seconds,
        r.pages_per_second
    );
    let full_s = (r.pages_eligible as f64 + r.ksm_pages_read as f64 / p.ksm_rate)
        / r.pages_per_second.max(1.0);
    let full = if full_s < 1.0 {
        "under a second".to_owned()
    } else {
        format!("about {full_s:.0} s")
    };
    let _ = writeln!(
        o,
        "What the contents decide is estimated, with its 95 % interval. A twin among the unmerged pages is seen only when the sample took it too: \"identical to another unmerged page\"{} is a floor, its interval reaching up to every page seen unique. --full reads every page ({} at this rate).",
        if p.ksm_rate < 1.0 {
            " (and \"identical to a KSM page\", as not every KSM page was read)"
        } else {
            ""
        },
        full
    );
}

fn funnel(o: &mut String, g: &Funnel, mib: &dyn Fn(u64) -> f64) {
    let _ = writeln!(
        o,
        "\n{}: {} anonymous private → {} opted in → {} known to KSM → {} merged ({:.1} MiB){}",
        g.name,
        g.anon_private,
        g.opted_in,
        g.known,
        g.merged,
        mib(g.merged),
        if g.zero_page_merges > 0 {
            format!(", and {} merged with the zero page", g.zero_page_merges)
        } else {
            String::new()
        }
    );
    let mut lines = Vec::new();
    if g.not_opted_in > 0 {
        lines.push((
            g.not_opted_in,
            "not opted in (no MADV_MERGEABLE, no prctl)".to_owned(),
        ));
    }
    for (key, words) in REASONS {
        let estimated = g.not_merged_95.contains_key(key);
        if let Some(&n) = g.not_merged.get(key).filter(|&&n| n > 0 || estimated) {
            let interval = g
                .not_merged_95
                .get(key)
                .map_or(String::new(), |[lo, hi]| format!(" [95 %: {lo}–{hi}]"));
            lines.push((n, format!("{words}{interval}")));
        }
    }
    if g.shared_mapping > 0 {
        lines.push((
            g.shared_mapping,
            "in shared mappings (MAP_SHARED, memfd, shm): KSM never merges them".to_owned(),
        ));
    }
    if g.file_backed > 0 {
        lines.push((
            g.file_backed,
            "file pages of mapped files (page cache): KSM merges anonymous memory only".to_owned(),
        ));
    }
    if g.hugetlbfs > 0 {
        lines.push((g.hugetlbfs, "in hugetlbfs: KSM never merges it".to_owned()));
    }
    if lines.is_empty() {
        let _ = writeln!(o, "  everything opted in is merged");
    } else {
        let _ = writeln!(o, "  not merged, in pages:");
    }
    for (n, words) in lines {
        let _ = writeln!(o, "  {n:>10}  {words}");
    }
    for (name, pages) in &g.never_merged_vmas {
        let _ = writeln!(o, "              {pages:>8} pages: {name}");
    }
    if let Some(ratio) = g.rmap_ratio_over_64 {
        let _ = writeln!(
            o,
            "  {ratio:.0} rmap items per merged page, over 64: the kernel counts this process's profit as negative"
        );
    }
}
