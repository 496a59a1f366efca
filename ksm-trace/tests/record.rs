//! `ksm-trace record` against the real kernel: the eBPF counts must equal what the kernel
//! itself counts (/proc/<pid>/ksm_stat, /sys/kernel/mm/ksm/full_scans), knobs must come back,
//! and no worker may survive.
mod common;

use std::{process::Command, time::Duration};

use common::*;

tests! {
    merges_equal_ksm_merging_pages_per_process: Root,
    auto_latency_mode_keeps_exact_counts: Root,
    existing_processes_by_pid_match_ksm_stat_read_by_the_test: Root,
    sigterm_mid_run_restores_knobs_and_stops_workers: Root,
    bad_input_is_one_clear_line_and_changes_nothing: Root,
    flame_graph_and_time_series_from_a_real_recording: Root,
    workload_with_no_options_reaches_it_and_ends_once_settled: Root,
    lost_events_are_counted_and_mark_the_report_incomplete: Root,
    auto_samples_merge_latency_when_merges_start_on_a_budget: Root,
    another_process_changing_knobs_is_reported: Root,
    probes_for_every_process_can_be_turned_off: Root,
    cow_breaks_per_process_from_the_fault_tracepoints_are_the_kernels: Root,
    every_merging_process_gets_timed_merges_by_default: Root,
}

const PAGES: u64 = 1500;
const DUP: f64 = 0.6;

fn record_procs(extra: &[&str], session: &KsmSession) -> (serde_json::Value, serde_json::Value) {
    let workload = format!("procs:3,pages={PAGES},dup={DUP}");
    let mut args = vec![
        "--workload",
        &workload,
        "--duration",
        "6s",
        "--pages-to-scan",
        "1000",
        "--sleep-ms",
        "10",
    ];
    args.extend_from_slice(extra);
    let scans_before = knob_u64("full_scans");
    let (rec, rep) = record(session, &args);
    let scans_after = knob_u64("full_scans");
    // ksmd is off before and after (run=0 restored), so the kernel's full_scans moved inside
    // ksm-trace's window, and once more after it: ksm-trace lets ksmd finish one full scan
    // after the workers exit, which drops what they left in its trees, before stopping it.
    let traced = rep["scans"]["full_scans"].as_u64().unwrap();
    assert_eq!(
        traced + 1,
        scans_after - scans_before,
        "full scans: traced {traced} + the one after the window vs kernel"
    );
    assert_eq!(rep["kernel_deltas"]["full_scans"].as_u64().unwrap(), traced);
    (rec, rep)
}

fn merges_equal_ksm_merging_pages_per_process() {
    let session = KsmSession::start("merges");
    let (rec, rep) = record_procs(&["--merge-latency", "always"], &session);
    let workers = rec["meta"]["workload"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    for (i, worker) in workers.iter().enumerate() {
        let pid = worker["pid"].as_u64().unwrap();
        let p = entry_for_pid(&rep, pid);
        assert_eq!(p["comm"], format!("ksm-procs-{i}"), "attribution by comm");
        let merges = p["merges"].as_u64().unwrap();
        let start = p["ksm_merging_pages_start"].as_u64().unwrap();
        let end = p["ksm_merging_pages_end"].as_u64().unwrap();
        assert_eq!(
            merges,
            end - start,
            "pid {pid}: merges vs Δksm_merging_pages"
        );
        // Every shared page of every worker merges within a few full scans.
        assert_eq!(
            merges,
            (PAGES as f64 * DUP).round() as u64,
            "pid {pid}: all shared pages merged"
        );
        // With the bracket attached throughout, every merge is timed.
        assert_eq!(
            p["merge_latency_ns"]["count"].as_u64().unwrap(),
            merges,
            "pid {pid}: latency count"
        );
        assert!(p["merge_latency_ns"]["p50"].as_u64().unwrap() > 0);
        assert!(!alive(pid as u32), "worker {pid} survived");
    }
    assert_eq!(rep["lost_events"], 0);
    assert!(rep["scans"]["full_scan_ns"]["count"].as_u64().unwrap() > 0);
    assert!(rep["scans"]["full_scan_ns"]["p50"].as_u64().unwrap() > 0);
    assert!(rep["scans"]["batches"].as_u64().unwrap() > 0);
    // `always`: fexit where the kernel allows it, else the bracket for the whole run.
    let latency = &rep["mechanisms"]["merge_latency"];
    assert!(
        *latency == serde_json::json!({"kind": "fexit"})
            || *latency == serde_json::json!({"kind": "bracket", "attached": {"kind": "always"}}),
        "{latency}"
    );
    assert!(pids_named("ksm-procs-").is_empty(), "a worker survived");
    session.assert_knobs_restored();
    session.assert_worker_pages_released();
}

fn auto_latency_mode_keeps_exact_counts() {
    let session = KsmSession::start("auto");
    let (_rec, rep) = record_procs(&[], &session);
    for p in procs_workers(&rep) {
        let merges = p["merges"].as_i64().unwrap();
        assert_eq!(merges, delta(p, "ksm_merging_pages"), "{p}");
        let timed = p["merge_latency_ns"]["count"].as_i64().unwrap();
        assert_eq!(
            timed + p["untimed_merges"].as_i64().unwrap(),
            merges,
            "timed + untimed = merges"
        );
    }
    session.assert_knobs_restored();
}

fn existing_processes_by_pid_match_ksm_stat_read_by_the_test() {
    let session = KsmSession::start("pids");
    let nonce = std::process::id() as u64 * 7919;
    let procs: Vec<TestProcess> = (0..2)
        .map(|i| TestProcess::start(i, 1000, 0.5, nonce))
        .collect();
    let before: Vec<u64> = procs.iter().map(|p| ksm_merging_pages(p.pid())).collect();
    let pids = pid_args(procs.iter().map(TestProcess::pid));
    let mut args = vec![
        "--duration",
        "5s",
        "--pages-to-scan",
        "1000",
        "--sleep-ms",
        "10",
    ];
    args.extend(pids.iter().map(String::as_str));
    let (_, rep) = record(&session, &args);
    let processes = rep["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2, "only the requested pids are reported");
    for (p, before) in procs.iter().zip(before) {
        // ksmd is paused again (run=0 restored): the test's own read is final.
        let after = ksm_merging_pages(p.pid());
        let row = entry_for_pid(&rep, p.pid());
        assert_eq!(
            row["merges"].as_u64().unwrap(),
            after - before,
            "pid {}",
            p.pid()
        );
        assert_eq!(after - before, 500);
    }
    session.assert_knobs_restored();
}

fn sigterm_mid_run_restores_knobs_and_stops_workers() {
    let session = KsmSession::start("sigterm");
    let (mut child, out) = spawn_record(
        &session,
        &[
            "--workload",
            "procs:2,pages=500",
            "--duration",
            "60s",
            "--sleep-ms",
            "10",
        ],
    );
    assert!(
        procs_workers_within(2, Duration::from_secs(20)),
        "workers started"
    );
    assert!(
        ksmd_runs_within(Duration::from_secs(10)),
        "ksmd started for the run"
    );
    terminate(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    let rec = json(&out);
    assert_eq!(rec["meta"]["ended_by"], "terminate");
    session.assert_left_as_found();
}

fn bad_input_is_one_clear_line_and_changes_nothing() {
    let session = KsmSession::start("errors");
    let out = session.path("x.json");
    let o = out.to_str().unwrap();
    assert_clean_error(
        &["record", "--workload", "disks:2", "-o", o],
        "unknown workload kind",
    );
    assert_clean_error(
        &["record", "--workload", "procs:2,color=red", "-o", o],
        "unknown procs option",
    );
    assert_clean_error(
        &["record", "--workload", "procs:256,pages=67108864", "-o", o],
        "available",
    );
    assert_clean_error(
        &["record", "--pid", "999999999", "-o", o],
        "no process with pid 999999999",
    );
    assert_clean_error(
        &[
            "record",
            "--duration",
            "1s",
            "-o",
            "/proc/no/such/dir/x.json",
        ],
        "cannot write the recording",
    );
    assert_clean_error(
        &["record", "--pages-to-scan", "0", "-o", o],
        "--pages-to-scan 0",
    );
    assert_clean_error(
        &["record", "--profile-hz", "20000", "-o", o],
        "'--profile-hz <PROFILE_HZ>': 20000 is not in 0..=10000",
    );
    // A backend the kernel cannot run, asked for by name, is refused before a workload starts.
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        assert_clean_error(
            &[
                "record",
                "--workload",
                "procs:1,pages=100",
                "--backend",
                "kprobes",
                "-o",
                o,
            ],
            "--backend kprobes: this kernel",
        );
    }
    assert_clean_error(&["report", "/nonexistent.json"], "cannot read recording");
    std::fs::write(&out, "{\"hello\": 1}").unwrap();
    assert_clean_error(&["report", o], "not a ksm-trace recording");
    // Not root: say so, before anything else.
    let unprivileged = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin(),
            "record",
            "--duration",
            "1s",
            "-o",
            "/tmp/x.json",
        ])
        .output()
        .unwrap();
    assert!(!unprivileged.status.success());
    let stderr = String::from_utf8_lossy(&unprivileged.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    session.assert_knobs_restored();
    assert!(pids_named("ksm-procs-").is_empty());
}

fn flame_graph_and_time_series_from_a_real_recording() {
    let session = KsmSession::start("flame");
    let (rec, rep) = record(
        &session,
        &[
            "--workload",
            "procs:3,pages=2000,dup=0.5",
            "--duration",
            "6s",
            "--interval",
            "500ms",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "10",
        ],
    );
    let out = session.path("rec.json");

    // ksmd's stacks: rooted at ksmd, through ksm's own scan thread.
    let folded = ksm_trace_stdout(&["flame", out.to_str().unwrap(), "--folded"]);
    assert!(folded.lines().all(|l| l.starts_with("ksmd;")), "{folded}");
    assert!(
        folded.lines().any(|l| l.contains(";ksm_scan_thread")),
        "{folded}"
    );
    let svg = session.path("flame.svg");
    ksm_trace_ok(&["flame", out.to_str().unwrap(), "-o", svg.to_str().unwrap()]);
    assert!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .contains("ksm_scan_thread")
    );

    // One row per interval (plus the edges), monotonic.
    let series = rec["timeseries"].as_array().unwrap();
    assert!(
        (12..=16).contains(&series.len()),
        "{} samples for 6 s at 500 ms",
        series.len()
    );
    let times: Vec<u64> = series.iter().map(|s| s["t_ns"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    let csv = ksm_trace_stdout(&["report", out.to_str().unwrap(), "--csv"]);
    assert_eq!(csv.lines().count(), series.len() + 1);

    // Nothing writes after merging, so KSM settles within the run.
    let settle = rep["settle_s"].as_f64().expect("settle time reported");
    assert!(settle > 0.0 && settle <= rep["duration_s"].as_f64().unwrap());
    let plots = session.path("plots");
    ksm_trace_ok(&["plot", out.to_str().unwrap(), "-o", plots.to_str().unwrap()]);
    assert!(plots.join("processes.svg").exists());
    session.assert_knobs_restored();
}

/// The card's command with nothing added (`record --workload SPEC`): ksm-trace picks a scan
/// rate that reaches its own workload and says so, ends once KSM has settled, separates the
/// workload from the machine's other KSM processes (which show their start counts), and puts
/// the knobs back.
fn workload_with_no_options_reaches_it_and_ends_once_settled() {
    let session = KsmSession::start("no-options");
    // Two processes of the machine's own, merged before ksm-trace starts.
    let nonce = std::process::id() as u64 * 104_729;
    let others: Vec<TestProcess> = (0..2)
        .map(|i| TestProcess::start_for(i, 1000, 0.5, nonce, 600.0))
        .collect();
    let pids: Vec<u32> = others.iter().map(TestProcess::pid).collect();
    let merged = || all_merging(&pids, 500);
    assert!(
        run_ksmd_until("1000", "10", Duration::from_secs(20), merged),
        "the machine's own processes merged"
    );
    // Back to the session's odd, slow values: 123 pages every 45 ms.
    KsmSession::reset_knobs();

    let out = session.path("no-options.json");
    let started = std::time::Instant::now();
    let result = ksm_trace(&[
        "record",
        "--workload",
        "procs:2,pages=8000",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120), "{stderr}");
    let chosen: u64 = stderr
        .split("pages_to_scan 123→")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line about the chosen rate in:\n{stderr}"));
    assert!(stderr.contains("ended: settled after"), "{stderr}");

    let rec = json(&out);
    let rep = report(&out);
    assert_eq!(rec["meta"]["knobs"]["pages_to_scan"], chosen.to_string());
    assert_eq!(rec["meta"]["knobs"]["sleep_millisecs"], "45");
    assert_eq!(rep["ended_by"], "settled");
    // At the chosen rate a full scan of the workload's 16 000 pages (and the 2000 the other
    // processes keep in KSM) takes about 2 s: 45 ms per batch of `chosen` pages.
    let batches_per_scan = 18_000u64.div_ceil(chosen);
    assert!(
        batches_per_scan * 45 <= 2_100,
        "{chosen} pages per 45 ms batch"
    );
    let p50 = rep["scans"]["full_scan_ns"]["p50"].as_u64().unwrap();
    assert!(p50 < 4_000_000_000, "full scan p50 {p50} ns");
    assert!(rep["scans"]["full_scans"].as_u64().unwrap() >= 3);

    let workers = rec["meta"]["workload"]["workers"].as_array().unwrap();
    for w in workers {
        let p = entry_for_pid(&rep, w["pid"].as_u64().unwrap());
        assert_eq!(p["workload"], true);
        let merges = p["merges"].as_i64().unwrap();
        assert_eq!(merges, 4000, "every identical page merged: {p}");
        assert_eq!(merges, delta(p, "ksm_merging_pages"), "{p}");
    }
    for other in &others {
        let p = entry_for_pid(&rep, other.pid());
        assert_eq!(p["workload"], false, "{p}");
        // Known from the start: its count before tracing, not "?".
        assert_eq!(p["ksm_merging_pages_start"], 500, "{p}");
        assert_eq!(p["ksm_merging_pages_end"], 500, "{p}");
    }
    let groups = rep["groups"].as_array().unwrap();
    assert_eq!(groups[0]["name"], "workload");
    assert_eq!(groups[0]["merges"], 8000);
    assert_eq!(groups[1]["name"], "other");
    assert!(groups[1]["processes"].as_u64().unwrap() >= 2);
    let text = report_text(&out);
    assert!(
        text.contains("Workload (started by ksm-trace): 2 processes, 8000 merges"),
        "{text}"
    );
    assert!(text.contains("Other processes on the machine"), "{text}");
    assert!(text.contains("memory saved at the end:"), "{text}");
    drop(others);
    session.assert_knobs_restored();
    assert!(pids_named("ksm-procs-").is_empty(), "a worker survived");
}

/// A forced overflow: a 4 KiB ring buffer cannot hold a merge burst of ksmd scanning flat out.
/// The loss is counted and shown, the report marks itself incomplete, and what it traced is a
/// lower bound of what the kernel counted — never a silently wrong number.
fn lost_events_are_counted_and_mark_the_report_incomplete() {
    let session = KsmSession::start("lost");
    let (rec, rep) = record(
        &session,
        &[
            "--workload",
            "procs:2,pages=8000",
            "--pages-to-scan",
            "8000",
            "--sleep-ms",
            "0",
            "--ring-buffer",
            "4k",
            "--duration",
            "4s",
        ],
    );
    let lost = rep["lost_events"].as_u64().unwrap();
    assert!(lost > 0, "a 4 KiB ring buffer lost nothing");
    assert_eq!(rec["events"]["lost"], lost);
    assert_eq!(rep["complete"], false);
    assert!(!rep["incomplete"].as_array().unwrap().is_empty());
    for w in rec["meta"]["workload"]["workers"].as_array().unwrap() {
        let p = entry_for_pid(&rep, w["pid"].as_u64().unwrap());
        let merged = delta(p, "ksm_merging_pages");
        assert_eq!(merged, 4000, "the kernel merged every identical page: {p}");
        let traced = p["merges"].as_i64().unwrap();
        assert!(
            traced < merged,
            "traced {traced} of {merged}: some were lost"
        );
    }
    let text = report_text(&session.path("rec.json"));
    assert!(
        text.contains(&format!("INCOMPLETE: {lost} events were lost")),
        "{text}"
    );
    session.assert_knobs_restored();
}

/// `--merge-latency auto` on a workload that keeps merging (in bursts: each worker rewrites
/// its pages every second, and ksmd, never sleeping, re-merges them over tens of ms): the
/// bracket is attached 50 ms when merges start, on a budget of one window per 5 s (so ksmd
/// keeps its scan rate, and a burst is not missed for opening at the wrong moment); the report
/// says what share of the merges that timed, and keeps each window's timed merges.
fn auto_samples_merge_latency_when_merges_start_on_a_budget() {
    let session = KsmSession::start("sampled");
    let (rec, rep) = record(
        &session,
        &[
            "--workload",
            "procs:3,pages=12000,dup=0.67,write=0.02",
            "--pages-to-scan",
            "5000",
            "--sleep-ms",
            "0",
            "--duration",
            "32s",
        ],
    );
    assert_eq!(
        rep["mechanisms"]["merge_latency"]["attached"],
        serde_json::json!({"kind": "on-merges", "on_ms": 50, "period_ms": 5000})
    );
    let windows: Vec<(u64, u64)> = rec["latency"]["bracket_windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w[0].as_u64().unwrap(), w[1].as_u64().unwrap()))
        .collect();
    // One when the workload's first merges come, then one each time the budget has earned
    // one (5 s) and merges are coming: 7 in 32 s, give or take one; on top, a few for the
    // workers whose merges lacked timed ones at the start (each worker reaches its hundred in
    // its first windows here, so they stop).
    let coverage = rec["latency"]["coverage_windows"].as_u64().unwrap() as usize;
    assert!(coverage <= 3 * 8, "{coverage} coverage windows");
    assert!(
        (6..=8).contains(&(windows.len() - coverage)),
        "{coverage} for coverage: {windows:?}"
    );
    // 50 ms, closed by a timer (the attach and detach calls take a few ms); the last one may
    // be cut short by the end of the recording. The first opens on the workload's first
    // ~10 000 merges, whose drain (slow in a debug build) can hold its close back by tens of ms.
    let (last, closed) = windows.split_last().unwrap();
    assert!(last.1 - last.0 <= 80_000_000, "{windows:?}");
    let (first, closed) = closed.split_first().unwrap();
    assert!(
        (45_000_000..=150_000_000).contains(&(first.1 - first.0)),
        "{windows:?}"
    );
    for (start, end) in closed {
        assert!(
            (45_000_000..=80_000_000).contains(&(end - start)),
            "{windows:?}"
        );
    }
    // The budget's windows at least 1 s apart; a coverage window may come sooner.
    let close = windows
        .windows(2)
        .filter(|pair| pair[1].0 - pair[0].0 < 1_000_000_000)
        .count();
    assert!(close <= coverage, "windows at least 1 s apart: {windows:?}");
    for p in procs_workers(&rep) {
        assert!(
            p["merge_latency_ns"]["count"].as_u64().unwrap() >= 100,
            "every worker has its timed merges: {p}"
        );
    }
    let lat = &rep["merge_latency"];
    assert!(
        lat["bracket_attached_percent"].as_f64().unwrap() < 5.0,
        "{lat}"
    );
    let (timed, untimed) = (
        lat["timed"].as_u64().unwrap(),
        lat["untimed"].as_u64().unwrap(),
    );
    assert!(timed > 0 && untimed > 0, "{lat}");
    // Every timed merge is in the window that timed it.
    let per_window: Vec<u64> = rec["latency"]["window_histograms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h.as_array()
                .unwrap()
                .iter()
                .map(|vc| vc[1].as_u64().unwrap())
                .sum()
        })
        .collect();
    assert_eq!(per_window.iter().sum::<u64>(), timed, "{per_window:?}");
    assert!(per_window.iter().all(|&n| n > 0), "{per_window:?}");
    assert_eq!(
        lat["timed_windows"].as_u64().unwrap(),
        per_window.len() as u64
    );
    // Opened when merges start, windows time some of them: the first (the workload's first
    // merges) and later ones. (How many depends on how soon the bracket is attached after a
    // burst starts; a window that saw no merge makes the next one open at a random moment.
    // `bench overhead` measures the share on a release build.)
    assert!(
        per_window.len() >= 2 && per_window.len() <= windows.len(),
        "{per_window:?} {windows:?}"
    );
    // Windows that open on a burst come a little into it: how far, and how many merges came
    // before, is recorded, and the report's intervals are for the other merges.
    let head = &rec["latency"]["burst_head"];
    let head_ns = head["ns"].as_u64().unwrap();
    assert!(head_ns > 0 && head_ns < 1_000_000_000, "{head}");
    let head_merges = head["merges"].as_u64().unwrap();
    assert!(head_merges > 0 && head_merges <= timed + untimed, "{head}");
    assert_eq!(lat["burst_head_ns"].as_u64(), Some(head_ns));
    let share = lat["burst_head_percent"].as_f64().unwrap();
    assert!(
        (share - 100.0 * head_merges as f64 / (timed + untimed) as f64).abs() < 1e-6,
        "{lat}"
    );
    let text = report_text(&session.path("rec.json"));
    assert!(
        text.contains("a sample: "),
        "the report says the latency is a sample"
    );
    assert!(
        text.contains("are left out of the sample") && text.contains("the other merges'"),
        "the report says what the sample leaves out: {text}"
    );
    session.assert_knobs_restored();
}

/// Another process changes a knob and writes run=2 (as the kernel's selftests do) in the middle
/// of a recording: the report names the change, detects full_scans going backwards and counts
/// full scans across the reset, which the traced scans must match.
fn another_process_changing_knobs_is_reported() {
    let session = KsmSession::start("others");
    let (mut child, out) = spawn_record(
        &session,
        &[
            "--workload",
            "procs:2,pages=2000",
            "--pages-to-scan",
            "1000",
            "--sleep-ms",
            "10",
            "--interval",
            "250ms",
            "--duration",
            "6s",
        ],
    );
    assert!(ksmd_runs_within(Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(2));
    set_knob("pages_to_scan", "777");
    std::thread::sleep(Duration::from_millis(600));
    set_knob("run", "2");
    std::thread::sleep(Duration::from_millis(600));
    set_knob("run", "1");
    let status = child.wait().unwrap();
    assert!(status.success());
    let rep = report(&out);
    let changes = rep["other_actors"]["knob_changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["knob"] == "pages_to_scan" && c["from"] == 1000 && c["to"] == 777),
        "{changes:?}"
    );
    assert!(changes.iter().any(|c| c["knob"] == "run" && c["to"] == 2));
    assert!(
        !rep["other_actors"]["full_scan_resets_s"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The counter loses the scans between the last sample and the reset (250 ms at most,
    // a handful here); the traced count is exact, so it is the larger.
    let (across, traced) = (
        rep["other_actors"]["full_scans_across_resets"]
            .as_i64()
            .unwrap(),
        rep["scans"]["full_scans"].as_i64().unwrap(),
    );
    assert!(
        across > 0 && across <= traced && traced - across <= 10,
        "{across} vs {traced}"
    );
    let text = report_text(&out);
    assert!(
        text.contains("CHANGED by another process during the window: pages_to_scan 1000→777"),
        "{text}"
    );
    assert!(text.contains("RESET: full_scans went backwards"), "{text}");
    session.assert_knobs_restored();
}

/// The two probes that run for every process can be turned off: the report then says they
/// were off and shows no batch or CPU figure from them — not a zero.
fn probes_for_every_process_can_be_turned_off() {
    let session = KsmSession::start("probes-off");
    let (rec, rep) = record(
        &session,
        &[
            "--workload",
            "procs:2,pages=2000",
            "--pages-to-scan",
            "1000",
            "--sleep-ms",
            "10",
            "--duration",
            "3s",
            "--batches",
            "off",
            "--cow-probe",
            "off",
        ],
    );
    assert_eq!(
        rep["mechanisms"]["batches"],
        serde_json::json!({"kind": "off"})
    );
    assert_eq!(rep["mechanisms"]["cow"], serde_json::json!({"kind": "off"}));
    assert_eq!(rep["scans"]["batches"], 0);
    assert!(rep["scans"]["ksmd_cpu_percent"].is_null());
    assert!(rep["scans"]["ksmd_cpu_percent_schedstat"].as_f64().unwrap() > 0.0);
    assert!(rec["events"]["received"].get("ksmd_batch").is_none());
    // Merges are still traced exactly.
    assert!(rep["scans"]["full_scans"].as_u64().unwrap() > 0);
    assert!(
        report_text(&session.path("rec.json")).contains("ksmd batches: not traced (off"),
        "the report says so"
    );
    session.assert_knobs_restored();
}

/// Where tracing programs are refused, COW breaks per process come from the page fault
/// tracepoints: each worker's breaks of KSM pages are its own count of its writes to KSM pages
/// (it checks /proc/kpageflags before each), their sum is the kernel's cow_ksm, its breaks of
/// KSM's zero page are the zero-page merges its rewrites found (not in cow_ksm: the kernel's
/// ksm_zero_pages goes down by them instead), and the breaks carry a latency.
fn cow_breaks_per_process_from_the_fault_tracepoints_are_the_kernels() {
    let session = KsmSession::start("cow-faults");
    let (_, rep) = record(
        &session,
        &[
            "--workload",
            "procs:2,pages=3000,dup=0.5,zero=0.2,write=0.02,thp=off",
            "--pages-to-scan",
            "3000",
            "--sleep-ms",
            "10",
            "--use-zero-pages",
            "on",
            "--cow-probe",
            "fault-tracepoint",
            "--duration",
            "12s",
        ],
    );
    assert_eq!(
        rep["mechanisms"]["cow"]["kind"], "fault-tracepoint",
        "{}",
        rep["mechanisms"]
    );
    let mut traced = 0;
    for w in rep["workers"].as_array().unwrap() {
        let p = entry_for_pid(&rep, w["pid"].as_u64().unwrap());
        let breaks = p["cow_breaks"].as_u64().unwrap();
        assert!(breaks > 0, "no COW breaks: {p}");
        assert_eq!(
            breaks,
            w["write_fault_ns"]["count"].as_u64().unwrap(),
            "{w} {p}"
        );
        let zero = p["zero_page_breaks"].as_u64().unwrap();
        assert_eq!(Some(zero), w["zero_pages_broken"].as_u64(), "{w} {p}");
        assert_eq!(
            p["zero_page_merges"].as_i64().unwrap() - zero as i64,
            delta(p, "ksm_zero_pages"),
            "zero-page merges less their breaks are the kernel's ksm_zero_pages: {p}"
        );
        let closed = p["cow_closed"].as_u64().unwrap();
        assert!(closed * 10 >= (breaks + zero) * 9, "{closed} closed: {p}");
        assert!(p["cow_fault_ns"]["p50"].as_u64().unwrap() > 0);
        traced += breaks;
    }
    let others: u64 = rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["workload"].as_bool().unwrap())
        .filter_map(|p| p["cow_breaks"].as_u64())
        .sum();
    assert_eq!(
        (traced + others) as i64,
        rep["kernel_deltas"]["cow_ksm"].as_i64().unwrap(),
        "{rep}"
    );
    let text = report_text(&session.path("rec.json"));
    assert!(
        text.contains("COW breaks per process (page fault tracepoints)"),
        "{text}"
    );
    session.assert_knobs_restored();
}

/// The default record samples merge latency on a budget; a process whose merges all come in
/// one burst, or while others merge more, still gets timed merges of its own: its first merge
/// wakes the tracer, and windows open for a process short of timed merges. Four workers with
/// different amounts of identical pages merge once, all at the start; each ends with at least
/// a hundred timed merges (or all of its merges, when it made fewer), and the report says so
/// per process.
fn every_merging_process_gets_timed_merges_by_default() {
    let session = KsmSession::start("coverage");
    let (_, rep) = record(
        &session,
        &[
            "--workload",
            "procs:4,pages=2000,dup=0.3",
            "--duration",
            "20s",
        ],
    );
    assert_eq!(rep["mechanisms"]["merge_latency"]["kind"], "bracket");
    assert!(
        rep["merge_latency"]["untimed"].as_u64().unwrap() > 0,
        "a sample"
    );
    for w in rep["workers"].as_array().unwrap() {
        let p = entry_for_pid(&rep, w["pid"].as_u64().unwrap());
        let merges = p["merges"].as_u64().unwrap() + p["zero_page_merges"].as_u64().unwrap();
        let timed = p["merge_latency_ns"]["count"].as_u64().unwrap();
        assert!(merges > 0, "{p}");
        assert!(timed >= merges.min(100), "{} timed of {merges}: {p}", timed);
        assert!(p["merges_in_windows"].as_u64().unwrap() > 0, "{p}");
    }
    let text = report_text(&session.path("rec.json"));
    assert!(text.contains("timed per process:"), "{text}");
    session.assert_knobs_restored();
}
