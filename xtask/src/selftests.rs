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
pub fn candidate_version() -> Result<String> {
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

/// Downloads Debian's kernel source package into `work` and unpacks its tree there; returns
/// the tree (`work/linux-source-6.12`).
pub fn unpack_source(work: &Path) -> Result<PathBuf> {
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
    let _ = fs::remove_file(&deb);
    Ok(work.join(PACKAGE))
}

fn build(work: &Path, dir: &Path) -> Result<()> {
    let tree = unpack_source(work)?;
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

/// The kernel selftest's merge speed (`ksm_tests -P -s 100`) beside `bench merge --owner busy`
/// (its conditions), alternating five times so drift on the machine falls on both; medians,
/// since single runs of the selftest vary by a third here. A benchmark, not a test: on a
/// shared two-core machine the ratio moves by ±20 % from run to run. KSM's knobs (which the
/// selftest rewrites) are put back afterwards.
pub fn compare_merge_speed(bin: &Path, dir: &Path) -> Result<()> {
    let knobs = KsmKnobs::save()?;
    let compared = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut selftest, mut bench) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            selftest.push(average_speed(
                Command::new(dir.join("ksm_tests")).args(["-P", "-s", "100"]),
            )?);
            bench.push(average_speed(Command::new(bin).args([
                "bench",
                "merge",
                "--size",
                "100M",
                "--owner",
                "busy",
                "-o",
                "/tmp/ksm-trace-bench-selftest.json",
            ]))?);
        }
        Ok((selftest, bench))
    })();
    knobs.restore()?;
    let _ = fs::remove_file("/tmp/ksm-trace-bench-selftest.json");
    let (mut selftest, mut bench) = compared?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, b) = (median(&mut selftest), median(&mut bench));
    println!("Merge speed, the kernel selftest's conditions (100 MiB, five alternating runs)");
    println!("  ksm_tests -P -s 100:          {selftest:?} MiB/s, median {s:.1}");
    println!("  bench merge --owner busy:     {bench:?} MiB/s, median {b:.1}");
    println!("  ratio bench/selftest:         {:.2}", b / s);
    Ok(())
}

/// Runs a program that prints `Average speed: N MiB/s` (ksm_tests, bench merge) and returns N.
fn average_speed(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.split("Average speed:").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no average speed in the output of {cmd:?}:\n{text}"))
}

/// The writable KSM knobs as they were, to put back after the selftest rewrote them.
struct KsmKnobs(Vec<(PathBuf, String)>);

impl KsmKnobs {
    fn save() -> Result<Self> {
        let mut saved = Vec::new();
        for name in [
            "run",
            "pages_to_scan",
            "sleep_millisecs",
            "use_zero_pages",
            "max_page_sharing",
            "merge_across_nodes",
        ] {
            let path = Path::new("/sys/kernel/mm/ksm").join(name);
            if let Ok(v) = fs::read_to_string(&path) {
                saved.push((path, v.trim().to_owned()));
            }
        }
        Ok(Self(saved))
    }

    /// Writes back each knob that differs (merge_across_nodes refuses writes while KSM pages
    /// exist, so unchanged ones are left alone).
    fn restore(&self) -> Result<()> {
        for (path, value) in &self.0 {
            if fs::read_to_string(path)?.trim() != value {
                fs::write(path, value)
                    .with_context(|| format!("restoring {} to {value}", path.display()))?;
            }
        }
        Ok(())
    }
}
