//! The recording: one versioned, self-describing JSON file that `record` writes atomically and
//! that `report`, `flame`, `plot` and `sweep` only read. [`schema`] holds its types and the
//! version rule; [`migrate`] reads older versions.
pub mod migrate;
pub mod schema;

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::histogram::Histogram;

pub use schema::{
    BurstHead, EventCounts, FORMAT, LatencyCoverage, Meta, ProcessRecord, Recording, ScanRecord,
    VERSION, WorkloadKind, WorkloadRecord,
};

impl Meta {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

impl schema::CowMechanism {
    /// A process's COW breaks of KSM pages as this mechanism counted them, and their latency
    /// (None: not traced). With both attached, do_wp_page's are the figure (the fault
    /// tracepoints' stand beside it).
    pub fn breaks(self, s: &schema::MergeStats) -> Option<(u64, &Histogram)> {
        use schema::CowMechanism::*;
        match self {
            DoWpPage { .. } | DoWpPageAndFaultTracepoint { .. } => {
                Some((s.cow_breaks, &s.cow_fault_ns))
            }
            FaultTracepoint { .. } => Some((s.cow_breaks_at_fault, &s.cow_at_fault_ns)),
            Off | Unavailable => None,
        }
    }
}

impl Recording {
    /// Writes `self` to `path` atomically (temporary file in the same directory, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = temp_path(path);
        let result = (|| {
            // create_new: never write through a file or symlink someone left at that name.
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
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
        Self::from_json(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// Parses a recording of any version this ksm-trace knows, upgrading older ones.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            anyhow!("not a ksm-trace recording (not JSON: {e}): give a file written by `ksm-trace record`")
        })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            bail!("not a ksm-trace recording: give a file written by `ksm-trace record`");
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version == 0 || version > VERSION as u64 {
            bail!(
                "recording format version {version}; this ksm-trace {} reads versions 1 to {VERSION}: use a ksm-trace at least as new as the one that wrote it",
                env!("CARGO_PKG_VERSION")
            );
        }
        let value = migrate::upgrade(value, version as u32)
            .map_err(|e| anyhow!("damaged ksm-trace recording (version {version}: {e})"))?;
        plausible(&value, "")
            .map_err(|e| anyhow!("damaged ksm-trace recording (version {version}: {e})"))?;
        serde_json::from_value(value)
            .map_err(|e| anyhow!("damaged ksm-trace recording (version {version}: {e})"))
    }
}

/// Largest count, size or duration a recording can hold: 2^53 (what JSON tools read exactly;
/// 104 days of nanoseconds, 9·10^15 events). Beyond it a file was not written by ksm-trace,
/// and sums over it could overflow.
const MAX_PLAUSIBLE: u64 = 1 << 53;

/// Fields that hold CLOCK_MONOTONIC timestamps or kernel addresses, which may be larger.
const UNBOUNDED: [&str; 8] = [
    "start_ns",
    "end_ns",
    "stop_ns",
    "ts_ns",
    "bracket_windows",
    "vmemmap_base",
    "ksm_scan",
    "ksm_rmap_items",
];

/// Refuses numbers no ksm-trace run can have produced, naming the first one.
fn plausible(value: &serde_json::Value, path: &str) -> Result<()> {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            let fits = n
                .as_u64()
                .map(|v| v <= MAX_PLAUSIBLE)
                .or_else(|| n.as_i64().map(|v| v.unsigned_abs() <= MAX_PLAUSIBLE))
                .unwrap_or_else(|| n.as_f64().is_some_and(|f| f.is_finite()));
            if !fits {
                bail!("{path} = {n} is beyond any count, size or duration ksm-trace records");
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                plausible(item, &format!("{path}[{i}]"))?;
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                if !UNBOUNDED.contains(&key.as_str()) {
                    plausible(item, &format!("{path}.{key}"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
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
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
    {
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
