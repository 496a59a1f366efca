//! What `ksm-trace lab` prints about a transcript: the figures side by side with what they can
//! be held against (fexit vs the mmap_lock bracket on the same merges, traced COW breaks and
//! full scans vs the kernel's counters, merges vs ksm_merging_pages). It judges nothing: the
//! root tests (`tests/lab.rs`) decide what must hold on which kernel, from `lab --json`.
use std::fmt::Write as _;

use serde_json::Value;

use super::scenario::{Step, Transcript};
use crate::{
    histogram::Histogram,
    recording::Recording,
    report::{mechanisms, model::Report},
};

/// The summary of `t`, a few lines per step.
pub fn text(t: &Transcript) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "  doctor: {}", exit(&t.doctor));
    if let Some(doctor) = &t.doctor.json {
        let latency = doctor
            .pointer("/mechanisms/merge_latency")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .map_or("not probed".to_owned(), mechanisms::merge_latency);
        let _ = writeln!(o, "    merge latency would come from: {latency}");
        let missing = missing_ksm_tracepoints(doctor);
        let _ = writeln!(
            o,
            "    ksm:* tracepoints missing: {}",
            if missing.is_empty() {
                "none".to_owned()
            } else {
                missing.join(", ")
            }
        );
    }
    let _ = writeln!(o, "  record: {}", exit(&t.record));
    if t.record.rc != Some(0) {
        for line in t.record.stderr.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(o, "    {line}");
        }
    }
    if let Some(value) = &t.recording {
        match Recording::from_json(&value.to_string()) {
            Ok(rec) => o += &recording(&rec, t),
            Err(e) => {
                let _ = writeln!(o, "  the recording cannot be read: {e:#}");
            }
        }
    }
    for b in &t.backends {
        o += &backend(b);
    }
    for p in &t.problems {
        let _ = writeln!(o, "  missing: {p}");
    }
    o
}

/// One run of the fixed workload under `--backend`: per worker, merges, unmerges and the
/// ksm_merging_pages change; full scans traced against the kernel's.
fn backend(b: &super::scenario::BackendRun) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "  --backend {}: record {}", b.backend, exit(&b.record));
    if b.record.rc != Some(0) {
        for line in b.record.stderr.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(o, "    {line}");
        }
    }
    let Some(rep) = &b.report else {
        return o;
    };
    let num = |v: &Value| v.as_i64().map_or("n/a".into(), |n| n.to_string());
    for p in rep["processes"].as_array().into_iter().flatten() {
        if p["workload"] != true {
            continue;
        }
        let broken = rep["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["pid"] == p["pid"])
            .map_or(Value::Null, |w| w["zero_pages_broken"].clone());
        let _ = writeln!(
            o,
            "    {}: merges {}, unmerges {}, ksm_merging_pages {}→{}; zero-page merges {} ({} undone by the rewrite), ksm_zero_pages {}→{}; kernel unmerge calls {} over {} pages, max {} ns",
            p["comm"].as_str().unwrap_or("?"),
            num(&p["merges"]),
            num(&p["unmerges"]),
            num(&p["ksm_merging_pages_start"]),
            num(&p["ksm_merging_pages_end"]),
            num(&p["zero_page_merges"]),
            num(&broken),
            num(&p["ksm_zero_pages_start"]),
            num(&p["ksm_zero_pages_end"]),
            num(&p["unmerge_call_ns"]["count"]),
            num(&p["unmerge_call_pages"]),
            num(&p["unmerge_call_ns"]["max"])
        );
    }
    let around = match (b.counters_before.full_scans, b.counters_after.full_scans) {
        (Some(a), Some(z)) => format!("{:+}", z - a),
        _ => "?".into(),
    };
    let _ = writeln!(
        o,
        "    full scans: traced {}; kernel {} in the window, {around} around record",
        num(&rep["scans"]["full_scans"]),
        num(&rep["kernel_deltas"]["full_scans"])
    );
    o
}

fn exit(step: &Step) -> String {
    match step.rc {
        Some(rc) => format!("exit {rc}"),
        None => "no exit code (not run, or killed)".into(),
    }
}

/// The ksm:* tracepoints `doctor --json` found missing.
fn missing_ksm_tracepoints(doctor: &Value) -> Vec<String> {
    doctor
        .pointer("/capabilities/tracepoints")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(name, found)| name.starts_with("ksm_") && found.as_bool() == Some(false))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The figures of a recording, each beside its counterpart.
fn recording(rec: &Recording, t: &Transcript) -> String {
    let report = Report::from_recording(rec);
    let m = &rec.mechanisms;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  mechanisms: merge latency: {}",
        mechanisms::merge_latency(m.merge_latency)
    );
    let _ = writeln!(o, "              COW breaks: {}", mechanisms::cow(m.cow));
    let _ = writeln!(
        o,
        "              batches: {}",
        mechanisms::batches(m.batches)
    );
    for f in &m.fallbacks {
        let _ = writeln!(o, "  fallback: {}", mechanisms::fallback(f));
    }

    // merge_latency_ns holds the best mechanism's figure; the bracket's own histogram is kept
    // only for merges fexit timed too.
    let mut best = Histogram::new();
    let mut bracket_too = Histogram::new();
    for p in &rec.processes {
        best.add(&p.stats.merge_latency_ns);
        bracket_too.add(&p.stats.merge_latency_bracket_ns);
    }
    let rows: Vec<(&str, &Histogram)> = if m.merge_latency.is_fexit() {
        vec![
            ("fexit (try_to_merge_one_page)", &best),
            ("mmap_lock bracket", &bracket_too),
        ]
    } else {
        vec![("mmap_lock bracket", &best)]
    };
    let _ = writeln!(
        o,
        "  {:<30} {:>8} {:>10} {:>10}",
        "merge latency, all processes", "count", "p50 ns", "p99 ns"
    );
    for (name, h) in &rows {
        let _ = writeln!(
            o,
            "  {name:<30} {:>8} {:>10} {:>10}",
            h.count(),
            h.percentile(50.0),
            h.percentile(99.0)
        );
    }
    if let [(_, fexit), (_, bracket)] = rows[..]
        && !fexit.is_empty()
        && !bracket.is_empty()
    {
        let _ = writeln!(
            o,
            "  bracket / fexit at p50 (the same merges): {:.2}",
            bracket.percentile(50.0) as f64 / fexit.percentile(50.0).max(1) as f64
        );
    }

    for p in report.processes.iter().filter(|p| p.workload) {
        let merging = match (p.ksm_merging_pages_start, p.ksm_merging_pages_end) {
            (Some(a), Some(b)) => format!("{a}→{b}"),
            _ => "?".into(),
        };
        let _ = writeln!(
            o,
            "  {}: merges {}, unmerges {}, ksm_merging_pages {merging}",
            p.comm, p.counts.merges, p.counts.unmerges
        );
    }
    let around = |before: Option<i64>, after: Option<i64>| match (before, after) {
        (Some(a), Some(b)) => format!("{:+}", b - a),
        _ => "?".into(),
    };
    let delta = |name: &str| {
        report
            .kernel_deltas
            .get(name)
            .map_or("?".into(), |d| format!("{d:+}"))
    };
    let _ = writeln!(
        o,
        "  full scans: traced {}; kernel full_scans {} in the window, {} around record",
        report.scans.full_scans,
        delta("full_scans"),
        around(t.counters_before.full_scans, t.counters_after.full_scans)
    );
    let (how, counted, timed_by): (&str, u64, &str) = if m.cow_traced() {
        let n = report.processes.iter().filter_map(|p| p.cow_breaks).sum();
        ("traced", n, "do_wp_page")
    } else {
        let n = report.workers.iter().map(|w| w.write_fault_ns.count).sum();
        ("seen by the workload", n, "the workload's write")
    };
    let _ = writeln!(
        o,
        "  COW breaks of KSM pages: {how} {counted}; kernel cow_ksm {} in the window, {} around record",
        delta("cow_ksm"),
        around(t.counters_before.cow_ksm, t.counters_after.cow_ksm)
    );
    let per_process: Vec<(String, u64, u64, u64)> = if m.cow_traced() {
        report
            .processes
            .iter()
            .filter_map(|p| {
                let f = &p.cow_fault_ns;
                p.cow_breaks
                    .filter(|&n| n > 0)
                    .map(|n| (p.comm.clone(), n, f.p50, f.p99))
            })
            .collect()
    } else {
        report
            .workers
            .iter()
            .map(|w| {
                let f = &w.write_fault_ns;
                (w.comm.clone(), f.count, f.p50, f.p99)
            })
            .collect()
    };
    for (comm, n, p50, p99) in per_process {
        let _ = writeln!(
            o,
            "    {comm}: {n} breaks, {timed_by} p50 {p50} ns, p99 {p99} ns"
        );
    }
    let _ = writeln!(o, "  events lost: {}", report.lost_events);
    o
}
