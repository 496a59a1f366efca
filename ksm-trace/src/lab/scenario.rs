//! The lab's scenario — doctor, record, report — and its transcript: what each step printed and
//! returned, the same whether it ran in a guest (cut out of the serial console) or on the host.
use anyhow::Result;
use serde_json::Value;

use super::{checks, image};

/// What `ksm-trace record` runs: two processes, a few thousand pages each, half identical,
/// with writes after merging (so silent unmerges and COW breaks happen) and both latency
/// mechanisms on the same merges. `-o FILE` is added by whoever runs it.
pub const RECORD_ARGS: &str = "record --workload procs:2,pages=3000,dup=0.5,rounds=2,wait=4s,write=0.02 \
     --pages-to-scan 2000 --sleep-ms 10 --merge-latency both -q";

/// What the scenario's steps left behind.
pub struct Transcript {
    /// `uname -r` where the scenario ran.
    pub release: String,
    /// Seconds from boot to the scenario's start (guests only).
    pub boot_s: Option<f64>,
    /// Wall-clock seconds of `record`.
    pub record_s: Option<f64>,
    pub doctor_rc: Option<i32>,
    /// `doctor --json`'s output, or why there is none.
    pub doctor: Result<Value, String>,
    pub doctor_stderr: String,
    pub record_rc: Option<i32>,
    pub record_stderr: String,
    /// `report --json` of the recording, or why there is none.
    pub report: Result<Value, String>,
    /// The recording itself, or why there is none.
    pub recording: Result<Value, String>,
    /// Shown when a check fails: the console's last lines, or the steps' error output.
    pub diagnostics: String,
}

impl Transcript {
    /// Cuts a guest's serial console apart at the markers the `/init` script prints;
    /// `diagnostics` is what to show if a check fails (the console's tail).
    pub fn from_console(console: &str, diagnostics: String) -> Self {
        let booted = console
            .lines()
            .find(|l| l.starts_with(image::BOOTED))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .unwrap_or_default();
        let status = |key: &str| checks::field(console, image::STATUS, key);
        let num = |key: &str| status(key).and_then(|v| v.parse::<f64>().ok());
        let rc = |key: &str| status(key).and_then(|v| v.parse::<i32>().ok());
        let json = |marker: &str| checks::json_block(console, marker).map_err(|e| format!("{e:#}"));
        Self {
            release: booted.get(1).copied().unwrap_or("?").to_owned(),
            boot_s: booted.first().and_then(|s| s.parse().ok()),
            record_s: num("record_end")
                .zip(num("record_start"))
                .map(|(b, a)| b - a),
            doctor_rc: rc("doctor"),
            doctor: json(image::DOCTOR),
            doctor_stderr: checks::block(console, image::DOCTOR_STDERR).unwrap_or_default(),
            record_rc: rc("record"),
            record_stderr: checks::block(console, image::RECORD_STDERR).unwrap_or_default(),
            report: json(image::REPORT),
            recording: json(image::RECORDING),
            diagnostics,
        }
    }
}
