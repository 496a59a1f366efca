//! The lab's one QEMU guest (single-threaded TCG, 2 vCPUs, RAM not mergeable): a [`Guest`] watched until the
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
    /// The guest's kernel panicked (QEMU exits on it): its own account, see [`panic_report`].
    Panicked(String),
    /// QEMU exited before it for another reason.
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
            // One host thread runs both vCPUs: with a thread each (multi-threaded TCG) the
            // guest's kernel panicked on an int3 it had just patched out (text_poke_bp, as
            // ksm-trace's probes flip static keys) — 1 boot in 5 in one run here. Single-threaded,
            // the scenario takes as long on two host cores (53 s against 52 s).
            accel: "tcg,thread=single",
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
            return match panic_report(&guest.console()) {
                Some(report) => Outcome::Panicked(report),
                None => Outcome::Exited(status),
            };
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

/// The console line that says the guest's kernel panicked.
const PANIC: &str = "Kernel panic - not syncing";

/// What the guest's kernel said when it panicked: the first line of its oops report (`BUG:`,
/// `Oops:`, `kernel BUG at`, …) when there is one, and the panic line; None when it did not panic.
pub fn panic_report(console: &str) -> Option<String> {
    // Console lines carry a `[   89.377932] ` timestamp.
    let text = |l: &str| l.split_once("] ").map_or(l, |(_, t)| t).trim().to_owned();
    let panic = console.lines().find(|l| l.contains(PANIC)).map(text)?;
    let first = console.lines().map(text).find(|t| {
        ["BUG:", "Oops:", "kernel BUG at", "general protection fault"]
            .iter()
            .any(|p| t.starts_with(p))
    });
    Some(match first {
        Some(first) => format!("{first}; {panic}"),
        None => panic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_told_by_its_first_oops_line_and_the_panic_line() {
        let console = "KSM-TRACE-LAB-BOOTED 4.08 6.12\n\
            [   89.1] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n\
            [   89.2] RIP: 0010:__schedule+0x339/0xbf0\n\
            [   89.3] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert_eq!(
            panic_report(console).unwrap(),
            "Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI; Kernel panic - not syncing: Fatal exception in interrupt"
        );
        assert_eq!(
            panic_report("[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
                .unwrap(),
            "Kernel panic - not syncing: VFS: Unable to mount root fs"
        );
        assert_eq!(panic_report("KSM-TRACE-LAB-DONE\n"), None);
    }
}
