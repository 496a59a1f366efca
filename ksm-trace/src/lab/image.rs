//! The lab guest's initramfs: static busybox, this ksm-trace binary with the shared libraries
//! and loader `ldd` lists (at their absolute paths), and the `/init` scenario script.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::scenario::{
    BACKEND, BACKENDS, BOOTED, COMPARE_ARGS, COUNTERS_AFTER, COUNTERS_BEFORE, DOCTOR,
    DOCTOR_STDERR, DONE, RECORD_ARGS, RECORD_STDERR, RECORDING, REPORT, REPORT_STDERR, STATUS,
};

use crate::guest::{
    BUSYBOX,
    initramfs::{Archive, BASE_DIRS},
};

/// Where ksm-trace lives in the guest.
const GUEST_BIN: &str = "bin/ksm-trace";

/// The `/init` script (busybox sh): mounts, runs doctor, record and report, prints each result
/// between markers, then powers off.
pub fn init_script() -> String {
    let backends = BACKENDS.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock
# Only emergencies on the console from here on: kernel lines must not split a JSON block.
echo 1 > /proc/sys/kernel/printk
echo "{BOOTED} $(cut -d' ' -f1 /proc/uptime) $(uname -r)"
block() {{
  echo "$1-BEGIN"
  cat "$2"
  echo
  echo "$1-END"
}}
# The kernel's own counters, read here and not by ksm-trace, for checking its figures.
counters() {{
  echo "$1 cow_ksm=$(sed -n 's/^cow_ksm //p' /proc/vmstat) full_scans=$(cat /sys/kernel/mm/ksm/full_scans)"
}}
/{GUEST_BIN} doctor --json > /tmp/doctor.json 2> /tmp/doctor.err
drc=$?
block {DOCTOR} /tmp/doctor.json
block {DOCTOR_STDERR} /tmp/doctor.err
counters {COUNTERS_BEFORE}
t0=$(cut -d' ' -f1 /proc/uptime)
/{GUEST_BIN} {RECORD_ARGS} -o /tmp/r.json > /tmp/record.out 2> /tmp/record.err
rrc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
counters {COUNTERS_AFTER}
block {RECORD_STDERR} /tmp/record.err
prc=-
if [ $rrc -eq 0 ]; then
  /{GUEST_BIN} report /tmp/r.json --json > /tmp/report.json 2> /tmp/report.err
  prc=$?
  block {REPORT} /tmp/report.json
  block {REPORT_STDERR} /tmp/report.err
  block {RECORDING} /tmp/r.json
fi
echo "{STATUS} doctor=$drc record=$rrc report=$prc record_start=$t0 record_end=$t1"
[ $rrc -ne 0 ] && dmesg | tail -n 20
# The same fixed workload under each backend; one that is refused (the tracepoints before 6.4)
# changes nothing, and the others still run. smart_scan
# (6.7+) would slow the re-merge of rewritten pages past the workload's wait.
ss=
[ -e /sys/kernel/mm/ksm/smart_scan ] && ss="--smart-scan off"
for b in {backends}; do
  counters {BACKEND}-$b-BEFORE
  /{GUEST_BIN} {COMPARE_ARGS} $ss --backend $b -o /tmp/c.json > /dev/null 2> /tmp/c.err
  crc=$?
  counters {BACKEND}-$b-AFTER
  block {BACKEND}-$b-STDERR /tmp/c.err
  if [ $crc -eq 0 ]; then
    /{GUEST_BIN} report /tmp/c.json --json > /tmp/c.report.json 2> /dev/null
    block {BACKEND}-$b-REPORT /tmp/c.report.json
  fi
  echo "{BACKEND}-$b-STATUS rc=$crc"
done
echo "{DONE}"
poweroff -f
"#
    )
}

/// Writes the archive to `out`, taking ksm-trace from `ksm_trace` (normally this executable).
pub fn write(ksm_trace: &Path, out: &Path) -> Result<()> {
    let libs = shared_libraries(ksm_trace)?;
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for lib in &libs {
        let mut parent = lib.parent();
        while let Some(p) = parent {
            let rel = p.to_string_lossy().trim_start_matches('/').to_owned();
            if !rel.is_empty() {
                dirs.insert(rel);
            }
            parent = p.parent();
        }
    }
    for base in BASE_DIRS.map(|(d, _)| d) {
        dirs.remove(base);
    }
    dirs.insert("run".into());

    let mut a = Archive::create(out)?;
    a.base(Path::new(BUSYBOX))?;
    // BTreeSet order puts every parent before its children.
    for dir in &dirs {
        a.dir(dir, 0o755)?;
    }
    a.host_file(GUEST_BIN, 0o755, ksm_trace)?;
    for lib in &libs {
        a.host_file(&lib.to_string_lossy()[1..], 0o755, lib)?;
    }
    a.file("init", 0o755, init_script().as_bytes())?;
    a.finish()
}

/// The absolute paths of the libraries and the loader `ldd` lists for `binary`; none for a
/// static binary (the packaged, musl one), which runs in the guest as it is.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    if !crate::guest::has_interpreter(binary)? {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("running ldd (to put ksm-trace's libraries into the guest)")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout));
    if !libs
        .iter()
        .any(|l| l.to_string_lossy().contains("ld-linux"))
    {
        return Err(anyhow!(
            "ldd {} lists no dynamic loader: cannot build the guest image",
            binary.display()
        ));
    }
    Ok(libs)
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`
/// → their paths; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffb1a75c000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007ffb1a72b000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ffb1a01e000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007ffb1a75e000)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn init_prints_every_block_and_ends_with_done() {
        let s = init_script();
        for m in [DOCTOR, REPORT, RECORDING, RECORD_STDERR, REPORT_STDERR] {
            assert!(s.contains(&format!("block {m} ")), "{m}");
        }
        assert!(s.contains("--merge-latency both"));
        let record = s.find("-o /tmp/r.json").unwrap();
        assert!(s.find(&format!("counters {COUNTERS_BEFORE}")).unwrap() < record);
        assert!(s.find(&format!("counters {COUNTERS_AFTER}")).unwrap() > record);
        let done = s.find(DONE).unwrap();
        assert!(done < s.find("poweroff -f").unwrap());
    }
}
