//! `cargo xtask kernel [--patch FILE]`: a kernel the lab can boot (`ksm-trace lab --kernel
//! PATH`), built from Debian's `linux-source-6.12` with `x86_64_defconfig` and what ksm-trace
//! and the lab need turned on, with a patch applied or without. The unpacked tree is kept in
//! /var/cache/ksm-trace/kernels/ (a cold build takes about 20 minutes on two cores; after a
//! change to one file in mm/, about 1.5), and each image is kept with its .config in a
//! directory named by the patch's hash, so asking again for one already built costs nothing.
//! Not part of CI.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    selftests::{candidate_version, unpack_source},
    setup::{ensure_packages, run_checked},
};

const CACHE: &str = "/var/cache/ksm-trace/kernels";

/// What `x86_64_defconfig` lacks for ksm-trace and the lab's guest (KSM, BPF with BTF and on
/// tracepoints, fentry and kprobes, the guest's devtmpfs, initramfs and virtio/serial pieces).
const ENABLE: [&str; 26] = [
    "KSM",
    "BPF",
    "BPF_SYSCALL",
    "BPF_JIT",
    "BPF_EVENTS",
    "DEBUG_INFO_BTF",
    "DEBUG_INFO_DWARF5",
    "FTRACE",
    "FUNCTION_TRACER",
    "DYNAMIC_FTRACE",
    "FPROBE",
    "KPROBES",
    "KPROBE_EVENTS",
    "TRACEPOINTS",
    "IKCONFIG",
    "IKCONFIG_PROC",
    "TRANSPARENT_HUGEPAGE",
    "VIRTIO_PCI",
    "VIRTIO_BLK",
    "VIRTIO_CONSOLE",
    "VIRTIO_NET",
    "DEVTMPFS",
    "DEVTMPFS_MOUNT",
    "BLK_DEV_INITRD",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
];

/// Builds (or finds) the image with `patch` applied (None: the tree as Debian ships it) and
/// prints its path.
pub fn build(patch: Option<&Path>) -> Result<PathBuf> {
    ensure_packages(&[
        "make",
        "gcc",
        "flex",
        "bison",
        "libelf-dev",
        "libssl-dev",
        "dwarves",
        "bc",
        "cpio",
        "xz-utils",
        "patch",
    ])?;
    let version = candidate_version()?;
    let patch_text = patch
        .map(|p| fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let label = patch_text.as_deref().map_or("plain".to_owned(), |t| {
        format!("patch-{:08x}", crc32(t.as_bytes()))
    });
    // One directory per image, its config beside it, where the lab looks for one.
    let dir = Path::new(CACHE).join(format!("{version}-{label}"));
    let image = dir.join("bzImage");
    if image.is_file() {
        println!("{}", image.display());
        return Ok(image);
    }
    let tree = tree(&version)?;
    if let Some(text) = &patch_text {
        apply(&tree, text, false)?;
    }
    let built = make(&tree);
    if let Some(text) = &patch_text {
        apply(&tree, text, true)?;
    }
    built?;
    fs::create_dir_all(&dir)?;
    // The lab checks the config beside an image it is given.
    fs::copy(tree.join(".config"), dir.join(".config"))?;
    fs::copy(tree.join("arch/x86/boot/bzImage"), &image)?;
    eprintln!("xtask: kernel built: {}", image.display());
    println!("{}", image.display());
    Ok(image)
}

/// The configured source tree, unpacked once.
fn tree(version: &str) -> Result<PathBuf> {
    let work = Path::new(CACHE).join(format!("src-{version}"));
    let tree = work.join("linux-source-6.12");
    if tree.join(".config").is_file() {
        return Ok(tree);
    }
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let tree = unpack_source(&work)?;
    run_checked(
        Command::new("make")
            .args(["-s", "x86_64_defconfig"])
            .current_dir(&tree),
    )?;
    let mut config = Command::new("scripts/config");
    for option in ENABLE {
        config.args(["-e", option]);
    }
    config.args(["-d", "DEBUG_INFO_NONE", "-d", "DEBUG_INFO_REDUCED"]);
    run_checked(config.current_dir(&tree))?;
    run_checked(
        Command::new("make")
            .args(["-s", "olddefconfig"])
            .current_dir(&tree),
    )?;
    Ok(tree)
}

fn apply(tree: &Path, text: &str, reverse: bool) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("patch")
        .args(["-p1", "-s", "--forward"])
        .args(reverse.then_some("-R"))
        .current_dir(tree)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running patch")?;
    child
        .stdin
        .take()
        .context("patch's stdin")?
        .write_all(text.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "the patch does not apply to linux-source-6.12 ({status}): make it against that tree (-p1)"
        );
    }
    Ok(())
}

fn make(tree: &Path) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_checked(
        Command::new("make")
            .args(["-s", &format!("-j{jobs}"), "bzImage"])
            .current_dir(tree),
    )
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
