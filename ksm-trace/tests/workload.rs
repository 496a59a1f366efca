//! The procs workload against the real kernel: rounds and writes break merged pages, and what
//! ksm-trace reports must still add up against /proc/<pid>/ksm_stat and /proc/vmstat cow_ksm,
//! read by the test itself while the workers run.
mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::*;

tests! {
    rounds_and_writes_are_explained_by_observed_unmerges_and_cow_ksm: Root,
    zero_pages_are_zero_page_merges_with_use_zero_pages: Root,
    prctl_mode_merges_the_whole_process: Root,
    workload_command_runs_without_tracing_and_cleans_up: Root,
    unmerge_calls_agree_with_kpageflags_cow_ksm_and_the_traced_merges: Root,
    bench_unmerge_gives_the_selftest_figure_and_refuses_bad_input: Root,
}

/// What the test saw of each worker while record ran: the highest `ksm_merging_pages` in its
/// /proc/<pid>/ksm_stat, by pid.
type Seen = HashMap<u64, u64>;

/// Records `workload` while a thread of the test reads every `ksm-procs-*` worker's ksm_stat
/// every 10 ms: the recording, its report, what the test saw, and how much the kernel's
/// cow_ksm (/proc/vmstat) rose over the whole `record`.
fn record_workload(
    session: &KsmSession,
    workload: &str,
    extra: &[&str],
) -> (serde_json::Value, serde_json::Value, Seen, u64) {
    let mut args = vec![
        "--workload",
        workload,
        "--pages-to-scan",
        "2000",
        "--sleep-ms",
        "10",
    ];
    args.extend_from_slice(extra);
    let cow_before = vmstat("cow_ksm");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut seen = Seen::new();
            while !done.load(Ordering::SeqCst) {
                for pid in pids_named("ksm-procs-") {
                    if let Some(n) = try_ksm_merging_pages(pid) {
                        let max = seen.entry(pid as u64).or_default();
                        *max = (*max).max(n);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        })
    };
    let (rec, rep) = record(session, &args);
    done.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    (rec, rep, seen, vmstat("cow_ksm") - cow_before)
}

/// The highest ksm_merging_pages the test saw for worker `p`.
fn seen_by_test(seen: &Seen, p: &serde_json::Value) -> u64 {
    let pid = p["pid"].as_u64().unwrap();
    *seen
        .get(&pid)
        .unwrap_or_else(|| panic!("the test never read ksm_stat of {p}"))
}

/// The copy-on-write breaks of KSM pages the workers of a recording timed themselves (each
/// write to a page /proc/kpageflags showed as KSM).
fn cow_breaks_seen_by_workers(rec: &serde_json::Value) -> u64 {
    rec["meta"]["workload"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["write_fault_ns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b[1].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum()
}

fn rounds_and_writes_are_explained_by_observed_unmerges_and_cow_ksm() {
    let session = KsmSession::start("rounds");
    let (rec, rep, seen, cow_delta) = record_workload(
        &session,
        "procs:3,pages=1500,dup=0.6,rounds=3,wait=2s,write=0.05",
        &["--merge-latency", "off"],
    );
    assert_eq!(rec["meta"]["ended_by"], "workload-finished");
    let ws = procs_workers(&rep);
    assert_eq!(ws.len(), 3);
    for p in ws {
        let (merges, unmerges) = (
            p["merges"].as_i64().unwrap(),
            p["unmerges"].as_i64().unwrap(),
        );
        let delta = delta(p, "ksm_merging_pages");
        // Workers' pages are merged only inside the window (ksmd is paused outside it and the
        // pages are new), so every merging page the test itself saw took a traced merge.
        let seen = seen_by_test(&seen, p) as i64;
        assert!(
            merges >= seen,
            "merges {merges} < {seen} seen by the test: {p}"
        );
        // Traced unmerges never exceed the pages that left: merges − unmerges ≥ Δ.
        assert!(merges - unmerges >= delta, "{p}");
        // The rest left without a tracepoint: sharers that wrote their copy, each a COW break
        // the kernel counted.
        let silent = merges - unmerges - delta;
        assert!(
            silent as u64 <= cow_delta,
            "{p}: {silent} pages left silently, cow_ksm +{cow_delta}"
        );
        // Rounds rewrote merged pages and KSM merged them again.
        assert!(merges > delta, "{p}");
        assert!(unmerges > 0, "{p}");
    }
    // The workload classifies each write through /proc/kpageflags just before it; a page that
    // ksmd merges between the check and the write is the only way to miss one.
    let seen = cow_breaks_seen_by_workers(&rec);
    assert!(seen > 0);
    assert!(
        seen <= cow_delta && seen * 100 >= cow_delta * 99,
        "workload saw {seen} COW breaks, kernel counted {cow_delta}"
    );
    assert!(pids_named("ksm-procs-").is_empty());
    session.assert_knobs_restored();
}

fn zero_pages_are_zero_page_merges_with_use_zero_pages() {
    let session = KsmSession::start("zero");
    let zero_before = knob("use_zero_pages");
    let (_rec, rep, seen, _) = record_workload(
        &session,
        "procs:2,pages=1000,dup=0.4,zero=0.2",
        &["--duration", "4s", "--use-zero-pages", "on"],
    );
    for p in procs_workers(&rep) {
        assert_eq!(
            p["zero_page_merges"].as_i64().unwrap(),
            delta(p, "ksm_zero_pages"),
            "{p}"
        );
        assert_eq!(p["zero_page_merges"], 200, "{p}");
        assert_eq!(
            p["merges"].as_i64().unwrap(),
            delta(p, "ksm_merging_pages"),
            "{p}"
        );
        assert_eq!(p["merges"], 400, "{p}");
        // Nothing writes after merging: what the test saw is what was merged.
        assert_eq!(seen_by_test(&seen, p), 400, "{p}");
    }
    assert_eq!(
        knob("use_zero_pages"),
        zero_before,
        "use_zero_pages restored"
    );
    session.assert_knobs_restored();
}

fn prctl_mode_merges_the_whole_process() {
    let session = KsmSession::start("prctl");
    let (_rec, rep, seen, _) = record_workload(
        &session,
        "procs:2,pages=1000,dup=0.5,mode=prctl",
        &["--duration", "4s"],
    );
    for p in procs_workers(&rep) {
        let merges = p["merges"].as_i64().unwrap();
        assert_eq!(merges, delta(p, "ksm_merging_pages"), "{p}");
        // prctl makes every mapping mergeable, so a few pages besides the workload's merge too.
        assert!(merges >= 500, "{p}");
        let seen = seen_by_test(&seen, p) as i64;
        assert!(
            seen >= 500 && seen <= merges,
            "{seen} seen by the test: {p}"
        );
    }
    session.assert_knobs_restored();
}

fn workload_command_runs_without_tracing_and_cleans_up() {
    let session = KsmSession::start("standalone");
    let stdout = ksm_trace_stdout(&[
        "workload",
        "procs:2,pages=500",
        "--duration",
        "3s",
        "--pages-to-scan",
        "1000",
        "--sleep-ms",
        "10",
    ]);
    assert!(
        stdout
            .lines()
            .filter(|l| l.contains("pages_sharing"))
            .count()
            >= 2,
        "{stdout}"
    );
    assert!(stdout.contains("started ksm-procs-1"), "{stdout}");
    assert!(pids_named("ksm-procs-").is_empty());
    session.assert_knobs_restored();
    let bad = ksm_trace(&["workload", "vms:2,mem=64M"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("too small"));
}

fn unmerge_calls_agree_with_kpageflags_cow_ksm_and_the_traced_merges() {
    let session = KsmSession::start("unmerge");
    // The selftest's region (every page alike), merged and unmerged twice. Nothing else on
    // the machine breaks KSM pages meanwhile (tests are serialized), so the global cow_ksm
    // must rise by exactly the pages the calls unmerged.
    let (_rec, rep, _seen, cow_delta) = record_workload(
        &session,
        "procs:1,pages=5120,pattern=same,unmerge=1,rounds=2,wait=3s",
        &["--merge-latency", "off"],
    );
    let worker = &rep["workers"][0];
    let u = &worker["unmerge"];
    assert_eq!(u["call_ns"]["count"], 2, "{u}");
    assert_eq!(u["pages"], 2 * 5120, "{u}");
    assert_eq!(
        u["ksm_pages"],
        2 * 5120,
        "every page was merged before its call: {u}"
    );
    assert_eq!(u["cow_ksm_during"], 2 * 5120, "{u}");
    assert_eq!(cow_delta, 2 * 5120, "nothing but the calls broke KSM pages");
    assert!(u["mib_per_s"].as_f64().unwrap() > 0.0, "{u}");
    let p = procs_workers(&rep)[0];
    // Each round merged every page once, and the last call leaves them unmergeable.
    assert_eq!(p["merges"], 2 * 5120, "{p}");
    // The kernel drops an unmerged page's rmap item (and counts it out of ksm_merging_pages)
    // only when ksmd next passes, so how many have left by the window's end varies; the
    // traced unmerges must follow the kernel's count exactly.
    assert_eq!(
        p["merges"].as_i64().unwrap() - p["unmerges"].as_i64().unwrap(),
        delta(p, "ksm_merging_pages"),
        "{p}"
    );

    // The same by prctl(PR_SET_MEMORY_MERGE, 0): the whole process, whose heap and stack
    // pages merge too, so the worker counts KSM pages over all its private mappings.
    let (_rec, rep, _seen, total) = record_workload(
        &session,
        "procs:1,pages=5120,pattern=same,mode=prctl,unmerge=1,rounds=2,wait=3s",
        &["--merge-latency", "off"],
    );
    let u = &rep["workers"][0]["unmerge"];
    assert_eq!(u["call_ns"]["count"], 2, "{u}");
    // The mapping's pages are exact; the process's other private pages (libc data, heap)
    // change while the worker counts them, a few pages in 10 000 (10 283 counted, 10 280
    // broken in one run).
    let broke = u["ksm_pages"].as_u64().unwrap();
    let cow = u["cow_ksm_during"].as_u64().unwrap();
    assert!(cow >= 2 * 5120, "{u}");
    assert!(broke.abs_diff(cow) * 100 <= cow, "{u}");
    // The worker's own heap writes break a few merged pages outside the calls too.
    assert!(
        total >= cow && (total - cow) * 100 <= cow,
        "cow_ksm +{total}: {u}"
    );

    // Part of each worker unmerged while the rest stays merged: the calls' KSM pages and the
    // workload's own COW writes are all the kernel counted.
    let (rec, rep, _seen, cow_delta) = record_workload(
        &session,
        "procs:2,pages=2000,dup=0.5,unmerge=0.5,rounds=2,wait=3s",
        &["--merge-latency", "off"],
    );
    let mut unmerged = 0;
    for w in rep["workers"].as_array().unwrap() {
        let u = &w["unmerge"];
        assert_eq!(u["call_ns"]["count"], 2, "{u}");
        assert_eq!(u["pages"], 2 * 500, "{u}");
        unmerged += u["ksm_pages"].as_u64().unwrap();
    }
    assert!(unmerged > 0);
    let writes = cow_breaks_seen_by_workers(&rec);
    // A page ksmd merges between a worker's kpageflags check and its write or call is the
    // only way to miss one (see the rounds test).
    let seen = unmerged + writes;
    assert!(
        seen <= cow_delta && seen * 100 >= cow_delta * 99,
        "calls unmerged {unmerged} and writes broke {writes} KSM pages; kernel cow_ksm +{cow_delta}"
    );
    session.assert_knobs_restored();
}

fn bench_unmerge_gives_the_selftest_figure_and_refuses_bad_input() {
    let session = KsmSession::start("bench-unmerge");
    let out = session.path("u.json");
    let text = ksm_trace_stdout(&[
        "bench",
        "unmerge",
        "--size",
        "20M",
        "--rounds",
        "2",
        "--wait",
        "2s",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(text.contains("Average speed:"), "{text}");
    assert!(
        text.contains("KSM pages among them just before (kpageflags): 10240; kernel cow_ksm during the calls: +10240"),
        "{text}"
    );
    let rep = report(&out);
    assert_eq!(rep["workers"][0]["unmerge"]["call_ns"]["count"], 2);
    assert_clean_error(&["bench", "unmerge", "--rounds", "0"], "--rounds");
    session.assert_knobs_restored();
}
