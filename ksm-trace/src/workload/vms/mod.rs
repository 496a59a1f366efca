//! `vms`: QEMU guests (TCG) whose RAM KSM merges. Each guest boots Debian's cloud kernel with
//! an initramfs holding the same seeded payload, adds private random memory, optionally
//! churns part of the payload, and prints a ready marker on its serial console.
//!
//! Guests are named `ksm-vmN` (QEMU's process name), die with ksm-trace (PR_SET_PDEATHSIG),
//! and keep their console logs and QMP sockets in `/tmp/ksm-trace-vms-<pid>/` for the run.
pub mod assets;
pub mod initramfs;
pub mod qemu;
pub mod qmp;

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Worker, spec::VmsSpec};
use qemu::Guest;

/// All guests together must be ready within this.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const INSTALL: &str = "apt-get install -y --no-install-recommends qemu-system-x86 busybox-static";

pub struct VmsWorkload {
    pub workers: Vec<Worker>,
    guests: Vec<Guest>,
    run_dir: PathBuf,
}

/// Fails with the command to run when QEMU or a static busybox is missing.
pub fn check_prerequisites() -> Result<()> {
    if find_in_path(qemu::QEMU).is_none() {
        bail!(
            "{} not found: install it with `{INSTALL}` or run `cargo xtask setup`",
            qemu::QEMU
        );
    }
    let busybox = Path::new(assets::BUSYBOX);
    if !busybox.is_file() {
        bail!(
            "{} not found: install it with `{INSTALL}` or run `cargo xtask setup`",
            assets::BUSYBOX
        );
    }
    // Debian's plain `busybox` package also installs /bin/busybox, dynamically linked: the
    // guest has no libc, so its /init would fail with nothing but a kernel panic to show.
    if has_interpreter(busybox)? {
        bail!(
            "{} is dynamically linked: install the static one with `{INSTALL}` or run `cargo xtask setup`",
            assets::BUSYBOX
        );
    }
    Ok(())
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether an ELF64 file names a program interpreter (PT_INTERP), i.e. is dynamically linked.
fn has_interpreter(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // Not a little-endian ELF64: let the guest's console tell.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    Ok((0..phnum as usize).any(|i| {
        let at = phoff as usize + i * phentsize as usize;
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(PT_INTERP)
    }))
}

impl VmsWorkload {
    /// Builds or reuses the cached assets, starts `spec.count` guests and waits until every
    /// one has printed its ready marker. On failure every started guest is stopped.
    pub fn start(spec: &VmsSpec, refresh: bool) -> Result<Self> {
        check_prerequisites()?;
        let assets = assets::prepare(spec, refresh)?;
        let run_dir = PathBuf::from(format!("/tmp/ksm-trace-vms-{}", std::process::id()));
        // A leftover of an earlier process that had our pid.
        if run_dir.exists() {
            fs::remove_dir_all(&run_dir)
                .with_context(|| format!("removing stale {}", run_dir.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let mut workload = Self {
            workers: Vec::new(),
            guests: Vec::new(),
            run_dir,
        };
        if let Err(e) = workload.boot(spec, &assets) {
            workload.stop();
            return Err(e);
        }
        Ok(workload)
    }

    fn boot(&mut self, spec: &VmsSpec, assets: &assets::Assets) -> Result<()> {
        for index in 0..spec.count {
            self.guests
                .push(Guest::spawn(index, spec, assets, &self.run_dir)?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut waiting = false;
            for guest in &mut self.guests {
                if guest.check_ready() {
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

    /// QMP quit → SIGTERM → SIGKILL for each guest, then removes the run's temp dir.
    /// Idempotent.
    pub fn stop(&mut self) {
        qemu::stop_all(&mut self.guests);
        match fs::remove_dir_all(&self.run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", self.run_dir.display()),
        }
    }
}

impl Drop for VmsWorkload {
    fn drop(&mut self) {
        self.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        // The test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        assert!(has_interpreter(&me).unwrap());
        let dir = std::env::temp_dir().join(format!("ksm-trace-elf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let text = dir.join("script");
        fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!has_interpreter(&text).unwrap());
        fs::remove_dir_all(&dir).unwrap();
        if Path::new(assets::BUSYBOX).is_file() {
            // What `apt-get install busybox-static` puts there.
            println!(
                "{} dynamic: {}",
                assets::BUSYBOX,
                has_interpreter(Path::new(assets::BUSYBOX)).unwrap()
            );
        }
    }
}
