//! One QEMU guest (TCG): starting it, watching its serial console for the ready marker, and
//! ending it (QMP quit → SIGTERM → SIGKILL).
use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;

use super::{assets::Assets, initramfs::READY_MARKER, qmp};
use crate::workload::spec::VmsSpec;

pub const QEMU: &str = "qemu-system-x86_64";
/// How long each stage of `stop_all` waits before the next, harsher one.
const GRACE: Duration = Duration::from_secs(2);

pub struct Guest {
    pub name: String,
    log: PathBuf,
    stderr_log: PathBuf,
    qmp: PathBuf,
    child: Child,
    spawned: Instant,
    /// Time from spawn to the ready marker, once seen.
    pub ready: Option<Duration>,
    exited: Option<ExitStatus>,
}

/// What differs between the guests ksm-trace starts (vms workload, kernel lab).
pub struct Launch<'a> {
    /// QEMU's process name too (`process=`), so reports attribute merges by comm.
    pub name: &'a str,
    pub accel: &'a str,
    pub machine: &'a str,
    pub smp: u32,
    pub mem_mib: u64,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub log: &'a Path,
    pub qmp: &'a Path,
    pub stderr: File,
}

/// Starts QEMU on a kernel and initramfs: serial console to a file, a QMP socket, a ramfs
/// root, its own process group, and death with ksm-trace.
pub fn launch(l: &Launch<'_>) -> Result<Child> {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-name", &format!("{0},process={0}", l.name)])
        .args(["-accel", l.accel, "-machine", l.machine, "-cpu", "max"])
        .args(["-smp", &l.smp.to_string(), "-m", &format!("{}M", l.mem_mib)])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        // A file, never a pipe: an unread pipe would stall the guest.
        .arg("-serial")
        .arg(format!("file:{}", l.log.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", l.qmp.display()))
        .arg("-kernel")
        .arg(l.kernel)
        .arg("-initrd")
        .arg(l.initramfs)
        // ramfs, not the default tmpfs, as the root: tmpfs is capped at half the RAM the
        // kernel sees at boot, too little for payload plus private data in a 128M guest.
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 rdinit=/init rootfstype=ramfs",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            l.stderr
                .try_clone()
                .context("duplicating QEMU's stderr log")?,
        )
        // Its own process group: a terminal's Ctrl-C reaches ksm-trace only, which then stops
        // the guests in order.
        .process_group(0);
    crate::child::end_with_parent(&mut cmd, Signal::SIGKILL);
    cmd.spawn()
        .with_context(|| format!("starting {QEMU} for {}", l.name))
}

/// `ksm-vmN`: QEMU's process name, so reports attribute merges by comm.
pub fn guest_name(index: u32) -> String {
    format!("ksm-vm{index}")
}

impl Guest {
    /// Starts guest `index` with its console log and QMP socket in `run_dir`.
    pub fn spawn(index: u32, spec: &VmsSpec, assets: &Assets, run_dir: &Path) -> Result<Self> {
        let name = guest_name(index);
        let log = run_dir.join(format!("{name}.log"));
        let stderr_log = run_dir.join(format!("{name}.stderr"));
        let qmp = run_dir.join(format!("{name}.qmp"));
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let child = launch(&Launch {
            name: &name,
            // /dev/kvm is unusable for stock guests here; a small translation cache keeps
            // QEMU's own memory low.
            accel: "tcg,tb-size=32",
            machine: "q35",
            smp: 1,
            mem_mib: spec.mem >> 20,
            kernel: &assets.kernel,
            initramfs: &assets.initramfs,
            log: &log,
            qmp: &qmp,
            stderr,
        })?;
        Ok(Self {
            name,
            log,
            stderr_log,
            qmp,
            child,
            spawned: Instant::now(),
            ready: None,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the console has shown the ready marker (remembered once seen).
    pub fn check_ready(&mut self) -> bool {
        if self.ready.is_none() {
            // The console is small (quiet kernel), so rereading it whole is cheap.
            let seen = fs::read(&self.log).is_ok_and(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .any(|l| l.trim() == READY_MARKER)
            });
            if seen {
                self.ready = Some(self.spawned.elapsed());
            }
        }
        self.ready.is_some()
    }

    /// The exit status once QEMU has exited (reaped here, so its pid is never signalled
    /// after it could have been reused).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.exited = status,
                Err(e) => log::warn!("waiting for {}: {e}", self.name),
            }
        }
        self.exited
    }

    /// The last `lines` lines of the console, then QEMU's own error output if any.
    pub fn console_tail(&self, lines: usize) -> String {
        let mut text = tail(&self.log, lines).unwrap_or_else(|| "(no console output)".into());
        if let Some(stderr) = tail(&self.stderr_log, lines) {
            text += &format!("\n{QEMU} said:\n{stderr}");
        }
        text
    }

    fn signal(&mut self, signal: Signal) {
        if self.exited().is_none() {
            crate::child::send(self.child.id(), signal);
        }
    }
}

fn tail(path: &Path, lines: usize) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if all.is_empty() {
        return None;
    }
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Ends every guest still running: QMP quit, then SIGTERM, then SIGKILL, `GRACE` apart.
pub fn stop_all(guests: &mut [Guest]) {
    for guest in guests.iter_mut() {
        if guest.exited().is_some() {
            continue;
        }
        if let Err(e) = qmp::quit(&guest.qmp, Duration::from_millis(500)) {
            log::debug!("{}: {e:#}", guest.name);
        }
    }
    if wait_all(guests, GRACE) {
        return;
    }
    for guest in guests.iter_mut() {
        guest.signal(Signal::SIGTERM);
    }
    if wait_all(guests, GRACE) {
        return;
    }
    for guest in guests.iter_mut() {
        if guest.exited().is_none() {
            log::warn!("{} ignored quit and SIGTERM: killing it", guest.name);
            guest.signal(Signal::SIGKILL);
            match guest.child.wait() {
                Ok(status) => guest.exited = Some(status),
                Err(e) => log::warn!("waiting for {}: {e}", guest.name),
            }
        }
    }
}

/// True once every guest has exited, or false after `timeout`.
fn wait_all(guests: &mut [Guest], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if guests.iter_mut().all(|g| g.exited().is_some()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
