//! The lab's one QEMU guest (TCG, 2 vCPUs): started with its console in a file, watched until
//! the scenario's DONE line, ended over QMP (then SIGKILL) and never left behind.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::image::DONE;
use crate::workload::vms::{
    qemu::{Launch, QEMU, launch},
    qmp,
};

pub struct LabGuest {
    pub log: PathBuf,
    stderr_log: PathBuf,
    qmp: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

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

impl LabGuest {
    pub fn spawn(kernel: &Path, initramfs: &Path, run_dir: &Path) -> Result<Self> {
        let log = run_dir.join("console.log");
        let stderr_log = run_dir.join("qemu.stderr");
        let qmp = run_dir.join("qmp.sock");
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let child = launch(&Launch {
            name: "ksm-lab",
            accel: "tcg",
            // mem-merge=off: the host's KSM (and anyone recording it) never sees this guest.
            machine: "q35,mem-merge=off",
            smp: 2,
            mem_mib: 1536,
            kernel,
            initramfs,
            log: &log,
            qmp: &qmp,
            stderr,
        })?;
        Ok(Self {
            log,
            stderr_log,
            qmp,
            child,
            exited: None,
        })
    }

    /// The console text so far (lossy UTF-8, carriage returns dropped).
    pub fn console(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Ok(status) = self.child.try_wait()
        {
            self.exited = status;
        }
        self.exited
    }

    /// Waits for the DONE line, QEMU's exit or `timeout`, passing each new `KSM-TRACE-LAB-*`
    /// console line, and a note every 30 s, to `progress`.
    pub fn wait_done(&mut self, timeout: Duration, mut progress: impl FnMut(&str)) -> Outcome {
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut seen = 0;
        loop {
            let console = self.console();
            if console.lines().any(|l| l.starts_with(DONE)) {
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
            if let Some(status) = self.exited() {
                // The last lines may have landed just before the exit.
                if self.console().lines().any(|l| l.starts_with(DONE)) {
                    return Outcome::Done;
                }
                return Outcome::Exited(status);
            }
            if started.elapsed() >= timeout {
                return Outcome::TimedOut;
            }
            if let Some(why) = crate::interrupts::stop_requested() {
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

    /// The last `lines` non-empty console lines, then QEMU's own error output if any.
    pub fn console_tail(&self, lines: usize) -> String {
        let console = self.console();
        let all: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut text = if all.is_empty() {
            "(no console output)".to_owned()
        } else {
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        if let Ok(stderr) = fs::read_to_string(&self.stderr_log)
            && !stderr.trim().is_empty()
        {
            text += &format!("\n{QEMU} said:\n{}", stderr.trim());
        }
        text
    }

    /// QMP quit, then SIGKILL if QEMU is still there after 2 s.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Err(e) = qmp::quit(&self.qmp, Duration::from_millis(500)) {
            log::debug!("lab guest: {e:#}");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.exited = Some(status),
            Err(e) => log::warn!("waiting for the lab guest: {e}"),
        }
    }
}

impl Drop for LabGuest {
    fn drop(&mut self) {
        self.stop();
    }
}
