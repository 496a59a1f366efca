//! `ksm-trace bench merge`: the kernel selftest's merge-time measurement (`ksm_tests -P/-H`:
//! one region of identical pages, sleep_millisecs=0, time until two full scans complete,
//! MiB/s), run as a recording so the distributions the selftest cannot show come with it.
//! Unlike the selftest it does not write run=2 (which would unmerge every process on the host):
//! ksmd is paused instead while the region is prepared.
//!
//! The owner of the region matters: the selftest's process busy-polls `full_scans` while ksmd
//! merges its memory, so its mm is live on another CPU and every merge's TLB flushes must
//! interrupt that CPU and wait (a VM exit on a virtual machine). A process that sleeps costs
//! ksmd no such wait. Both are run by default, the selftest's (busy owner) first, and each
//! figure is named for its condition, with the TLB shootdowns per merge that tell them apart.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{
    probes::LatencyMode,
    recorder::{self, RecordOptions},
    recording::Recording,
    report::{Report, histogram::fmt_ns},
    run::knobs::KnobSettings,
};

/// Whether the region's owner runs while ksmd merges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Spinning on a CPU, as the selftest's busy-polling process (its conditions).
    Busy,
    /// Asleep.
    Idle,
}

impl Owner {
    pub const ALL: [(Owner, &'static str, &'static str); 2] = [
        (
            Owner::Busy,
            "busy",
            "the owner spins on a CPU while ksmd merges it (ksm_tests' conditions)",
        ),
        (Owner::Idle, "idle", "the owner sleeps while ksmd merges it"),
    ];

    fn describe(self) -> &'static str {
        match self {
            Owner::Busy => "owner busy, as ksm_tests' busy-polling process",
            Owner::Idle => "owner idle (asleep)",
        }
    }
}

pub struct MergeBench {
    /// The conditions to run, in order.
    pub owners: Vec<Owner>,
    pub size: u64,
    pub thp: bool,
    /// The selftest's default `-p` is 10.
    pub pages_to_scan: u32,
    pub merge_latency: LatencyMode,
    pub timeout: Duration,
    /// The first condition's recording; the others' get `-idle`/`-busy` before the extension.
    pub output: PathBuf,
}

/// The selftest waits for two full scans: merging needs a page to look the same on two.
const FULL_SCANS: u64 = 2;

/// Runs each condition of `b` in turn; returns the recordings and one summary.
pub async fn merge(b: &MergeBench, command_line: Vec<String>) -> Result<(Vec<Recording>, String)> {
    let page = crate::kernel::page_size();
    if b.size < page {
        bail!("--size must be at least one page ({page} bytes)");
    }
    let mut recordings = Vec::new();
    let mut summary = String::new();
    let mut runs = Vec::new();
    for (i, &owner) in b.owners.iter().enumerate() {
        let output = if i == 0 {
            b.output.clone()
        } else {
            suffixed(
                &b.output,
                if owner == Owner::Idle { "idle" } else { "busy" },
            )
        };
        let rec = run_one(b, owner, &output, command_line.clone()).await?;
        let (text, run) = summarize(&rec, b, owner, &output)?;
        summary.push_str(&text);
        runs.push(run);
        recordings.push(rec);
    }
    if runs.len() > 1 {
        let _ = writeln!(
            summary,
            "{:<44} {:>10} {:>10} {:>12}",
            "condition", "MiB/s", "IPIs/merge", "merge p50"
        );
        for r in &runs {
            let _ = writeln!(
                summary,
                "{:<44} {:>10.1} {:>10} {:>12}",
                r.owner.describe(),
                r.mib_per_s,
                r.shootdowns_per_merge
                    .map_or("-".into(), |s| format!("{s:.2}")),
                r.merge_p50_ns.map_or("not timed".into(), fmt_ns)
            );
        }
    }
    Ok((recordings, summary))
}

/// `dir/name.json` → `dir/name-TAG.json`.
fn suffixed(path: &std::path::Path, tag: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{tag}"),
    };
    path.with_file_name(name)
}

async fn run_one(
    b: &MergeBench,
    owner: Owner,
    output: &std::path::Path,
    command_line: Vec<String>,
) -> Result<Recording> {
    let page = crate::kernel::page_size();
    let opts = RecordOptions {
        settle_margin: 0,
        // The selftest's set-up names its scan rate.
        auto_scan: false,
        duration: Some(b.timeout),
        workload: Some(format!(
            "procs:1,pages={},pattern=same,thp={},busy={}",
            b.size / page,
            if b.thp { "on" } else { "off" },
            if owner == Owner::Busy { "on" } else { "off" }
        )),
        pids: Vec::new(),
        output: output.to_path_buf(),
        knobs: KnobSettings {
            pages_to_scan: Some(b.pages_to_scan),
            sleep_ms: Some(0),
            ..Default::default()
        },
        probes: crate::probes::ProbeOptions {
            tlb: true,
            ..crate::probes::ProbeOptions::new(b.merge_latency)
        },
        progress: false,
        refresh: false,
        interval: Duration::from_millis(500),
        until_settled: false,
        until_full_scans: Some(FULL_SCANS),
        ksm_off: false,
    };
    let rec = recorder::record(&opts, command_line).await?;
    rec.write(output)?;
    Ok(rec)
}

/// One condition's headline figures, for the table comparing them.
struct Run {
    owner: Owner,
    mib_per_s: f64,
    shootdowns_per_merge: Option<f64>,
    merge_p50_ns: Option<u64>,
}

/// The selftest's figures and ours for one condition.
fn summarize(
    rec: &Recording,
    b: &MergeBench,
    owner: Owner,
    output: &std::path::Path,
) -> Result<(String, Run)> {
    let Some(second) = rec.scans.full_scans.get(FULL_SCANS as usize - 1) else {
        bail!(
            "ksmd did not complete {FULL_SCANS} full scans within {:?}: raise --timeout or --pages-to-scan",
            b.timeout
        );
    };
    let secs = second.stop_ns.saturating_sub(rec.meta.start_ns) as f64 / 1e9;
    let mib = b.size as f64 / (1u64 << 20) as f64;
    let r = Report::from_recording(rec);
    let merges: u64 = r.processes.iter().map(|p| p.counts.merges).sum();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "KSM merge time, {} ({} pages, pages_to_scan={}, sleep_millisecs=0{})",
        owner.describe(),
        b.size / rec.meta.page_size,
        b.pages_to_scan,
        if b.thp { ", THP" } else { "" }
    );
    let _ = writeln!(o, "Total size:    {mib:.0} MiB");
    let _ = writeln!(
        o,
        "Total time:    {secs:.9} s   (ksmd started → second full scan complete)"
    );
    let _ = writeln!(o, "Average speed: {:.3} MiB/s", mib / secs);
    let _ = writeln!(o, "Beyond the selftest:");
    let _ = writeln!(
        o,
        "  merges {merges}; full scans p50 {} max {}",
        fmt_ns(r.scans.full_scan_ns.p50),
        fmt_ns(r.scans.full_scan_ns.max)
    );
    let _ = writeln!(
        o,
        "  ksmd batches {} (on-CPU p50 {} p99 {}); ksmd CPU {:.1}% (schedstat)",
        r.scans.batches,
        fmt_ns(r.scans.batch_ns.p50),
        fmt_ns(r.scans.batch_ns.p99),
        r.scans.ksmd_cpu_percent_schedstat
    );
    let l = &r.merge_latency.all_ns;
    if l.count > 0 {
        let _ = writeln!(
            o,
            "  merge latency p50 {} p90 {} p99 {} max {} ({} of {merges} timed)",
            fmt_ns(l.p50),
            fmt_ns(l.p90),
            fmt_ns(l.p99),
            fmt_ns(l.max),
            l.count
        );
    }
    let tlb: Vec<_> = r.processes.iter().filter_map(|p| p.tlb.as_ref()).collect();
    let flushes: u64 = tlb.iter().map(|t| t.remote_flushes).sum();
    let ipis: Option<u64> = tlb.iter().map(|t| t.shootdowns).sum();
    let per_merge = |n: u64| n as f64 / merges.max(1) as f64;
    if !tlb.is_empty() {
        let _ = writeln!(
            o,
            "  remote TLB flushes ksmd asked for: {flushes} ({:.2} per merge); IPIs it sent for them: {}",
            per_merge(flushes),
            ipis.map_or("not traced".into(), |n| format!(
                "{n} ({:.2} per merge)",
                per_merge(n)
            ))
        );
    }
    let shootdowns_per_merge = ipis.filter(|_| !tlb.is_empty()).map(per_merge);
    let _ = writeln!(
        o,
        "  recording: {} (ksm-trace report / flame / plot read it)\n",
        output.display()
    );
    let run = Run {
        owner,
        mib_per_s: mib / secs,
        shootdowns_per_merge,
        merge_p50_ns: (l.count > 0).then_some(l.p50),
    };
    Ok((o, run))
}
