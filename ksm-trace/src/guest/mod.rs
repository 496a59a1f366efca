//! QEMU guests, as both the `vms` workload and the kernel lab start them: Debian kernels fetched
//! with apt ([`kernel`]), a gzip'd newc initramfs with a static busybox ([`initramfs`]), and one
//! guest lifecycle ([`qemu`]: spawned to die with ksm-trace, console in a file, ended over QMP,
//! then SIGTERM, then SIGKILL). What a guest runs is the caller's business: `workload::vms`
//! and `lab` build their own `/init` on top of these.
pub mod disk;
pub mod initramfs;
pub mod kernel;
pub mod qemu;
pub mod qmp;
pub mod running;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Downloaded kernels and built initramfs archives, kept between runs.
pub const CACHE_DIR: &str = "/var/cache/ksm-trace";
/// The static busybox every guest's `/init` runs on (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
const INSTALL: &str = "apt-get install -y --no-install-recommends qemu-system-x86 busybox-static";

/// Fails with the command to run when QEMU or a static busybox is missing.
pub fn check_prerequisites() -> Result<()> {
    if find_in_path(qemu::QEMU).is_none() {
        bail!(
            "{} not found: install it with `{INSTALL}` or run `cargo xtask setup`",
            qemu::QEMU
        );
    }
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} not found: install it with `{INSTALL}` or run `cargo xtask setup`");
    }
    // Debian's plain `busybox` package also installs /bin/busybox, dynamically linked: the
    // guest has no libc, so its /init would fail with nothing but a kernel panic to show.
    if has_interpreter(busybox)? {
        bail!(
            "{BUSYBOX} is dynamically linked: install the static one with `{INSTALL}` or run `cargo xtask setup`"
        );
    }
    Ok(())
}

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether an ELF64 file names a program interpreter (PT_INTERP), i.e. is dynamically linked.
/// Whether the ELF executable at `path` asks for a program interpreter (a dynamic loader);
/// a static one (busybox-static, a musl ksm-trace) does not.
pub fn has_interpreter(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // Not a little-endian ELF64: let the guest's console tell.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Ok(false);
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Ok(false);
    };
    const PT_INTERP: u32 = 3;
    Ok((0..phnum as usize).any(|i| {
        let at = phoff as usize + i * phentsize as usize;
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            == Some(PT_INTERP)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        // The test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        assert!(has_interpreter(&me).unwrap());
        let dir = std::env::temp_dir().join(format!("ksm-trace-elf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let text = dir.join("script");
        fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(!has_interpreter(&text).unwrap());
        fs::remove_dir_all(&dir).unwrap();
        if Path::new(BUSYBOX).is_file() {
            // What `apt-get install busybox-static` puts there.
            println!(
                "{BUSYBOX} dynamic: {}",
                has_interpreter(Path::new(BUSYBOX)).unwrap()
            );
        }
    }
}
