//! The kernels the lab can boot: a name (`debian-6.12`) → the newest matching Debian package,
//! downloaded once into /var/cache/ksm-trace/lab/<name>/ and checked for what ksm-trace needs
//! (6.12 has the ksm:* tracepoints, fentry/fexit and kprobes; 6.1 predates the tracepoints); or
//! the path of a kernel image the user built, checked against its build tree's `.config`.
use std::{
    fs,
    path::{Path, PathBuf},
};

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

/// Kernel config options the lab's guest cannot do without: KSM, the BPF syscall with BTF
/// (ksm-trace reads struct offsets from it) and BPF programs on tracepoints, devtmpfs (the
/// guest's /dev), an initramfs and a serial console (the scenario's only way out).
pub const REQUIRED_CONFIG: [&str; 8] = [
    "CONFIG_KSM",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_BPF_EVENTS",
    "CONFIG_TRACEPOINTS",
    "CONFIG_DEVTMPFS",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_SERIAL_8250_CONSOLE",
];

/// A kernel a lab run boots.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// One of Debian's, fetched by name.
    Debian(LabKernel),
    /// An image the user built (`arch/x86/boot/bzImage`).
    Built(PathBuf),
}

/// The kernel `name` says: a Debian one by name, or a kernel image at that path.
pub fn find(name: &str) -> Result<Kernel> {
    if let Some(k) = KERNELS.iter().find(|k| k.name == name) {
        return Ok(Kernel::Debian(*k));
    }
    let path = Path::new(name);
    if path.is_file() {
        return Ok(Kernel::Built(path.to_owned()));
    }
    if name.contains('/') {
        bail!(
            "no kernel image at {name}: give the path of a bzImage you built (arch/x86/boot/bzImage)"
        );
    }
    let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    bail!(
        "unknown lab kernel {name:?}: use one of {}, {}, or the path of a bzImage you built",
        known.join(", "),
        super::HOST
    )
}

impl Kernel {
    pub fn name(&self) -> String {
        match self {
            Kernel::Debian(k) => k.name.to_owned(),
            Kernel::Built(path) => path.display().to_string(),
        }
    }

    /// The image to boot, its config checked where there is one.
    pub fn image(&self, refresh: bool) -> Result<KernelImage> {
        match self {
            Kernel::Debian(k) => k.image(refresh),
            Kernel::Built(path) => {
                let image = KernelImage {
                    vmlinuz: path.clone(),
                    config: built_config(path),
                };
                match &image.config {
                    Some(_) => check_config(&self.name(), &image)?,
                    None => log::warn!(
                        "no .config found for {} (in its build tree or beside it): BTF and KSM are checked in the guest",
                        path.display()
                    ),
                }
                Ok(image)
            }
        }
    }
}

/// A built kernel's config: the build tree's `.config` (the image is `arch/x86/boot/bzImage`
/// in it), or a `.config`/`config` beside the image.
fn built_config(image: &Path) -> Option<PathBuf> {
    image
        .ancestors()
        .skip(1)
        .take(4)
        .flat_map(|dir| [dir.join(".config"), dir.join("config")])
        .find(|p| p.is_file())
}

impl LabKernel {
    /// The cached image, or a fresh download when there is none or `refresh`; fails if its
    /// config lacks something ksm-trace needs.
    pub fn image(&self, refresh: bool) -> Result<KernelImage> {
        let dir = Path::new(CACHE_DIR).join("lab").join(self.name);
        let image = kernel::fetch(&dir, refresh, || {
            kernel::newest_package(self.prefix, self.suffix)
        })?;
        check_config(self.name, &image)?;
        Ok(image)
    }
}

/// Refuses, in one line, a kernel whose config lacks an option of [`REQUIRED_CONFIG`].
fn check_config(name: &str, image: &KernelImage) -> Result<()> {
    let Some(path) = &image.config else {
        log::warn!(
            "{name}: no kernel config beside {}, not checked",
            image.vmlinuz.display()
        );
        return Ok(());
    };
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let missing: Vec<&str> = REQUIRED_CONFIG
        .iter()
        .copied()
        .filter(|opt| !text.lines().any(|l| l.trim() == format!("{opt}=y")))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{name} ({}) is built without {}: the lab cannot run ksm-trace on it (docs/lab.md lists what it needs)",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(())
}
