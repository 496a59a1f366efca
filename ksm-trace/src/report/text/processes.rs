//! Who merged: a table per group (the workload's processes, the machine's others) or the sums by
//! guest or cgroup, then the COW breaks traced and the unmerges no tracepoint reports.
use std::fmt::Write as _;

use super::{MIB, table::table};
use crate::{
    kernel::process::By,
    recording::Recording,
    report::{
        histogram::fmt_ns,
        model::{GroupReport, ProcessReport, Report},
    },
};

pub(super) fn section(o: &mut String, rec: &Recording, r: &Report, by: By) {
    let page = rec.meta.page_size as f64;
    let summed = match by {
        By::Process => None,
        By::Guest => Some(("guest", &r.by_guest)),
        By::Cgroup => Some(("cgroup", &r.by_cgroup)),
    };
    match summed {
        Some((what, sums)) => {
            let _ = writeln!(
                o,
                "\nBy {what}: sums of its processes (merges: pages that entered the stable tree; unmerged: seen leaving it; KSM_PAGES_END: ksm_merging_pages at the end)"
            );
            o.push_str(&group_table(what, sums));
        }
        None => {
            let _ = writeln!(
                o,
                "\nPer process (merges: pages that entered the stable tree; unmerged: seen leaving it; KSM_PAGES: ksm_merging_pages at start→end)"
            );
            groups(o, rec, r, page);
        }
    }
    if r.processes.is_empty() {
        let _ = writeln!(o, "  (no KSM activity attributed to a process)");
    }
    if r.exited_cleanup_pages > 0 {
        let _ = writeln!(
            o,
            "ksmd cleaning up after processes that exited before the window: {} pages left the stable tree",
            r.exited_cleanup_pages
        );
    }
    let silent: i64 = r.processes.iter().filter_map(|p| p.silent_unmerges).sum();
    if silent != 0 {
        let _ = writeln!(
            o,
            "  {silent} pages left the stable tree without a tracepoint (a sharer wrote its copy of a KSM page others still map): merges − unmerged − Δksm_merging_pages"
        );
    }
}

/// The workload's processes, then the machine's others: a line of totals and a table each.
fn groups(o: &mut String, rec: &Recording, r: &Report, page: f64) {
    for group in &r.groups {
        let members: Vec<&ProcessReport> = r
            .processes
            .iter()
            .filter(|p| p.pid != 0 && p.workload == (group.name == "workload"))
            .collect();
        if members.is_empty() && (group.name != "workload" || rec.meta.workload.is_none()) {
            continue;
        }
        let _ = writeln!(
            o,
            "{}: {} processes, {} merges, {} unmerged, {} pages merging at the end ({:.1} MiB)",
            if group.name == "workload" {
                "Workload (started by ksm-trace)"
            } else {
                "Other processes on the machine"
            },
            group.processes,
            group.merges,
            group.unmerges,
            group.merging_pages_end,
            group.merging_mib_end
        );
        o.push_str(&process_table(&members, page));
    }
}

/// One row per group: its processes and what they merged.
fn group_table(what: &str, groups: &[GroupReport]) -> String {
    let header = [
        what,
        "PROCESSES",
        "MERGES",
        "UNMERGED",
        "KSM_PAGES_END",
        "MIB",
    ];
    let mut rows = vec![header.map(|h| h.to_uppercase()).to_vec()];
    // COW breaks where they were traced.
    let cow = groups.iter().any(|g| g.cow_breaks.is_some());
    if cow {
        rows[0].push("COW".into());
    }
    for g in groups {
        let mut row = vec![
            g.name.clone(),
            g.processes.to_string(),
            g.merges.to_string(),
            g.unmerges.to_string(),
            g.merging_pages_end.to_string(),
            format!("{:.1}", g.merging_mib_end),
        ];
        if cow {
            row.push(g.cow_breaks.map_or("-".into(), |c| c.to_string()));
        }
        rows.push(row);
    }
    table(&rows, &[0])
}

const PROCESS_COLUMNS: [&str; 16] = [
    "PID",
    "COMM",
    "MERGES",
    "NEW",
    "JOINS",
    "FAILED",
    "ZERO",
    "UNMERGED",
    "COW",
    "KSM_PAGES",
    "MIB",
    "LAT_P50",
    "P90",
    "P99",
    "MAX",
    "CGROUP",
];

fn process_table(processes: &[&ProcessReport], page: f64) -> String {
    let mut rows = vec![PROCESS_COLUMNS.map(String::from).to_vec()];
    rows.extend(processes.iter().map(|p| process_row(p, page)));
    table(&rows, &[1, 15])
}

fn process_row(p: &ProcessReport, page: f64) -> Vec<String> {
    let pages = match (p.ksm_merging_pages_start, p.ksm_merging_pages_end) {
        (Some(s), Some(e)) => format!("{s}→{e}"),
        (None, Some(e)) => format!("?→{e}"),
        (Some(s), None) => format!("{s}→gone"),
        (None, None) => "-".into(),
    };
    let mib = p
        .ksm_merging_pages_end
        .map_or("-".into(), |e| format!("{:.1}", e as f64 * page / MIB));
    let l = &p.merge_latency_ns;
    let lat = |v: u64| {
        if l.count == 0 {
            "-".to_owned()
        } else {
            fmt_ns(v)
        }
    };
    let name = match &p.guest {
        // ksm-trace's own guests already carry their name as comm.
        Some(guest) if *guest != p.comm => format!("{} [{guest}]", p.comm),
        _ => p.comm.clone(),
    };
    let c = &p.counts;
    let mut row = vec![p.pid.to_string(), name];
    row.extend(
        [
            c.merges,
            c.new_pages,
            c.joins,
            c.failed,
            c.zero_page_merges,
            c.unmerges,
        ]
        .map(|v| v.to_string()),
    );
    row.push(p.cow_breaks.map_or("-".into(), |c| c.to_string()));
    row.extend([pages, mib, lat(l.p50), lat(l.p90), lat(l.p99), lat(l.max)]);
    row.push(p.cgroup.clone().unwrap_or_else(|| "-".into()));
    row
}
