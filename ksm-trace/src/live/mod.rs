//! Live tracing for `top` and `serve`: the probes and collector of `record`, but no window to
//! close, no knob changed, ksmd neither started nor paused, nothing written. Merge latency is
//! sampled as `--merge-latency auto` samples it (the mmap_lock bracket 50 ms when merges start, one
//! window per 5 s) unless `--merge-latency` says otherwise, so watching a host for
//! days costs ksmd what `record`'s default costs. Live views drain on their own timer, so a
//! window opens at the drain after merges start: a burst shorter than a drain can be missed.
//! Processes that exit are forgotten, so memory stays bounded by the processes alive.
pub mod frame;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};

use crate::{
    collect::Collector,
    histogram::Histogram,
    kernel::{self, KsmStat, process::ProcessIdentity, sysfs},
    probes::{ProbeOptions, Probes, bracket::BracketPolicy},
    report::mechanisms,
    run::session,
    sharing::savings::Savings,
};
pub use frame::{Frame, ProcessFigures, SystemFigures};

/// How often the ring buffer is drained (as `record` does).
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// How often what each process saves and owes is read again: it walks every KSM process's
/// page tables, too much to do each second on a large host.
pub const SAVINGS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct LiveTracer {
    probes: Probes,
    ring: RingBuf<MapData>,
    bracket: BracketPolicy,
    collector: Collector,
    ksmd: u32,
    started_ns: u64,
    full_scan_ns: Histogram,
    last_full_scan_ns: Option<u64>,
    /// Who each pid is, read once (comm, cgroup, guest name).
    identities: BTreeMap<u32, ProcessIdentity>,
    /// Only these processes (`-p`), or all.
    only: BTreeSet<u32>,
    /// The last savings split, and when it was taken.
    savings: Option<(std::time::Instant, Savings)>,
}

impl LiveTracer {
    /// Loads and attaches the probes; changes nothing else. `only`: pids to show (empty: all).
    pub fn start(only: &[u32], options: ProbeOptions) -> Result<Self> {
        session::require_root_and_ksm()?;
        for pid in only {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                anyhow::bail!("no process with pid {pid}: give the pid of a running process");
            }
        }
        let caps = crate::run::session::detect_capabilities();
        caps.require_tracing()?;
        let ksmd = kernel::ksmd_pid()?;
        let mut probes = Probes::load_with(&caps, ksmd, options)?;
        let ring = probes.take_events()?;
        let mut bracket =
            BracketPolicy::start(&mut probes, options.latency)?.polled_every(DRAIN_EVERY);
        let started_ns = kernel::monotonic_ns();
        bracket.window_opened(started_ns);
        let mut collector = Collector::default();
        collector.open_window(started_ns);
        Ok(Self {
            probes,
            ring,
            bracket,
            collector,
            ksmd,
            started_ns,
            full_scan_ns: Histogram::new(),
            last_full_scan_ns: None,
            identities: BTreeMap::new(),
            only: only.iter().copied().collect(),
            savings: None,
        })
    }

    /// Takes the events waiting; call every [`DRAIN_EVERY`].
    pub fn drain(&mut self) -> Result<()> {
        self.collector.drain(&mut self.ring);
        let merges = self.collector.merge_clock();
        self.bracket.update(&mut self.probes, merges)
    }

    /// The figures now. Processes that have exited since the last frame are forgotten.
    pub fn frame(&mut self) -> Result<Frame> {
        self.drain()?;
        for scan in std::mem::take(&mut self.collector.scans.full_scans) {
            if let Some(ns) = scan.duration_ns() {
                self.full_scan_ns.record(ns);
                self.last_full_scan_ns = Some(ns);
            }
        }
        self.collector.scans.advisor.clear();

        let tracked = KsmStat::tracked();
        let mut pids: BTreeSet<u32> = self.collector.merges.by_pid.keys().copied().collect();
        pids.extend(tracked.keys());
        pids.remove(&0);
        if !self.only.is_empty() {
            pids.retain(|p| self.only.contains(p));
        }
        let gone: BTreeSet<u32> = self
            .collector
            .merges
            .by_pid
            .keys()
            .chain(self.identities.keys())
            .copied()
            .filter(|&pid| pid != 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        self.collector.merges.forget(&gone);
        self.identities.retain(|pid, _| !gone.contains(pid));

        let savings = self.savings().cloned();
        let share = |pid: u32| {
            savings
                .as_ref()
                .and_then(|s| s.processes.iter().find(|p| p.pid == pid))
        };
        let mut processes = Vec::new();
        for pid in pids.difference(&gone) {
            // Read once above for the processes KSM tracks; traced ones it no longer does.
            let Some(stat) = tracked
                .get(pid)
                .cloned()
                .or_else(|| KsmStat::read(*pid).ok())
            else {
                continue; // exited just now
            };
            let id = self
                .identities
                .entry(*pid)
                .or_insert_with(|| ProcessIdentity::read(*pid))
                .clone();
            let traced = self.collector.merges.by_pid.get(pid);
            let t = traced.map(|s| &s.time_ns);
            processes.push(ProcessFigures {
                id,
                merges: traced.map_or(0, |s| s.counts.merges + s.counts.zero_page_merges),
                unmerges: traced.map_or(0, |s| s.counts.unmerges),
                cow_breaks: traced
                    .and_then(|s| self.probes.mechanisms.cow.breaks(s))
                    .map_or(0, |(n, _)| n),
                latency_ns: traced.map_or_else(Histogram::new, |s| s.merge_latency_ns.clone()),
                latency_sum_ns: t.map_or(0, |t| t.new_page + t.join + t.zero_page),
                merging_pages: stat.ksm_merging_pages,
                profit_bytes: stat.ksm_process_profit,
                saved_bytes: share(*pid).map(|s| s.saved_bytes),
                owes_pages: share(*pid).map(|s| s.owes_pages),
            });
        }
        processes.sort_by(|a, b| {
            (b.merging_pages, b.merges, a.id.pid).cmp(&(a.merging_pages, a.merges, b.id.pid))
        });

        let all = self.collector.merges.by_pid.values();
        let (merges, timed) = all.fold((0, 0), |(m, t), s| {
            (
                m + s.counts.merges + s.counts.zero_page_merges,
                t + s.merge_latency_ns.count(),
            )
        });
        let mechanisms = &self.probes.mechanisms;
        Ok(Frame {
            elapsed_s: kernel::monotonic_ns().saturating_sub(self.started_ns) as f64 / 1e9,
            processes,
            system: SystemFigures {
                ksmd_cpu_ns: kernel::cpu_time_ns(self.ksmd).unwrap_or(0),
                sysfs: sysfs::read_all()?,
                cow_ksm: kernel::vmstat()?.get("cow_ksm").copied().unwrap_or(0),
                full_scan_ns: self.full_scan_ns.clone(),
                last_full_scan_ns: self.last_full_scan_ns,
                merges,
                timed_merges: timed,
                lost_events: self.probes.lost_events().unwrap_or(0),
                cow_traced: mechanisms.cow_traced(),
                latency_mechanism: mechanisms::merge_latency_short(mechanisms.merge_latency),
                storm_pages: savings.as_ref().map(|s| s.storm_pages),
                mem_available_bytes: savings.as_ref().and_then(|s| s.mem_available_bytes),
            },
        })
    }

    /// The savings split, taken again when [`SAVINGS_EVERY`] has passed (None where the kernel
    /// cannot tell KSM pages in /proc/kpageflags).
    fn savings(&mut self) -> Option<&Savings> {
        let stale = self
            .savings
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= SAVINGS_EVERY);
        if stale && crate::kernel::pagemap::kpf_ksm_is_truthful().is_ok() {
            let snapshot = crate::sharing::Snapshot::take(&[]);
            self.savings = Some((std::time::Instant::now(), Savings::now(&snapshot)));
        }
        self.savings.as_ref().map(|(_, s)| s)
    }
}
