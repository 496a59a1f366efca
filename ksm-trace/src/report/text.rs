//! The text report.
use std::fmt::Write as _;

use super::{
    histogram::{Unit, fmt_ns, render_log2},
    model::{ProcessReport, Report, all_latencies, full_scan_histogram},
};
use crate::{kernel::process::By, recording::Recording};

pub fn render(rec: &Recording, r: &Report, by: By) -> String {
    let mut o = String::new();
    let ended = match (r.ended_by.as_str(), r.settle_s) {
        ("settled", Some(s)) => format!("settled after {s:.1} s"),
        ("timeout", _) => "timeout before KSM settled".to_owned(),
        (other, _) => other.replace('-', " "),
    };
    let _ = writeln!(
        o,
        "ksm-trace: {:.1} s on Linux {}, ended: {ended}",
        r.duration_s, r.kernel_release
    );
    if !r.complete {
        let _ = writeln!(
            o,
            "INCOMPLETE: {} events were lost (the ring buffer was full; --ring-buffer sets its size). Lower bounds or short for this run: {}. The exactness checks (merges = Δksm_merging_pages, full scans = Δfull_scans) do not hold; the kernel's counters below are exact.",
            r.lost_events,
            r.incomplete.join("; ")
        );
    }
    if let Some(w) = &rec.meta.workload {
        let _ = writeln!(o, "workload: {} ({} workers)", w.spec_text, w.workers.len());
        for wk in &w.workers {
            let ready = w.kind.ready_summary(wk);
            let writes = wk.write_fault_ns.summary();
            let faults = if writes.count > 0 {
                format!(
                    "; {} writes to KSM pages (COW breaks), fault p50 {} p99 {} max {}",
                    writes.count,
                    fmt_ns(writes.p50),
                    fmt_ns(writes.p99),
                    fmt_ns(writes.max)
                )
            } else {
                String::new()
            };
            let seen = r.workers.iter().find(|x| x.pid == wk.pid);
            let saving = seen
                .and_then(|x| Some((x.profit_mib_end?, x.profit_percent_of_memory?, x.mib)))
                .map_or(String::new(), |(mib, share, of)| {
                    format!("; saves {mib:.1} MiB ({share:.1} % of its {of:.0} MiB)")
                });
            let load = seen
                .and_then(|x| x.load.as_ref())
                .map_or(String::new(), |l| {
                    format!(
                        "; sysbench {:.1} tps, p95 {:.1} ms over {:.0} s",
                        l.transactions_per_sec, l.latency_ms_p95, l.duration_s
                    )
                });
            let unmerge = seen
                .and_then(|x| x.unmerge.as_ref())
                .map_or(String::new(), |u| {
                    let count = |n: Option<u64>| n.map_or("not readable".into(), |n| n.to_string());
                    format!(
                        "; unmerged {} pages in {} MADV_UNMERGEABLE calls at {:.1} MiB/s, call p50 {} max {} (KSM pages before: {}; cow_ksm during the calls +{})",
                        u.pages,
                        u.call_ns.count,
                        u.mib_per_s,
                        fmt_ns(u.call_ns.p50),
                        fmt_ns(u.call_ns.max),
                        count(u.ksm_pages),
                        count(u.cow_ksm_during)
                    )
                });
            let _ = writeln!(
                o,
                "  {:>7} {:<16} {ready}{saving}{load}{faults}{unmerge}",
                wk.pid, wk.comm
            );
        }
        let breaks: u64 = w.workers.iter().map(|wk| wk.write_fault_ns.count()).sum();
        // Unmerging a KSM page is a copy-on-write break too, in the kernel's count.
        let unmerged: u64 = r
            .workers
            .iter()
            .filter_map(|wk| wk.unmerge.as_ref()?.ksm_pages)
            .sum();
        if breaks + unmerged > 0 {
            let calls = if unmerged > 0 {
                format!(" writes + {unmerged} KSM pages its unmerge calls broke")
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  COW breaks seen by the workload: {breaks}{calls}; kernel cow_ksm {:+}",
                r.kernel_deltas.get("cow_ksm").copied().unwrap_or(0)
            );
        }
    }
    let knobs: Vec<String> = r.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        o,
        "knobs: {}{}",
        knobs.join(" "),
        if rec.meta.ksmd_started_for_run {
            " (ksmd was off: started for this run)"
        } else {
            ""
        }
    );

    let others = &r.other_actors;
    for c in &others.knob_changes {
        let _ = writeln!(
            o,
            "CHANGED by another process during the window: {} {}→{} (seen {:.1} s in); figures spanning it mix two configurations",
            c.knob, c.from, c.to, c.t_s
        );
    }
    for t in &others.full_scan_resets_s {
        let _ = writeln!(
            o,
            "RESET: full_scans went backwards {t:.1} s in (someone wrote run=2, which unmerges everything): at least {} full scans by the kernel's counter across the reset; the traced count below is exact",
            others.full_scans_across_resets
        );
    }
    let _ = writeln!(
        o,
        "memory saved at the end: {:.1} MiB (pages_sharing + ksm_zero_pages); general_profit {}",
        r.saved_mib_end,
        r.general_profit_mib_end
            .map_or("not available on this kernel".into(), |p| format!(
                "{p:.1} MiB"
            ))
    );
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
        }
    }
    for group in r.groups.iter().filter(|_| summed.is_none()) {
        let members: Vec<&ProcessReport> = r
            .processes
            .iter()
            .filter(|p| p.workload == (group.name == "workload"))
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
    if r.processes.is_empty() {
        let _ = writeln!(o, "  (no KSM activity attributed to a process)");
    }
    let cow: u64 = r.processes.iter().filter_map(|p| p.cow_breaks).sum();
    if cow > 0 {
        let _ = writeln!(
            o,
            "  COW breaks of KSM pages traced: {cow}; kernel cow_ksm {:+}",
            r.kernel_deltas.get("cow_ksm").copied().unwrap_or(0)
        );
    }
    let silent: i64 = r.processes.iter().filter_map(|p| p.silent_unmerges).sum();
    if silent != 0 {
        let _ = writeln!(
            o,
            "  {silent} pages left the stable tree without a tracepoint (a sharer wrote its copy of a KSM page others still map): merges − unmerged − Δksm_merging_pages"
        );
    }

    let lat = &r.merge_latency;
    let _ = writeln!(
        o,
        "\nMerge latency, all processes: {} of {} merges timed{}",
        lat.timed,
        lat.timed + lat.untimed,
        if lat.bracket_attached_percent > 0.0 {
            format!(
                " (mmap_lock bracket attached {:.0}% of the time)",
                lat.bracket_attached_percent
            )
        } else {
            String::new()
        }
    );
    if lat.timed > 0 && lat.untimed > 0 {
        let _ = writeln!(
            o,
            "  a sample: {:.1}% of merges timed in {} windows",
            lat.timed_percent, lat.timed_windows
        );
        // What the windows cannot see comes first: the intervals below hold only for the rest.
        let of = match (lat.burst_head_ns, lat.burst_head_percent) {
            (Some(ns), Some(percent)) => {
                let _ = writeln!(
                    o,
                    "  windows open when merges start, {} into the burst (median): the merges that came that early in their burst, {:.1}% of all, are left out of the sample (but for windows already open), and may be slower",
                    fmt_ns(ns),
                    percent
                );
                "the other merges'"
            }
            _ => "all merges'",
        };
        let _ = match (lat.p50_ci_ns, lat.p99_ci_ns) {
            (Some((l50, h50)), Some((l99, h99))) => writeln!(
                o,
                "  {of} p50 {} (95% CI {}–{}), p99 {} ({}–{}), from how the windows differ, as far as they are representative",
                fmt_ns(lat.all_ns.p50),
                fmt_ns(l50),
                fmt_ns(h50),
                fmt_ns(lat.all_ns.p99),
                fmt_ns(l99),
                fmt_ns(h99)
            ),
            _ => writeln!(
                o,
                "  too few windows for an interval of {of} percentiles (it takes {}: one window's merges are alike, not independent draws)",
                crate::histogram::MIN_CLUSTERS
            ),
        };
    }
    o.push_str(&render_log2(&all_latencies(rec), Unit::Nanoseconds));

    let s = &r.scans;
    let _ = writeln!(
        o,
        "\nFull scans: {} (kernel full_scans {:+}{}); duration p50 {} max {}",
        s.full_scans,
        r.kernel_deltas.get("full_scans").copied().unwrap_or(0),
        if others.full_scan_resets_s.is_empty() {
            String::new()
        } else {
            format!(
                "; at least {} across the run=2 reset",
                others.full_scans_across_resets
            )
        },
        fmt_ns(s.full_scan_ns.p50),
        fmt_ns(s.full_scan_ns.max)
    );
    o.push_str(&render_log2(&full_scan_histogram(rec), Unit::Nanoseconds));
    match s.ksmd_cpu_percent {
        Some(cpu) => {
            let _ = writeln!(
                o,
                "\nksmd batches: {} (on-CPU p50 {} p99 {} max {}); ksmd CPU {cpu:.1}% on-CPU by sched_switch, {:.1}% by schedstat; {}",
                s.batches,
                fmt_ns(s.batch_ns.p50),
                fmt_ns(s.batch_ns.p99),
                fmt_ns(s.batch_ns.max),
                s.ksmd_cpu_percent_schedstat,
                scanned(s)
            );
            o.push_str(&render_log2(&rec.scans.batch_on_cpu_ns, Unit::Nanoseconds));
        }
        None => {
            let _ = writeln!(
                o,
                "\nksmd batches: not traced ({}); ksmd CPU {:.1}% by schedstat; {}",
                super::mechanisms::batches(r.mechanisms.batches),
                s.ksmd_cpu_percent_schedstat,
                scanned(s)
            );
        }
    }

    shootdowns(&mut o, r);
    unmerge_calls(&mut o, r);

    let _ = writeln!(o, "\nKernel counters (end − start)");
    for (name, delta) in &r.kernel_deltas {
        let end = rec
            .counters_end
            .ksm
            .get(name)
            .or(rec.counters_end.vmstat.get(name))
            .copied()
            .unwrap_or(0);
        let mib = |pages: i64| format!("{:+.1} MiB", pages as f64 * page / MIB);
        let size = match name.as_str() {
            "general_profit" => format!("{:+.1} MiB", *delta as f64 / MIB),
            "pages_shared" | "pages_sharing" | "pages_unshared" | "pages_volatile"
            | "ksm_zero_pages" => mib(*delta),
            _ => String::new(),
        };
        let _ = writeln!(o, "  {name:<28} {delta:>+12} {size:>14}   (now {end})");
    }

    let _ = writeln!(
        o,
        "\nSettled (pages_sharing moved < 5% over a full scan): {}; {} time-series samples; {} ksmd profile samples ({} lost) for `ksm-trace flame`",
        r.settle_s
            .map_or("not within the recording".to_owned(), |s| format!(
                "after {s:.1} s"
            )),
        rec.timeseries.len(),
        r.profile_samples,
        r.profile_lost
    );
    if let Some(sh) = &r.sharing {
        let pairs: Vec<String> = sh
            .top_pairs
            .iter()
            .map(|(a, b, n)| format!("{a} ↔ {b} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "\nSharing: {} of the {} KSM pages merged in the window are mapped by two or more recorded processes at its end{}{}; `ksm-trace sharing FILE [--by guest|cgroup]` for the matrix",
            sh.shared_pages,
            sh.ksm_pages,
            if sh.reconciled {
                ""
            } else {
                " (not reconciled: no end snapshot)"
            },
            if pairs.is_empty() {
                String::new()
            } else {
                format!("; most: {}", pairs.join(", "))
            }
        );
    }
    let received: u64 = rec.events.received.values().sum();
    let _ = writeln!(
        o,
        "\nEvents: {received} received, {} lost{}",
        r.lost_events,
        if r.unpaired_merges > 0 {
            format!(", {} new-page merges unpaired", r.unpaired_merges)
        } else {
            String::new()
        }
    );
    let _ = write!(
        o,
        "Mechanisms:\n{}",
        super::mechanisms::lines(&r.mechanisms)
    );
    o
}

/// One row per group: its processes and what they merged.
fn group_table(what: &str, groups: &[super::model::GroupReport]) -> String {
    let mut rows = vec![
        [
            what,
            "PROCESSES",
            "MERGES",
            "UNMERGED",
            "KSM_PAGES_END",
            "MIB",
        ]
        .map(|h| h.to_uppercase())
        .to_vec(),
    ];
    for g in groups {
        rows.push(vec![
            g.name.clone(),
            g.processes.to_string(),
            g.merges.to_string(),
            g.unmerges.to_string(),
            g.merging_pages_end.to_string(),
            format!("{:.1}", g.merging_mib_end),
        ]);
    }
    table(&rows, &[0])
}

fn process_table(processes: &[&ProcessReport], page: f64) -> String {
    let mut rows = vec![
        [
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
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in processes {
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
        let mut row = vec![p.pid.to_string(), name];
        row.extend(
            [
                p.merges,
                p.new_pages,
                p.joins,
                p.failed,
                p.zero_page_merges,
                p.unmerges,
            ]
            .map(|v| v.to_string()),
        );
        row.push(p.cow_breaks.map_or("-".into(), |c| c.to_string()));
        row.extend([pages, mib, lat(l.p50), lat(l.p90), lat(l.p99), lat(l.max)]);
        row.push(p.cgroup.clone().unwrap_or_else(|| "-".into()));
        rows.push(row);
    }
    table(&rows, &[1, 15])
}

const MIB: f64 = (1u64 << 20) as f64;

/// Left-aligns the columns in `left`, right-aligns the rest, two spaces of indent.
fn table(rows: &[Vec<String>], left: &[usize]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        out.push(' ');
        for (c, value) in row.iter().enumerate() {
            let pad = widths[c] - value.chars().count();
            out.push(' ');
            if left.contains(&c) {
                out.push_str(value);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(value);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// Pages ksmd scanned in the window, where the kernel counts them (`pages_scanned`).
fn scanned(s: &super::model::ScansReport) -> String {
    match (s.pages_scanned, s.pages_scanned_per_sec) {
        (Some(n), Some(rate)) => format!("{n} pages scanned ({rate:.0}/s)"),
        _ => "pages scanned: not counted by this kernel (no pages_scanned)".into(),
    }
}

/// The kernel's unmerge calls per process (function probes on unmerge_ksm_pages).
fn unmerge_calls(o: &mut String, r: &Report) {
    let rows: Vec<_> = r
        .processes
        .iter()
        .filter(|p| p.unmerge_call_ns.count > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nUnmerge calls in the kernel (unmerge_ksm_pages: MADV_UNMERGEABLE, prctl off, run=2), per process"
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "PROCESS", "CALLS", "PAGES", "p50", "p99", "MAX", "ns/PAGE"
    );
    for p in rows {
        let u = &p.unmerge_call_ns;
        let per_page = u.mean * u.count as f64 / p.unmerge_call_pages.max(1) as f64;
        let _ = writeln!(
            o,
            "  {:<24} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10.0}",
            format!("{}[{}]", p.comm, p.pid),
            u.count,
            p.unmerge_call_pages,
            fmt_ns(u.p50),
            fmt_ns(u.p99),
            fmt_ns(u.max),
            per_page
        );
    }
}

/// The TLB shootdowns ksmd caused per merge, per process that merged (`--tlb-shootdowns on`).
fn shootdowns(o: &mut String, r: &Report) {
    let rows: Vec<_> = r
        .processes
        .iter()
        .filter_map(|p| Some((p, p.tlb.as_ref()?)))
        .filter(|(p, _)| p.merges + p.zero_page_merges > 0)
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nTLB shootdowns ksmd caused while merging: remote flushes it asked for (tlb:tlb_flush) and the IPIs it sent for them (ipi:ipi_send_cpu[mask]; CPUs idle or in lazy TLB mode are skipped), and what the merges that sent IPIs cost"
    );
    let header = [
        "PROCESS",
        "MERGES",
        "FLUSHES/MERGE",
        "IPIS/MERGE",
        "MERGES W/IPI",
        "p50 W/IPI",
        "MEAN W/O",
        "TIME SHARE",
    ];
    let _ = writeln!(
        o,
        "  {:<24} {:>9} {:>14} {:>10} {:>12} {:>12} {:>12} {:>10}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7]
    );
    for (p, t) in rows {
        let _ = writeln!(
            o,
            "  {:<24} {:>9} {:>14.2} {:>10} {:>12} {:>12} {:>12} {:>10}",
            format!("{}[{}]", p.comm, p.pid),
            p.merges + p.zero_page_merges,
            t.flushes_per_merge,
            t.per_merge.map_or("-".into(), |n| format!("{n:.2}")),
            t.merges_with,
            if t.with_ns.count > 0 {
                fmt_ns(t.with_ns.p50)
            } else {
                "-".into()
            },
            t.without_mean_ns.map_or("-".into(), |ns| fmt_ns(ns as u64)),
            t.share_of_merge_time
                .map_or("-".into(), |s| format!("{:.0} %", s * 100.0)),
        );
    }
}
