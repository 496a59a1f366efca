//! Reading what the kernel itself counts: KSM's sysfs files, /proc/vmstat, /proc/<pid>/ksm_stat
//! and ksmd's CPU time. These are the figures ksm-trace's own counts are checked against.
pub mod kallsyms;
pub mod ksm_stat;
pub mod pagemap;
pub mod process;
pub mod security;
pub mod sysfs;
pub mod tracefs;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

pub use crate::recording::schema::{Counters, KsmStat};
use anyhow::{Context as _, Result, anyhow};

impl Counters {
    pub fn read(ksmd_pid: u32) -> Result<Self> {
        Ok(Self {
            ksm: sysfs::read_all()?,
            vmstat: vmstat()?,
            ksmd_cpu_ns: cpu_time_ns(ksmd_pid)?,
        })
    }

    pub fn ksm(&self, name: &str) -> i64 {
        self.ksm.get(name).copied().unwrap_or(0)
    }
}

/// KSM-related lines of /proc/vmstat.
pub fn vmstat() -> Result<BTreeMap<String, i64>> {
    let all = procfs::vmstat().context("reading /proc/vmstat")?;
    Ok(all
        .into_iter()
        .filter(|(k, _)| k == "cow_ksm" || k == "ksm_swpin_copy")
        .collect())
}

/// The ksmd kernel thread's pid.
pub fn ksmd_pid() -> Result<u32> {
    for process in procfs::process::all_processes().context("listing /proc")? {
        let Ok(process) = process else { continue };
        if let Ok(stat) = process.stat()
            && stat.comm == "ksmd"
            && stat.ppid == 2
        {
            return Ok(process.pid as u32);
        }
    }
    Err(anyhow!(
        "no ksmd kernel thread found: this kernel runs without KSM (CONFIG_KSM=n)"
    ))
}

/// How long ksmd may take to drop what exited processes left in its trees.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lets ksmd, flat out, finish one full scan — which visits the mms of exited processes first
/// and drops their pages from its trees and counters — then puts `sleep_millisecs` back as it
/// found it. Leaves `run=1` for the caller to restore. With no mergeable memory left at all,
/// ksmd waits for work instead of scanning: then there is nothing to drop once its counters
/// read zero.
pub fn let_ksmd_drop_exited() -> Result<()> {
    let start = sysfs::read_i64("full_scans")?;
    let sleep = sysfs::read("sleep_millisecs")?;
    sysfs::write("sleep_millisecs", "0")?;
    sysfs::write("run", "1")?;
    let deadline = Instant::now() + REAP_TIMEOUT;
    let result = loop {
        let nothing_left = || -> Result<bool> {
            Ok(sysfs::read_i64("pages_shared")? == 0 && sysfs::read_i64("pages_sharing")? == 0)
        };
        if sysfs::read_i64("full_scans")? != start || nothing_left()? {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(anyhow!(
                "ksmd did not finish a full scan within {} s: pages of exited workers may stay counted in pages_shared until it next runs",
                REAP_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    sysfs::write("sleep_millisecs", &sleep)?;
    result
}

/// Time `pid` has run, in ns: schedstat's sum_exec_runtime (utime + stime would be tick-sampled,
/// and ksmd's timer-aligned sleeps alias with the tick).
pub fn cpu_time_ns(pid: u32) -> Result<u64> {
    let schedstat = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.schedstat())
        .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
    Ok(schedstat.sum_exec_runtime)
}

pub fn page_size() -> u64 {
    procfs::page_size()
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether the CPU flag `name` is listed in /proc/cpuinfo. The kernel clears a feature it does
/// not use (`la57`: 5-level paging is listed only when it is on).
pub fn cpu_flag(name: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .take(1)
            .any(|l| l.split_whitespace().any(|f| f == name))
    })
}
