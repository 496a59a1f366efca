//! `ksm-trace lab --kernel host`: the lab's scenario on the running kernel, each step a child
//! ksm-trace as in the guest, so the transcript has the same shape. `record` saves and restores the KSM
//! knobs itself; a child outliving this process gets SIGTERM and takes its orderly exit.
use std::{
    fs,
    io::Read,
    path::Path,
    process::{Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::scenario::{self, Counters, RECORD_ARGS, Step, Transcript};

/// One step's exit code and output.
struct Output {
    rc: Option<i32>,
    stdout: String,
    stderr: String,
}

fn step(exe: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::run::child::end_with_parent(&mut cmd, nix::sys::signal::Signal::SIGTERM);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {} {}", exe.display(), args.join(" ")))?;
    // Read both pipes while waiting, so a large report cannot fill one and stall the child.
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    // A Ctrl-C from a terminal reaches the child too; a SIGTERM sent to the lab alone is passed
    // on, so the child (record) takes its orderly exit either way.
    let mut passed_on = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !passed_on && crate::run::interrupts::stop_requested().is_some() {
            crate::run::child::send(child.id(), nix::sys::signal::Signal::SIGTERM);
            passed_on = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if let Some(why) = crate::run::interrupts::stop_requested() {
        bail!("the lab was stopped ({why}) during `ksm-trace {}`", args[0]);
    }
    Ok(Output {
        rc: status.code(),
        stdout,
        stderr,
    })
}

/// Reads `pipe` to its end on a thread of its own; the text, lossily decoded.
fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn exit(rc: Option<i32>) -> String {
    rc.map_or("killed by a signal".into(), |rc| format!("exit {rc}"))
}

/// Runs doctor, record (its recording in `run_dir`) and report with this executable.
pub fn run(run_dir: &Path, mut progress: impl FnMut(&str)) -> Result<Transcript> {
    let exe = std::env::current_exe().context("finding ksm-trace's own executable")?;
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into());

    let mut problems = Vec::new();
    let doctor = step(&exe, &["doctor", "--json"])?;
    progress(&format!("doctor: {}", exit(doctor.rc)));

    let recording_path = run_dir.join("r.json");
    let recording_arg = recording_path.to_string_lossy();
    let mut record_args: Vec<&str> = RECORD_ARGS.split_whitespace().collect();
    record_args.extend(["-o", &recording_arg]);
    let counters_before = Counters::read();
    let started = Instant::now();
    let record = step(&exe, &record_args)?;
    let record_s = started.elapsed().as_secs_f64();
    let counters_after = Counters::read();
    progress(&format!(
        "record: {} after {record_s:.1} s",
        exit(record.rc)
    ));

    let mut diagnostics = format!("--- record's error output ---\n{}", record.stderr.trim());
    let (report, recording) = if record.rc == Some(0) {
        let report = step(&exe, &["report", &recording_arg, "--json"])?;
        if report.rc != Some(0) {
            diagnostics += &format!("\n--- report's error output ---\n{}", report.stderr.trim());
        }
        let recording = match fs::read_to_string(&recording_path) {
            Ok(text) => scenario::parse_json(&text, "the recording", &mut problems),
            Err(e) => {
                problems.push(format!("reading {}: {e}", recording_path.display()));
                None
            }
        };
        let json = scenario::parse_json(&report.stdout, "report --json's output", &mut problems);
        (
            Step {
                rc: report.rc,
                stderr: report.stderr,
                json,
            },
            recording,
        )
    } else {
        (Step::default(), None)
    };
    Ok(Transcript {
        kernel: super::HOST.to_owned(),
        release,
        boot_s: None,
        record_s: Some(record_s),
        doctor: Step {
            rc: doctor.rc,
            json: scenario::parse_json(&doctor.stdout, "doctor --json's output", &mut problems),
            stderr: doctor.stderr,
        },
        record: Step {
            rc: record.rc,
            stderr: record.stderr,
            json: None,
        },
        report,
        recording,
        counters_before,
        counters_after,
        // The host runs the main scenario only: its kernel's backends are compared in guests.
        backends: Vec::new(),
        problems,
        diagnostics,
    })
}
