//! A long `record` over a workload that keeps ksmd merging: ksm-trace's memory stays bounded,
//! no event is lost, the exactness checks still hold at the end, and the report of the
//! (large) recording renders quickly. CI runs it for 20 s; `cargo xtask soak --duration 1h`
//! runs the real soak (KSM_TRACE_SOAK_SECS) and prints the figures.
mod common;

use std::time::{Duration, Instant};

use common::*;

tests! {
    soak_keeps_memory_bounded_and_counts_exact: Root,
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn soak_keeps_memory_bounded_and_counts_exact() {
    let session = KsmSession::start("soak");
    let secs: u64 = std::env::var("KSM_TRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let duration = format!("{secs}s");
    let (mut child, out) = spawn_record(
        &session,
        &[
            "--workload",
            "procs:3,pages=8000,write=0.02",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "10",
            "--duration",
            &duration,
        ],
    );
    // RSS once a second: the largest, and at a quarter and at the end of the run.
    let started = Instant::now();
    let (mut max, mut at_quarter, mut last) = (0u64, None, 0u64);
    while child.try_wait().unwrap().is_none() {
        if let Some(rss) = rss_kib(child.id()) {
            max = max.max(rss);
            last = rss;
            if at_quarter.is_none() && started.elapsed() >= Duration::from_secs(secs / 4) {
                at_quarter = Some(rss);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(child.wait().unwrap().success());
    let size = std::fs::metadata(&out).unwrap().len();
    let report_started = Instant::now();
    let rep = report(&out);
    let report_s = report_started.elapsed().as_secs_f64();
    let rec = json(&out);
    let traced = rep["scans"]["full_scans"].as_u64().unwrap();
    let merges: u64 = rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["merges"].as_u64().unwrap())
        .sum();
    eprintln!(
        "soak: {secs} s; ksm-trace RSS max {max} KiB, {} KiB at 1/4, {last} KiB at the end; recording {size} bytes, {} samples; {merges} merges, {traced} full scans; {} events lost; report in {report_s:.2} s",
        at_quarter.map_or("no sample".to_owned(), |q| q.to_string()),
        rec["timeseries"].as_array().unwrap().len(),
        rep["lost_events"]
    );
    assert_eq!(rep["lost_events"], 0);
    assert_eq!(rep["kernel_deltas"]["full_scans"].as_u64().unwrap(), traced);
    assert!(merges > 0);
    // Memory: no growth with time beyond the time series' few KiB a sample.
    // Without a sample at a quarter of the run there is nothing to measure growth from.
    let quarter = at_quarter.unwrap_or_else(|| {
        panic!(
            "no RSS sample of ksm-trace at a quarter of the run ({} s of {secs} s): it exited before, or its /proc/<pid>/status could not be read, so its memory growth is unchecked",
            secs / 4
        )
    });
    let allowed = quarter + 64 + secs * 4;
    assert!(last <= allowed, "RSS {quarter} → {last} KiB over {secs} s");
    assert!(max < 256 * 1024, "RSS {max} KiB");
    assert!(report_s <= 2.0, "report took {report_s:.2} s");
    session.assert_knobs_restored();
}
