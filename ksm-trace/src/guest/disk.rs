//! Guest disks: every guest boots from its own qcow2 overlay in the run directory, backed by a
//! base image that QEMU opens read-only — the cached Debian image or the user's own — so the
//! base is never written and the guests' writes go away with the run.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub const QEMU_IMG: &str = "qemu-img";

/// The formats a base image may have.
const FORMATS: [&str; 2] = ["raw", "qcow2"];

/// The format of the disk image at `path` (raw or qcow2), or one line saying what is wrong.
pub fn format_of(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "image {}: cannot read it: give the path of a bootable raw or qcow2 disk image",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!(
            "image {} is not a file: give the path of a bootable raw or qcow2 disk image",
            path.display()
        );
    }
    let out = Command::new(QEMU_IMG)
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .with_context(|| format!("running {QEMU_IMG} (install qemu-utils)"))?;
    if !out.status.success() {
        bail!(
            "image {}: {QEMU_IMG} cannot read it ({}): give a raw or qcow2 disk image",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing {QEMU_IMG} info of {}", path.display()))?;
    let format = info["format"].as_str().unwrap_or_default().to_owned();
    if !FORMATS.contains(&format.as_str()) {
        bail!(
            "image {} is {format:?}: convert it to qcow2 with `qemu-img convert -O qcow2 {} out.qcow2`",
            path.display(),
            path.display()
        );
    }
    Ok(format)
}

/// Creates `out`, a qcow2 overlay on `base` (whose format is `format`).
pub fn overlay(base: &Path, format: &str, out: &Path) -> Result<PathBuf> {
    let base = base
        .canonicalize()
        .with_context(|| format!("resolving {}", base.display()))?;
    let status = Command::new(QEMU_IMG)
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(&base)
        .arg(out)
        .status()
        .with_context(|| format!("running {QEMU_IMG} (install qemu-utils)"))?;
    if !status.success() {
        bail!(
            "{QEMU_IMG} could not create an overlay on {} ({status})",
            base.display()
        );
    }
    Ok(out.to_owned())
}
