//! The kernel's own KSM selftests (`ksm_tests`, `ksm_functional_tests`), built from Debian's
//! `linux-source-6.12` package with the upstream mm selftests Makefile, for the root test that
//! runs them under ksm-trace as an external check (tests/selftests.rs). Built once and cached
//! in /var/cache/ksm-trace/selftests/<package version>/: the package is a 154 MB download;
//! unpacking the tree and `make headers` take about half a minute here, and the tree is removed
//! once the two programs are built.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{ensure_packages, output, run_checked};

const PACKAGE: &str = "linux-source-6.12";
const CACHE: &str = "/var/cache/ksm-trace/selftests";
pub const PROGRAMS: [&str; 2] = ["ksm_tests", "ksm_functional_tests"];

/// The directory holding both programs, building them first if they are not cached.
pub fn ensure() -> Result<PathBuf> {
    ensure_packages(&["make", "gcc", "libc6-dev", "libnuma-dev", "xz-utils"])?;
    let version = candidate_version()?;
    let dir = Path::new(CACHE).join(&version);
    if PROGRAMS.iter().all(|p| dir.join(p).is_file()) {
        return Ok(dir);
    }
    let work = Path::new(CACHE).join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let built = build(&work, &dir);
    let _ = fs::remove_dir_all(&work);
    built.with_context(|| format!("building the KSM selftests from {PACKAGE} {version}"))?;
    Ok(dir)
}

/// The version apt would download (apt lists refreshed first if the package is unknown).
fn candidate_version() -> Result<String> {
    let candidate = || {
        output(Command::new("apt-cache").args(["policy", PACKAGE])).and_then(|text| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix("Candidate: "))
                .filter(|v| *v != "(none)")
                .map(str::to_owned)
        })
    };
    if let Some(v) = candidate() {
        return Ok(v);
    }
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    candidate().with_context(|| {
        format!(
            "apt knows no {PACKAGE}: add Debian 12's bookworm-backports or bookworm-updates sources"
        )
    })
}

fn build(work: &Path, dir: &Path) -> Result<()> {
    // apt verifies the package against the archive's signed Release file.
    run_checked(
        Command::new("apt-get")
            .args(["download", "-qq", PACKAGE])
            .current_dir(work),
    )?;
    let deb = fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tarball = format!("./usr/src/{PACKAGE}.tar.xz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -O '{tarball}' | tar -xJ",
            deb.display()
        ))
        .current_dir(work)
        .status()?;
    if !status.success() {
        bail!("unpacking {} failed ({status})", deb.display());
    }
    let tree = work.join(PACKAGE);
    // The selftests include the kernel's own uapi headers (newer than the system's).
    run_checked(
        Command::new("make")
            .args(["-s", "headers"])
            .current_dir(&tree),
    )?;
    let out = work.join("out");
    fs::create_dir_all(&out)?;
    let mut make = Command::new("make");
    make.args(["-s", "-C", "tools/testing/selftests/mm"])
        .arg(format!("OUTPUT={}", out.display()))
        .args(PROGRAMS.map(|p| out.join(p)))
        .current_dir(&tree);
    run_checked(&mut make)?;
    fs::create_dir_all(dir)?;
    for p in PROGRAMS {
        fs::copy(out.join(p), dir.join(p))?;
    }
    eprintln!("xtask: KSM selftests built in {}", dir.display());
    Ok(())
}
