//! `ksm-trace lab --kernel debian-6.12`: boots Debian's 6.12 kernel in a QEMU (TCG) guest with
//! this ksm-trace inside, where fentry/fexit is allowed; the lab's own checks must pass and no
//! guest or run directory may outlive it. It does not touch the host's KSM (the guest's RAM is
//! not mergeable); it takes the test lock all the same, since two TCG guests starve each other.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

#[test]
fn lab_runs_the_scenario_on_debian_6_12() {
    let _lock = test_lock();
    let child = Command::new(bin())
        .args(["lab", "--kernel", "debian-6.12"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running ksm-trace lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for ksm-trace lab");
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
    let _lock = test_lock();
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
