//! The kernels the lab can boot: a name (`debian-6.12`) → the newest matching Debian package,
//! downloaded once into /var/cache/ksm-trace/lab/<name>/ and checked for what ksm-trace needs.
//! (6.12 has the ksm:* tracepoints, fentry/fexit and kprobes; 6.1 predates the tracepoints.)
use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::guest::{
    CACHE_DIR,
    kernel::{self, KernelImage},
};

/// A kernel the lab knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct LabKernel {
    pub name: &'static str,
    /// Packages `<prefix>…<suffix>`; the newest by version wins.
    prefix: &'static str,
    suffix: &'static str,
}

pub const KERNELS: [LabKernel; 2] = [
    LabKernel {
        name: "debian-6.12",
        prefix: "linux-image-6.12.",
        suffix: "-cloud-amd64-unsigned",
    },
    LabKernel {
        name: "debian-6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
    },
];

/// Kernel config options ksm-trace cannot do without.
const REQUIRED_CONFIG: [&str; 4] = [
    "CONFIG_KSM",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_DEVTMPFS",
];

pub fn find(name: &str) -> Result<LabKernel> {
    KERNELS
        .iter()
        .copied()
        .find(|k| k.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            anyhow::anyhow!(
                "unknown lab kernel {name:?}: use one of {}, or {}",
                known.join(", "),
                super::HOST
            )
        })
}

impl LabKernel {
    /// The cached image, or a fresh download when there is none or `refresh`; fails if its
    /// config lacks something ksm-trace needs.
    pub fn image(&self, refresh: bool) -> Result<KernelImage> {
        let dir = Path::new(CACHE_DIR).join("lab").join(self.name);
        let image = kernel::fetch(&dir, refresh, || {
            kernel::newest_package(self.prefix, self.suffix)
        })?;
        self.check_config(&image)?;
        Ok(image)
    }

    fn check_config(&self, image: &KernelImage) -> Result<()> {
        let Some(path) = &image.config else {
            log::warn!(
                "{}: no kernel config beside {}, not checked",
                self.name,
                image.vmlinuz.display()
            );
            return Ok(());
        };
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let missing: Vec<&str> = REQUIRED_CONFIG
            .iter()
            .copied()
            .filter(|opt| !text.lines().any(|l| l.trim() == format!("{opt}=y")))
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} ({}) is built without {}: ksm-trace cannot run on it",
                self.name,
                path.display(),
                missing.join(", ")
            );
        }
        Ok(())
    }
}
