//! The lab's scenario — doctor, record, report — and its transcript: what each step printed and
//! returned, and the kernel's own counters read around `record` by the scenario itself (the
//! guest's shell or the lab on the host, not `record`), the same whether it ran in a guest (cut
//! out of the serial console at markers) or on the host. The transcript is data: `ksm-trace lab`
//! summarizes it, `--json` hands it whole to whoever judges it (the root tests).
use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use serde_json::Value;

/// What `ksm-trace record` runs: two processes, a few thousand pages each, half identical,
/// with a rewrite round and writes after merging (so pages are merged again, and silent
/// unmerges and COW breaks happen) and both latency mechanisms on the same merges. It ends when
/// the workload has run its rounds (`--duration` is only a cap: without one, record would stop
/// as soon as KSM settled, before the second round). `-o FILE` is added by whoever runs it.
/// Console markers the scenario prints; the host cuts the output apart at them.
pub const DOCTOR: &str = "KSM-TRACE-DOCTOR";
pub const DOCTOR_STDERR: &str = "KSM-TRACE-DOCTOR-STDERR";
pub const RECORD_STDERR: &str = "KSM-TRACE-RECORD-STDERR";
pub const REPORT: &str = "KSM-TRACE-REPORT";
pub const REPORT_STDERR: &str = "KSM-TRACE-REPORT-STDERR";
pub const RECORDING: &str = "KSM-TRACE-RECORDING";
/// `KSM-TRACE-LAB-BOOTED <uptime s>`: /init started.
pub const BOOTED: &str = "KSM-TRACE-LAB-BOOTED";
/// `KSM-TRACE-LAB-STATUS doctor=N record=N report=N record_s=S`.
pub const STATUS: &str = "KSM-TRACE-LAB-STATUS";
/// `KSM-TRACE-COUNTERS-BEFORE cow_ksm=N full_scans=N`: read by the script just before record.
pub const COUNTERS_BEFORE: &str = "KSM-TRACE-COUNTERS-BEFORE";
/// The same, just after record.
pub const COUNTERS_AFTER: &str = "KSM-TRACE-COUNTERS-AFTER";
/// `KSM-TRACE-LAB-DONE`: the last line before power-off.
pub const DONE: &str = "KSM-TRACE-LAB-DONE";

pub const RECORD_ARGS: &str = "record --workload procs:2,pages=3000,dup=0.5,rounds=2,wait=4s,write=0.02 \
     --duration 60s --pages-to-scan 2000 --sleep-ms 10 --merge-latency both --cow-probe both -q";

/// The backends compared, in order: the scenario records [`COMPARE_ARGS`] once with
/// `--backend` set to each (fentry, then the same functions through kprobes). Every one runs:
/// on a kernel without the ksm tracepoints the first is refused (that refusal is checked) and
/// the function backend is compared through both fentry and kprobes.
pub const BACKENDS: [&str; 3] = ["tracepoints", "functions", "kprobes"];
/// A workload whose merges are fixed by its spec, so two runs must count the same: two
/// workers with 1000 identical pages each, merged in each of two rounds; each round ends by
/// unmerging half of them (MADV_UNMERGEABLE), and the rewrite between the rounds breaks the
/// rest. Each also has 200 zero-filled pages, merged with the zero page (use_zero_pages) in
/// each round: the rewrite writes them again. Per worker: 2000 merges, 400 zero-page merges,
/// 1000 pages unmerged by its calls. Without huge pages (`thp=off`): the guests' kernels use
/// THP always, and since 6.12 splitting a huge page maps its zero-filled subpages to the zero
/// page itself, so KSM would find them merged already (and khugepaged may collapse them again).
pub const COMPARE_ARGS: &str = "record --workload procs:2,pages=2000,dup=0.5,zero=0.1,unmerge=0.5,rounds=2,wait=4s,thp=off \
     --duration 60s --pages-to-scan 2000 --sleep-ms 10 --use-zero-pages on --merge-latency off -q";
/// `KSM-TRACE-BACKEND-<backend>-…` markers: counters before and after, stderr, report, status.
pub const BACKEND: &str = "KSM-TRACE-BACKEND";

/// What the scenario's steps left behind.
#[derive(Debug, Serialize)]
pub struct Transcript {
    /// The kernel the lab was asked for (`debian-6.12`, `host`).
    pub kernel: String,
    /// `uname -r` where the scenario ran.
    pub release: String,
    /// Seconds from boot to the scenario's start (guests only).
    pub boot_s: Option<f64>,
    /// Wall-clock seconds of `record`.
    pub record_s: Option<f64>,
    /// `doctor --json`.
    pub doctor: Step,
    /// `record … -o FILE`.
    pub record: Step,
    /// `report FILE --json`, run only when record succeeded.
    pub report: Step,
    /// The recording `record` wrote, as JSON.
    pub recording: Option<Value>,
    /// The kernel's counters just before and just after `record`.
    pub counters_before: Counters,
    pub counters_after: Counters,
    /// [`COMPARE_ARGS`] recorded with each backend that ran (see [`BACKENDS`]).
    pub backends: Vec<BackendRun>,
    /// What is missing from the transcript, and why (a block the guest never printed, output
    /// that is not JSON).
    pub problems: Vec<String>,
    /// Shown when the scenario could not run to its end: the console's tail, or the steps'
    /// error output.
    #[serde(skip)]
    pub diagnostics: String,
}

/// [`COMPARE_ARGS`] under one `--backend`, with the kernel's counters around it.
#[derive(Debug, Default, Serialize)]
pub struct BackendRun {
    pub backend: String,
    /// `record`, and its `report --json` when it succeeded.
    pub record: Step,
    pub report: Option<Value>,
    pub counters_before: Counters,
    pub counters_after: Counters,
}

/// One step of the scenario.
#[derive(Debug, Default, Serialize)]
pub struct Step {
    /// Exit code; None when the step did not run or was killed by a signal.
    pub rc: Option<i32>,
    pub stderr: String,
    /// Its standard output as JSON (doctor and report), when it was JSON.
    pub json: Option<Value>,
}

/// Counters read by the scenario itself, not by ksm-trace: what ksm-trace's figures are held
/// against.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    /// `cow_ksm` in /proc/vmstat.
    pub cow_ksm: Option<i64>,
    /// /sys/kernel/mm/ksm/full_scans.
    pub full_scans: Option<i64>,
}

impl Counters {
    /// `cow_ksm=N full_scans=N` from the first console line starting with `marker`.
    fn from_console(console: &str, marker: &str) -> Self {
        let num = |key: &str| field(console, marker, key).and_then(|v| v.parse().ok());
        Self {
            cow_ksm: num("cow_ksm"),
            full_scans: num("full_scans"),
        }
    }

    /// This machine's counters, now.
    pub fn read() -> Self {
        Self {
            cow_ksm: crate::kernel::vmstat()
                .ok()
                .and_then(|v| v.get("cow_ksm").copied()),
            full_scans: crate::kernel::sysfs::read_i64("full_scans").ok(),
        }
    }
}

/// Parses `text` as a step's JSON output, noting in `problems` why it is not.
pub fn parse_json(text: &str, what: &str, problems: &mut Vec<String>) -> Option<Value> {
    serde_json::from_str(text)
        .map_err(|e| problems.push(format!("{what} is not JSON: {e}")))
        .ok()
}

impl Transcript {
    /// Cuts a guest's serial console apart at the markers the `/init` script prints;
    /// `diagnostics` is what to show if the scenario failed (the console's tail).
    pub fn from_console(kernel: &str, console: &str, diagnostics: String) -> Self {
        let booted = console
            .lines()
            .find(|l| l.starts_with(BOOTED))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
            .unwrap_or_default();
        let status = |key: &str| field(console, STATUS, key);
        let num = |key: &str| status(key).and_then(|v| v.parse::<f64>().ok());
        let rc = |key: &str| status(key).and_then(|v| v.parse::<i32>().ok());
        let mut problems = Vec::new();
        let mut json = |marker: &str| {
            json_block(console, marker)
                .map_err(|e| problems.push(format!("{e:#}")))
                .ok()
        };
        let doctor = json(DOCTOR);
        // The report and the recording exist only after a record that succeeded.
        let recorded = rc("record") == Some(0);
        let report = recorded.then(|| json(REPORT)).flatten();
        let recording = recorded.then(|| json(RECORDING)).flatten();
        let stderr = |marker: &str| block(console, marker).unwrap_or_default();
        let backends = BACKENDS
            .iter()
            .filter_map(|b| {
                let marker = |what: &str| format!("{BACKEND}-{b}-{what}");
                let rc = field(console, &marker("STATUS"), "rc")?;
                let ok = rc == "0";
                Some(BackendRun {
                    backend: (*b).to_owned(),
                    record: Step {
                        rc: rc.parse().ok(),
                        stderr: stderr(&marker("STDERR")),
                        json: None,
                    },
                    report: ok.then(|| json(&marker("REPORT"))).flatten(),
                    counters_before: Counters::from_console(console, &marker("BEFORE")),
                    counters_after: Counters::from_console(console, &marker("AFTER")),
                })
            })
            .collect();
        Self {
            kernel: kernel.to_owned(),
            release: booted.get(1).copied().unwrap_or("?").to_owned(),
            boot_s: booted.first().and_then(|s| s.parse().ok()),
            record_s: num("record_end")
                .zip(num("record_start"))
                .map(|(b, a)| b - a),
            doctor: Step {
                rc: rc("doctor"),
                stderr: stderr(DOCTOR_STDERR),
                json: doctor,
            },
            record: Step {
                rc: rc("record"),
                stderr: stderr(RECORD_STDERR),
                json: None,
            },
            report: Step {
                rc: rc("report"),
                stderr: stderr(REPORT_STDERR),
                json: report,
            },
            recording,
            counters_before: Counters::from_console(console, COUNTERS_BEFORE),
            counters_after: Counters::from_console(console, COUNTERS_AFTER),
            backends,
            problems,
            diagnostics,
        }
    }
}

/// The text between the lines `<marker>-BEGIN` and `<marker>-END`.
pub fn block(console: &str, marker: &str) -> Option<String> {
    let begin = format!("{marker}-BEGIN");
    let end = format!("{marker}-END");
    let mut lines = console.lines().skip_while(|l| l.trim_end() != begin);
    lines.next()?;
    let mut text = String::new();
    for line in lines {
        if line.trim_end() == end {
            return Some(text);
        }
        text.push_str(line);
        text.push('\n');
    }
    None
}

/// `key=value` from the first line starting with `prefix`.
pub fn field(console: &str, prefix: &str, key: &str) -> Option<String> {
    let line = console.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// The JSON in block `marker`, or an error naming it.
pub fn json_block(console: &str, marker: &str) -> Result<Value> {
    let text =
        block(console, marker).ok_or_else(|| anyhow!("the guest printed no {marker} block"))?;
    serde_json::from_str(&text).with_context(|| format!("the guest's {marker} block is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_cut_at_their_markers() {
        let console =
            "boot\nA-BEGIN\n{\"x\": 1}\n\nA-END\nA-STDERR-BEGIN\noops\nA-STDERR-END\nS a=1 b=two\n";
        assert_eq!(block(console, "A").unwrap(), "{\"x\": 1}\n\n");
        assert_eq!(block(console, "A-STDERR").unwrap(), "oops\n");
        assert!(block(console, "B").is_none());
        assert_eq!(json_block(console, "A").unwrap()["x"], 1);
        assert_eq!(field(console, "S ", "b").as_deref(), Some("two"));
    }

    #[test]
    fn a_console_becomes_a_transcript() {
        let console = format!(
            "{booted} 2.50 6.12.9\n{d}-BEGIN\n{{\"ok\": true}}\n{d}-END\n\
             {before} cow_ksm=10 full_scans=3\n{after} cow_ksm=25 full_scans=9\n\
             {rs}-BEGIN\n{rs}-END\n\
             {status} doctor=0 record=1 report=- record_start=3.0 record_end=10.5\n",
            booted = BOOTED,
            d = DOCTOR,
            before = COUNTERS_BEFORE,
            after = COUNTERS_AFTER,
            rs = RECORD_STDERR,
            status = STATUS,
        );
        let t = Transcript::from_console("debian-6.12", &console, String::new());
        assert_eq!(t.release, "6.12.9");
        assert_eq!(t.boot_s, Some(2.5));
        assert_eq!(t.record_s, Some(7.5));
        assert_eq!(
            (t.doctor.rc, t.record.rc, t.report.rc),
            (Some(0), Some(1), None)
        );
        assert_eq!(t.doctor.json.unwrap()["ok"], true);
        assert_eq!(t.counters_before.cow_ksm, Some(10));
        assert_eq!(t.counters_after.full_scans, Some(9));
        // No report or recording after a failed record, and none missed.
        assert!(t.recording.is_none() && t.report.json.is_none());
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert!(t.backends.is_empty());
        // The backend comparison: one that ran with its report, one refused.
        let b = |name: &str, what: &str| format!("{BACKEND}-{name}-{what}");
        let compared = format!(
            "{console}{} cow_ksm=25 full_scans=9\n{} cow_ksm=2025 full_scans=14\n\
             {}-BEGIN\n{}-END\n{}-BEGIN\n{{\"processes\": []}}\n{}-END\n{} rc=0\n\
             {}-BEGIN\nerror: no kallsyms\n{}-END\n{} rc=1\n",
            b("tracepoints", "BEFORE"),
            b("tracepoints", "AFTER"),
            b("tracepoints", "STDERR"),
            b("tracepoints", "STDERR"),
            b("tracepoints", "REPORT"),
            b("tracepoints", "REPORT"),
            b("tracepoints", "STATUS"),
            b("functions", "STDERR"),
            b("functions", "STDERR"),
            b("functions", "STATUS"),
        );
        let t = Transcript::from_console("debian-6.12", &compared, String::new());
        assert_eq!(t.backends.len(), 2);
        let (tp, f) = (&t.backends[0], &t.backends[1]);
        assert_eq!(
            (tp.backend.as_str(), tp.record.rc),
            ("tracepoints", Some(0))
        );
        assert_eq!(tp.counters_after.cow_ksm, Some(2025));
        assert!(tp.report.as_ref().unwrap()["processes"].is_array());
        assert_eq!((f.record.rc, f.report.is_none()), (Some(1), true));
        assert_eq!(f.record.stderr.trim(), "error: no kallsyms");
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let without_doctor = console.replace(DOCTOR, "X");
        let t = Transcript::from_console("debian-6.12", &without_doctor, String::new());
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
    }
}
