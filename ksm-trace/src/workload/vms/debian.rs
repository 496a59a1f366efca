//! The Debian guest image (`vms:N,os=debian`): Debian 12 with its cloud kernel, MariaDB and
//! sysbench, built once by mmdebstrap from Debian's mirror (apt checks every package against
//! the archive's signed Release file) and turned into an ext4 disk image by `mke2fs -d`, with
//! no loop mount. Cached in /var/cache/ksm-trace/images/ under a name that changes with the
//! recipe, so a new recipe builds a new image and an old one is never half-reused.
//!
//! The guest boots that kernel and initrd directly (no boot loader) with `init=` set to
//! [`INIT`], not systemd: under TCG a full boot costs a minute, this one seconds. The init
//! mounts what MariaDB needs, starts it, prepares sysbench's tables and runs the load, all on
//! the serial console (see `sysbench.rs` for what the host reads back).
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::guest::CACHE_DIR;

/// Packages beyond Debian's minbase: the kernel and its initrd builder (the virtio disk
/// driver is a module), the database and the benchmark.
const PACKAGES: &str =
    "linux-image-cloud-amd64,initramfs-tools,kmod,procps,mariadb-server,sysbench";
const SUITE: &str = "bookworm";
/// Room for the root file system (about 600 MiB) and the guests' tables; the file is sparse.
const DISK_SIZE: &str = "2G";
/// Free space the build needs in the cache: the unpacked tree and the image side by side.
const BUILD_SPACE: u64 = 3 << 30;
const INSTALL: &str = "apt-get install -y --no-install-recommends mmdebstrap e2fsprogs qemu-utils";

/// The guest's init, inside the image.
pub const INIT: &str = "/sbin/ksm-trace-guest-init";
/// Printed once MariaDB answers and the tables are ready.
pub const READY_MARKER: &str = "KSM-TRACE-READY";
/// Printed when the guest cannot go on; the lines after it say why.
pub const FAILED_MARKER: &str = "KSM-TRACE-FAILED";
/// Each line of sysbench's output, prefixed so it cannot be mistaken for the kernel's.
pub const LOAD_PREFIX: &str = "KSM-TRACE-LOAD ";
/// Printed after sysbench has finished.
pub const LOAD_DONE_MARKER: &str = "KSM-TRACE-LOAD-DONE";

/// Parameters reach the init on the kernel command line (`ksm.tables=2 ...`).
const INIT_SCRIPT: &str = r#"#!/bin/sh
# ksm-trace's Debian guest: MariaDB, then sysbench's tables and load, reported on the console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
arg() { sed -n "s/.*ksm\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
fail() { echo "KSM-TRACE-FAILED $1"; cat "$2"; while :; do sleep 3600; done; }
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
mariadbd --user=mysql --skip-networking --skip-log-bin --innodb-buffer-pool-size=32M \
  > /tmp/mariadb.log 2>&1 &
i=0
until mariadb-admin ping > /dev/null 2>&1; do
  i=$((i + 1)); [ $i -gt 600 ] && fail "mariadb did not start" /tmp/mariadb.log
  sleep 0.5
done
if [ "$(arg load)" = sysbench ]; then
  mariadb -e "CREATE DATABASE IF NOT EXISTS sbtest" > /tmp/db.log 2>&1 || fail "creating sbtest" /tmp/db.log
  SB="sysbench oltp_read_write --db-driver=mysql --mysql-socket=/run/mysqld/mysqld.sock --mysql-user=root --tables=$(arg tables) --table-size=$(arg table_size) --threads=$(arg threads)"
  $SB prepare > /tmp/prepare.log 2>&1 || fail "sysbench prepare" /tmp/prepare.log
  echo KSM-TRACE-READY
  $SB --time=$(arg time) --report-interval=$(arg interval) run 2>&1 | sed 's/^/KSM-TRACE-LOAD /'
  echo KSM-TRACE-LOAD-DONE
else
  echo KSM-TRACE-READY
fi
while :; do sleep 3600; done
"#;

/// The cached image: a base disk the guests' overlays sit on, and the kernel and initrd taken
/// out of it.
pub struct DebianImage {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// `debian-12-<CRC-32 of the recipe>`: another recipe is another image.
fn image_name() -> String {
    let recipe = [PACKAGES, SUITE, DISK_SIZE, INIT_SCRIPT].join("\n");
    format!("debian-12-{:08x}", crc32fast::hash(recipe.as_bytes()))
}

impl DebianImage {
    fn at(dir: &Path) -> Self {
        Self {
            disk: dir.join("disk.raw"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    }

    /// The cached image, built first if missing (or `refresh`).
    pub fn ensure(refresh: bool) -> Result<Self> {
        let images = Path::new(CACHE_DIR).join("images");
        let dir = images.join(image_name());
        if dir.join("complete").is_file() && !refresh {
            return Ok(Self::at(&dir));
        }
        check_tools()?;
        fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
        check_space(&images, BUILD_SPACE)?;
        // Built aside and renamed: an interrupted build never looks like a cached image.
        let build = images.join(format!(".{}.build-{}", image_name(), std::process::id()));
        let _ = fs::remove_dir_all(&build);
        fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
        let built = build_into(&build);
        if let Err(e) = built {
            let _ = fs::remove_dir_all(&build);
            return Err(e);
        }
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&build, &dir).with_context(|| format!("renaming to {}", dir.display()))?;
        Ok(Self::at(&dir))
    }
}

/// Checks that what the build runs is installed, before anything is written.
pub fn check_tools() -> Result<()> {
    for tool in ["mmdebstrap", "mke2fs", crate::guest::disk::QEMU_IMG] {
        if crate::guest::find_in_path(tool).is_none() {
            bail!("{tool} not found: install it with `{INSTALL}` or run `cargo xtask setup`");
        }
    }
    Ok(())
}

/// Refuses, before anything is written, a build that would fill the disk.
fn check_space(dir: &Path, need: u64) -> Result<()> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("checking free space in {}", dir.display()))?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if free < need {
        bail!(
            "building the Debian guest image needs {} MiB free in {} but {} MiB is: free some space there",
            need >> 20,
            dir.display(),
            free >> 20
        );
    }
    Ok(())
}

fn build_into(build: &Path) -> Result<()> {
    let root = build.join("root");
    eprintln!(
        "ksm-trace: building the Debian guest image in {CACHE_DIR}/images (mmdebstrap from Debian's mirror; about a minute, once)"
    );
    // unshare mode: its mounts live in a namespace of its own, so an interrupted build
    // leaves none behind on the host.
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--quiet", "--variant=minbase", "--mode=unshare"])
        .arg(format!("--include={PACKAGES}"))
        // Documentation and translations are not needed by a benchmark guest.
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
        ])
        .arg(SUITE)
        .arg(&root);
    run(&mut mmdebstrap, "mmdebstrap")?;
    let init = root.join(INIT.trim_start_matches('/'));
    fs::write(&init, INIT_SCRIPT).with_context(|| format!("writing {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let image = DebianImage::at(build);
    for (prefix, to) in [("vmlinuz-", &image.kernel), ("initrd.img-", &image.initrd)] {
        let from = newest_in(&root.join("boot"), prefix)?;
        fs::copy(&from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-L", "ksm-trace-root", "-d"])
        .arg(&root)
        .arg(&image.disk)
        .arg(DISK_SIZE);
    run(&mut mke2fs, "mke2fs")?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    fs::write(build.join("complete"), format!("{PACKAGES}\n"))?;
    Ok(())
}

/// The file in `dir` whose name starts with `prefix` (the kernel's version follows it).
fn newest_in(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("the image has no {}{prefix}*", dir.display()))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    crate::run::child::end_with_parent(cmd, nix::sys::signal::Signal::SIGTERM);
    let out = cmd
        .output()
        .with_context(|| format!("running {what}: install it with `{INSTALL}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        bail!(
            "{what} failed ({}) building the Debian guest image:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_that_does_not_fit_is_refused_in_one_line() {
        let dir = std::env::temp_dir();
        check_space(&dir, 1 << 20).unwrap();
        let e = check_space(&dir, u64::MAX >> 1).unwrap_err().to_string();
        assert!(e.contains("free some space") && !e.contains('\n'), "{e}");
    }
}
