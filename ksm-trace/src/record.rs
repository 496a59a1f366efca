//! `ksm-trace record`: checks everything that can be checked without changing the system,
//! attaches the programs, opens the window on a paused ksmd, runs, closes the window on a paused
//! ksmd, and assembles the recording. Pausing ksmd (run=0 returns only between batches) at both
//! edges makes the kernel's counters and the traced events describe exactly the same interval.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    collect::Collector,
    histogram::Histogram,
    interrupts::Interrupts,
    kernel::{self, Counters, KsmStat, process::ProcessIdentity, sysfs},
    knobs::KnobSettings,
    probes::{
        ProbeOptions, Probes,
        bracket::{self, BracketPolicy, EventRing},
    },
    recording::{
        self, BurstHead, EventCounts, LatencyCoverage, Meta, ProcessRecord, Recording, ScanRecord,
        WorkloadKind, WorkloadRecord,
        schema::{Sample, SharingRecord, Worker},
    },
    sample::{SETTLE_THRESHOLD, Sampler, settle_time_s},
    session::{Preflight, Progress, Session},
    sharing,
    workload::WorkloadSpec,
};

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub duration: Option<Duration>,
    pub workload: Option<String>,
    pub pids: Vec<u32>,
    pub output: PathBuf,
    pub knobs: KnobSettings,
    pub progress: bool,
    /// Rebuild cached workload assets (guest kernel, initramfs).
    pub refresh: bool,
    /// Interval of the counter time series.
    pub interval: Duration,
    /// Stop when KSM has settled (then `duration` is the timeout).
    pub until_settled: bool,
    /// With `until_settled`: full scans to wait after settling, to see that it holds.
    pub settle_margin: u64,
    /// Pick a scan rate that reaches the workload when the user chose none ([`ScanPlan`]).
    ///
    /// [`ScanPlan`]: crate::knobs::ScanPlan
    pub auto_scan: bool,
    /// Stop once this many full scans have completed in the window.
    pub until_full_scans: Option<u64>,
    /// Which probes, how to time merges, the ring buffer's size.
    pub probes: ProbeOptions,
    /// Keep ksmd stopped for the whole window: the workload without KSM, the baseline a
    /// sweep compares its configurations with.
    pub ksm_off: bool,
}

const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// How long a workload run with no end given may take to settle.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Full scans a workload run with no end given waits after settling.
pub const DEFAULT_SETTLE_MARGIN: u64 = 2;

/// When a run ends: `(duration or timeout, until_settled, settle_margin)`. `--duration` wins;
/// a workload run with neither `--duration` nor `--until-settled` ends once KSM has settled
/// and stayed so for [`DEFAULT_SETTLE_MARGIN`] full scans, or at [`DEFAULT_TIMEOUT`] — unless
/// the workload runs a script of its own (vms with sysbench, procs with rounds or unmerging),
/// which it ends when it finishes (with [`DEFAULT_TIMEOUT`] beyond the script's time as a
/// cap); a run on the machine's own processes runs until Ctrl-C.
pub fn end_policy(
    workload: Option<&str>,
    duration: Option<Duration>,
    until_settled: bool,
) -> (Option<Duration>, bool, u64) {
    let load_time = workload
        .and_then(|w| WorkloadSpec::parse(w).ok())
        .and_then(|w| w.load_time().or_else(|| w.rounds_time()));
    match (duration, until_settled, workload.is_some(), load_time) {
        (None, false, true, Some(load)) => (Some(load + DEFAULT_TIMEOUT), false, 0),
        (None, false, true, None) => (Some(DEFAULT_TIMEOUT), true, DEFAULT_SETTLE_MARGIN),
        _ => (duration, until_settled, 0),
    }
}

pub async fn record(opts: &RecordOptions, command_line: Vec<String>) -> Result<Recording> {
    // Signals first, so a Ctrl-C or SIGTERM during set-up still takes the orderly path.
    let mut interrupts = Interrupts::install()?;
    let pre = Preflight::run(opts.workload.as_deref(), &opts.knobs)?;
    pre.caps.require_tracing()?;
    opts.probes.backend.check(&pre.caps)?;
    for pid in &opts.pids {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process with pid {pid}: give the pid of a running process");
        }
    }
    recording::check_writable(&opts.output)?;
    let knobs = if opts.auto_scan {
        let plan = pre.scan_plan(&opts.knobs)?;
        if let Some(line) = plan.message.as_ref().filter(|_| opts.progress) {
            eprintln!("ksm-trace: {line}");
        }
        plan.settings
    } else {
        opts.knobs.clone()
    };
    let mut probes = Probes::load_with(&pre.caps, pre.ksmd, opts.probes)?;
    let ring = probes.take_event_ring()?;
    let bracket = BracketPolicy::start(&mut probes, opts.probes.latency)?;

    let session = pre.start(&knobs, opts.refresh)?;
    let mut window = Window::open(opts, session, probes, ring, bracket)?;
    let ended_by = window.run(opts, &mut interrupts).await?;
    let closed = window.close(&opts.pids)?;
    Ok(closed.into_recording(opts, command_line, ended_by))
}

/// The traced window: ksmd running, events drained into the collector, counters sampled.
struct Window {
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
}

impl Window {
    /// Takes the start snapshot on a paused ksmd, then lets ksmd run.
    fn open(
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
            probes
                .mechanisms
                .fallbacks
                .push(format!("no ksmd profile (flame graphs): {e:#}"));
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
        })
    }

    /// Drains the events, then runs the merge-latency sampling on the merges they bring.
    fn update_bracket(&mut self) -> Result<()> {
        let opened = self.bracket.windows_opened();
        // Whether the window that closes now saw merges decides where the next one opens.
        self.collector.drain(self.ring.get_mut());
        let merges = self.collector.merge_clock();
        self.bracket.update(&mut self.probes, merges)?;
        if self.bracket.windows_opened() != opened {
            self.collector.merges.next_latency_window();
        }
        Ok(())
    }

    /// Drains and samples until an end condition; returns why it ended.
    async fn run(
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
    fn close(mut self, pid_filter: &[u32]) -> Result<Closed> {
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
            self.probes
                .mechanisms
                .fallbacks
                .push(format!("ksmd profile unreadable: {e:#}"));
            Default::default()
        });
        let mechanisms = self.probes.mechanisms.clone();
        let burst_head_ns = self.bracket.burst_head_ns();
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
        let ksmd_started_for_run = self.session.ksmd_started_for_run();
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
            knob_values: self.knob_values,
            start_ns: self.start_ns,
            end_ns,
            started: self.started,
            lost,
            profile,
            mechanisms,
            bracket_windows,
            burst_head_ns,
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
    let pids: Vec<u32> = identities.keys().copied().filter(|&p| keep(p)).collect();
    let started = Instant::now();
    let snapshot = sharing::Snapshot::take(&pids);
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    sharing::sets::record(traced, Some((&snapshot, took_ms)))
}

/// Everything the window produced, with the system already restored.
struct Closed {
    collector: Collector,
    timeseries: Vec<Sample>,
    pids: BTreeSet<u32>,
    ksm_stat_end: BTreeMap<u32, KsmStat>,
    identities: BTreeMap<u32, ProcessIdentity>,
    sharing: SharingRecord,
    workers: Vec<Worker>,
    spec: Option<WorkloadSpec>,
    caps: crate::probes::Capabilities,
    ksmd: u32,
    ksmd_started_for_run: bool,
    knob_values: BTreeMap<String, String>,
    start_ns: u64,
    end_ns: u64,
    started: Instant,
    lost: u64,
    profile: crate::recording::schema::Profile,
    mechanisms: crate::recording::schema::Mechanisms,
    bracket_windows: Vec<(u64, u64)>,
    burst_head_ns: Option<u64>,
}

impl Closed {
    fn into_recording(
        self,
        opts: &RecordOptions,
        command_line: Vec<String>,
        ended_by: &str,
    ) -> Recording {
        let counters_start: Counters = self.timeseries[0].counters.clone();
        let counters_end: Counters = self.timeseries[self.timeseries.len() - 1].counters.clone();
        let stat_start = self.timeseries[0].processes.clone();
        let merges = &self.collector.merges;
        // pid 0: activity whose mm had no owner any more (pages of exited processes pruned).
        let mut pids = self.pids.clone();
        pids.extend(merges.by_pid.keys().copied());
        if !opts.pids.is_empty() {
            pids.retain(|p| opts.pids.contains(p));
        }
        // Each sampling window's timed merges, of the processes the recording keeps.
        let window_histograms = merges
            .latency_windows
            .iter()
            .map(|window| {
                let mut h = Histogram::new();
                for (_, values) in window.iter().filter(|(pid, _)| pids.contains(*pid)) {
                    for (&ns, &count) in values {
                        h.record_n(ns, count);
                    }
                }
                h
            })
            .filter(|h| !h.is_empty())
            .collect();
        let burst_head = self.burst_head_ns.map(|ns| BurstHead {
            ns,
            merges: merges
                .burst_age_ns
                .iter()
                .filter(|(pid, _)| pids.contains(*pid))
                .map(|(_, ages)| ages.count_at_most(ns))
                .sum(),
        });
        let processes = pids
            .iter()
            .map(|&pid| {
                let mut stats = merges.by_pid.get(&pid).cloned().unwrap_or_default();
                let identity = self.identities.get(&pid);
                if pid == 0 {
                    stats.comm = "(exited)".into();
                } else if stats.comm.is_empty() {
                    stats.comm = identity.map(|i| i.comm.clone()).unwrap_or_default();
                }
                ProcessRecord {
                    pid,
                    stats,
                    guest: identity.and_then(|i| i.guest.clone()),
                    cgroup: identity.map(|i| i.cgroup.clone()),
                    ksm_stat_start: stat_start.get(&pid).copied(),
                    ksm_stat_end: self.ksm_stat_end.get(&pid).copied(),
                }
            })
            .collect();
        let scans = &self.collector.scans;
        let (first_scan, last_scan) = (
            counters_start.ksm("full_scans") as u64,
            counters_end.ksm("full_scans") as u64,
        );
        Recording {
            format: recording::FORMAT.into(),
            version: recording::VERSION,
            meta: Meta {
                tool_version: env!("CARGO_PKG_VERSION").into(),
                command_line,
                kernel_release: self.caps.kernel_release.clone(),
                hostname: nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                started_unix_s: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    .saturating_sub(self.started.elapsed().as_secs()),
                start_ns: self.start_ns,
                end_ns: self.end_ns,
                page_size: kernel::page_size(),
                ksmd_pid: self.ksmd,
                ended_by: ended_by.into(),
                ksmd_started_for_run: self.ksmd_started_for_run,
                knobs: self.knob_values,
                workload: self.spec.map(|spec| WorkloadRecord {
                    spec_text: opts.workload.clone().unwrap_or_default(),
                    kind: match spec {
                        WorkloadSpec::Procs(_) => WorkloadKind::Procs,
                        WorkloadSpec::Vms(_) => WorkloadKind::Vms,
                    },
                    workers: self.workers,
                }),
                pid_filter: opts.pids.clone(),
                capabilities: self.caps,
            },
            mechanisms: self.mechanisms,
            processes,
            scans: ScanRecord {
                // full_scans counts on unless someone wrote run=2 (which resets it): then the
                // window's scans are those that stopped inside it.
                full_scans: if !self
                    .timeseries
                    .windows(2)
                    .any(|w| w[1].counters.ksm("full_scans") < w[0].counters.ksm("full_scans"))
                {
                    scans.scans_in_window(first_scan, last_scan)
                } else {
                    scans
                        .full_scans
                        .iter()
                        .filter(|s| (self.start_ns..=self.end_ns).contains(&s.stop_ns))
                        .copied()
                        .collect()
                },
                batch_on_cpu_ns: scans.batch_on_cpu_ns.clone(),
                batch_wall_ns: scans.batch_wall_ns.clone(),
                ksmd_on_cpu_ns: scans.ksmd_on_cpu_ns,
                advisor: scans.advisor.clone(),
            },
            counters_start,
            counters_end,
            events: EventCounts {
                received: self
                    .collector
                    .received
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                lost: self.lost,
                unpaired: merges.unpaired,
                unattributed_unmerges: merges.unattributed_unmerges,
            },
            profile: self.profile,
            timeseries: self.timeseries,
            sharing: Some(self.sharing),
            latency: LatencyCoverage {
                mode: opts.probes.latency,
                bracket_windows: self.bracket_windows,
                window_histograms,
                burst_head,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_ends_the_run_a_settled_workload_ends_it_otherwise() {
        let s = Duration::from_secs;
        assert_eq!(
            end_policy(Some("procs:2"), None, false),
            (Some(DEFAULT_TIMEOUT), true, DEFAULT_SETTLE_MARGIN)
        );
        assert_eq!(
            end_policy(Some("vms:2,load=sysbench,time=60s"), None, false),
            (Some(s(60) + DEFAULT_TIMEOUT), false, 0)
        );
        assert_eq!(
            end_policy(Some("vms:2,load=sysbench"), Some(s(120)), false),
            (Some(s(120)), false, 0)
        );
        assert_eq!(
            end_policy(Some("procs:2,rounds=3,wait=2s"), None, false),
            (Some(s(6) + DEFAULT_TIMEOUT), false, 0)
        );
        assert_eq!(
            end_policy(Some("procs:2,unmerge=1,wait=4s"), None, false),
            (Some(s(4) + DEFAULT_TIMEOUT), false, 0)
        );
        assert_eq!(end_policy(None, None, false), (None, false, 0));
    }
}
