//! What `top` shows and `serve` exports at one moment: cumulative per-process figures since
//! tracing began (merges, unmerges, COW breaks, merge latency) beside the kernel's own figures
//! read at the same moment (ksm_stat, /sys/kernel/mm/ksm, cow_ksm, ksmd's CPU time). Rates are
//! differences between two frames, so neither consumer keeps state of its own.
use std::collections::BTreeMap;

use crate::{histogram::Histogram, kernel::process::ProcessIdentity};

/// One process that merged while traced or maps KSM pages now.
#[derive(Clone, Debug)]
pub struct ProcessFigures {
    pub id: ProcessIdentity,
    /// Pages that entered the stable tree (new KSM page or joined one), traced.
    pub merges: u64,
    /// Pages that left it as far as tracepoints show (stale KSM pages dropped), traced.
    pub unmerges: u64,
    /// COW breaks of KSM pages (only meaningful when [`SystemFigures::cow_traced`]).
    pub cow_breaks: u64,
    /// Timed merges (a sample when the latency mechanism samples).
    pub latency_ns: Histogram,
    /// Sum of the timed merges' latencies.
    pub latency_sum_ns: u64,
    /// The kernel's ksm_stat now: pages of this process merged, and KSM's profit for it.
    pub merging_pages: u64,
    pub profit_bytes: i64,
    /// Its share of the KSM savings (each KSM page's m − 1 pages split (m − 1)/m per mapping,
    /// zero-page merges, less its rmap items) and what it owes: the pages the host must find if
    /// it wrote every merged page now. None before the first page-table walk.
    pub saved_bytes: Option<i64>,
    pub owes_pages: Option<u64>,
}

/// Machine-wide figures.
#[derive(Clone, Debug, Default)]
pub struct SystemFigures {
    /// ksmd's CPU time (schedstat), ns.
    pub ksmd_cpu_ns: u64,
    /// /sys/kernel/mm/ksm: counters and knobs.
    pub sysfs: BTreeMap<String, i64>,
    /// /proc/vmstat cow_ksm: COW breaks of KSM pages, all processes.
    pub cow_ksm: i64,
    /// Full scans completed while traced, and their durations.
    pub full_scan_ns: Histogram,
    pub last_full_scan_ns: Option<u64>,
    /// Merges traced, and how many of them were timed.
    pub merges: u64,
    pub timed_merges: u64,
    /// Events the kernel side dropped (ring buffer full): traced counts are short by these.
    pub lost_events: u64,
    /// Per-process COW breaks are traced (do_wp_page or the page fault tracepoints); else only
    /// cow_ksm.
    pub cow_traced: bool,
    /// How merge latency is measured, in words (e.g. 0.05 s when merges start, one per 5 s).
    pub latency_mechanism: String,
    /// The COW storm — every merged page written now — in pages, against MemAvailable.
    pub storm_pages: Option<u64>,
    pub mem_available_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Frame {
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    /// Every process, most merged pages first.
    pub processes: Vec<ProcessFigures>,
    pub system: SystemFigures,
}

/// Per-second rates of one process between two frames.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessRates {
    pub merges: f64,
    pub unmerges: f64,
    pub cow_breaks: f64,
}

/// Per-second rates of the machine between two frames.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SystemRates {
    /// ksmd's CPU share, percent of one CPU.
    pub ksmd_cpu_percent: f64,
    pub pages_scanned: f64,
    pub cow_ksm: f64,
}

impl Frame {
    /// The rates of `pid` since `previous` (a process new in this frame counts from zero).
    pub fn process_rates(&self, previous: Option<&Frame>, p: &ProcessFigures) -> ProcessRates {
        let Some(prev) = previous else {
            return ProcessRates::default();
        };
        let dt = self.elapsed_s - prev.elapsed_s;
        if dt <= 0.0 {
            return ProcessRates::default();
        }
        let before = prev.processes.iter().find(|q| q.id.pid == p.id.pid);
        let rate = |now: u64, then: fn(&ProcessFigures) -> u64| {
            now.saturating_sub(before.map_or(0, then)) as f64 / dt
        };
        ProcessRates {
            merges: rate(p.merges, |q| q.merges),
            unmerges: rate(p.unmerges, |q| q.unmerges),
            cow_breaks: rate(p.cow_breaks, |q| q.cow_breaks),
        }
    }

    pub fn system_rates(&self, previous: Option<&Frame>) -> SystemRates {
        let Some(prev) = previous else {
            return SystemRates::default();
        };
        let dt = self.elapsed_s - prev.elapsed_s;
        if dt <= 0.0 {
            return SystemRates::default();
        }
        let sysfs_delta = |name: &str| {
            let get = |f: &Frame| f.system.sysfs.get(name).copied().unwrap_or(0);
            (get(self) - get(prev)).max(0) as f64 / dt
        };
        SystemRates {
            ksmd_cpu_percent: self
                .system
                .ksmd_cpu_ns
                .saturating_sub(prev.system.ksmd_cpu_ns) as f64
                / (dt * 1e9)
                * 100.0,
            pages_scanned: sysfs_delta("pages_scanned"),
            cow_ksm: (self.system.cow_ksm - prev.system.cow_ksm).max(0) as f64 / dt,
        }
    }

    /// The `top` processes by merged pages, and the rest summed into one `other` entry (pid 0,
    /// comm "other"), so an exporter's series stay bounded however many processes merge.
    pub fn top_and_other(&self, top: usize) -> (Vec<&ProcessFigures>, Option<ProcessFigures>) {
        let head: Vec<&ProcessFigures> = self.processes.iter().take(top).collect();
        let rest = &self.processes[head.len()..];
        if rest.is_empty() {
            return (head, None);
        }
        let mut other = ProcessFigures {
            id: ProcessIdentity {
                pid: 0,
                comm: "other".into(),
                cgroup: String::new(),
                guest: None,
            },
            merges: 0,
            unmerges: 0,
            cow_breaks: 0,
            latency_ns: Histogram::new(),
            latency_sum_ns: 0,
            merging_pages: 0,
            profit_bytes: 0,
            saved_bytes: None,
            owes_pages: None,
        };
        for p in rest {
            other.merges += p.merges;
            other.unmerges += p.unmerges;
            other.cow_breaks += p.cow_breaks;
            other.latency_ns.add(&p.latency_ns);
            other.latency_sum_ns += p.latency_sum_ns;
            other.merging_pages += p.merging_pages;
            other.profit_bytes += p.profit_bytes;
            if let Some(s) = p.saved_bytes {
                *other.saved_bytes.get_or_insert(0) += s;
            }
            if let Some(o) = p.owes_pages {
                *other.owes_pages.get_or_insert(0) += o;
            }
        }
        (head, Some(other))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn process(pid: u32, merges: u64, merging_pages: u64) -> ProcessFigures {
        let mut latency_ns = Histogram::new();
        latency_ns.record(1000 * pid as u64);
        ProcessFigures {
            id: ProcessIdentity {
                pid,
                comm: format!("p{pid}"),
                cgroup: "/".into(),
                guest: None,
            },
            merges,
            unmerges: merges / 10,
            cow_breaks: 0,
            latency_ns,
            latency_sum_ns: 1000 * pid as u64,
            merging_pages,
            profit_bytes: merging_pages as i64 * 4096,
            saved_bytes: None,
            owes_pages: None,
        }
    }

    pub fn frame(elapsed_s: f64, processes: Vec<ProcessFigures>, cpu_ns: u64) -> Frame {
        let mut system = SystemFigures {
            ksmd_cpu_ns: cpu_ns,
            ..SystemFigures::default()
        };
        system
            .sysfs
            .insert("pages_scanned".into(), cpu_ns as i64 / 1000);
        Frame {
            elapsed_s,
            processes,
            system,
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = frame(1.0, vec![process(7, 100, 100)], 0);
        let after = frame(
            3.0,
            vec![process(7, 300, 300), process(8, 50, 50)],
            500_000_000,
        );
        let rates = after.process_rates(Some(&before), &after.processes[0]);
        assert_eq!(rates.merges, 100.0);
        assert_eq!(rates.unmerges, 10.0);
        // New in this frame: counted from zero.
        assert_eq!(
            after
                .process_rates(Some(&before), &after.processes[1])
                .merges,
            25.0
        );
        let system = after.system_rates(Some(&before));
        assert_eq!(system.ksmd_cpu_percent, 25.0);
        assert_eq!(system.pages_scanned, 250_000.0);
        assert_eq!(after.system_rates(None), SystemRates::default());
    }

    #[test]
    fn processes_beyond_the_top_are_summed_into_other() {
        let f = frame(
            1.0,
            vec![process(1, 30, 30), process(2, 20, 20), process(3, 10, 10)],
            0,
        );
        let (top, other) = f.top_and_other(1);
        assert_eq!(top.len(), 1);
        let other = other.unwrap();
        assert_eq!(
            (other.id.pid, other.merges, other.merging_pages),
            (0, 30, 30)
        );
        assert_eq!(other.latency_ns.count(), 2);
        assert!(f.top_and_other(3).1.is_none());
    }
}
