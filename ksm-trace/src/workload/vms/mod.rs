//! `vms`: QEMU guests (TCG) whose RAM KSM merges. Each guest boots Debian's cloud kernel with
//! an initramfs holding the same seeded payload, adds private random memory, optionally
//! churns part of the payload, and prints a ready marker on its serial console.
//!
//! Guests are named `ksm-vmN` (QEMU's process name), die with ksm-trace (PR_SET_PDEATHSIG),
//! and keep their console logs and QMP sockets in `/tmp/ksm-trace-vms-<pid>/` for the run.
pub mod assets;
pub mod initramfs;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Worker, spec::VmsSpec};
use crate::{
    guest::qemu::{self, Guest, Machine},
    run_dir::RunDir,
};
use initramfs::READY_MARKER;

/// All guests together must be ready within this.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

pub struct VmsWorkload {
    pub workers: Vec<Worker>,
    /// Declared before `run_dir`: the guests end before their files go.
    guests: Vec<Guest>,
    run_dir: Option<RunDir>,
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
        let assets = assets::prepare(spec, refresh)?;
        super::stopped_during_start("the guest assets were prepared")?;
        let mut workload = Self {
            workers: Vec::new(),
            guests: Vec::new(),
            run_dir: Some(RunDir::create("vms")?),
        };
        if let Err(e) = workload.boot(spec, &assets) {
            workload.stop();
            return Err(e);
        }
        Ok(workload)
    }

    fn boot(&mut self, spec: &VmsSpec, assets: &assets::Assets) -> Result<()> {
        let run_dir = self.run_dir.as_ref().map(RunDir::path);
        let run_dir = run_dir.ok_or_else(|| anyhow::anyhow!("the vms workload was stopped"))?;
        for index in 0..spec.count {
            let name = guest_name(index);
            let machine = Machine {
                name: &name,
                // /dev/kvm is unusable for stock guests here; a small translation cache keeps
                // QEMU's own memory low.
                accel: "tcg,tb-size=32",
                machine: "q35",
                smp: 1,
                mem_mib: spec.mem >> 20,
                kernel: &assets.kernel,
                initramfs: &assets.initramfs,
            };
            self.guests.push(Guest::spawn(&machine, run_dir)?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut waiting = false;
            for guest in &mut self.guests {
                if guest.check_ready(READY_MARKER) {
                    continue;
                }
                if let Some(status) = guest.exited() {
                    bail!(
                        "guest {} exited ({status}) before it was ready; the end of its console:\n{}",
                        guest.name,
                        guest.console_tail(10)
                    );
                }
                waiting = true;
            }
            if !waiting {
                break;
            }
            super::stopped_during_start("the guests were booting")?;
            if Instant::now() >= deadline {
                let late = self.guests.iter().find(|g| g.ready.is_none());
                if let Some(guest) = late {
                    bail!(
                        "guest {} was not ready within {} s; the end of its console:\n{}",
                        guest.name,
                        READY_TIMEOUT.as_secs(),
                        guest.console_tail(10)
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
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

    /// True when every QEMU process has exited.
    pub fn finished(&mut self) -> bool {
        !self.guests.is_empty() && self.guests.iter_mut().all(|g| g.exited().is_some())
    }

    /// QMP quit → SIGTERM → SIGKILL for each guest, then removes the run's directory.
    /// Idempotent.
    pub fn stop(&mut self) {
        qemu::stop_all(&mut self.guests);
        self.run_dir = None;
    }
}

impl Drop for VmsWorkload {
    fn drop(&mut self) {
        self.stop()
    }
}
