//! Real guests against the real kernel: Debian guests running sysbench on MariaDB (the
//! study's VMs), and guests that already run under a real libvirtd (Debian's package, started
//! and stopped here), traced by domain name with `record --vm`.
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;

tests! {
    debian_guests_run_sysbench_and_the_report_carries_its_figures: Root,
    running_libvirt_guests_are_traced_by_domain_name: Root,
    a_users_image_boots_from_overlays_and_is_never_written: Root,
}

const MIB: f64 = (1u64 << 20) as f64;

fn debian_guests_run_sysbench_and_the_report_carries_its_figures() {
    let session = KsmSession::start("debian-sysbench");
    let (stdout, rec, rep) = record_printing(
        &session,
        &[
            "--workload",
            "vms:2,load=sysbench,tables=1,table-size=2000,time=20s",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "20",
        ],
    );
    // The run ends when both guests' sysbench has finished, not when KSM settles.
    assert_eq!(rec["meta"]["ended_by"], "workload-finished");
    let workers = rep["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        let comm = w["comm"].as_str().unwrap();
        let load = &w["load"];
        assert!(load.is_object(), "{comm}: no sysbench figures: {w}");
        let tx = load["transactions"].as_u64().unwrap();
        let tps = load["transactions_per_sec"].as_f64().unwrap();
        let secs = load["duration_s"].as_f64().unwrap();
        assert!(tx > 0 && tps > 0.0, "{comm}: {load}");
        assert!((19.0..25.0).contains(&secs), "{comm}: ran {secs} s of 20");
        // sysbench's own figures agree with each other: tps = transactions / time.
        assert!(
            (tx as f64 / secs - tps).abs() <= tps * 0.02 + 0.1,
            "{comm}: {tx} transactions in {secs} s vs {tps} tps"
        );
        let p95 = load["latency_ms_p95"].as_f64().unwrap();
        let (avg, max) = (
            load["latency_ms_avg"].as_f64().unwrap(),
            load["latency_ms_max"].as_f64().unwrap(),
        );
        assert!(p95 > 0.0 && p95 <= max && avg <= max, "{comm}: {load}");
        assert!(
            !load["interval_tps"].as_array().unwrap().is_empty(),
            "{comm}: no interval lines"
        );
        assert!(
            load["command"]
                .as_str()
                .unwrap()
                .contains("--tables=1 --table-size=2000"),
            "{load}"
        );
        // What KSM saved this guest is the kernel's own figure, read from its ksm_stat.
        let pid = w["pid"].as_u64().unwrap();
        let p = entry_for_pid(&rec, pid);
        let profit = p["ksm_stat_end"]["ksm_process_profit"].as_i64().unwrap();
        assert!(profit > 0, "{comm}: KSM saved it nothing");
        assert_eq!(
            w["profit_mib_end"].as_f64().unwrap(),
            profit as f64 / MIB,
            "{comm}"
        );
        let share = w["profit_percent_of_memory"].as_f64().unwrap();
        assert!(
            (share - profit as f64 / MIB * 100.0 / 512.0).abs() < 1e-9,
            "{comm}: {share} %"
        );
        // Merges traced for the guest cover what the kernel says it has merged; guests write
        // their memory, so only ≥ holds.
        let merges = p["merges"].as_u64().unwrap();
        let (start, end) = (
            p["ksm_stat_start"]["ksm_merging_pages"]
                .as_u64()
                .unwrap_or(0),
            p["ksm_stat_end"]["ksm_merging_pages"].as_u64().unwrap(),
        );
        assert!(
            merges > 0 && merges >= end - start,
            "{comm}: merges {merges}, ksm_merging_pages {start}→{end}"
        );
        assert!(
            stdout.contains(&format!("{comm} ")) && stdout.contains("sysbench"),
            "{stdout}"
        );
    }
    assert_eq!(
        rep["scans"]["full_scans"].as_i64(),
        rep["kernel_deltas"]["full_scans"].as_i64(),
        "full scans traced = Δfull_scans"
    );
    assert_guests_gone();
    session.assert_knobs_restored();
    // The cached base image was written once, when it was built, never by a guest.
    for image in fs::read_dir("/var/cache/ksm-trace/images")
        .unwrap()
        .flatten()
    {
        let (disk, complete) = (image.path().join("disk.raw"), image.path().join("complete"));
        if complete.exists() {
            let modified = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
            assert!(
                modified(&disk) <= modified(&complete),
                "{} written",
                disk.display()
            );
        }
    }
}

/// A libvirtd and virtlogd of Debian's packages, run in the foreground as this test's
/// children, with two TCG domains defined; everything is destroyed, undefined and stopped on
/// drop.
struct Libvirt {
    daemons: Vec<Child>,
    domains: Vec<String>,
}

impl Libvirt {
    fn start() -> Self {
        assert!(
            Path::new("/usr/sbin/libvirtd").exists(),
            "libvirtd is not installed: run `cargo xtask test` (it installs Debian's libvirt-daemon-system)"
        );
        let spawn = |daemon: &str| {
            Command::new(daemon)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {daemon}: {e}"))
        };
        let mut libvirt = Self {
            daemons: vec![spawn("/usr/sbin/virtlogd")],
            domains: Vec::new(),
        };
        std::thread::sleep(Duration::from_millis(300));
        libvirt.daemons.push(spawn("/usr/sbin/libvirtd"));
        // libvirtd probes QEMU's capabilities first (about 12 s here). On this machine kind
        // /dev/kvm exists but its qemu user may not open it, so libvirt finds its cached
        // capabilities stale at each lookup and probes again: `define` takes about 50 s.
        assert!(
            wait_until(Duration::from_secs(90), || virsh(&["version"]).0),
            "libvirtd did not answer"
        );
        libvirt
    }

    /// Defines and starts a domain booting ksm-trace's busybox guest files (copied into
    /// `dir`), its serial console in `dir/NAME.log`.
    fn start_domain(&mut self, name: &str, dir: &Path, kernel: &Path, initrd: &Path) -> PathBuf {
        let log = dir.join(format!("{name}.log"));
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{}</kernel>
    <initrd>{}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 rdinit=/init rootfstype=ramfs</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <serial type='file'><source path='{}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>",
            kernel.display(),
            initrd.display(),
            log.display()
        );
        let file = dir.join(format!("{name}.xml"));
        fs::write(&file, xml).unwrap();
        let (ok, text) = virsh(&["define", file.to_str().unwrap()]);
        assert!(ok, "virsh define: {text}");
        self.domains.push(name.to_owned());
        let (ok, text) = virsh(&["start", name]);
        assert!(ok, "virsh start: {text}");
        log
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        for domain in &self.domains {
            virsh(&["destroy", domain]);
            virsh(&["undefine", domain]);
        }
        for daemon in self.daemons.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = daemon.wait();
        }
    }
}

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("running virsh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The QEMU pid libvirt wrote for `domain`.
fn domain_pid(domain: &str) -> u64 {
    fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn running_libvirt_guests_are_traced_by_domain_name() {
    let session = KsmSession::start("libvirt");
    // The busybox guest's kernel and initramfs, from ksm-trace's own cache (filled here if a
    // vms run has not yet), copied where libvirt's qemu user may read them.
    let (kernel, initrd) = (session.path("vmlinuz"), session.path("initrd.cpio.gz"));
    let (cached_kernel, cached_initramfs) = busybox_guest();
    fs::copy(cached_kernel, &kernel).unwrap();
    fs::copy(cached_initramfs, &initrd).unwrap();

    let t0 = std::time::Instant::now();
    let mut libvirt = Libvirt::start();
    eprintln!("libvirtd up after {:?}", t0.elapsed());
    let names = ["ksm-test-db1", "ksm-test-db2"];
    let logs: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            let log = libvirt.start_domain(n, &session.dir, &kernel, &initrd);
            eprintln!("{n} started after {:?}", t0.elapsed());
            log
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(120), || logs.iter().all(|l| {
            fs::read_to_string(l).is_ok_and(|t| t.contains("KSM-TRACE-READY"))
        })),
        "the domains did not boot"
    );
    eprintln!("domains ready after {:?}", t0.elapsed());

    // A name no guest has: one line naming the running ones, nothing changed.
    let miss = assert_clean_error(
        &["record", "--vm", "ksm-test-nope", "--duration", "5s"],
        "running guests: ksm-test-db1, ksm-test-db2",
    );
    let stderr = String::from_utf8_lossy(&miss.stderr);
    assert_eq!(miss.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"ksm-test-nope\""), "{stderr}");
    session.assert_knobs_restored();

    let (stdout, rec, rep) = record_printing(
        &session,
        &[
            "--vm",
            names[0],
            "--vm",
            names[1],
            "--duration",
            "20s",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "20",
        ],
    );
    eprintln!("recorded after {:?}", t0.elapsed());
    let pids: Vec<u64> = names.iter().map(|n| domain_pid(n)).collect();
    let mut filter: Vec<u64> = rec["meta"]["pid_filter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    filter.sort();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(filter, want, "--vm chose the domains' QEMU processes");
    let processes = rep["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2, "only the two guests are reported");
    for (name, pid) in names.iter().zip(&pids) {
        let p = entry_for_pid(&rep, *pid);
        assert_eq!(p["guest"], *name, "named by its libvirt domain");
        // The domains run an idle busybox guest; only its kernel's own writes (timers,
        // page tables) leave merged pages without a tracepoint, a few against thousands of
        // merges (7 in one run, 95 of 17 765 in another): the traced count must match the
        // kernel's to within 1 %.
        let merges = p["merges"].as_i64().unwrap();
        let unmerges = p["unmerges"].as_i64().unwrap();
        let start = p["ksm_merging_pages_start"].as_i64().unwrap();
        let end = p["ksm_merging_pages_end"].as_i64().unwrap();
        assert!(merges > 1000, "{name}: {merges} merges");
        let silent = merges - unmerges - (end - start);
        assert_eq!(p["silent_unmerges"].as_i64(), Some(silent));
        assert!(
            (0..=merges / 100).contains(&silent),
            "{name}: merges {merges} − unmerges {unmerges} vs Δksm_merging_pages {start}→{end}"
        );
        assert!(stdout.contains(&format!("[{name}]")), "{stdout}");
    }
    // ksm-trace started ksmd for the run and stopped it again; the guests run on.
    session.assert_knobs_restored();
    for pid in &pids {
        assert!(
            alive(*pid as u32),
            "ksm-trace stopped a guest it did not start"
        );
    }
    drop(libvirt);
    eprintln!("libvirt stopped after {:?}", t0.elapsed());
    for pid in &pids {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(*pid as u32)),
            "domain's QEMU survived destroy"
        );
    }
}

/// A bootable hybrid ISO (isolinux) in `dir` that boots ksm-trace's busybox guest: a disk
/// image like a user's, booted by the firmware rather than by QEMU's -kernel.
fn bootable_image(dir: &Path) -> PathBuf {
    let (kernel, initramfs) = busybox_guest();
    let tree = dir.join("iso");
    fs::create_dir_all(tree.join("isolinux")).unwrap();
    for (from, to) in [
        ("/usr/lib/ISOLINUX/isolinux.bin", "isolinux/isolinux.bin"),
        (
            "/usr/lib/syslinux/modules/bios/ldlinux.c32",
            "isolinux/ldlinux.c32",
        ),
        (initramfs.to_str().unwrap(), "initrd.gz"),
        (kernel.to_str().unwrap(), "vmlinuz"),
    ] {
        fs::copy(from, tree.join(to))
            .unwrap_or_else(|e| panic!("{from}: {e} (cargo xtask test installs isolinux)"));
    }
    fs::write(
        tree.join("isolinux/isolinux.cfg"),
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  \
         APPEND initrd=/initrd.gz console=ttyS0 quiet panic=-1 rdinit=/init rootfstype=ramfs\n",
    )
    .unwrap();
    let iso = dir.join("guest.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso)
        .args([
            "-isohybrid-mbr",
            "/usr/lib/ISOLINUX/isohdpfx.bin",
            "-c",
            "isolinux/boot.cat",
            "-b",
            "isolinux/isolinux.bin",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
        ])
        .arg(&tree)
        .output()
        .expect("running xorriso (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

/// The busybox guest's kernel and initramfs (default payload) in ksm-trace's cache, filled by
/// a short vms run if no run has yet.
fn busybox_guest() -> (PathBuf, PathBuf) {
    ksm_trace_ok(&["workload", "vms:1,mem=128M", "--duration", "1s"]);
    (
        newest("/var/cache/ksm-trace", "vmlinuz-"),
        PathBuf::from("/var/cache/ksm-trace/initramfs-33554432-16777216-none.cpio.gz"),
    )
}

/// The last file in `dir` whose name starts with `prefix`.
fn newest(dir: &str, prefix: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("no {dir}/{prefix}*"))
}

fn a_users_image_boots_from_overlays_and_is_never_written() {
    let session = KsmSession::start("image");
    let iso = bootable_image(&session.dir);
    let before = fs::read(&iso).unwrap();

    // A path that is not an image: one line, nothing started.
    let bad = assert_clean_error(
        &[
            "record",
            "--workload",
            "vms:2,image=/nonexistent/disk.qcow2",
            "--duration",
            "5s",
        ],
        "/nonexistent/disk.qcow2",
    );
    assert_eq!(bad.status.code(), Some(1));
    session.assert_knobs_restored();

    let spec = format!("vms:2,image={},mem=256M", iso.display());
    let (rec, rep) = record(
        &session,
        &[
            "--workload",
            &spec,
            "--duration",
            "40s",
            "--pages-to-scan",
            "2000",
            "--sleep-ms",
            "20",
        ],
    );
    let workers = rep["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        let pid = w["pid"].as_u64().unwrap();
        let p = entry_for_pid(&rep, pid);
        // Both guests load the same kernel and initramfs from their disks: KSM merges them.
        let merges = p["merges"].as_u64().unwrap();
        let end = p["ksm_merging_pages_end"].as_u64().unwrap();
        assert!(
            merges > 1000 && merges >= end,
            "{}: {merges} merges, {end} merging",
            w["comm"]
        );
    }
    assert_eq!(rec["meta"]["ended_by"], "duration");
    assert!(fs::read(&iso).unwrap() == before, "the image was written");
    // No guest, and no run directory with the overlays.
    assert_no_guests_left();
    session.assert_knobs_restored();
}
