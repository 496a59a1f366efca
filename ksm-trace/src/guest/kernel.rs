//! Debian kernels for guests, fetched with apt and never installed: the package is downloaded
//! into a cache directory and its `/boot/vmlinuz-*` (and `config-*`) extracted there, so later
//! runs boot it without the network. The `vms` workload and the lab each name the package
//! they want; the fetching is the same.
use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// A kernel extracted from a Debian package.
#[derive(Clone, Debug)]
pub struct KernelImage {
    pub vmlinuz: PathBuf,
    /// Its `/boot/config-*`, when the package has one.
    pub config: Option<PathBuf>,
}

/// The kernel cached in `dir`, or, when there is none or `refresh`, the one in the package
/// `package()` names, downloaded into `dir` (replacing any other kernel there).
pub fn fetch(
    dir: &Path,
    refresh: bool,
    package: impl FnOnce() -> Result<String>,
) -> Result<KernelImage> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !refresh && let Some(image) = cached_kernel_image(dir)? {
        return Ok(image);
    }
    download_kernel(dir, &package()?)
}

/// The newest cached `vmlinuz-*`.
fn cached_kernel(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found.pop())
}

/// The `vmlinuz-*` and `config-*` that `download_kernel` left in `dir`, if any.
fn cached_kernel_image(dir: &Path) -> Result<Option<KernelImage>> {
    let Some(vmlinuz) = cached_kernel(dir)? else {
        return Ok(None);
    };
    let name = vmlinuz
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let config = name
        .and_then(|n| {
            n.strip_prefix("vmlinuz-")
                .map(|v| dir.join(format!("config-{v}")))
        })
        .filter(|p| p.is_file());
    Ok(Some(KernelImage { vmlinuz, config }))
}

/// Downloads `package` (a Debian kernel image package) into `dir` with `apt-get download`,
/// never installing it, and extracts its `/boot/vmlinuz-*` and `/boot/config-*` there. Other
/// kernels in `dir` are removed, so [`cached_kernel_image`] finds this one.
fn download_kernel(dir: &Path, package: &str) -> Result<KernelImage> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!(
        "ksm-trace: downloading guest kernel {package} into {}",
        dir.display()
    );
    // Old downloads go first, so the package's file is the only one that matches.
    remove_matching(dir, |n| {
        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
    })?;
    with_apt_update(|| {
        run(
            Command::new("apt-get")
                .args(["download", "-qq", package])
                .current_dir(dir),
            "apt-get download",
        )
        .map(drop)
    })?;
    let deb = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| {
            anyhow!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })?;

    let listing = String::from_utf8_lossy(&deb_tar(&deb, &["-t"])?).into_owned();
    let member = listing
        .lines()
        .find(|l| l.starts_with("./boot/vmlinuz-"))
        .ok_or_else(|| anyhow!("{} holds no /boot/vmlinuz-*", deb.display()))?
        .to_owned();
    let name = member.trim_start_matches("./boot/");
    let image = deb_tar(&deb, &["-xO", &member])?;
    if image.len() < 1 << 20 {
        bail!(
            "{member} in {} is only {} bytes",
            deb.display(),
            image.len()
        );
    }
    let path = write_aside(dir, name, &image)?;
    let config_name = format!("config-{}", name.trim_start_matches("vmlinuz-"));
    let config = match listing
        .lines()
        .find(|l| l.trim_start_matches("./boot/") == config_name)
    {
        Some(member) => Some(write_aside(
            dir,
            &config_name,
            &deb_tar(&deb, &["-xO", member])?,
        )?),
        None => None,
    };
    // Only the kernel just extracted stays, so `cached_kernel` cannot pick a stale one.
    remove_matching(dir, |n| {
        (n.starts_with("vmlinuz-") && n != name) || (n.starts_with("config-") && n != config_name)
    })?;
    Ok(KernelImage {
        vmlinuz: path,
        config,
    })
}

/// Writes `dir/name` through a temporary file, so an interrupted write never looks complete.
fn write_aside(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The newest package (by version order of the digits in its name) whose name starts with
/// `prefix` and ends with `suffix`, from apt's package lists.
pub fn newest_package(prefix: &str, suffix: &str) -> Result<String> {
    with_apt_update(|| {
        let out = run(
            Command::new("apt-cache").args(["pkgnames", prefix]),
            "apt-cache pkgnames",
        )?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
            .map(str::to_owned)
            .collect();
        names.sort_by_key(|n| version_key(n));
        names
            .pop()
            .ok_or_else(|| anyhow!("apt knows no package {prefix}*{suffix}"))
    })
}

/// Sort key comparing runs of digits as numbers: `6.12.9` < `6.12.117`.
fn version_key(name: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            key.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            key.push((0, rest[..text].to_owned()));
            rest = &rest[text..];
        }
    }
    key
}

/// The versioned kernel package the meta-package `meta` (e.g. linux-image-cloud-amd64)
/// depends on, from apt's package lists.
pub fn dependency_of(meta: &str) -> Result<String> {
    with_apt_update(|| {
        let out = run(
            Command::new("apt-cache").args(["depends", meta]),
            "apt-cache depends",
        )?;
        String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("apt knows no kernel package behind {meta}"))
    })
}

/// Runs `f`; if it fails, refreshes apt's package lists once and tries again (a fresh
/// machine may have none, or stale ones pointing at superseded packages).
fn with_apt_update<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Ok(v) => Ok(v),
        Err(first) => {
            log::debug!("{first:#}: running apt-get update");
            run(
                Command::new("apt-get").args(["update", "-qq"]),
                "apt-get update",
            )
            .with_context(|| format!("{first:#}"))?;
            f().context("fetching the guest kernel (a Debian linux-image package) with apt")
        }
    }
}

/// `dpkg-deb --fsys-tarfile DEB | tar ARGS`, returning tar's output.
fn deb_tar(deb: &Path, tar_args: &[&str]) -> Result<Vec<u8>> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running dpkg-deb (needed to unpack the guest kernel)")?;
    let tar_in = dpkg
        .stdout
        .take()
        .ok_or_else(|| anyhow!("dpkg-deb has no stdout"))?;
    let tar = Command::new("tar")
        .args(tar_args)
        .stdin(tar_in)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let tar = match tar {
        Ok(t) => t,
        Err(e) => {
            let _ = dpkg.kill();
            let _ = dpkg.wait();
            return Err(e).context("running tar");
        }
    };
    let tar_out = tar.wait_with_output().context("running tar")?;
    let mut dpkg_err = String::new();
    if let Some(mut e) = dpkg.stderr.take() {
        let _ = e.read_to_string(&mut dpkg_err);
    }
    let dpkg_status = dpkg.wait().context("running dpkg-deb")?;
    if !dpkg_status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed: {}",
            deb.display(),
            dpkg_err.trim()
        );
    }
    if !tar_out.status.success() {
        bail!(
            "tar {} on {} failed: {}",
            tar_args.join(" "),
            deb.display(),
            String::from_utf8_lossy(&tar_out.stderr).trim()
        );
    }
    Ok(tar_out.stdout)
}

/// Runs `cmd`, returning its stdout, or an error with the end of its stderr.
fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} (the guest kernel is fetched with apt)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.trim().lines().rev().take(3).collect();
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(out.stdout)
}

fn remove_matching(dir: &Path, mut matches: impl FnMut(&str) -> bool) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if matches(&entry.file_name().to_string_lossy()) {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = [
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.9+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.113+deb12-cloud-amd64-unsigned",
        ];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[2], "linux-image-6.12.117+deb12-cloud-amd64-unsigned");
        assert_eq!(v[0], "linux-image-6.12.9+deb12-cloud-amd64-unsigned");
    }
}
