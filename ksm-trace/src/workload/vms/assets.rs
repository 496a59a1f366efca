//! A `vms` run's guest assets, cached in /var/cache/ksm-trace: the current Debian cloud
//! kernel and one initramfs per set of payload parameters.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::initramfs;
use crate::{
    guest::{BUSYBOX, CACHE_DIR, kernel},
    workload::spec::VmsSpec,
};

/// Its dependency is the current cloud kernel: boots fastest under TCG, serial console and
/// devtmpfs built in.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

pub struct Assets {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

/// Reuses what the cache holds unless `refresh`; downloads or builds the rest.
pub fn prepare(spec: &VmsSpec, refresh: bool) -> Result<Assets> {
    let dir = Path::new(CACHE_DIR);
    fs::create_dir_all(dir).with_context(|| format!("creating {CACHE_DIR}"))?;
    Ok(Assets {
        kernel: kernel::fetch(dir, refresh, || kernel::dependency_of(KERNEL_META_PACKAGE))?.vmlinuz,
        initramfs: initramfs(dir, spec, refresh)?,
    })
}

/// `initramfs-<shared>-<private>-<churn>.cpio.gz`: one archive per payload configuration.
pub fn initramfs_name(spec: &VmsSpec) -> String {
    let churn = match spec.churn {
        Some(c) => format!("{}x{}ms", c.bytes, c.every.as_millis()),
        None => "none".into(),
    };
    format!("initramfs-{}-{}-{churn}.cpio.gz", spec.shared, spec.private)
}

fn initramfs(dir: &Path, spec: &VmsSpec, refresh: bool) -> Result<PathBuf> {
    let path = dir.join(initramfs_name(spec));
    if path.is_file() && !refresh {
        return Ok(path);
    }
    eprintln!(
        "ksm-trace: building guest initramfs in {CACHE_DIR} ({} MiB shared payload)",
        spec.shared >> 20
    );
    // Written aside and renamed, so an interrupted build never looks like a cached archive.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        initramfs_name(spec),
        std::process::id()
    ));
    let result = initramfs::write(spec, Path::new(BUSYBOX), &tmp).and_then(|()| {
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context("building the guest initramfs")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::workload::spec::Churn;

    #[test]
    fn initramfs_is_keyed_by_its_parameters() {
        let mut spec = VmsSpec {
            count: 2,
            mem: 256 << 20,
            shared: 32 << 20,
            private: 16 << 20,
            churn: None,
            system: crate::workload::spec::GuestSystem::Busybox,
        };
        assert_eq!(
            initramfs_name(&spec),
            "initramfs-33554432-16777216-none.cpio.gz"
        );
        spec.churn = Some(Churn {
            bytes: 1 << 20,
            every: Duration::from_secs(2),
        });
        assert_eq!(
            initramfs_name(&spec),
            "initramfs-33554432-16777216-1048576x2000ms.cpio.gz"
        );
    }
}
