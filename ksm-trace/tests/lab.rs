//! `ksm-trace lab`: the scenario (doctor, record, report) on Debian's 6.12 in a QEMU (TCG) guest,
//! where fentry/fexit is allowed; on 6.1, which has no ksm tracepoints (the function backend); and on this kernel
//! (`--kernel host`). The lab only runs the scenario and hands back its transcript
//! (`--json`); what must hold on each kernel is asserted here, against the kernel's own counters
//! read by the scenario around `record` (in the guest by its shell, not by ksm-trace) or by the
//! test itself. No guest or run directory may outlive a run. The guest's RAM is not mergeable,
//! so it does not touch the host's KSM; the test lock is taken all the same, since two TCG
//! guests starve each other.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

tests! {
    lab_runs_the_scenario_on_debian_6_12: Root,
    lab_traces_debian_6_1_through_the_function_backend: Root,
    lab_runs_the_scenario_on_the_host_kernel: Root,
    lab_refuses_guest_options_for_the_host: Nothing,
    lab_boots_a_kernel_image_given_by_its_path: Root,
    lab_on_the_host_stopped_by_sigterm_cleans_up: Root,
}

/// `ksm-trace lab --kernel KERNEL --json`, which must have run the scenario to its end: its
/// pid (which names its run directory) and the transcript.
fn run_lab(kernel: &str) -> (u32, Value) {
    let child = Command::new(bin())
        .args(["lab", "--kernel", kernel, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ksm-trace lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for ksm-trace lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed: {stderr}");
    let transcript: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lab --json printed no JSON ({e}): {stderr}"));
    assert_eq!(
        transcript["problems"].as_array().map(Vec::len),
        Some(0),
        "an incomplete transcript: {}",
        transcript["problems"]
    );
    (pid, transcript)
}

/// [`run_lab`] in a guest, whose kernel release must start with `release`.
fn run_lab_in_guest(kernel: &str, release: &str) -> (u32, Value) {
    let (pid, t) = run_lab(kernel);
    assert!(
        t["release"].as_str().unwrap().starts_with(release),
        "{}",
        t["release"]
    );
    (pid, t)
}

fn assert_nothing_left(pid: u32) {
    assert!(
        wait_until(Duration::from_secs(5), || pids_named("ksm-lab").is_empty()),
        "the lab guest survived: {:?}",
        pids_named("ksm-lab")
    );
    let run_dir = format!("/tmp/ksm-trace-lab-{pid}");
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// `after − before` of a counter the scenario read around `record` itself.
fn around_record(t: &Value, counter: &str) -> i64 {
    int(&t["counters_after"][counter]) - int(&t["counters_before"][counter])
}

/// Σ counts of a `[[value, count], …]` histogram over the recording's processes.
fn timed(recording: &Value, histogram: &str) -> u64 {
    recording["processes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p[histogram].as_array().unwrap())
        .map(|b| b[1].as_u64().unwrap())
        .sum()
}

/// Whether `doctor --json` says merge latency would come from fentry/fexit.
fn doctor_allows_fexit(t: &Value) -> bool {
    let kind = t["doctor"]["json"]["mechanisms"]["merge_latency"]["kind"].as_str();
    matches!(kind, Some("fexit" | "fexit-and-bracket"))
}

/// What a kernel with ksm tracepoints must show, whichever probes it allows; returns the
/// report. The bounds come from outside ksm-trace's own arithmetic: the events it traced
/// against the kernel's counters in the window, and those against the same counters read by
/// the scenario itself around `record`.
fn assert_record_holds_up(t: &Value) -> &Value {
    assert_eq!(t["doctor"]["rc"], 0, "doctor: {}", t["doctor"]["stderr"]);
    assert_eq!(t["record"]["rc"], 0, "record: {}", t["record"]["stderr"]);
    assert_eq!(t["report"]["rc"], 0, "report: {}", t["report"]["stderr"]);
    let rep = &t["report"]["json"];
    let workers = procs_workers(rep);
    assert_eq!(workers.len(), 2, "{rep}");
    for p in workers {
        let merges = int(&p["merges"]);
        let delta = delta(p, "ksm_merging_pages");
        assert!(merges > 0, "{p}");
        // Every page that became a merging page in the window was merged in it; the writes
        // after merging make some leave again, so only ≥ holds.
        assert!(
            merges >= delta,
            "merges {merges} < Δksm_merging_pages {delta}: {p}"
        );
        assert!(int(&p["unmerges"]) <= merges, "{p}");
    }
    let scans = int(&rep["scans"]["full_scans"]);
    let scans_window = int(&rep["kernel_deltas"]["full_scans"]);
    assert!(scans > 0);
    assert_eq!(scans, scans_window, "traced full scans vs the kernel's");
    assert!(scans_window <= around_record(t, "full_scans"), "{t}");
    let cow_window = int(&rep["kernel_deltas"]["cow_ksm"]);
    assert!(cow_window > 0, "the writes broke no KSM page");
    assert!(cow_window <= around_record(t, "cow_ksm"));
    rep
}

/// fentry/fexit allowed: both latency mechanisms timed the merges, and the do_wp_page probe
/// counted exactly the kernel's copy-on-write breaks of KSM pages.
fn assert_fexit(t: &Value) {
    let rep = assert_record_holds_up(t);
    let m = &rep["mechanisms"];
    assert!(
        matches!(
            m["merge_latency"]["kind"].as_str(),
            Some("fexit" | "fexit-and-bracket")
        ),
        "{m}"
    );
    let fallbacks = m["fallbacks"].as_array().unwrap();
    assert!(
        !fallbacks
            .iter()
            .any(|f| f["kind"] == "merge-latency-from-bracket"),
        "the kernel refused fexit: {m}"
    );
    assert!(timed(&t["recording"], "merge_latency_ns") > 0);
    assert!(timed(&t["recording"], "merge_latency_bracket_ns") > 0);
    // Both COW probes on the same faults (`--cow-probe both`): do_wp_page counts exactly the
    // kernel's cow_ksm, and the fault tracepoints count what it counts, process by process.
    assert_eq!(m["cow"]["kind"], "do-wp-page-and-fault-tracepoint", "{m}");
    assert_eq!(
        traced_cow(rep),
        int(&rep["kernel_deltas"]["cow_ksm"]),
        "{rep}"
    );
    for p in rep["processes"].as_array().unwrap() {
        assert_eq!(
            p["cow_breaks_at_fault"], p["cow_breaks"],
            "the fault tracepoints and do_wp_page disagree on pid {}: {p}",
            p["pid"]
        );
    }
}

/// Σ COW breaks the do_wp_page probe counted over the report's processes.
fn traced_cow(rep: &Value) -> i64 {
    rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["cow_breaks"].as_i64())
        .sum()
}

/// Tracepoints only: the mmap_lock bracket timed the merges, the report says why fexit was
/// not used, the page fault tracepoints counted exactly the kernel's cow_ksm (the workload only
/// writes), each break closed with a latency, and the workload's own count of its writes to
/// KSM pages stays within it. Returns the workload's count.
fn assert_tracepoints_only(t: &Value) -> i64 {
    let rep = assert_record_holds_up(t);
    let m = &rep["mechanisms"];
    assert_eq!(m["merge_latency"]["kind"], "bracket", "{m}");
    assert!(
        m["fallbacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "merge-latency-from-bracket" && f["reason"]["kind"].is_string()),
        "no reason given why fexit was not used: {m}"
    );
    assert!(timed(&t["recording"], "merge_latency_ns") > 0);
    assert_eq!(m["cow"]["kind"], "fault-tracepoint", "{m}");
    assert_eq!(
        traced_cow(rep),
        int(&rep["kernel_deltas"]["cow_ksm"]),
        "{rep}"
    );
    let closed: i64 = rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["cow_closed"].as_i64())
        .sum();
    assert!(
        closed * 10 >= traced_cow(rep) * 9,
        "only {closed} breaks closed: {rep}"
    );
    let seen: i64 = rep["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| int(&w["write_fault_ns"]["count"]))
        .sum();
    assert!(seen > 0);
    assert!(seen <= int(&rep["kernel_deltas"]["cow_ksm"]), "{rep}");
    seen
}

/// The fixed workload (`scenario::COMPARE_ARGS`) recorded under one backend: each worker's
/// merges are at least what its spec fixes, the traced unmerges follow the kernel's
/// ksm_merging_pages (but for sharers that leave alone), full scans are the kernel's, and the workload's own count of KSM pages it broke
/// (its unmerge calls and its rewrite) is the kernel's cow_ksm.
fn assert_backend_exact(run: &Value, events: &str) {
    let backend = &run["backend"];
    assert_eq!(
        run["record"]["rc"], 0,
        "--backend {backend}: {}",
        run["record"]["stderr"]
    );
    let rep = &run["report"];
    assert_eq!(rep["mechanisms"]["events"]["kind"], events, "{rep}");
    let (mut workers, mut zero_page_merges, mut zero_pages_broken) = (0, 0, 0);
    for p in procs_workers(rep) {
        let (m, u) = (int(&p["merges"]), int(&p["unmerges"]));
        let delta = delta(p, "ksm_merging_pages");
        // Two rounds, each merging the worker's 1000 identical pages. The kernel may drop a
        // stable node and merge its pages again (seen under TCG: 203 removals, 203 more
        // joins), so ≥.
        assert!(m >= 2000, "--backend {backend}: {p}");
        // A KSM page dropped from the stable tree is reported with its sharers (the tracepoints
        // fire ksm_remove_rmap_item for each, the function probes give their count); a sharer
        // that leaves a page on its own (remove_rmap_item_from_tree) is reported by neither
        // backend: those are the report's silent unmerges, never negative (no unmerge is
        // invented). They come two ways: a sharer the kernel moves and merges again, which is
        // also a merge beyond the spec's 2000 (6.12 runs: 119 silent of 2119 merges under the
        // tracepoints, 132 of 2132 under kprobes), and a sharer that leaves alone when ksmd
        // finds its page written before its partner's: the rewrite between the rounds breaks
        // the 500 pages each worker still has merged after round 1's unmerge call, so at most
        // 500. How many depends on whether ksmd passes between the two workers' writes: 6 of
        // 2009 and 8 of 2000 merges in two early runs, none in most runs with thp=off, and 123
        // of 2000 on 6.1 under the function backend in one CI run (single-threaded TCG
        // interleaves ksmd with the rewrites).
        let silent = m - u - delta;
        assert!(
            silent >= 0 && silent <= (m - 2000) + 500,
            "--backend {backend}: {silent} silent unmerges, more than the re-merges and the 500 pages the rewrite broke: {p}"
        );
        assert_eq!(p["silent_unmerges"].as_i64(), Some(silent), "{p}");
        let worker = rep["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["pid"] == p["pid"])
            .unwrap();
        // Its 200 zero-filled pages are merged with the zero page, traced by
        // ksm_merge_one_page or, on the function backends, try_to_merge_one_page's probe; the
        // rewrite between the rounds undoes those merged by then (the worker counts them in
        // its pagemap) and ksmd merges them again. The kernel's own count is checked for each
        // worker and for all of them below.
        let zero = int(&p["zero_page_merges"]);
        let broken = int(&worker["zero_pages_broken"]);
        assert!(
            zero > broken && broken <= 200,
            "--backend {backend}: {zero} zero-page merges, {broken} undone by the rewrite: {p}"
        );
        if let (Some(start), Some(end)) = (
            p["ksm_zero_pages_start"].as_i64(),
            p["ksm_zero_pages_end"].as_i64(),
        ) {
            assert_eq!(
                zero - broken,
                end - start,
                "--backend {backend}: zero-page merges less those undone, against the process's ksm_zero_pages: {p}"
            );
        }
        zero_page_merges += zero;
        zero_pages_broken += broken;
        // The kernel's unmerge_ksm_pages calls (fentry or kprobes, whichever backend): the
        // worker's two MADV_UNMERGEABLE calls of 500 pages each, each no longer in the kernel
        // than the worker timed it from user space.
        if rep["mechanisms"]["unmerge"]["kind"] != "unavailable" {
            assert_eq!(p["unmerge_call_ns"]["count"], 2, "--backend {backend}: {p}");
            assert_eq!(p["unmerge_call_pages"], 1000, "--backend {backend}: {p}");
            let user = int(&worker["unmerge"]["call_ns"]["max"]);
            let kernel = int(&p["unmerge_call_ns"]["max"]);
            assert!(
                kernel <= user + user / 100,
                "--backend {backend}: kernel {kernel} ns > the worker's {user} ns: {p}"
            );
        }
        workers += 1;
    }
    assert_eq!(workers, 2, "{rep}");
    // Where the kernel counts the zero pages KSM placed (6.5+), none was merged untraced.
    if let Some(placed) = rep["kernel_deltas"]["ksm_zero_pages"].as_i64() {
        assert_eq!(
            zero_page_merges - zero_pages_broken,
            placed,
            "--backend {backend}: {zero_page_merges} zero-page merges traced, {zero_pages_broken} undone by the rewrite, against the kernel's Δksm_zero_pages"
        );
    }
    let scans = int(&rep["scans"]["full_scans"]);
    assert!(scans > 0);
    assert_eq!(
        scans,
        int(&rep["kernel_deltas"]["full_scans"]),
        "--backend {backend}"
    );
    let around =
        int(&run["counters_after"]["full_scans"]) - int(&run["counters_before"]["full_scans"]);
    assert!(
        scans <= around,
        "--backend {backend}: {scans} > {around} around record"
    );
    // Where /proc/kpageflags tells KSM pages apart, the workload's count of those it broke
    // (its unmerge calls and its rewrite) is the kernel's cow_ksm; where it does not (Debian's
    // 6.12 marks every anonymous page KSM), the workload counts every identical page it
    // unmerged or rewrote: an upper bound.
    let cow = int(&rep["kernel_deltas"]["cow_ksm"]);
    assert!(cow > 0, "{rep}");
    // Where fentry loads, the do_wp_page probe counts them exactly, whichever backend.
    if rep["mechanisms"]["cow"]["kind"] == "do-wp-page" {
        assert_eq!(traced_cow(rep), cow, "--backend {backend}: {rep}");
    }
    let workers = rep["workers"].as_array().unwrap();
    let classified = workers.iter().all(|w| w["unmerge"]["ksm_pages"].is_i64());
    let broke: i64 = workers
        .iter()
        .map(|w| {
            let unmerged = if classified {
                int(&w["unmerge"]["ksm_pages"])
            } else {
                int(&w["unmerge"]["pages"])
            };
            unmerged + int(&w["write_fault_ns"]["count"])
        })
        .sum();
    if classified {
        // A page ksmd merges again between the worker's look at its pagemap and its write is a
        // break the worker did not see coming: that needs a merge beyond the spec's 2000 (one
        // 6.1 run: 382 more merges, cow_ksm 3382, the workers saw 3381).
        let remerges: i64 = procs_workers(rep)
            .iter()
            .map(|p| int(&p["merges"]) - 2000)
            .sum();
        assert!(
            cow >= broke && cow - broke <= remerges,
            "--backend {backend}: the workers broke {broke} KSM pages, cow_ksm {cow}, {remerges} re-merges: {rep}"
        );
    } else {
        assert!(
            broke >= cow,
            "--backend {backend}: {broke} < cow_ksm {cow}: {rep}"
        );
    }
}

fn lab_runs_the_scenario_on_debian_6_12() {
    let _lock = test_lock();
    let (pid, t) = run_lab_in_guest("debian-6.12", "6.12.");
    assert!(doctor_allows_fexit(&t), "{}", t["doctor"]["json"]);
    assert_fexit(&t);
    // Every backend loads here (the function probes both through fentry and through
    // kprobes): the same workload, recorded under each, is accounted for exactly by each
    // against the guest's counters.
    let runs = t["backends"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert_backend_exact(&runs[0], "tracepoints");
    assert_backend_exact(&runs[1], "functions");
    assert_backend_exact(&runs[2], "kprobes");
    let unmerge = |i: usize| runs[i]["report"]["mechanisms"]["unmerge"]["kind"].clone();
    assert_eq!(
        [unmerge(0), unmerge(1), unmerge(2)],
        ["fentry", "fentry", "kprobes"],
        "where fentry loads it times the kernel's unmerges, kprobes when forced"
    );
    assert_nothing_left(pid);
}

fn lab_traces_debian_6_1_through_the_function_backend() {
    let _lock = test_lock();
    // Linux 6.1 predates the ksm tracepoints: doctor says so, and record takes its events from
    // fentry/fexit on the functions the tracepoints later went into — with the same exactness
    // against the guest's own counters as 6.12's tracepoints.
    let (pid, t) = run_lab_in_guest("debian-6.1", "6.1.");
    assert_eq!(t["doctor"]["rc"], 0, "doctor: {}", t["doctor"]["stderr"]);
    let tracepoints = t["doctor"]["json"]["capabilities"]["tracepoints"]
        .as_object()
        .unwrap();
    let ksm: Vec<_> = tracepoints
        .iter()
        .filter(|(name, _)| name.starts_with("ksm_"))
        .collect();
    assert!(!ksm.is_empty());
    assert!(ksm.iter().all(|(_, found)| **found == false), "{ksm:?}");
    assert_eq!(
        t["doctor"]["json"]["mechanisms"]["events"]["kind"], "functions",
        "{}",
        t["doctor"]["json"]
    );
    assert_fexit(&t);
    let rep = &t["report"]["json"];
    assert_eq!(rep["mechanisms"]["events"]["kind"], "functions", "{rep}");
    // The rewrite round dropped stale KSM pages: unmerges came from remove_node_from_stable_tree.
    let unmerges: i64 = rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["unmerges"].as_i64().unwrap_or(0))
        .sum();
    assert!(unmerges > 0, "{rep}");
    // Files 6.1 does not have are "not available", never 0.
    assert!(rep["general_profit_mib_end"].is_null(), "{rep}");
    assert!(rep["scans"]["pages_scanned"].is_null(), "{rep}");
    // Asked for by name, the tracepoint backend is refused in one line; the same fixed workload
    // is then accounted for exactly through fentry/fexit and through kprobes, as on 6.12.
    let runs = t["backends"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let refusal = runs[0]["record"]["stderr"].as_str().unwrap().trim();
    assert_eq!(runs[0]["record"]["rc"], 1, "{refusal}");
    assert_eq!(refusal.lines().count(), 1, "{refusal}");
    assert!(refusal.contains("--backend tracepoints"), "{refusal}");
    assert_backend_exact(&runs[1], "functions");
    assert_backend_exact(&runs[2], "kprobes");
    let unmerge = |i: usize| runs[i]["report"]["mechanisms"]["unmerge"]["kind"].clone();
    assert_eq!([unmerge(1), unmerge(2)], ["fentry", "kprobes"]);
    // 6.1's ksm_stat has no ksm_merging_pages: it comes from /proc/<pid>/ksm_merging_pages.
    for p in procs_workers(rep) {
        assert!(int(&p["ksm_merging_pages_end"]) > 0, "{p}");
    }
    assert_nothing_left(pid);
}

fn lab_runs_the_scenario_on_the_host_kernel() {
    let session = KsmSession::start("lab-host");
    let cow_before = vmstat("cow_ksm");
    let scans_before = knob_u64("full_scans");
    let (pid, t) = run_lab("host");
    // Whatever this kernel allows, the lab's figures must fit what the kernel counted around
    // the whole run, read here independently.
    let cow_delta = (vmstat("cow_ksm") - cow_before) as i64;
    let scans_delta = (knob_u64("full_scans") - scans_before) as i64;
    let rep = &t["report"]["json"];
    if doctor_allows_fexit(&t) {
        assert_fexit(&t);
    } else {
        assert_tracepoints_only(&t);
    }
    assert!(int(&rep["kernel_deltas"]["cow_ksm"]) <= cow_delta);
    assert!(int(&rep["scans"]["full_scans"]) <= scans_delta);
    session.assert_knobs_restored();
    session.assert_worker_pages_released();
    assert!(pids_named("ksm-procs-").is_empty(), "workers left behind");
    assert_nothing_left(pid);
}

fn lab_refuses_guest_options_for_the_host() {
    let out = assert_clean_error(&["lab", "--kernel", "host", "--refresh"], "--refresh");
    assert_eq!(out.status.code(), Some(1));
}

fn lab_on_the_host_stopped_by_sigterm_cleans_up() {
    let session = KsmSession::start("lab-host-sigterm");
    let child = spawn_ksm_trace(&["lab", "--kernel", "host"]);
    let run_dir = format!("/tmp/ksm-trace-lab-{}", child.id());
    assert!(
        procs_workers_within(2, Duration::from_secs(30)),
        "the scenario's workers started"
    );
    let out = terminate_and_wait(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the lab was stopped (terminate)"),
        "{stderr}"
    );
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
    session.assert_left_as_found();
}

/// A kernel a developer built is given by its path: the lab checks its config where it finds
/// one (the build tree's `.config`) and refuses, before booting, one that lacks what the lab
/// needs; then it boots the image and runs the scenario as for a named kernel. The image here
/// is Debian's 6.12 from the lab's cache (the mechanism, not a build).
fn lab_boots_a_kernel_image_given_by_its_path() {
    let _lock = test_lock();
    let cache = Path::new("/var/cache/ksm-trace/lab/debian-6.12");
    let cached = || {
        std::fs::read_dir(cache)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
    };
    let image = match cached() {
        Some(image) => image,
        None => {
            run_lab("debian-6.12");
            cached().expect("the lab cached Debian's 6.12")
        }
    };
    assert_clean_error(
        &["lab", "--kernel", "/nonexistent/arch/x86/boot/bzImage"],
        "no kernel image at",
    );
    // A build tree whose .config lacks KSM: refused in one line, naming it, nothing booted.
    let tree = std::env::temp_dir().join(format!("ksm-trace-test-tree-{}", std::process::id()));
    let boot = tree.join("arch/x86/boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::copy(&image, boot.join("bzImage")).unwrap();
    std::fs::write(
        tree.join(".config"),
        "# CONFIG_KSM is not set\nCONFIG_BPF_SYSCALL=y\nCONFIG_DEBUG_INFO_BTF=y\nCONFIG_BPF_EVENTS=y\nCONFIG_TRACEPOINTS=y\nCONFIG_DEVTMPFS=y\nCONFIG_BLK_DEV_INITRD=y\nCONFIG_SERIAL_8250_CONSOLE=y\n",
    )
    .unwrap();
    let bz = boot.join("bzImage");
    assert_clean_error(&["lab", "--kernel", bz.to_str().unwrap()], "CONFIG_KSM");
    assert!(pids_named("ksm-lab").is_empty(), "a guest was started");
    std::fs::remove_dir_all(&tree).unwrap();
    // The image by its path: booted, the scenario run to its end.
    let (pid, t) = run_lab_in_guest(image.to_str().unwrap(), "6.12.");
    assert_eq!(t["kernel"], image.to_str().unwrap());
    assert_record_holds_up(&t);
    assert_nothing_left(pid);
}
