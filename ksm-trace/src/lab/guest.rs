//! The lab's one QEMU guest (TCG, 2 vCPUs, RAM not mergeable): a [`Guest`] watched until the
//! scenario's DONE line, with the scenario's progress lines passed on as they appear.
use std::{
    path::Path,
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::scenario::DONE;
use crate::guest::qemu::{Boot, Guest, Machine};

/// How the wait for the scenario ended.
pub enum Outcome {
    /// The DONE line appeared.
    Done,
    /// QEMU exited before it (e.g. a kernel panic with panic=-1).
    Exited(ExitStatus),
    TimedOut,
    /// Ctrl-C or SIGTERM ("interrupt", "terminate").
    Stopped(&'static str),
}

/// Starts the lab guest on `kernel` and `initramfs`, its files in `run_dir`.
pub fn spawn(kernel: &Path, initramfs: &Path, run_dir: &Path) -> Result<Guest> {
    Guest::spawn(
        &Machine {
            name: "ksm-lab",
            accel: "tcg",
            // mem-merge=off: the host's KSM (and anyone recording it) never sees this guest.
            machine: "q35,mem-merge=off",
            smp: 2,
            mem_mib: 1536,
            boot: Boot::Initramfs { kernel, initramfs },
        },
        run_dir,
    )
}

/// Waits for the DONE line, QEMU's exit, a stop request or `timeout`, passing each new
/// `KSM-TRACE-LAB-*` console line, and a note every 30 s, to `progress`.
pub fn wait_done(guest: &mut Guest, timeout: Duration, mut progress: impl FnMut(&str)) -> Outcome {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut seen = 0;
    loop {
        let console = guest.console();
        if guest.check_ready(DONE) {
            return Outcome::Done;
        }
        if console.len() > seen {
            // Report new marker lines as they come (boot, status).
            for line in console[seen..].lines() {
                if line.starts_with("KSM-TRACE-LAB-") {
                    progress(line);
                }
            }
            // Only whole lines are consumed.
            seen = console.rfind('\n').map_or(seen, |i| i + 1);
        }
        if let Some(status) = guest.exited() {
            // The last lines may have landed just before the exit.
            if guest.check_ready(DONE) {
                return Outcome::Done;
            }
            return Outcome::Exited(status);
        }
        if started.elapsed() >= timeout {
            return Outcome::TimedOut;
        }
        if let Some(why) = crate::run::interrupts::stop_requested() {
            return Outcome::Stopped(why);
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            progress(&format!(
                "still running after {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
