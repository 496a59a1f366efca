//! `vms`: QEMU guests (TCG) whose RAM KSM merges. Three kinds of guest (`spec::GuestSystem`):
//! - busybox: Debian's cloud kernel with an initramfs holding the same seeded payload, private
//!   random memory and optional churn of the payload;
//! - debian: the cached Debian image ([`debian`]) with MariaDB, optionally running sysbench
//!   ([`sysbench`]), whose figures are read back from the console into each worker's `load`;
//! - image: the user's own bootable disk, booted by firmware.
//!
//! Disk-based guests boot from a qcow2 overlay each, in the run directory, so their base image
//! is never written. Guests are named `ksm-vmN` (QEMU's process name), die with ksm-trace
//! (PR_SET_PDEATHSIG), and keep their console logs, QMP sockets and overlays in
//! `/tmp/ksm-trace-vms-<pid>/` for the run.
pub mod assets;
pub mod debian;
pub mod initramfs;
pub mod sysbench;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Worker,
    spec::{GuestSystem, VmsSpec},
};
use crate::{
    guest::{
        disk,
        qemu::{self, Boot, Guest, Machine},
    },
    run::dir::RunDir,
};

/// All guests together must be ready within this: busybox guests boot in seconds, Debian
/// guests also start MariaDB and fill sysbench's tables under TCG.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const DEBIAN_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// What the guests boot from, prepared once for all of them.
enum BootAssets {
    Busybox(assets::Assets),
    Debian(debian::DebianImage),
    Image { path: PathBuf, format: String },
}

pub struct VmsWorkload {
    pub workers: Vec<Worker>,
    /// Declared before `run_dir`: the guests end before their files go.
    guests: Vec<Guest>,
    run_dir: Option<RunDir>,
    spec: VmsSpec,
}

/// `ksm-vmN`: QEMU's process name, so reports attribute merges by comm.
pub fn guest_name(index: u32) -> String {
    format!("ksm-vm{index}")
}

impl VmsWorkload {
    /// Builds or reuses the cached assets, starts `spec.count` guests and waits until every
    /// one has printed its ready marker. A Ctrl-C or SIGTERM meanwhile ends the wait. On any
    /// failure every started guest is stopped.
    pub fn start(spec: &VmsSpec, refresh: bool) -> Result<Self> {
        crate::guest::check_prerequisites()?;
        let assets = match &spec.system {
            GuestSystem::Busybox => BootAssets::Busybox(assets::prepare(spec, refresh)?),
            GuestSystem::Debian { .. } => BootAssets::Debian(debian::DebianImage::ensure(refresh)?),
            GuestSystem::Image { path } => BootAssets::Image {
                path: path.clone(),
                format: disk::format_of(path)?,
            },
        };
        super::stopped_during_start("the guest assets were prepared")?;
        let mut workload = Self {
            workers: Vec::new(),
            guests: Vec::new(),
            run_dir: Some(RunDir::create("vms")?),
            spec: spec.clone(),
        };
        if let Err(e) = workload.boot(&assets) {
            workload.stop();
            return Err(e);
        }
        Ok(workload)
    }

    fn boot(&mut self, assets: &BootAssets) -> Result<()> {
        let spec = self.spec.clone();
        let run_dir = self.run_dir.as_ref().map(RunDir::path);
        let run_dir = run_dir.ok_or_else(|| anyhow::anyhow!("the vms workload was stopped"))?;
        let load = match &spec.system {
            GuestSystem::Debian { load } => load.as_ref(),
            _ => None,
        };
        for index in 0..spec.count {
            let name = guest_name(index);
            let overlay = |base: &std::path::Path, format: &str| {
                disk::overlay(base, format, &run_dir.join(format!("{name}.qcow2")))
            };
            let (disk, boot);
            match assets {
                BootAssets::Busybox(a) => {
                    boot = Boot::Initramfs {
                        kernel: &a.kernel,
                        initramfs: &a.initramfs,
                    };
                }
                BootAssets::Debian(image) => {
                    disk = overlay(&image.disk, "raw")?;
                    boot = Boot::KernelAndDisk {
                        kernel: &image.kernel,
                        initrd: &image.initrd,
                        disk: &disk,
                        append: format!("init={} {}", debian::INIT, sysbench::kernel_args(load)),
                    };
                }
                BootAssets::Image { path, format } => {
                    disk = overlay(path, format)?;
                    boot = Boot::Disk { disk: &disk };
                }
            }
            let machine = Machine {
                name: &name,
                // /dev/kvm is unusable for stock guests here; a small translation cache keeps
                // QEMU's own memory low.
                accel: "tcg,tb-size=32",
                machine: "q35",
                smp: 1,
                mem_mib: spec.mem >> 20,
                boot,
            };
            self.guests.push(Guest::spawn(&machine, run_dir)?);
        }
        let (marker, timeout) = match assets {
            BootAssets::Busybox(_) => (Some(initramfs::READY_MARKER), READY_TIMEOUT),
            BootAssets::Debian(_) => (Some(debian::READY_MARKER), DEBIAN_READY_TIMEOUT),
            // A user's image prints nothing ksm-trace knows: running is all there is to see.
            BootAssets::Image { .. } => (None, READY_TIMEOUT),
        };
        if let Some(marker) = marker {
            self.wait_ready(marker, timeout)?;
        }
        self.workers = self
            .guests
            .iter()
            .map(|g| Worker {
                pid: g.pid(),
                comm: g.name.clone(),
                ready_ns: g.ready.unwrap_or_default().as_nanos() as u64,
                bytes: spec.mem,
                ..Default::default()
            })
            .collect();
        Ok(())
    }

    /// Waits until every guest's console shows `marker`; a guest that exits, reports a
    /// failure or takes longer than `timeout` fails the start with the end of its console.
    fn wait_ready(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = false;
            for guest in &mut self.guests {
                if guest.check_ready(marker) {
                    continue;
                }
                if let Some(status) = guest.exited() {
                    bail!(
                        "guest {} exited ({status}) before it was ready; the end of its console:\n{}",
                        guest.name,
                        guest.console_tail(10)
                    );
                }
                if guest
                    .console()
                    .lines()
                    .any(|l| l.starts_with(debian::FAILED_MARKER))
                {
                    bail!(
                        "guest {} failed to start its load; the end of its console:\n{}",
                        guest.name,
                        guest.console_tail(15)
                    );
                }
                waiting = true;
            }
            if !waiting {
                return Ok(());
            }
            super::stopped_during_start("the guests were booting")?;
            if Instant::now() >= deadline {
                if let Some(guest) = self.guests.iter().find(|g| g.ready.is_none()) {
                    bail!(
                        "guest {} was not ready within {} s; the end of its console:\n{}",
                        guest.name,
                        timeout.as_secs(),
                        guest.console_tail(10)
                    );
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The guests' load, when they run one.
    fn load(&self) -> Option<&super::spec::SysbenchLoad> {
        match &self.spec.system {
            GuestSystem::Debian { load } => load.as_ref(),
            _ => None,
        }
    }

    /// True when every QEMU process has exited, or every guest's load has finished.
    pub fn finished(&mut self) -> bool {
        if self.guests.is_empty() {
            return false;
        }
        let loaded = self.load().is_some();
        self.guests
            .iter_mut()
            .all(|g| g.exited().is_some() || (loaded && sysbench::done(&g.console())))
    }

    /// Reads each guest's load figures from its console, then QMP quit → SIGTERM → SIGKILL
    /// for each guest, then removes the run's directory. Idempotent.
    pub fn stop(&mut self) {
        if let Some(load) = self.load().cloned() {
            for (worker, guest) in self.workers.iter_mut().zip(&self.guests) {
                if worker.load.is_none() {
                    worker.load = sysbench::result(&guest.console(), &load);
                }
            }
        }
        qemu::stop_all(&mut self.guests);
        self.run_dir = None;
    }
}

impl Drop for VmsWorkload {
    fn drop(&mut self) {
        self.stop()
    }
}
