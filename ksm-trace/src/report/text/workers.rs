//! The workload ksm-trace started: its spec, a line per worker (how it got ready, what it
//! saves, its load's figures, its own writes and unmerge calls), and the COW breaks it saw
//! beside the kernel's count.
use std::fmt::Write as _;

use crate::{
    recording::{Recording, schema::Worker},
    report::{
        histogram::fmt_ns,
        model::{Report, WorkerReport},
    },
};

pub(super) fn section(o: &mut String, rec: &Recording, r: &Report) {
    let Some(w) = &rec.meta.workload else {
        return;
    };
    let _ = writeln!(o, "workload: {} ({} workers)", w.spec_text, w.workers.len());
    for wk in &w.workers {
        let seen = r.workers.iter().find(|x| x.pid == wk.pid);
        let _ = writeln!(
            o,
            "  {:>7} {:<16} {}{}",
            wk.pid,
            wk.comm,
            w.kind.ready_summary(wk),
            seen.map_or(String::new(), |x| figures(wk, x))
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

/// What one worker saves, its load's figures, its writes to KSM pages and its unmerge calls.
fn figures(wk: &Worker, x: &WorkerReport) -> String {
    let mut line = String::new();
    if let (Some(mib), Some(share)) = (x.profit_mib_end, x.profit_percent_of_memory) {
        let _ = write!(
            line,
            "; saves {mib:.1} MiB ({share:.1} % of its {:.0} MiB)",
            x.mib
        );
    }
    if let Some(l) = &x.load {
        let _ = write!(
            line,
            "; sysbench {:.1} tps, p95 {:.1} ms over {:.0} s",
            l.transactions_per_sec, l.latency_ms_p95, l.duration_s
        );
    }
    let writes = wk.write_fault_ns.summary();
    if writes.count > 0 {
        let _ = write!(
            line,
            "; {} writes to KSM pages (COW breaks), fault p50 {} p99 {} max {}",
            writes.count,
            fmt_ns(writes.p50),
            fmt_ns(writes.p99),
            fmt_ns(writes.max)
        );
    }
    if let Some(u) = &x.unmerge {
        let count = |n: Option<u64>| n.map_or("not readable".into(), |n| n.to_string());
        let _ = write!(
            line,
            "; unmerged {} pages in {} MADV_UNMERGEABLE calls at {:.1} MiB/s, call p50 {} max {} (KSM pages before: {}; cow_ksm during the calls +{})",
            u.pages,
            u.call_ns.count,
            u.mib_per_s,
            fmt_ns(u.call_ns.p50),
            fmt_ns(u.call_ns.max),
            count(u.ksm_pages),
            count(u.cow_ksm_during)
        );
    }
    line
}
