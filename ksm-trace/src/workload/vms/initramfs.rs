//! What a `vms` guest's initramfs holds on top of the common base ([`Archive::base`]): its
//! `/init` script and the seeded payload that every guest holds byte for byte.
//!
//! Why compressed, with a compressible payload: while the kernel unpacks an initramfs, the
//! archive and the unpacked files are both in guest RAM. An uncompressed 32 MiB random payload
//! needs 64 MiB at that moment, more than a 128 MiB guest has left beside its kernel (it dies
//! of OOM). A payload whose pages repeat a short pseudo-random block inflates fast under TCG and
//! costs the guest its unpacked size only; to KSM, pages are pages whatever their entropy.
use std::{
    io::{self, Write},
    path::Path,
};

use anyhow::{Result, bail};

use crate::{guest::initramfs::Archive, workload::spec::VmsSpec};

/// The line `/init` prints on the console once the guest's memory is in place.
pub const READY_MARKER: &str = "KSM-TRACE-READY";

const PAGE: usize = 4096;
/// A page is this block repeated: the page's index, then pseudo-random words.
const BLOCK: usize = 64;
/// Fixed, so every guest of every run gets the same payload bytes.
const SEED: u64 = 0x6b73_6d2d_7472_6163;

/// The `/init` script (busybox sh) for `spec`.
pub fn init_script(spec: &VmsSpec) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         # ksm-trace guest: /payload stays as unpacked (its page-cache pages are the same in\n\
         # every guest, which is what KSM merges); /tmp/private is unique to this guest.\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n",
    );
    if spec.private > 0 {
        s += &format!("head -c {} /dev/urandom > /tmp/private\n", spec.private);
    }
    match spec.churn {
        Some(churn) => {
            let every = churn.every.as_secs_f64();
            s += &format!("head -c {} /payload > /tmp/churn-orig\n", churn.bytes);
            s += &format!("echo {READY_MARKER}\n");
            // Writing the payload's pages in place breaks the host's merged copies (COW);
            // restoring them makes them identical again, so ksmd merges them anew.
            s += &format!(
                "while :; do\n\
                 \x20 sleep {every}\n\
                 \x20 head -c {bytes} /dev/urandom | dd of=/payload bs=65536 conv=notrunc 2>/dev/null\n\
                 \x20 sleep {every}\n\
                 \x20 dd if=/tmp/churn-orig of=/payload bs=65536 conv=notrunc 2>/dev/null\n\
                 done\n",
                bytes = churn.bytes
            );
        }
        None => {
            s += &format!("echo {READY_MARKER}\n");
            s += "while :; do sleep 3600; done\n";
        }
    }
    s
}

/// Writes `shared` bytes of the payload, the same on every call: each 4 KiB page repeats one
/// 64-byte block made of the page's index (so no two pages are alike) and pseudo-random words
/// from a fixed seed.
pub fn write_payload(out: &mut (impl Write + ?Sized), shared: u64) -> io::Result<()> {
    let mut state = SEED;
    let mut page = [0u8; PAGE];
    let mut left = shared;
    let mut index = 0u64;
    while left > 0 {
        let mut block = [0u8; BLOCK];
        block[..8].copy_from_slice(&index.to_le_bytes());
        for word in block[8..].chunks_exact_mut(8) {
            word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        for chunk in page.chunks_exact_mut(BLOCK) {
            chunk.copy_from_slice(&block);
        }
        let n = left.min(PAGE as u64) as usize;
        out.write_all(&page[..n])?;
        left -= n as u64;
        index += 1;
    }
    Ok(())
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes the archive for `spec` to `out`, copying the static busybox from `busybox`.
pub fn write(spec: &VmsSpec, busybox: &Path, out: &Path) -> Result<()> {
    // newc stores sizes as 32-bit fields.
    if spec.shared > u32::MAX as u64 {
        bail!(
            "shared={} MiB is too large for a guest initramfs: use at most 4095M",
            spec.shared >> 20
        );
    }
    let mut a = Archive::create(out)?;
    a.base(busybox)?;
    a.file("init", 0o755, init_script(spec).as_bytes())?;
    a.stream("payload", 0o644, spec.shared as u32, |w| {
        write_payload(w, spec.shared)
    })?;
    a.finish()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, fs::File, io::Read as _, time::Duration};

    use super::*;
    use crate::workload::spec::Churn;

    fn spec(shared: u64, churn: Option<Churn>) -> VmsSpec {
        VmsSpec {
            count: 1,
            mem: 128 << 20,
            shared,
            private: 1 << 20,
            churn,
            system: crate::workload::spec::GuestSystem::Busybox,
        }
    }

    #[test]
    fn payload_is_deterministic_and_every_page_differs() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_payload(&mut a, (2 << 20) + 100).unwrap();
        write_payload(&mut b, (2 << 20) + 100).unwrap();
        assert_eq!(a.len(), (2 << 20) + 100);
        assert_eq!(a, b);
        let pages: HashSet<&[u8]> = a.chunks(PAGE).collect();
        assert_eq!(pages.len(), a.len().div_ceil(PAGE));
    }

    #[test]
    fn init_script_churns_only_when_asked() {
        let plain = init_script(&spec(1 << 20, None));
        assert!(plain.contains("head -c 1048576 /dev/urandom > /tmp/private"));
        assert!(plain.contains(READY_MARKER));
        assert!(!plain.contains("/tmp/churn-orig"));
        let churn = init_script(&spec(
            1 << 20,
            Some(Churn {
                bytes: 65536,
                every: Duration::from_millis(500),
            }),
        ));
        assert!(churn.contains("head -c 65536 /payload > /tmp/churn-orig"));
        assert!(churn.contains("sleep 0.5"));
        assert!(churn.contains("conv=notrunc"));
        // The original is saved before the marker, the loop runs after it.
        assert!(churn.find("churn-orig").unwrap() < churn.find(READY_MARKER).unwrap());
    }

    #[test]
    fn archive_holds_every_entry() {
        let dir = std::env::temp_dir().join(format!("ksm-trace-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake_busybox = dir.join("busybox");
        std::fs::write(&fake_busybox, b"not really busybox").unwrap();
        let out = dir.join("i.cpio");
        write(&spec(10_000, None), &fake_busybox, &out).unwrap();
        let mut file = flate2::read::GzDecoder::new(File::open(&out).unwrap());
        let mut seen = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(file).unwrap();
            let e = reader.entry().clone();
            if e.is_trailer() {
                break;
            }
            seen.push((
                e.name().to_owned(),
                e.mode(),
                e.file_size(),
                e.rdev_major(),
                e.rdev_minor(),
            ));
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            if e.name() == "payload" {
                let mut expected = Vec::new();
                write_payload(&mut expected, 10_000).unwrap();
                assert_eq!(data, expected);
            }
            file = reader.finish().unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let find = |n: &str| seen.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(find("dev/console").1, 0o020600);
        assert_eq!((find("dev/console").3, find("dev/console").4), (5, 1));
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("bin/busybox").2, 18);
        assert_eq!(find("payload").2, 10_000);
        assert_eq!(find("tmp").1, 0o041777);
    }
}
