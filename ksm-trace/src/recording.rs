//! The recording: one versioned, self-describing JSON file that `record` writes atomically and
//! that `report` (and later `flame`, `plot`) only read.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    collect::{FullScan, MergeStats, scans::AdvisorStep},
    histogram::Histogram,
    kernel::{Counters, KsmStat},
    probes::{Capabilities, LatencyMode, Mechanisms, profile::Profile},
    sample::Sample,
    workload::{Worker, WorkloadSpec},
};

pub const FORMAT: &str = "ksm-trace-recording";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub format: String,
    pub version: u32,
    pub meta: Meta,
    pub mechanisms: Mechanisms,
    pub processes: Vec<ProcessRecord>,
    pub scans: ScanRecord,
    pub counters_start: Counters,
    pub counters_end: Counters,
    pub events: EventCounts,
    pub latency: LatencyCoverage,
    /// ksmd's kernel stacks sampled on-CPU.
    pub profile: Profile,
    /// The kernel's counters at a fixed interval.
    pub timeseries: Vec<Sample>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub tool_version: String,
    pub command_line: Vec<String>,
    pub kernel_release: String,
    pub hostname: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix_s: u64,
    /// CLOCK_MONOTONIC at start and end of the traced window (event timestamps use it too).
    pub start_ns: u64,
    pub end_ns: u64,
    pub page_size: u64,
    pub ksmd_pid: u32,
    /// Why the recording stopped: duration, interrupt, terminate, workload-finished.
    pub ended_by: String,
    /// ksmd was off and ksm-trace started it for the run.
    pub ksmd_started_for_run: bool,
    /// KSM knobs during the run.
    pub knobs: BTreeMap<String, String>,
    pub workload: Option<WorkloadRecord>,
    /// Only these pids were asked for (`--pid`); empty means all.
    pub pid_filter: Vec<u32>,
    pub capabilities: Capabilities,
}

impl Meta {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub spec_text: String,
    pub spec: WorkloadSpec,
    pub workers: Vec<Worker>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    #[serde(flatten)]
    pub stats: MergeStats,
    /// /proc/<pid>/ksm_stat when the window opened (None: process not known then or gone).
    pub ksm_stat_start: Option<KsmStat>,
    pub ksm_stat_end: Option<KsmStat>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// Full scans completed inside the window.
    pub full_scans: Vec<FullScan>,
    pub batch_on_cpu_ns: Histogram,
    pub batch_wall_ns: Histogram,
    pub ksmd_on_cpu_ns: u64,
    pub advisor: Vec<AdvisorStep>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventCounts {
    pub received: BTreeMap<String, u64>,
    /// Dropped by the kernel side because the ring buffer was full.
    pub lost: u64,
    /// New-page first halves whose second half never arrived (only with lost events).
    pub unpaired: u64,
    /// Stale KSM pages dropped whose last sharer merged before tracing began.
    #[serde(default)]
    pub unattributed_unmerges: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyCoverage {
    pub mode: LatencyMode,
    /// Windows (CLOCK_MONOTONIC ns) during which the mmap_lock bracket was attached.
    pub bracket_windows: Vec<(u64, u64)>,
}

impl Recording {
    /// Writes `self` to `path` atomically (temporary file in the same directory, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = temp_path(path);
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            serde_json::to_writer(&mut file, self)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            Ok::<_, anyhow::Error>(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing the recording to {}", path.display()))
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read recording {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow!("{} is not a ksm-trace recording (not JSON: {e}): give a file written by `ksm-trace record`", path.display())
        })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!(
                "{} is not a ksm-trace recording: give a file written by `ksm-trace record`",
                path.display()
            );
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != VERSION as u64 {
            bail!(
                "{} is recording format version {version}; this ksm-trace reads version {VERSION}: use a matching ksm-trace",
                path.display()
            );
        }
        serde_json::from_value(value)
            .map_err(|e| anyhow!("{} is a damaged ksm-trace recording ({e})", path.display()))
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Fails, without leaving anything behind, when `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    let tmp = temp_path(path);
    match fs::File::create(&tmp) {
        Ok(_) => {
            let _ = fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => Err(anyhow!(
            "cannot write the recording to {} ({e}): choose a writable path with -o",
            path.display()
        )),
    }
}
