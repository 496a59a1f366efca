//! File systems a run mounts, only when not mounted already and only as long as needed: tracefs
//! for bpftrace's classic tracepoints (a run's length), securityfs to read the lockdown mode
//! and the LSMs (one read). Each mount is written into the crash-recovery state before it is
//! made, so a killed run's mount is undone by the next one.
use std::path::Path;

use anyhow::{Context as _, Result};
use nix::mount::{MsFlags, mount, umount};

use super::recovery;
use crate::{
    kernel::{
        security::{self, SECURITYFS},
        tracefs::{TRACEFS, mounted},
    },
    probes::Capabilities,
};

/// Unmounts tracefs on drop if it was mounted here.
pub struct TracefsMount {
    mounted_here: bool,
}

impl TracefsMount {
    pub fn ensure() -> Result<Self> {
        if mounted() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        mount_recorded("tracefs", TRACEFS)?;
        Ok(Self { mounted_here: true })
    }
}

/// Fills in the lockdown mode and the active LSMs, mounting securityfs for the read where it is
/// not mounted (as root) and unmounting it at once; left as they are where it cannot be read.
pub fn read_security(caps: &mut Capabilities) {
    if caps.lockdown.is_some() && caps.lsms.is_some() {
        return;
    }
    if security::mounted() || !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Err(e) = mount_recorded("securityfs", SECURITYFS) {
        log::debug!("securityfs not read: {e:#}");
        return;
    }
    (caps.lockdown, caps.lsms) = security::read(Path::new(SECURITYFS));
    unmount_recorded(SECURITYFS);
}

/// Mounts `fstype` on `target`, written into the crash-recovery state first: a kill right after
/// the mount must not leave it behind.
fn mount_recorded(fstype: &str, target: &str) -> Result<()> {
    recovery::mounted(Path::new(target));
    mount(
        Some("nodev"),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .inspect_err(|_| recovery::unmounted(Path::new(target)))
    .with_context(|| format!("mounting {fstype} on {target}"))
}

fn unmount_recorded(target: &str) {
    match umount(target) {
        Ok(()) => recovery::unmounted(Path::new(target)),
        Err(e) => log::warn!("unmounting {target}: {e} (unmount it by hand: umount {target})"),
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.mounted_here {
            unmount_recorded(TRACEFS);
        }
    }
}
