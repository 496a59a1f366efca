//! `ksm-trace record --workload vms:N` against the real kernel: merges must be attributed to
//! each QEMU guest by name, and no guest, console log or QMP socket may outlive the run, also
//! when ksm-trace is stopped by SIGTERM.
mod common;

use std::{fs, path::PathBuf, process::Child, time::Duration};

use common::*;

tests! {
    record_vms_attributes_merges_to_each_guest: Root,
    sigterm_stops_guests: Root,
    sigterm_while_guests_boot_ends_the_start_quickly: Root,
}

fn record_vms_attributes_merges_to_each_guest() {
    let session = KsmSession::start("vms");
    let (rec, rep) = record(
        &session,
        &[
            "--workload",
            "vms:2,mem=128M,churn=1M/2s",
            "--duration",
            "40s",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "20",
        ],
    );
    let workers = rec["meta"]["workload"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for (i, worker) in workers.iter().enumerate() {
        let comm = format!("ksm-vm{i}");
        assert_eq!(worker["comm"], comm.as_str());
        assert_eq!(worker["bytes"].as_u64(), Some(128 << 20));
        assert!(
            worker["ready_ns"].as_u64().unwrap() > 0,
            "{comm} ready time"
        );
        let pid = worker["pid"].as_u64().unwrap();
        let p = entry_for_pid(&rep, pid);
        assert_eq!(p["comm"], comm.as_str(), "attribution by comm");
        let merges = p["merges"].as_u64().unwrap();
        assert!(merges > 0, "{comm}: no merges");
        let start = p["ksm_merging_pages_start"].as_u64().unwrap();
        let end = p["ksm_merging_pages_end"].as_u64().unwrap();
        // Guests write their memory, so some merged pages leave again: only ≥ holds.
        assert!(
            merges >= end.saturating_sub(start),
            "{comm}: merges {merges} < Δksm_merging_pages {start}→{end}"
        );
        // The guest rewrites part of its merged memory: QEMU's writes under TCG are user
        // faults, so the page fault tracepoints count them for the guest.
        assert!(
            p["cow_breaks"].as_u64().unwrap() > 0,
            "{comm}: no COW breaks: {p}"
        );
        assert!(!alive(pid as u32), "{comm} (pid {pid}) survived");
    }
    // Every break a process was seen making is one the kernel counted, and nearly every break
    // the kernel counted was seen: the fault tracepoints cannot see a break made without a
    // write fault (a write through get_user_pages), which the report shows as not attributed.
    // Most runs see all of them; one CI run missed 2 of 2669, cause not yet found.
    let traced: i64 = rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["cow_breaks"].as_i64())
        .sum();
    let kernel = rep["kernel_deltas"]["cow_ksm"].as_i64().unwrap();
    assert!(
        traced <= kernel && traced * 1000 >= kernel * 995,
        "{traced} breaks traced against cow_ksm +{kernel}: {rep}"
    );
    assert_no_guests_left();
    session.assert_knobs_restored();
    session.assert_worker_pages_released();
}

fn sigterm_stops_guests() {
    let session = KsmSession::start("vms-sigterm");
    let (child, out, ready) = spawn_two_guests(&session, "120s");
    // Both guests booted: their consoles show the marker their /init prints when ready.
    assert!(
        wait_until(Duration::from_secs(180), || pids_named("ksm-vm").len() == 2
            && ready(0)
            && ready(1)),
        "guests ready"
    );
    assert!(
        ksmd_runs_within(Duration::from_secs(10)),
        "ksmd started for the run"
    );
    std::thread::sleep(Duration::from_secs(2));
    let output = terminate_and_wait(child);
    assert!(
        output.status.success(),
        "exit after SIGTERM: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rec = json(&out);
    assert_eq!(rec["meta"]["ended_by"], "terminate");
    assert_no_guests_left();
    session.assert_knobs_restored();
}

fn sigterm_while_guests_boot_ends_the_start_quickly() {
    let session = KsmSession::start("vms-boot-sigterm");
    let tmp_before = tmp_entries("ksm-trace-");
    let (child, out, ready) = spawn_two_guests(&session, "60s");
    // Both QEMUs started, neither guest ready yet (a boot takes several seconds under TCG).
    assert!(
        wait_until(Duration::from_secs(60), || pids_named("ksm-vm").len() == 2),
        "guests started"
    );
    assert!(!ready(0) && !ready(1), "a guest was ready already");
    let sent = std::time::Instant::now();
    let output = terminate_and_wait(child);
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // QMP quit ends a booting guest at once; anything near the boot timeout means the wait
    // did not see the request.
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("stopped (terminate)") && lines[0].contains("booting"),
        "{stderr}"
    );
    assert!(!out.exists(), "no recording of a run that never started");
    assert_no_guests_left();
    session.assert_knobs_restored();
    let left: Vec<PathBuf> = tmp_entries("ksm-trace-")
        .into_iter()
        .filter(|p| !tmp_before.contains(p))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `record --workload vms:2,mem=128M --duration DURATION` in the background: the child, where
/// its recording goes, and whether guest `i`'s console (in the run directory) shows its ready
/// marker yet.
fn spawn_two_guests(
    session: &KsmSession,
    duration: &str,
) -> (Child, PathBuf, impl Fn(u32) -> bool) {
    let (child, out) = spawn_record(
        session,
        &["--workload", "vms:2,mem=128M", "--duration", duration],
    );
    let dir = PathBuf::from(format!("/tmp/ksm-trace-vms-{}", child.id()));
    let ready = move |i: u32| {
        fs::read_to_string(dir.join(format!("ksm-vm{i}.log")))
            .is_ok_and(|log| log.contains("KSM-TRACE-READY"))
    };
    (child, out, ready)
}
