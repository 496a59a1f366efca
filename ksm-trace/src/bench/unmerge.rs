//! `ksm-trace bench unmerge`: the kernel selftest's unmerge time (`ksm_tests -D`: one region
//! of identical pages, merged, then one MADV_UNMERGEABLE call over it, MiB/s), run as a
//! recording with several rounds, so the figure comes with its spread and with the kernel's
//! own count beside it. Each round the region's owner (a procs worker with
//! `pattern=same,unmerge=1`) waits for ksmd to merge its pages, times the call, and marks the
//! region mergeable again for the next round.
use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{
    probes::LatencyMode,
    recorder::{self, RecordOptions},
    recording::Recording,
    report::{
        Report,
        histogram::{Unit, fmt_ns, render_log2},
    },
    run::knobs::KnobSettings,
};

pub struct UnmergeBench {
    pub size: u64,
    /// Timed calls, one per round.
    pub rounds: u32,
    /// Time each round gives ksmd to merge the region before the call.
    pub wait: Duration,
    pub pages_to_scan: u32,
    pub output: PathBuf,
}

/// Runs the rounds as one recording; returns it and the summary.
pub async fn unmerge(b: &UnmergeBench, command_line: Vec<String>) -> Result<(Recording, String)> {
    let page = crate::kernel::page_size();
    if b.size < page {
        bail!("--size must be at least one page ({page} bytes)");
    }
    if b.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let pages = b.size / page;
    let opts = RecordOptions {
        settle_margin: 0,
        auto_scan: false,
        // The workload ends itself after its rounds; this is only a cap.
        duration: Some(b.wait * b.rounds + recorder::DEFAULT_TIMEOUT),
        workload: Some(format!(
            "procs:1,pages={pages},pattern=same,unmerge=1,rounds={},wait={}ms",
            b.rounds,
            b.wait.as_millis()
        )),
        pids: Vec::new(),
        output: b.output.clone(),
        knobs: KnobSettings {
            pages_to_scan: Some(b.pages_to_scan),
            sleep_ms: Some(0),
            ..Default::default()
        },
        probes: crate::probes::ProbeOptions::new(LatencyMode::Off),
        progress: false,
        refresh: false,
        interval: Duration::from_millis(500),
        until_settled: false,
        until_full_scans: None,
        ksm_off: false,
    };
    let rec = recorder::record(&opts, command_line).await?;
    rec.write(&b.output)?;
    let summary = summarize(&rec, b, pages)?;
    Ok((rec, summary))
}

fn summarize(rec: &Recording, b: &UnmergeBench, pages: u64) -> Result<String> {
    let Some(worker) = rec.meta.workload.iter().flat_map(|w| &w.workers).next() else {
        bail!("the recording has no workload worker");
    };
    let Some(t) = &worker.unmerge else {
        bail!("the worker reported no unmerge calls (it was stopped before its first round ended)");
    };
    let calls = t.call_ns.count();
    if calls < b.rounds as u64 {
        bail!(
            "only {calls} of {} unmerge calls were made before the recording ended",
            b.rounds
        );
    }
    // The selftest's figure assumes a fully merged region; a round that merged less measures
    // a cheaper call.
    if let Some(ksm) = t.ksm_pages
        && ksm < t.pages
    {
        bail!(
            "only {ksm} of the {} pages the calls covered were KSM pages: ksmd had not merged the region within --wait {:?}; raise --wait or --pages-to-scan",
            t.pages,
            b.wait
        );
    }
    let mib = b.size as f64 / (1u64 << 20) as f64;
    let mib_s = |ns: u64| mib / (ns.max(1) as f64 / 1e9);
    let s = t.call_ns.summary();
    let r = Report::from_recording(rec);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "KSM unmerge time (ksm_tests -D), {pages} pages, pages_to_scan={}, {} rounds",
        b.pages_to_scan, b.rounds
    );
    let _ = writeln!(o, "Total size:    {mib:.0} MiB");
    let _ = writeln!(
        o,
        "Total time:    {:.9} s   (one MADV_UNMERGEABLE call, median of {calls})",
        s.p50 as f64 / 1e9
    );
    let _ = writeln!(o, "Average speed: {:.3} MiB/s", mib_s(s.p50));
    let _ = writeln!(o, "Beyond the selftest:");
    let _ = writeln!(
        o,
        "  per call: min {} ({:.0} MiB/s), p50 {}, max {} ({:.0} MiB/s); {:.0} ns per page at the median",
        fmt_ns(s.min),
        mib_s(s.min),
        fmt_ns(s.p50),
        fmt_ns(s.max),
        mib_s(s.max),
        s.p50 as f64 / pages as f64
    );
    let ksm = t.ksm_pages.map_or("not readable".into(), |n| n.to_string());
    let cow = t
        .cow_ksm_during
        .map_or("not available".into(), |n| format!("+{n}"));
    let _ = writeln!(
        o,
        "  pages the calls covered: {}; KSM pages among them just before (kpageflags): {ksm}; kernel cow_ksm during the calls: {cow}",
        t.pages
    );
    let merges: u64 = r.processes.iter().map(|p| p.counts.merges).sum();
    let _ = writeln!(
        o,
        "  merges traced between the calls: {merges}; full scans {}",
        r.scans.full_scans
    );
    let _ = writeln!(o, "  call duration:");
    o.push_str(&render_log2(&t.call_ns, Unit::Nanoseconds));
    let _ = writeln!(
        o,
        "  recording: {} (ksm-trace report reads it)",
        b.output.display()
    );
    Ok(o)
}
