//! What the lab concludes from a scenario's transcript: the JSON blocks cut out of a guest's
//! console at their markers, and the checks on them (the mechanisms the kernel should allow,
//! record exactness, fexit vs bracket latency, COW breaks vs cow_ksm, and on a kernel without
//! ksm:* tracepoints, a clean refusal).
use crate::recording::schema::MergeLatencyMechanism;
use std::fmt::Write as _;

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::{histogram::Histogram, report::model::Report};

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

/// What the lab requires of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// fentry/fexit must time the merges and the COW faults (and the bracket the same merges).
    Fexit,
    /// Tracepoints only: merge latency from the mmap_lock bracket, with the reason fexit was
    /// not used named; COW breaks as the workload saw them.
    Tracepoints,
    /// No ksm:* tracepoints: `record` must refuse in one line.
    Refusal,
}

impl Expect {
    /// What `doctor --json` says the kernel it ran on allows.
    pub fn from_doctor(doctor: &Value) -> Self {
        let latency = doctor
            .pointer("/mechanisms/merge_latency")
            .and_then(|m| serde_json::from_value::<MergeLatencyMechanism>(m.clone()).ok());
        if ksm_tracepoints(doctor, true).is_empty() {
            Self::Refusal
        } else if latency.is_some_and(MergeLatencyMechanism::is_fexit) {
            Self::Fexit
        } else {
            Self::Tracepoints
        }
    }
}

/// Exactness of one workload process, as on the host.
pub struct Exactness {
    pub comm: String,
    pub merges: u64,
    pub unmerges: u64,
    pub merging_pages_delta: i64,
    pub silent_unmerges: i64,
}

/// The results of the checks on a record that succeeded.
pub struct RecordChecks {
    pub expect: Expect,
    pub merge_latency_mechanism: String,
    pub fallbacks: Vec<String>,
    pub exactness: Vec<Exactness>,
    pub full_scans: u64,
    pub kernel_full_scans: i64,
    pub fexit: Histogram,
    pub bracket: Histogram,
    pub lost_events: u64,
    /// Copy-on-write breaks of KSM pages per process (comm, count, p50, p99 ns): traced by
    /// the do_wp_page probe (`cow_probe`) or else timed by the workload itself; and the
    /// kernel's cow_ksm delta they must add up to (probe) or stay within (workload).
    pub cow: Vec<(String, u64, u64, u64)>,
    pub cow_probe: bool,
    pub cow_kernel: i64,
}

/// Checks the report and recording of a `record` that succeeded, against what `expect`s of
/// the kernel; the error names the first thing that was wrong.
pub fn check_record(report: &Report, recording: &Value, expect: Expect) -> Result<RecordChecks> {
    let m = &report.mechanisms;
    let fexit_refusal = m
        .fallbacks
        .iter()
        .find(|f| f.contains("try_to_merge_one_page"));
    match expect {
        Expect::Refusal => bail!("ksm-trace record succeeded on a kernel without ksm tracepoints"),
        Expect::Fexit => {
            if !m.merge_latency.is_fexit() {
                bail!(
                    "merge latency did not come from fexit: mechanisms.merge_latency = {:?}",
                    m.merge_latency
                );
            }
            if let Some(f) = fexit_refusal {
                bail!("the kernel refused fentry/fexit: {f}");
            }
        }
        Expect::Tracepoints => {
            if !matches!(m.merge_latency, MergeLatencyMechanism::Bracket { .. }) {
                bail!(
                    "merge latency did not come from the mmap_lock bracket: mechanisms.merge_latency = {:?}",
                    m.merge_latency
                );
            }
            if fexit_refusal.is_none() {
                bail!("the report does not say why fexit on try_to_merge_one_page was not used");
            }
        }
    }

    let mut exactness = Vec::new();
    for p in report
        .processes
        .iter()
        .filter(|p| p.comm.starts_with("ksm-procs-"))
    {
        let (Some(start), Some(end), Some(silent)) = (
            p.ksm_merging_pages_start,
            p.ksm_merging_pages_end,
            p.silent_unmerges,
        ) else {
            bail!(
                "{} (pid {}) has no ksm_merging_pages at both edges of the window",
                p.comm,
                p.pid
            );
        };
        let delta = end as i64 - start as i64;
        let expected = p.merges as i64 - p.unmerges as i64 - delta;
        if silent != expected || silent < 0 {
            bail!(
                "{} is not exact: merges {} - unmerges {} - Δksm_merging_pages {delta} = {expected}, silent_unmerges {silent} (must be equal and >= 0)",
                p.comm,
                p.merges,
                p.unmerges
            );
        }
        exactness.push(Exactness {
            comm: p.comm.clone(),
            merges: p.merges,
            unmerges: p.unmerges,
            merging_pages_delta: delta,
            silent_unmerges: silent,
        });
    }
    if exactness.is_empty() {
        bail!("the guest's report has no ksm-procs-* process");
    }
    if exactness.iter().all(|e| e.merges == 0) {
        bail!("no ksm-procs-* process merged anything in the guest");
    }
    let kernel_full_scans = report
        .kernel_deltas
        .get("full_scans")
        .copied()
        .ok_or_else(|| anyhow!("the guest's report has no kernel full_scans delta"))?;
    if report.scans.full_scans as i64 != kernel_full_scans {
        bail!(
            "full scans differ in the guest: traced {} vs kernel full_scans delta {kernel_full_scans}",
            report.scans.full_scans
        );
    }

    let cow_probe = m.cow_traced();
    if expect == Expect::Fexit && !cow_probe {
        bail!(
            "the COW probe did not attach: {}",
            crate::report::mechanisms::cow(m.cow)
        );
    }
    let cow_kernel = report.kernel_deltas.get("cow_ksm").copied().unwrap_or(0);
    if cow_kernel <= 0 {
        bail!("the scenario caused no copy-on-write of KSM pages (cow_ksm {cow_kernel:+})");
    }
    let cow: Vec<(String, u64, u64, u64)> = if cow_probe {
        report
            .processes
            .iter()
            .filter_map(|p| {
                let f = &p.cow_fault_ns;
                p.cow_breaks
                    .filter(|&n| n > 0)
                    .map(|n| (p.comm.clone(), n, f.p50, f.p99))
            })
            .collect()
    } else {
        report
            .workers
            .iter()
            .map(|w| {
                let f = &w.write_fault_ns;
                (w.comm.clone(), f.count, f.p50, f.p99)
            })
            .collect()
    };
    let cow_counted: u64 = cow.iter().map(|c| c.1).sum();
    if cow_probe && cow_counted as i64 != cow_kernel {
        bail!("COW breaks differ: traced {cow_counted} vs kernel cow_ksm delta {cow_kernel}");
    }
    // Without the probe, the workload knows only its own writes; other processes may break
    // KSM pages too, so the kernel's count bounds it from above.
    if !cow_probe && (cow_counted == 0 || cow_counted as i64 > cow_kernel) {
        bail!(
            "COW breaks seen by the workload ({cow_counted}) must be > 0 and <= the kernel's cow_ksm delta {cow_kernel}"
        );
    }

    // merge_latency_ns holds the best mechanism's figure; the bracket's own histogram is kept
    // only for merges fexit timed too.
    let (best, bracket_too) = latencies(recording)?;
    let (fexit, bracket) = match expect {
        Expect::Fexit => (best, bracket_too),
        _ => (Histogram::new(), best),
    };
    if expect == Expect::Fexit && fexit.is_empty() {
        bail!("fexit timed no merge (merge_latency_ns empty in every process)");
    }
    if bracket.is_empty() {
        bail!("the mmap_lock bracket timed none of the merges (merge_latency_bracket_ns empty)");
    }
    Ok(RecordChecks {
        expect,
        merge_latency_mechanism: crate::report::mechanisms::merge_latency(m.merge_latency)
            .to_owned(),
        fallbacks: m.fallbacks.clone(),
        exactness,
        full_scans: report.scans.full_scans,
        kernel_full_scans,
        fexit,
        bracket,
        lost_events: report.lost_events,
        cow,
        cow_probe,
        cow_kernel,
    })
}

/// All processes' fexit and bracket histograms from a recording, each summed.
fn latencies(recording: &Value) -> Result<(Histogram, Histogram)> {
    let processes = recording
        .get("processes")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the guest's recording has no processes array"))?;
    let mut fexit = Histogram::new();
    let mut bracket = Histogram::new();
    for p in processes {
        for (key, sum) in [
            ("merge_latency_ns", &mut fexit),
            ("merge_latency_bracket_ns", &mut bracket),
        ] {
            if let Some(v) = p.get(key) {
                let h: Histogram = serde_json::from_value(v.clone())
                    .with_context(|| format!("the guest's recording has a malformed {key}"))?;
                sum.add(&h);
            }
        }
    }
    Ok((fexit, bracket))
}

impl RecordChecks {
    /// The comparison table: count, p50, p99 of each, and bracket ÷ fexit at p50.
    pub fn latency_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "  {:<28} {:>8} {:>10} {:>10}",
            "merge latency", "count", "p50 ns", "p99 ns"
        );
        let rows: &[(&str, &Histogram)] = if self.expect == Expect::Fexit {
            &[
                ("fexit (try_to_merge_one_page)", &self.fexit),
                ("mmap_lock bracket", &self.bracket),
            ]
        } else {
            &[("mmap_lock bracket", &self.bracket)]
        };
        for (name, h) in rows {
            let _ = writeln!(
                o,
                "  {:<28} {:>8} {:>10} {:>10}",
                name,
                h.count(),
                h.percentile(50.0),
                h.percentile(99.0)
            );
        }
        if self.expect == Expect::Fexit {
            let _ = writeln!(
                o,
                "  bracket / fexit at p50: {:.2}",
                self.bracket.percentile(50.0) as f64 / self.fexit.percentile(50.0).max(1) as f64
            );
        } else {
            let _ = writeln!(
                o,
                "  fexit: not available on this kernel (see the fallback above), no comparison"
            );
        }
        o
    }

    pub fn exactness_lines(&self) -> String {
        let mut o = String::new();
        for e in &self.exactness {
            let _ = writeln!(
                o,
                "  {}: merges {} - unmerges {} - Δksm_merging_pages {} = silent_unmerges {} (>= 0): ok",
                e.comm, e.merges, e.unmerges, e.merging_pages_delta, e.silent_unmerges
            );
        }
        let _ = writeln!(
            o,
            "  full scans: traced {} = kernel delta {}: ok; events lost: {}",
            self.full_scans, self.kernel_full_scans, self.lost_events
        );
        let counted: u64 = self.cow.iter().map(|c| c.1).sum();
        let (how, relation, timed_by) = if self.cow_probe {
            ("traced", "=", "do_wp_page")
        } else {
            ("seen by the workload", "<=", "the workload's write")
        };
        let _ = writeln!(
            o,
            "  COW breaks of KSM pages: {how} {counted} {relation} kernel cow_ksm delta {}: ok",
            self.cow_kernel
        );
        for (comm, n, p50, p99) in &self.cow {
            let _ = writeln!(
                o,
                "    {comm}: {n} breaks, {timed_by} p50 {p50} ns, p99 {p99} ns"
            );
        }
        o
    }
}

/// The ksm:* tracepoints doctor found missing (from its JSON).
pub fn missing_tracepoints(doctor: &Value) -> Vec<String> {
    ksm_tracepoints(doctor, false)
}

/// The ksm:* tracepoints doctor found present (`true`) or missing (`false`).
fn ksm_tracepoints(doctor: &Value, present: bool) -> Vec<String> {
    doctor
        .pointer("/capabilities/tracepoints")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(name, found)| {
                    name.starts_with("ksm_") && found.as_bool() == Some(present)
                })
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// On a kernel without ksm:* tracepoints: record must have failed with one line naming them.
pub fn check_refusal(record_rc: Option<i32>, record_stderr: &str) -> Result<String> {
    let lines: Vec<&str> = record_stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match record_rc {
        Some(0) => bail!("ksm-trace record succeeded on a kernel without ksm tracepoints"),
        None => bail!("the guest printed no record exit code"),
        Some(_) => {}
    }
    let [line] = lines[..] else {
        bail!(
            "ksm-trace record's refusal is not one line ({} lines): {}",
            lines.len(),
            lines.join(" / ")
        );
    };
    if !line.contains("tracepoint") {
        bail!("ksm-trace record failed, but not about missing tracepoints: {line}");
    }
    Ok(line.to_owned())
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
    fn expectations_follow_what_doctor_found() {
        let doctor = |tracepoint: bool, latency: serde_json::Value| {
            serde_json::json!({
                "capabilities": {"tracepoints": {"ksm_start_scan": tracepoint, "sched_switch": true}},
                "mechanisms": {"merge_latency": latency},
            })
        };
        assert_eq!(
            Expect::from_doctor(&doctor(true, serde_json::json!({"kind": "fexit"}))),
            Expect::Fexit
        );
        assert_eq!(
            Expect::from_doctor(&doctor(
                true,
                serde_json::json!({"kind": "bracket", "on_demand": true})
            )),
            Expect::Tracepoints
        );
        assert_eq!(
            Expect::from_doctor(&doctor(false, serde_json::json!({"kind": "fexit"}))),
            Expect::Refusal
        );
    }

    #[test]
    fn refusal_must_be_one_line_about_tracepoints() {
        let ok = check_refusal(Some(1), "ksm-trace: error: no ksm tracepoints\n").unwrap();
        assert!(ok.contains("tracepoints"));
        assert!(check_refusal(Some(0), "").is_err());
        assert!(check_refusal(Some(1), "a\nb tracepoint\n").is_err());
        assert!(check_refusal(Some(1), "something else\n").is_err());
    }
}
