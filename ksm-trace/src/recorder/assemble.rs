//! Assembling the recording from what the window produced, once the system is restored.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::RecordOptions;
use crate::{
    collect::Collector,
    histogram::Histogram,
    kernel::{self, Counters, KsmStat, process::ProcessIdentity},
    recording::{
        self, BurstHead, EventCounts, LatencyCoverage, Meta, ProcessRecord, Recording, ScanRecord,
        WorkloadRecord,
        schema::{Sample, SharingRecord, Worker},
    },
    run::workload::Workload,
};

/// Everything the window produced, with the system already restored.
pub(super) struct Closed {
    pub(super) collector: Collector,
    pub(super) timeseries: Vec<Sample>,
    pub(super) pids: BTreeSet<u32>,
    pub(super) ksm_stat_end: BTreeMap<u32, KsmStat>,
    pub(super) identities: BTreeMap<u32, ProcessIdentity>,
    pub(super) sharing: SharingRecord,
    pub(super) workers: Vec<Worker>,
    pub(super) spec: Option<Box<dyn Workload>>,
    pub(super) caps: crate::probes::Capabilities,
    pub(super) ksmd: u32,
    pub(super) ksmd_started_for_run: bool,
    pub(super) ksmd_kept_off: bool,
    pub(super) knob_values: BTreeMap<String, String>,
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
    pub(super) started: Instant,
    pub(super) lost: u64,
    pub(super) profile: crate::recording::schema::Profile,
    pub(super) mechanisms: crate::recording::schema::Mechanisms,
    pub(super) bracket_windows: Vec<(u64, u64)>,
    pub(super) burst_head_ns: Option<u64>,
    pub(super) coverage_windows: u64,
}

impl Closed {
    pub(super) fn into_recording(
        self,
        opts: &RecordOptions,
        command_line: Vec<String>,
        ended_by: &str,
    ) -> Recording {
        let counters_start: Counters = self.timeseries[0].counters.clone();
        let counters_end: Counters = self.timeseries[self.timeseries.len() - 1].counters.clone();
        let pids = self.recorded_pids(opts);
        let processes = self.processes(&pids);
        let scans = self.scans(&counters_start, &counters_end);
        let latency = self.latency(opts, &pids);
        let meta = self.meta(opts, command_line, ended_by);
        let merges = &self.collector.merges;
        let events = EventCounts {
            received: self
                .collector
                .received
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            lost: self.lost,
            unpaired: merges.unpaired,
            unattributed_unmerges: merges.unattributed_unmerges,
        };
        Recording {
            format: recording::FORMAT.into(),
            version: recording::VERSION,
            meta,
            mechanisms: self.mechanisms,
            processes,
            scans,
            counters_start,
            counters_end,
            events,
            latency,
            profile: self.profile,
            timeseries: self.timeseries,
            sharing: Some(self.sharing),
        }
    }

    /// The processes the recording keeps: the ones sampled and every merger (pid 0: activity
    /// whose mm had no owner any more, pages of exited processes pruned), within `--pid`.
    fn recorded_pids(&self, opts: &RecordOptions) -> BTreeSet<u32> {
        let mut pids = self.pids.clone();
        pids.extend(self.collector.merges.by_pid.keys().copied());
        if !opts.pids.is_empty() {
            pids.retain(|p| opts.pids.contains(p));
        }
        pids
    }

    fn processes(&self, pids: &BTreeSet<u32>) -> Vec<ProcessRecord> {
        let stat_start = &self.timeseries[0].processes;
        let merges = &self.collector.merges;
        pids.iter()
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
            .collect()
    }

    fn scans(&self, start: &Counters, end: &Counters) -> ScanRecord {
        let scans = &self.collector.scans;
        let (first_scan, last_scan) =
            (start.ksm("full_scans") as u64, end.ksm("full_scans") as u64);
        // full_scans counts on unless someone wrote run=2 (which resets it): then the window's
        // scans are those that stopped inside it.
        let reset = self
            .timeseries
            .windows(2)
            .any(|w| w[1].counters.ksm("full_scans") < w[0].counters.ksm("full_scans"));
        ScanRecord {
            full_scans: if !reset {
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
        }
    }

    /// When the bracket was attached, each sampling window's timed merges and the burst heads
    /// they left out, of the processes the recording keeps.
    fn latency(&self, opts: &RecordOptions, pids: &BTreeSet<u32>) -> LatencyCoverage {
        let merges = &self.collector.merges;
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
        LatencyCoverage {
            mode: opts.probes.latency,
            bracket_windows: self.bracket_windows.clone(),
            window_histograms,
            burst_head,
            coverage_windows: Some(self.coverage_windows),
        }
    }

    fn meta(&self, opts: &RecordOptions, command_line: Vec<String>, ended_by: &str) -> Meta {
        Meta {
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
            ksmd_kept_off: self.ksmd_kept_off,
            knobs: self.knob_values.clone(),
            workload: self.spec.as_ref().map(|spec| WorkloadRecord {
                spec_text: opts.workload.clone().unwrap_or_default(),
                kind: spec.kind(),
                workers: self.workers.clone(),
            }),
            pid_filter: opts.pids.clone(),
            capabilities: self.caps.clone(),
        }
    }
}
