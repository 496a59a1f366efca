//! Crash recovery on the real kernel: ksm-trace killed with SIGKILL at varied moments of
//! `record`, `sweep`, `bench overhead` and a `record` of QEMU guests; `ksm-trace recover` must
//! then leave every KSM knob, the processes, the mounts, /tmp and /run exactly as they were.
mod common;

use std::{collections::BTreeMap, fs, time::Duration};

use common::*;

tests! {
    sigkill_at_any_moment_is_undone_by_recover: Root,
}

/// What a run may change, as the test reads it itself.
#[derive(Debug, PartialEq)]
struct Machine {
    knobs: BTreeMap<String, String>,
    tracefs_mounted: bool,
    /// /tmp/ksm-trace-* entries.
    tmp: Vec<String>,
    /// /run/ksm-trace/* entries (crash-recovery state files).
    state_files: Vec<String>,
    /// Live (not zombie: an orphan's zombie waits for PID 1 to reap it) workload and tracer
    /// processes.
    processes: Vec<String>,
}

/// Every KSM setting this kernel has: the files in /sys/kernel/mm/ksm that root may write.
fn knobs() -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::read_dir(KSM)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o200 != 0)
        })
        .filter_map(|e| {
            let value = fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), value))
        })
        .collect()
}

fn entries(dir: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn live_processes() -> Vec<String> {
    let mut found = Vec::new();
    for prefix in ["ksm-procs-", "ksm-vm", "bpftrace", "qemu-system"] {
        for pid in pids_named(prefix) {
            let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The field after the parenthesised comm.
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
            if !zombie && !state.is_empty() {
                found.push(format!("{prefix}:{pid}"));
            }
        }
    }
    found
}

fn machine() -> Machine {
    Machine {
        knobs: knobs(),
        tracefs_mounted: mount_point("tracefs").is_some(),
        tmp: entries("/tmp", "ksm-trace-"),
        state_files: entries("/run/ksm-trace", ""),
        processes: live_processes(),
    }
}

fn sigkill_at_any_moment_is_undone_by_recover() {
    let session = KsmSession::start("sigkill");
    // Nothing left over from before: this test compares against what it found.
    ksm_trace_ok(&["recover"]);
    let before = machine();
    assert!(before.state_files.is_empty(), "{before:?}");
    let dir = session.path("runs");
    fs::create_dir_all(&dir).unwrap();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (rec, sweep_dir) = (out("rec.json"), out("sweep"));
    let cases: Vec<(Vec<&str>, Vec<f64>)> = vec![
        (
            vec![
                "record",
                "--workload",
                "procs:2,pages=4000",
                "--duration",
                "30s",
                "-q",
                "-o",
                &rec,
            ],
            vec![0.05, 0.3, 0.8, 1.5, 3.0, 5.0],
        ),
        (
            vec![
                "sweep",
                "--workload",
                "procs:2,pages=3000",
                "--pages-to-scan",
                "500,3000",
                "--sleep-ms",
                "10",
                "--duration",
                "4s",
                "-o",
                &sweep_dir,
            ],
            vec![0.5, 2.0, 4.5, 6.0, 8.0],
        ),
        (
            vec![
                "bench",
                "overhead",
                "--workload",
                "procs:2,pages=2000",
                "--window",
                "2s",
                "--repetitions",
                "1",
            ],
            vec![0.5, 2.0, 5.0, 9.0, 13.0],
        ),
        (
            vec![
                "record",
                "--workload",
                "vms:1,mem=128M,shared=8M,private=0",
                "--duration",
                "60s",
                "-q",
                "-o",
                &rec,
            ],
            vec![1.0, 4.0, 8.0, 14.0],
        ),
    ];
    let mut kills = 0;
    for (args, delays) in &cases {
        for &delay in delays {
            let mut child = spawn_ksm_trace(args);
            std::thread::sleep(Duration::from_secs_f64(delay));
            let exited_already = child.try_wait().unwrap().is_some();
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
            let recover = ksm_trace(&["recover"]);
            let said = String::from_utf8_lossy(&recover.stdout).into_owned()
                + &String::from_utf8_lossy(&recover.stderr);
            assert!(recover.status.success(), "{said}");
            assert!(!said.contains('\n') || said.lines().count() <= 2, "{said}");
            // Orphaned workers die with ksm-trace (PR_SET_PDEATHSIG); give that a moment.
            let left_as_found = wait_until(Duration::from_secs(10), || machine() == before);
            assert!(
                left_as_found,
                "after SIGKILL of `ksm-trace {}` at {delay} s (exited already: {exited_already}), recover said {said:?}; before {before:?}, after {:?}",
                args.join(" "),
                machine()
            );
            kills += 1;
        }
    }
    assert!(kills >= 20, "{kills} kills");
    // And a recover with nothing to do says so.
    let idle = ksm_trace(&["recover"]);
    assert!(String::from_utf8_lossy(&idle.stdout).contains("nothing to recover"));
    session.assert_knobs_restored();
}
