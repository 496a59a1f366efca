//! `ksm-trace lab --kernel debian-6.12`: boots Debian's 6.12 kernel in a QEMU (TCG) guest with
//! this ksm-trace inside, where fentry/fexit is allowed; the lab's own checks must pass and no
//! guest or run directory may outlive it. It does not touch the host's KSM (the guest's RAM is
//! not mergeable); it takes the test lock all the same, since two TCG guests starve each other.
//! `--kernel host` runs the same scenario on this kernel, where it does drive KSM.
mod common;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::*;

/// `ksm-trace lab --kernel KERNEL`: its pid (which names its run directory) and its output.
fn run_lab(kernel: &str) -> (u32, Output) {
    let child = Command::new(bin())
        .args(["lab", "--kernel", kernel])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ksm-trace lab");
    let pid = child.id();
    (
        pid,
        child.wait_with_output().expect("waiting for ksm-trace lab"),
    )
}

#[test]
fn lab_runs_the_scenario_on_debian_6_12() {
    let Some(_lock) = root_test_lock() else {
        return;
    };
    let (pid, out) = run_lab("debian-6.12");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed:\n{stdout}\n{stderr}");
    for expected in [
        "lab on debian-6.12: ok",
        "fexit on try_to_merge_one_page",
        "bracket / fexit at p50",
        "full scans: traced",
        "COW breaks of KSM pages: traced",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || pids_named("ksm-lab").is_empty()),
        "the lab guest survived: {:?}",
        pids_named("ksm-lab")
    );
    let run_dir = format!("/tmp/ksm-trace-lab-{pid}");
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
}

#[test]
fn lab_degrades_clearly_on_debian_6_1() {
    let Some(_lock) = root_test_lock() else {
        return;
    };
    // Linux 6.1 predates the ksm tracepoints: record must refuse with one clear line.
    let out = ksm_trace(&["lab", "--kernel", "debian-6.1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lab failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("has no ksm tracepoints"), "{stdout}");
    assert!(
        stdout.contains("degradation check on debian-6.1: ok"),
        "{stdout}"
    );
    assert!(pids_named("ksm-lab").is_empty());
}

/// The number after `prefix` on the line containing it.
fn number_after(text: &str, prefix: &str) -> u64 {
    let rest = &text[text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} missing from:\n{text}"))
        + prefix.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {prefix:?} in:\n{text}"))
}

fn vmstat(name: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /proc/vmstat"))
}

#[test]
fn lab_runs_the_scenario_on_the_host_kernel() {
    let Some(session) = KsmSession::try_start("lab-host") else {
        return;
    };
    let cow_before = vmstat("cow_ksm");
    let scans_before = knob_u64("full_scans");
    let (pid, out) = run_lab("host");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lab failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lab on host: ok"), "{stdout}");
    // Whatever this kernel allows, the lab's figures must fit what the kernel counted around
    // the whole run, read here independently.
    let cow_delta = vmstat("cow_ksm") - cow_before;
    let scans_delta = knob_u64("full_scans") - scans_before;
    let cow_counted = if stdout.contains("COW breaks of KSM pages: traced") {
        number_after(&stdout, "COW breaks of KSM pages: traced ")
    } else {
        number_after(&stdout, "COW breaks of KSM pages: seen by the workload ")
    };
    assert!(
        cow_counted > 0 && cow_counted <= cow_delta,
        "COW breaks {cow_counted} vs cow_ksm +{cow_delta}:\n{stdout}"
    );
    let scans = number_after(&stdout, "full scans: traced ");
    assert!(
        scans > 0 && scans <= scans_delta,
        "full scans {scans} vs full_scans +{scans_delta}:\n{stdout}"
    );
    session.assert_knobs_restored();
    session.assert_worker_pages_released();
    assert!(pids_named("ksm-procs-").is_empty(), "workers left behind");
    let run_dir = format!("/tmp/ksm-trace-lab-{pid}");
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
}

#[test]
fn lab_refuses_guest_options_for_the_host() {
    let out = ksm_trace(&["lab", "--kernel", "host", "--refresh"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--refresh"), "{stderr}");
}

#[test]
fn lab_on_the_host_stopped_by_sigterm_cleans_up() {
    let Some(session) = KsmSession::try_start("lab-host-sigterm") else {
        return;
    };
    let child = spawn_ksm_trace(&["lab", "--kernel", "host"]);
    let run_dir = format!("/tmp/ksm-trace-lab-{}", child.id());
    assert!(
        wait_until(Duration::from_secs(30), || pids_named("ksm-procs-").len()
            == 2),
        "the scenario's workers started"
    );
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the lab was stopped (terminate)"),
        "{stderr}"
    );
    assert!(!Path::new(&run_dir).exists(), "{run_dir} left behind");
    session.assert_left_as_found();
}
