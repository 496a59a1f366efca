//! `ksm-trace sweep` on the real kernel: every configuration is recorded and kept, and the
//! summary's figures are the ones the test computes itself from the kept recordings' raw
//! counters. And `bench
//! overhead`, which runs ksmd flat out, must put everything back — also when stopped
//! half-way — and compare with bpftrace running the same measurements.
mod common;

use std::time::Duration;

use common::*;

tests! {
    a_baseline_sweep_gives_each_configuration_its_impact_on_sysbench: Root,
    two_configuration_sweep_summarizes_its_recordings: Root,
    a_baseline_counts_the_workloads_own_saving_and_names_stale_pages_apart: Root,
    bench_overhead_stopped_by_sigterm_restores_knobs_and_stops_workers: Root,
    bench_overhead_compares_with_bpftrace_and_leaves_tracefs_as_found: Root,
}

/// `ksm-trace sweep ARGS -o <session>/sweep`, which must succeed: the directory, the table it
/// printed, and its summary.json.
fn sweep(
    session: &KsmSession,
    args: &[&str],
) -> (std::path::PathBuf, String, Vec<serde_json::Value>) {
    let dir = session.path("sweep");
    let mut all = vec!["sweep"];
    all.extend_from_slice(args);
    all.extend(["-o", dir.to_str().unwrap()]);
    let table = ksm_trace_stdout(&all);
    let stored =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    (dir, table, stored)
}

fn a_baseline_sweep_gives_each_configuration_its_impact_on_sysbench() {
    let session = KsmSession::start("sweep-baseline");
    let (dir, table, stored) = sweep(
        &session,
        &[
            "--workload",
            "vms:2,load=sysbench,tables=1,table-size=2000,time=15s",
            "--pages-to-scan",
            "4000",
            "--sleep-ms",
            "20",
            "--baseline",
        ],
    );
    assert!(
        table.contains("impact") && table.contains("KSM off (baseline)"),
        "{table}"
    );
    assert_eq!(stored.len(), 2);
    let (base, config) = (&stored[0], &stored[1]);
    assert_eq!(base["baseline"], true);
    assert_eq!(config["baseline"], false);
    // Each summary's tps is the sum of its guests' own sysbench figures in its recording.
    let tps = |s: &serde_json::Value| {
        let rec = json(&dir.join(s["recording"].as_str().unwrap()));
        assert_eq!(rec["meta"]["ended_by"], "workload-finished", "{s}");
        let workers = rec["meta"]["workload"]["workers"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(workers.len(), 2);
        let sum: f64 = workers
            .iter()
            .map(|w| w["load"]["transactions_per_sec"].as_f64().unwrap())
            .sum();
        assert_eq!(s["load_tps"].as_f64(), Some(sum), "{s}");
        (sum, rec)
    };
    let (base_tps, base_rec) = tps(base);
    let (config_tps, _) = tps(config);
    // The baseline ran without KSM: ksmd stayed stopped, nothing merged or scanned.
    let delta = |name: &str| {
        base_rec["counters_end"]["ksm"][name].as_i64().unwrap()
            - base_rec["counters_start"]["ksm"][name].as_i64().unwrap()
    };
    assert_eq!(delta("full_scans"), 0);
    assert_eq!(delta("pages_scanned"), 0);
    assert_eq!(base_rec["meta"]["knobs"]["run"], "0");
    // …and says so: kept off, not "started for this run".
    assert_eq!(base_rec["meta"]["ksmd_kept_off"], true);
    assert_eq!(base_rec["meta"]["ksmd_started_for_run"], false);
    assert_eq!(base["saved_mib_end"].as_f64(), Some(0.0));
    assert!(config["saved_mib_end"].as_f64().unwrap() > 10.0, "{config}");
    assert_eq!(base["impact"].as_f64(), Some(1.0));
    assert_eq!(config["impact"].as_f64(), Some(config_tps / base_tps));
    session.assert_knobs_restored();
}

/// KSM pages of processes that exited while ksmd was off stay in pages_sharing until ksmd passes
/// again: a KSM-off baseline after them saved nothing of its own, and says so.
fn a_baseline_counts_the_workloads_own_saving_and_names_stale_pages_apart() {
    let session = KsmSession::start("sweep-stale");
    let nonce = std::process::id() as u64 * 15_485_863;
    let leavers = [0, 1].map(|i| TestProcess::start_for(i, 2000, 0.5, nonce, 600.0));
    let pids = leavers.each_ref().map(TestProcess::pid);
    assert!(
        run_ksmd_until("4000", "10", Duration::from_secs(30), || all_merging(
            &pids, 1000
        )),
        "the leavers merged"
    );
    drop(leavers);
    // Back to the session's knobs, which the sweep must leave as it found them.
    KsmSession::reset_knobs();
    let stale = knob_u64("pages_sharing");
    assert!(
        stale >= 1000,
        "pages_sharing {stale} after the leavers exited"
    );
    let (dir, table, stored) = sweep(
        &session,
        &[
            "--workload",
            "procs:2,pages=1000,dup=0.5",
            "--baseline",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "10",
            "--duration",
            "3s",
        ],
    );
    let base = &stored[0];
    assert_eq!(base["baseline"], true);
    assert_eq!(base["saved_mib_end"].as_f64(), Some(0.0), "{base}");
    let stale_mib = stale as f64 * 4096.0 / 1048576.0;
    assert!(
        (base["not_workload_mib_end"].as_f64().unwrap() - stale_mib).abs() < 0.01,
        "{base}"
    );
    assert!(
        table.contains("the machine's counters also counted"),
        "{table}"
    );
    let report = ksm_trace_stdout(&["report", dir.join("baseline.json").to_str().unwrap()]);
    assert!(report.contains("ksmd kept off for this run"), "{report}");
    assert!(!report.contains("started for this run"), "{report}");
    // The configuration with ksmd on saved the workload's 500 shared pages.
    let config = &stored[1];
    let saved = config["saved_mib_end"].as_f64().unwrap();
    assert!(
        (saved - 500.0 * 4096.0 / 1048576.0).abs() < 0.01,
        "{config}"
    );
    session.assert_knobs_restored();
}

fn two_configuration_sweep_summarizes_its_recordings() {
    let session = KsmSession::start("sweep");
    let (dir, table, stored) = sweep(
        &session,
        &[
            "--workload",
            "procs:2,pages=1500,dup=0.5",
            "--pages-to-scan",
            "500,3000",
            "--sleep-ms",
            "10",
            "--until-settled",
            "--timeout",
            "20s",
            "--interval",
            "500ms",
        ],
    );
    assert!(table.contains("Cheapest configuration"), "{table}");
    assert_eq!(stored.len(), 2);
    for (s, pages) in stored.iter().zip([500, 3000]) {
        assert_eq!(s["knobs"]["pages_to_scan"], pages);
        assert!(dir.join(s["recording"].as_str().unwrap()).exists());
        // Both settle with the same saving: 750 identical pages, one copy kept.
        let saved = s["saved_mib_end"].as_f64().unwrap();
        assert!((saved - 750.0 * 4096.0 / 1048576.0).abs() < 0.01, "{s}");
        assert_eq!(s["ended_by"], "settled", "{s}");
        // The kept recording agrees with the kernel on what it saw.
        let rec = json(&dir.join(s["recording"].as_str().unwrap()));
        assert_eq!(rec["meta"]["knobs"]["pages_to_scan"], pages.to_string());
        assert_summary_derives_from(s, &rec);
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(dir.join("saved-vs-cpu.svg").exists());
    assert!(dir.join("settle-vs-pages-to-scan.svg").exists());
    assert!(pids_named("ksm-procs-").is_empty());
    session.assert_knobs_restored();
}

/// The summary's figures, computed here from the recording's raw fields (not with ksm-trace's
/// report code).
fn assert_summary_derives_from(s: &serde_json::Value, rec: &serde_json::Value) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let duration_s = (f(&rec["meta"]["end_ns"]) - f(&rec["meta"]["start_ns"])) / 1e9;
    assert!(close(f(&s["duration_s"]), duration_s), "{s}");
    let merges: f64 = rec["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| f(&p["merges"]))
        .sum();
    assert!(merges > 0.0);
    assert!(close(f(&s["merges_per_s"]), merges / duration_s), "{s}");
    let end = &rec["timeseries"].as_array().unwrap().last().unwrap()["counters"];
    let page = f(&rec["meta"]["page_size"]);
    let machine =
        (f(&end["ksm"]["pages_sharing"]) + f(&end["ksm"]["ksm_zero_pages"])) * page / 1048576.0;
    // Saved: the workload's own, its workers' share in the end snapshot's split; the rest of
    // the machine's figure apart.
    let workers: Vec<u64> = rec["meta"]["workload"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    let own: f64 = rec["sharing"]["end_snapshot"]["savings"]["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no savings split in the recording"))
        .iter()
        .filter(|p| workers.contains(&p["pid"].as_u64().unwrap()))
        .map(|p| f(&p["saved_pages"]) + f(&p["zero_pages"]))
        .sum::<f64>()
        * page
        / 1048576.0;
    assert!(close(f(&s["saved_mib_end"]), own), "{s}");
    assert!(close(f(&s["not_workload_mib_end"]), machine - own), "{s}");
    let cpu_ns = f(&rec["counters_end"]["ksmd_cpu_ns"]) - f(&rec["counters_start"]["ksmd_cpu_ns"]);
    assert!(
        close(
            f(&s["ksmd_cpu_percent"]),
            cpu_ns * 100.0 / (duration_s * 1e9)
        ),
        "{s}"
    );
    assert!(
        close(f(&s["cpu_s_per_mib_saved"]), cpu_ns / 1e9 / own),
        "{s}"
    );
    assert_eq!(s["ended_by"], rec["meta"]["ended_by"]);
    assert_eq!(s["lost_events"], rec["events"]["lost"]);
}

fn bench_overhead_stopped_by_sigterm_restores_knobs_and_stops_workers() {
    let session = KsmSession::start("bench-sigterm");
    let child = spawn_ksm_trace(&[
        "bench",
        "overhead",
        "--workload",
        "procs:2,pages=2000",
        "--window",
        "5s",
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || knob("sleep_millisecs") == "0"
            && knob("run") == "1"),
        "the bench set ksmd scanning flat out"
    );
    let out = terminate_and_wait(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("knobs restored"), "{stderr}");
    session.assert_left_as_found();
}

fn bench_overhead_compares_with_bpftrace_and_leaves_tracefs_as_found() {
    let session = KsmSession::start("bench-bpftrace");
    let tracefs_before = mount_point("tracefs").is_some();
    // Speed is not asserted here (that is the benchmark's job): only that every tracer ran,
    // bpftrace's scripts counted ksmd's batches (the bench fails otherwise), and nothing stays.
    let stdout = ksm_trace_stdout(&[
        "bench",
        "overhead",
        "--workload",
        "procs:2,pages=2000",
        "--window",
        "1s",
        "--repetitions",
        "1",
        "--default-repetitions",
        "1",
        "--short-pairs",
        "16",
    ]);
    for what in ["without merge latency", "with merge latency"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("ksm-trace vs bpftrace, {what}")))
            .unwrap_or_else(|| panic!("no comparison {what:?} in:\n{stdout}"));
        let ratio: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no ratio at the end of {line:?}"));
        assert!(ratio.is_finite() && ratio > 0.0, "{line}");
    }
    // The default composed from its two states: 12 short windows between samples, 2 with the
    // bracket attached, each against its untraced neighbours (and 2 with the profiler faster).
    assert!(
        stdout.contains("between samples") && stdout.contains("n=12") && stdout.contains("n=2)"),
        "no composed default in:\n{stdout}"
    );
    assert!(
        stdout.contains("untraced, 1 s windows (control)"),
        "no short-window control in:\n{stdout}"
    );
    assert!(
        stdout.contains("target ≥ 0.99: "),
        "no verdict in:\n{stdout}"
    );
    assert_eq!(
        mount_point("tracefs").is_some(),
        tracefs_before,
        "tracefs mount state changed"
    );
    assert!(pids_named("bpftrace").is_empty(), "bpftrace left running");
    assert!(pids_named("ksm-procs-").is_empty(), "workers left running");
    session.assert_knobs_restored();
}
