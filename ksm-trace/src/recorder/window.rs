//! The traced window: opened on a paused ksmd, drained and sampled while it runs, closed on a
//! paused ksmd with the end snapshot taken before anything is stopped.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{RecordOptions, assemble::Closed};
use crate::{
    collect::Collector,
    kernel::{self, KsmStat, process::ProcessIdentity, sysfs},
    probes::{
        Probes,
        bracket::{self, BracketPolicy, EventRing},
    },
    recording::schema::{Sample, SharingRecord},
    run::{
        interrupts::Interrupts,
        session::{Progress, Session},
    },
    sample::{SETTLE_THRESHOLD, Sampler, settle_time_s},
    sharing,
};

const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// The traced window: ksmd running, events drained into the collector, counters sampled.
pub(super) struct Window {
    session: Session,
    probes: Probes,
    ring: EventRing,
    bracket: BracketPolicy,
    collector: Collector,
    sampler: Sampler,
    timeseries: Vec<Sample>,
    /// Processes whose ksm_stat is sampled: the workload's, `--pid`s, and every merger seen.
    pids: BTreeSet<u32>,
    start_ns: u64,
    knob_values: BTreeMap<String, String>,
    started: Instant,
    /// The KSM-off baseline: ksmd left off for the window.
    ksm_off: bool,
}

impl Window {
    /// Takes the start snapshot on a paused ksmd, then lets ksmd run.
    pub(super) fn open(
        opts: &RecordOptions,
        mut session: Session,
        mut probes: Probes,
        mut ring: EventRing,
        mut bracket: BracketPolicy,
    ) -> Result<Self> {
        let mut pids: BTreeSet<u32> = opts.pids.iter().copied().collect();
        if let Some(w) = &session.workload {
            pids.extend(w.workers().iter().map(|w| w.pid));
        }
        if opts.pids.is_empty() {
            pids.extend(KsmStat::tracked_processes());
        }
        let (sampler, first) = Sampler::start(opts.interval, session.ksmd, &pids)?;
        let start_ns = sampler.window_start_ns();
        let mut collector = Collector::default();
        collector.merges.keep_latency_windows = true;
        collector.open_window(start_ns);
        collector.drain(ring.get_mut());
        bracket.window_opened(start_ns);
        if let Err(e) = probes.start_profile(session.ksmd) {
            probes.profile_unavailable(&e);
        }
        if !opts.ksm_off {
            session.run_ksmd()?;
        }
        if session.ksmd_started_for_run() && opts.progress && !opts.ksm_off {
            eprintln!(
                "ksm-trace: ksmd was off (run=0): started it for this run; it is stopped again afterwards"
            );
        }
        Ok(Self {
            knob_values: sysfs::knob_values(),
            session,
            probes,
            ring,
            bracket,
            collector,
            sampler,
            timeseries: vec![first],
            pids,
            start_ns,
            started: Instant::now(),
            ksm_off: opts.ksm_off,
        })
    }

    /// Drains the events, then runs the merge-latency sampling on the merges they bring.
    fn update_bracket(&mut self) -> Result<()> {
        let opened = self.bracket.windows_opened();
        let (closed, open_since) = self.bracket.windows();
        self.collector.merges.bracket_windows(closed, open_since);
        // Whether the window that closes now saw merges decides where the next one opens.
        self.collector.drain(self.ring.get_mut());
        let merges = self.collector.merge_clock();
        self.bracket.update(&mut self.probes, merges)?;
        if self.bracket.windows_opened() != opened {
            let coverage = self.bracket.coverage_now();
            self.collector.merges.next_latency_window(coverage);
        }
        // The processes still short of timed merges wake the tracer when they next merge.
        self.probes
            .wake_on_merges_of(&self.collector.merges.uncovered_mms())?;
        Ok(())
    }

    /// Drains and samples until an end condition; returns why it ended.
    pub(super) async fn run(
        &mut self,
        opts: &RecordOptions,
        interrupts: &mut Interrupts,
    ) -> Result<&'static str> {
        let deadline = opts.duration.and_then(|d| self.started.checked_add(d));
        let first_scan = self.timeseries[0].counters.ksm("full_scans") as u64;
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        let progress = opts.progress && std::io::stderr().is_terminal();
        let mut last_progress = Instant::now();
        let mut progress_line = Progress::new(self.session.ksmd);
        // Full scans in the window when KSM was first seen settled.
        let mut settled_at: Option<u64> = None;
        let ended_by = loop {
            tokio::select! {
                () = bracket::wake(Some(&self.ring), self.bracket.deadline()) => self.update_bracket()?,
                _ = tick.tick() => {
                    self.update_bracket()?;
                    if self.sampler.due() {
                        let mergers = self.collector.merges.by_pid.keys().filter(|&&p| p != 0);
                        self.pids.extend(mergers);
                        let sample = self.sampler.take(&self.pids, self.collector.merged_total())?;
                        self.timeseries.push(sample);
                    }
                    let scans = self.collector.scans.scans_in_window(first_scan, u64::MAX).len() as u64;
                    if opts.until_settled
                        && settled_at.is_none()
                        && settle_time_s(&self.timeseries, SETTLE_THRESHOLD).is_some()
                    {
                        settled_at = Some(scans);
                    }
                    if settled_at.is_some_and(|at| scans >= at + opts.settle_margin) {
                        break "settled";
                    }
                    if progress && last_progress.elapsed() >= Duration::from_secs(1) {
                        last_progress = Instant::now();
                        let line = progress_line.line(Some(self.collector.merged_total()));
                        eprint!("\r{line}   ");
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break if opts.until_settled { "timeout" } else { "duration" };
                    }
                    if opts.until_full_scans.is_some_and(|n| scans >= n) {
                        break "full-scans";
                    }
                    if self.session.workload.as_mut().is_some_and(|w| w.finished()) {
                        break "workload-finished";
                    }
                }
                why = interrupts.recv() => break why,
            }
        };
        if progress {
            eprintln!();
        }
        if opts.progress {
            let scans = self
                .collector
                .scans
                .scans_in_window(first_scan, u64::MAX)
                .len();
            eprintln!(
                "ksm-trace: ended: {}",
                match (ended_by, settled_at) {
                    ("settled", Some(at)) => format!(
                        "settled after {at} full scans, and still after {} more",
                        scans as u64 - at
                    ),
                    ("timeout", _) => format!(
                        "timeout after {} before settling ({scans} full scans)",
                        humantime::format_duration(opts.duration.unwrap_or_default())
                    ),
                    (other, _) => format!("{other} ({scans} full scans)"),
                }
            );
        }
        Ok(ended_by)
    }

    /// Pauses ksmd and freezes the workload, takes the end snapshot, detaches the probes, then
    /// stops the workload and puts the knobs back.
    pub(super) fn close(mut self, pid_filter: &[u32]) -> Result<Closed> {
        self.session.pause_ksmd()?;
        if let Some(w) = &self.session.workload {
            w.freeze();
        }
        let end_ns = kernel::monotonic_ns();
        self.collector.close_window(end_ns);
        self.collector.drain(self.ring.get_mut());
        let end_sample = self
            .sampler
            .take(&self.pids, self.collector.merged_total())?;
        self.timeseries.push(end_sample);
        self.collector.merges.finish();
        let lost = self.probes.lost_events()?;
        let profile = self.probes.profile().unwrap_or_else(|e| {
            self.probes.profile_unavailable(&e);
            Default::default()
        });
        let mechanisms = self.probes.mechanisms.clone();
        let burst_head_ns = self.bracket.burst_head_ns();
        let coverage_windows = self.bracket.coverage_windows();
        let bracket_windows = self.bracket.finish(end_ns);
        drop(self.ring);
        drop(self.probes);
        // ksm_stat is read while the workers still exist, before they are stopped.
        let ksm_stat_end = self
            .pids
            .iter()
            .chain(self.collector.merges.by_pid.keys())
            .filter(|&&p| p != 0)
            .filter_map(|&p| KsmStat::read(p).ok().map(|s| (p, s)))
            .collect();
        // Who each process is, read while it still runs (guests and workers stop below).
        let identities = self
            .pids
            .iter()
            .chain(self.collector.merges.by_pid.keys())
            .filter(|&&p| p != 0)
            .map(|&p| (p, ProcessIdentity::read(p)))
            .filter(|(_, id)| !id.comm.is_empty())
            .collect::<BTreeMap<_, _>>();
        let sharing = sharing_at_close(&self.collector.merges, &identities, pid_filter);
        if let Some(w) = &self.session.workload {
            w.thaw();
        }
        // Stopping first: procs workers hand over their write-fault histograms when stopped.
        let workers = self.session.stop_workload();
        let ksmd_started_for_run = self.session.ksmd_started_for_run() && !self.ksm_off;
        let (spec, caps, ksmd) = (
            self.session.spec.take(),
            self.session.caps.clone(),
            self.session.ksmd,
        );
        drop(self.session);
        Ok(Closed {
            collector: self.collector,
            timeseries: self.timeseries,
            pids: self.pids,
            ksm_stat_end,
            identities,
            sharing,
            workers,
            spec,
            caps,
            ksmd,
            ksmd_started_for_run,
            ksmd_kept_off: self.ksm_off,
            knob_values: self.knob_values,
            start_ns: self.start_ns,
            end_ns,
            started: self.started,
            lost,
            profile,
            mechanisms,
            bracket_windows,
            burst_head_ns,
            coverage_windows,
        })
    }
}

/// Who shares with whom among the recorded processes (those in `identities`, i.e. still
/// running): the traced sets, and the page-table snapshot that reconciles them.
fn sharing_at_close(
    merges: &crate::collect::merges::MergeTracker,
    identities: &BTreeMap<u32, ProcessIdentity>,
    pid_filter: &[u32],
) -> SharingRecord {
    let keep = |pid: u32| {
        identities.contains_key(&pid) && (pid_filter.is_empty() || pid_filter.contains(&pid))
    };
    let traced = merges.sharers_by_page(keep);
    if !std::path::Path::new("/proc/kpageflags").exists() {
        return sharing::sets::record(traced, None);
    }
    let started = Instant::now();
    // Every process with KSM pages: a page's sharers outside the recording count in its split.
    let all = sharing::Snapshot::take(&[]);
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let savings = sharing::savings::Savings::now(&all);
    let mut record = sharing::sets::record(traced, Some((&all.only(keep), took_ms)));
    if let Some(end) = record.end_snapshot.as_mut() {
        end.savings = Some(savings);
    }
    record
}
