//! One QEMU guest's life, the same for the `vms` workload and the lab: spawned in its own
//! process group to die with ksm-trace (PR_SET_PDEATHSIG), its serial console written to a
//! file (never a pipe, which would stall the guest when full), watched for a ready line, and
//! ended by QMP quit, then SIGTERM, then SIGKILL, and reaped.
use std::{
    fs::{self, File},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;

use super::qmp;

pub const QEMU: &str = "qemu-system-x86_64";
/// How long each stage of [`stop_all`] waits before the next, harsher one.
const GRACE: Duration = Duration::from_secs(2);

/// What differs between the guests ksm-trace starts (vms workload, kernel lab).
pub struct Machine<'a> {
    /// QEMU's process name too (`process=`), so reports attribute merges by comm; its files in
    /// the run directory are named after it.
    pub name: &'a str,
    pub accel: &'a str,
    pub machine: &'a str,
    pub smp: u32,
    pub mem_mib: u64,
    pub boot: Boot<'a>,
}

/// How a guest boots.
pub enum Boot<'a> {
    /// A kernel and an initramfs that is the whole root (a ramfs): ksm-trace's busybox guests.
    Initramfs {
        kernel: &'a Path,
        initramfs: &'a Path,
    },
    /// A kernel and its initrd, with the root file system on a virtio disk (a qcow2 overlay)
    /// and `append` added to the kernel command line: the Debian guests.
    KernelAndDisk {
        kernel: &'a Path,
        initrd: &'a Path,
        disk: &'a Path,
        append: String,
    },
    /// The firmware boots a virtio disk (a qcow2 overlay) as a real machine would: the user's
    /// own images.
    Disk { disk: &'a Path },
}

pub struct Guest {
    pub name: String,
    log: PathBuf,
    stderr_log: PathBuf,
    qmp: PathBuf,
    child: Child,
    spawned: Instant,
    /// Time from spawn to the ready line, once seen.
    pub ready: Option<Duration>,
    exited: Option<ExitStatus>,
}

impl Guest {
    /// Starts QEMU booting as `m.boot` says, with its console log
    /// (`NAME.log`), QEMU's own error output (`NAME.stderr`) and QMP socket (`NAME.qmp`) in
    /// `run_dir`.
    pub fn spawn(m: &Machine<'_>, run_dir: &Path) -> Result<Self> {
        let log = run_dir.join(format!("{}.log", m.name));
        let stderr_log = run_dir.join(format!("{}.stderr", m.name));
        let qmp = run_dir.join(format!("{}.qmp", m.name));
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut cmd = Command::new(QEMU);
        cmd.args(["-name", &format!("{0},process={0}", m.name)])
            .args(["-accel", m.accel, "-machine", m.machine, "-cpu", "max"])
            .args(["-smp", &m.smp.to_string(), "-m", &format!("{}M", m.mem_mib)])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: a terminal's Ctrl-C reaches ksm-trace only, which then
            // stops the guests in order.
            .process_group(0);
        let drive = |disk: &Path| format!("file={},if=virtio,format=qcow2", disk.display());
        match &m.boot {
            Boot::Initramfs { kernel, initramfs } => {
                // ramfs, not the default tmpfs, as the root: tmpfs is capped at half the RAM
                // the kernel sees at boot, too little for payload plus private data in a 128M
                // guest.
                cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initramfs);
                cmd.args([
                    "-append",
                    "console=ttyS0 quiet panic=-1 rdinit=/init rootfstype=ramfs",
                ]);
            }
            Boot::KernelAndDisk {
                kernel,
                initrd,
                disk,
                append,
            } => {
                cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
                cmd.args(["-drive", &drive(disk)]);
                cmd.arg("-append").arg(format!(
                    "console=ttyS0 quiet panic=-1 root=/dev/vda rw {append}"
                ));
            }
            Boot::Disk { disk } => {
                cmd.args(["-drive", &drive(disk)]);
            }
        }
        crate::run::child::end_with_parent(&mut cmd, Signal::SIGKILL);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {QEMU} for {}", m.name))?;
        Ok(Self {
            name: m.name.to_owned(),
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

    /// The console text so far (lossy UTF-8, carriage returns dropped). The console is small
    /// (quiet kernel), so rereading it whole is cheap.
    pub fn console(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    /// Whether the console has shown a line starting with `marker` (remembered once seen,
    /// with the time it took in [`Guest::ready`]).
    pub fn check_ready(&mut self, marker: &str) -> bool {
        if self.ready.is_none() && self.console().lines().any(|l| l.starts_with(marker)) {
            self.ready = Some(self.spawned.elapsed());
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

    /// The last `lines` non-empty console lines, then QEMU's own error output if any.
    pub fn console_tail(&self, lines: usize) -> String {
        let mut text = tail(&self.console(), lines).unwrap_or("(no console output)".into());
        let stderr = fs::read(&self.stderr_log).unwrap_or_default();
        if let Some(stderr) = tail(&String::from_utf8_lossy(&stderr), lines) {
            text += &format!("\n{QEMU} said:\n{stderr}");
        }
        text
    }

    fn signal(&mut self, signal: Signal) {
        if self.exited().is_none() {
            crate::run::child::send(self.child.id(), signal);
        }
    }

    /// Ends this guest as [`stop_all`] does. Idempotent.
    pub fn stop(&mut self) {
        stop_all(std::slice::from_mut(self));
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` non-empty lines of `text`, if it has any.
fn tail(text: &str, lines: usize) -> Option<String> {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if all.is_empty() {
        return None;
    }
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Ends every guest still running: QMP quit, then SIGTERM, then SIGKILL, `GRACE` apart, each
/// stage for all guests at once.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_non_empty_lines() {
        assert_eq!(tail("a\n\nb\n \nc\n", 2).as_deref(), Some("b\nc"));
        assert_eq!(tail("a\n", 5).as_deref(), Some("a"));
        assert_eq!(tail("\n \n", 3), None);
    }
}
