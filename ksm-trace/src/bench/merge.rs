//! `ksm-trace bench merge`: the kernel selftest's merge-time measurement (`ksm_tests -P/-H`:
//! one region of identical pages, sleep_millisecs=0, time until two full scans complete,
//! MiB/s), run as a recording so the distributions the selftest cannot show come with it.
//! Unlike the selftest it does not write run=2 (which would unmerge every process on the host):
//! ksmd is paused instead while the region is prepared.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{
    knobs::KnobSettings,
    probes::LatencyMode,
    record::{self, RecordOptions},
    recording::Recording,
    report::{Report, histogram::fmt_ns},
};

pub struct MergeBench {
    pub size: u64,
    pub thp: bool,
    /// The selftest's default `-p` is 10.
    pub pages_to_scan: u32,
    pub merge_latency: LatencyMode,
    pub timeout: Duration,
    pub output: PathBuf,
}

/// The selftest waits for two full scans: merging needs a page to look the same on two.
const FULL_SCANS: u64 = 2;

pub async fn merge(b: &MergeBench, command_line: Vec<String>) -> Result<(Recording, String)> {
    let page = crate::kernel::page_size();
    if b.size < page {
        bail!("--size must be at least one page ({page} bytes)");
    }
    let opts = RecordOptions {
        settle_margin: 0,
        // The selftest's set-up names its scan rate.
        auto_scan: false,
        duration: Some(b.timeout),
        workload: Some(format!(
            "procs:1,pages={},pattern=same,thp={}",
            b.size / page,
            if b.thp { "on" } else { "off" }
        )),
        pids: Vec::new(),
        output: b.output.clone(),
        knobs: KnobSettings {
            pages_to_scan: Some(b.pages_to_scan),
            sleep_ms: Some(0),
            ..Default::default()
        },
        probes: crate::probes::ProbeOptions::new(b.merge_latency),
        progress: false,
        refresh: false,
        interval: Duration::from_millis(500),
        until_settled: false,
        until_full_scans: Some(FULL_SCANS),
        ksm_off: false,
    };
    let rec = record::record(&opts, command_line).await?;
    rec.write(&b.output)?;
    let summary = summarize(&rec, b)?;
    Ok((rec, summary))
}

fn summarize(rec: &Recording, b: &MergeBench) -> Result<String> {
    let Some(second) = rec.scans.full_scans.get(FULL_SCANS as usize - 1) else {
        bail!(
            "ksmd did not complete {FULL_SCANS} full scans within {:?}: raise --timeout or --pages-to-scan",
            b.timeout
        );
    };
    let secs = second.stop_ns.saturating_sub(rec.meta.start_ns) as f64 / 1e9;
    let mib = b.size as f64 / (1u64 << 20) as f64;
    let r = Report::from_recording(rec);
    let merges: u64 = r.processes.iter().map(|p| p.merges).sum();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "KSM merge time ({} pages, pages_to_scan={}, sleep_millisecs=0{})",
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
    let _ = writeln!(
        o,
        "  recording: {} (ksm-trace report / flame / plot read it)",
        b.output.display()
    );
    Ok(o)
}
