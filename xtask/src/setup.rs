//! Toolchain set-up for the eBPF build, idempotent: each step checks first and installs only
//! what is missing.
//!
//! - a nightly with rust-src (the eBPF crate builds core with `-Z build-std`), whose LLVM major
//!   matches bpf-linker's; the default nightly if it does, else a pinned one;
//! - LLVM dev files of that major from apt, and bpf-linker built against them;
//! - QEMU and a static busybox for the `vms` workload's guests and the kernel lab, and bpftrace
//!   for the benchmark's comparison;
//! - for the tests of the live views ([`test_tools`]): Prometheus, which scrapes `serve`, and
//!   tmux, which drives `top`;
//! - for packaging ([`packaging`]): the musl target, cargo-deb, and man-db and bash-completion,
//!   which the package test reads the installed man page and completion with.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// The LLVM major bpf-linker is built against.
const LLVM_MAJOR: u32 = 22;
/// A nightly known to use LLVM 22, for machines whose default nightly is missing or too new.
const PINNED_NIGHTLY: &str = "nightly-2026-08-01";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The packaged binary's target: static, so it needs nothing from the machine it runs on.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Environment the workspace build needs after set-up.
pub struct BuildEnv {
    ebpf_toolchain: String,
}

impl BuildEnv {
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("KSM_TRACE_EBPF_TOOLCHAIN", &self.ebpf_toolchain);
        if let Some(cargo_bin) = cargo_bin() {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", cargo_bin.display()));
        }
    }
}

/// What the tests drive besides the kernel: a real Prometheus (Debian's; the package's own
/// service is not started in a container, and the test starts its own on a free port), tmux
/// for `top`, libvirt for guests that already run (the test starts and stops its daemons),
/// and isolinux with xorriso to make a bootable disk image for `vms:N,image=`.
pub fn test_tools() -> Result<()> {
    ensure_packages(&[
        "prometheus",
        "tmux",
        "libvirt-daemon-system",
        "libvirt-clients",
        "isolinux",
        "syslinux-common",
        "xorriso",
    ])
}

pub fn run() -> Result<BuildEnv> {
    let toolchain = nightly_with_llvm(LLVM_MAJOR)?;
    ensure_rust_src(&toolchain)?;
    ensure_llvm_dev()?;
    ensure_bpf_linker()?;
    // QEMU and busybox for the vms guests; qemu-utils (their disk overlays), mmdebstrap and
    // e2fsprogs (the Debian guest image) for the Debian and image= guests.
    ensure_packages(&[
        "qemu-system-x86",
        "busybox-static",
        "bpftrace",
        "qemu-utils",
        "mmdebstrap",
        "e2fsprogs",
    ])?;
    Ok(BuildEnv {
        ebpf_toolchain: toolchain,
    })
}

/// What `cargo xtask dist`, `install` and the package test need beyond the build: the target
/// of the static binary, cargo-deb (about 1.5 min to compile on 2 cores), dpkg-shlibdeps (for
/// the package's computed Depends), man-db and bash-completion.
pub fn packaging() -> Result<()> {
    let targets =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == TARGET) {
        run_checked(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    ensure_packages(&["dpkg-dev", "man-db", "bash-completion"])?;
    let cargo_deb_ok = output(Command::new("cargo").args(["deb", "--version"]))
        .is_some_and(|v| v.contains(CARGO_DEB_VERSION));
    if !cargo_deb_ok {
        run_checked(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    Ok(())
}

pub fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .ok_or_else(|| anyhow!("xtask has no parent directory"))?
        .to_path_buf())
}

fn cargo_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
}

pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn llvm_major_of(toolchain: &str) -> Option<u32> {
    let text = output(
        Command::new("rustc")
            .arg(format!("+{toolchain}"))
            .arg("-vV"),
    )?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

/// The default nightly if its LLVM matches, else the pinned nightly (installed if missing).
fn nightly_with_llvm(major: u32) -> Result<String> {
    if llvm_major_of("nightly") == Some(major) {
        return Ok("nightly".into());
    }
    if llvm_major_of(PINNED_NIGHTLY) != Some(major) {
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            PINNED_NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    match llvm_major_of(PINNED_NIGHTLY) {
        Some(m) if m == major => Ok(PINNED_NIGHTLY.into()),
        other => bail!(
            "no nightly with LLVM {major} (pinned {PINNED_NIGHTLY} has {other:?}): install one with rustup"
        ),
    }
}

fn ensure_rust_src(toolchain: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run_checked(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}

/// Debian packages the vms workload runs guests with (the guest kernel is fetched by
/// ksm-trace itself, into its cache).
/// Installs, from apt, those of `packages` that are not installed.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let installed = |package: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_some_and(|s| s.contains("install ok installed"))
    };
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn llvm_prefix() -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"))
}

fn ensure_llvm_dev() -> Result<()> {
    if llvm_prefix().join("lib/libLLVM.so").exists() || bpf_linker_ok() {
        return Ok(());
    }
    ensure_packages(&[&format!("llvm-{LLVM_MAJOR}-dev")])
}

/// bpf-linker is installed, of our version, and linked against LLVM `LLVM_MAJOR`.
fn bpf_linker_ok() -> bool {
    let Some(bin) = cargo_bin()
        .map(|b| b.join("bpf-linker"))
        .filter(|b| b.exists())
    else {
        return false;
    };
    let version_ok =
        output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    version_ok && linked_llvm_major(&bin) == Some(LLVM_MAJOR)
}

fn linked_llvm_major(bin: &Path) -> Option<u32> {
    let ldd = output(Command::new("ldd").arg(bin))?;
    let lib = ldd.lines().find(|l| l.contains("libLLVM"))?;
    // e.g. "libLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1"
    let after = lib.split("libLLVM").nth(1)?;
    after
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
                "--force",
            ])
            .env("LLVM_PREFIX", llvm_prefix()),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker {BPF_LINKER_VERSION} installed but not linked against LLVM {LLVM_MAJOR}");
    }
    Ok(())
}
