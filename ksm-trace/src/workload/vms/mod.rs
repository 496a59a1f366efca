//! `vms`: QEMU guests (TCG) whose RAM KSM merges. (Being written.)
use anyhow::{Result, bail};

use super::{Worker, spec::VmsSpec};

pub struct VmsWorkload {
    pub workers: Vec<Worker>,
}

/// Fails with the command to run when QEMU or busybox is missing.
pub fn check_prerequisites() -> Result<()> {
    Ok(())
}

impl VmsWorkload {
    pub fn start(_spec: &VmsSpec, _refresh: bool) -> Result<Self> {
        bail!("the vms workload is not available in this build yet")
    }

    pub fn finished(&mut self) -> bool {
        false
    }

    pub fn stop(&mut self) {}
}
