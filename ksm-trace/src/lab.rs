//! `ksm-trace lab`: run ksm-trace on another kernel in a QEMU guest. (Being written.)
use anyhow::{Result, bail};

#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Kernel to boot: debian-6.12, debian-6.1.
    #[arg(long, default_value = "debian-6.12")]
    pub kernel: String,
    /// Re-download the kernel and rebuild the guest image.
    #[arg(long)]
    pub refresh: bool,
}

pub fn run(_args: &LabArgs) -> Result<()> {
    bail!("the kernel lab is not available in this build yet")
}
