//! The exporter's metrics, encoded (OpenMetrics text, prometheus-client) from the latest
//! [`Frame`] at each scrape. Per-process series carry `pid`, `comm`, `guest` (QEMU's `-name`)
//! and `cgroup`; only the top processes by merged pages get series of their own and the rest
//! are summed into one `comm="other"` series, so cardinality stays bounded. A process that
//! exits leaves with its series.
//!
//! node_exporter's ksmd collector exports /sys/kernel/mm/ksm as `node_ksmd_*`; the `ksm_*`
//! figures from sysfs here are the same files (kept so one dashboard needs one job). What
//! nothing else exports: per-process merges, unmerges and COW breaks (traced), per-process
//! merged pages and profit (ksm_stat), merge latency and full-scan duration histograms, ksmd's
//! CPU time.
use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    histogram::Histogram,
    kernel::{page_size, sysfs},
    live::{Frame, ProcessFigures},
};

/// The latest frame, shared between the tracing loop and the HTTP server.
pub type Latest = Arc<Mutex<Option<Frame>>>;

/// Upper bounds of the latency buckets, seconds: 250 ns to 10 ms.
const LATENCY_BUCKETS: [f64; 14] = [
    250e-9, 500e-9, 1e-6, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 64e-6, 128e-6, 256e-6, 1e-3, 4e-3, 10e-3,
];
/// Upper bounds of the full-scan duration buckets, seconds.
const FULL_SCAN_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// sysfs files that only grow (until run=2 resets them, which Prometheus sees as a reset).
const SYSFS_COUNTERS: [&str; 3] = ["full_scans", "pages_scanned", "pages_skipped"];

#[derive(Debug)]
pub struct KsmCollector {
    pub latest: Latest,
    /// Processes with series of their own.
    pub top: usize,
}

/// A registry holding the collector.
pub fn registry(latest: Latest, top: usize) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KsmCollector { latest, top }));
    registry
}

/// `(le, count in that bucket)` of a nanosecond histogram at bounds given in seconds, then
/// `+Inf`; the encoder makes them cumulative. Counts at a bound are as exact as the histogram
/// (3 significant digits).
fn buckets(h: &Histogram, bounds: &[f64]) -> Vec<(f64, u64)> {
    let mut below = 0;
    let mut out: Vec<(f64, u64)> = bounds
        .iter()
        .map(|&le| {
            let at_most = h.count_at_most((le * 1e9) as u64);
            let in_bucket = at_most.saturating_sub(below);
            below = below.max(at_most);
            (le, in_bucket)
        })
        .collect();
    out.push((f64::INFINITY, h.count().saturating_sub(below)));
    out
}

type Labels = [(&'static str, String); 4];

fn labels(p: &ProcessFigures) -> Labels {
    [
        ("pid", p.id.pid.to_string()),
        ("comm", p.id.comm.clone()),
        ("guest", p.id.guest.clone().unwrap_or_default()),
        ("cgroup", p.id.cgroup.clone()),
    ]
}

impl Collector for KsmCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let guard = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let Some(frame) = guard.as_ref() else {
            return Ok(());
        };
        encode_frame(frame, self.top, &mut enc)
    }
}

fn encode_frame(frame: &Frame, top: usize, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    let (head, other) = frame.top_and_other(top);
    let processes: Vec<&ProcessFigures> = head.into_iter().chain(other.as_ref()).collect();
    let sys = &frame.system;
    let page = page_size();

    let per_process = |enc: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       unit: Option<Unit>,
                       kind: MetricType,
                       value: &dyn Fn(&ProcessFigures) -> i64|
     -> std::fmt::Result {
        let mut m = enc.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for p in &processes {
            let l = labels(p);
            let f = m.encode_family(&l)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value(p).max(0) as u64).encode(f)?,
                _ => ConstGauge::new(value(p)).encode(f)?,
            }
        }
        Ok(())
    };
    per_process(
        enc,
        "ksm_process_merges",
        "Pages of the process merged by ksmd (stable tree and zero page), traced since the exporter started",
        None,
        MetricType::Counter,
        &|p| p.merges as i64,
    )?;
    per_process(
        enc,
        "ksm_process_unmerges",
        "Pages of the process that left a KSM page ksmd dropped, traced (a sharer leaving a page others still map is not seen)",
        None,
        MetricType::Counter,
        &|p| p.unmerges as i64,
    )?;
    if sys.cow_traced {
        per_process(
            enc,
            "ksm_process_cow_breaks",
            "Copy-on-write breaks of KSM pages by the process, traced (fentry on do_wp_page)",
            None,
            MetricType::Counter,
            &|p| p.cow_breaks as i64,
        )?;
    }
    per_process(
        enc,
        "ksm_process_merging_pages",
        "Pages of the process merged now (ksm_merging_pages of /proc/PID/ksm_stat)",
        None,
        MetricType::Gauge,
        &|p| p.merging_pages as i64,
    )?;
    per_process(
        enc,
        "ksm_process_profit",
        "KSM's profit for the process (ksm_process_profit of /proc/PID/ksm_stat)",
        Some(Unit::Bytes),
        MetricType::Gauge,
        &|p| p.profit_bytes,
    )?;
    // From the page tables, every SAVINGS_EVERY: absent where the kernel cannot tell KSM pages.
    if processes.iter().any(|p| p.saved_bytes.is_some()) {
        per_process(
            enc,
            "ksm_process_saved",
            "Memory the process saves through KSM: each KSM page's m - 1 saved pages split (m - 1)/m per mapping, zero-page merges, less its rmap items; sums to general_profit (page tables, refreshed every 10 s)",
            Some(Unit::Bytes),
            MetricType::Gauge,
            &|p| p.saved_bytes.unwrap_or(0),
        )?;
        per_process(
            enc,
            "ksm_process_owes",
            "Memory the host must find if the process wrote every merged page now (page tables, refreshed every 10 s)",
            Some(Unit::Bytes),
            MetricType::Gauge,
            &|p| (p.owes_pages.unwrap_or(0) * page) as i64,
        )?;
    }
    {
        let mut m = enc.encode_descriptor(
            "ksm_process_merge_latency",
            &format!(
                "Time ksmd took to merge one of the process's pages, timed merges only ({})",
                sys.latency_mechanism
            ),
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for p in &processes {
            let l = labels(p);
            let f = m.encode_family(&l)?;
            encode_histogram(f, &p.latency_ns, p.latency_sum_ns, &LATENCY_BUCKETS)?;
        }
    }

    let counter = |enc: &mut DescriptorEncoder, name: &str, help: &str, unit, v: u64| {
        ConstCounter::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Counter)?)
    };
    let gauge = |enc: &mut DescriptorEncoder, name: &str, help: &str, unit, v: i64| {
        ConstGauge::new(v).encode(enc.encode_descriptor(name, help, unit, MetricType::Gauge)?)
    };
    if let Some(storm) = sys.storm_pages {
        gauge(
            enc,
            "ksm_cow_storm",
            "Memory the host must find if every merged page on the machine were written now",
            Some(&Unit::Bytes),
            (storm * page) as i64,
        )?;
    }
    ConstCounter::new(sys.ksmd_cpu_ns as f64 / 1e9).encode(enc.encode_descriptor(
        "ksm_ksmd_cpu",
        "CPU time ksmd has used since boot (/proc/PID/schedstat)",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?)?;
    counter(
        enc,
        "ksm_cow_breaks",
        "Copy-on-write breaks of KSM pages, all processes (cow_ksm of /proc/vmstat)",
        None,
        sys.cow_ksm.max(0) as u64,
    )?;
    {
        let m = enc.encode_descriptor(
            "ksm_full_scan_duration",
            "Duration of ksmd's full scans (ksm_start_scan to ksm_stop_scan), traced",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        let sum: f64 = sys
            .full_scan_ns
            .buckets()
            .map(|(v, c)| (v * c) as f64)
            .sum();
        encode_histogram(m, &sys.full_scan_ns, sum as u64, &FULL_SCAN_BUCKETS)?;
    }
    counter(
        enc,
        "ksm_trace_merges",
        "Merges traced, all processes",
        None,
        sys.merges,
    )?;
    counter(
        enc,
        "ksm_trace_merges_timed",
        "Merges whose latency was measured (the latency histograms' sample)",
        None,
        sys.timed_merges,
    )?;
    counter(
        enc,
        "ksm_trace_lost_events",
        "Events the kernel side dropped because the ring buffer was full: traced counts are short by these",
        None,
        sys.lost_events,
    )?;
    gauge(
        enc,
        "ksm_trace_processes",
        "Processes merging or merged now, including those summed into comm=\"other\"",
        None,
        frame.processes.len() as i64,
    )?;

    // /sys/kernel/mm/ksm: knobs as one family, the rest by name.
    {
        let mut m = enc.encode_descriptor(
            "ksm_knob",
            "KSM's settings (/sys/kernel/mm/ksm, numeric ones)",
            None,
            MetricType::Gauge,
        )?;
        for (name, value) in sys
            .sysfs
            .iter()
            .filter(|(n, _)| sysfs::KNOBS.contains(&n.as_str()))
        {
            let l = [("name", name.as_str())];
            ConstGauge::new(*value).encode(m.encode_family(&l)?)?;
        }
    }
    for (name, value) in &sys.sysfs {
        if sysfs::KNOBS.contains(&name.as_str()) || name.contains("advisor") {
            continue;
        }
        let help = format!("/sys/kernel/mm/ksm/{name}");
        let base = format!("ksm_{}", name.trim_start_matches("ksm_"));
        if SYSFS_COUNTERS.contains(&name.as_str()) {
            counter(enc, &base, &help, None, (*value).max(0) as u64)?;
        } else if name == "general_profit" {
            gauge(enc, &base, &help, Some(&Unit::Bytes), *value)?;
        } else {
            gauge(enc, &base, &help, None, *value)?;
        }
    }
    gauge(
        enc,
        "ksm_page_size",
        "Size of the pages the page counts are in",
        Some(&Unit::Bytes),
        page as i64,
    )?;
    Ok(())
}

fn encode_histogram(
    mut m: prometheus_client::encoding::MetricEncoder,
    h: &Histogram,
    sum_ns: u64,
    bounds: &[f64],
) -> std::fmt::Result {
    m.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, h.count(), &buckets(h, bounds), None)
}

/// The registry's OpenMetrics text.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in the metric set.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        log::error!("encoding metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::frame::tests::{frame, process};

    fn scrape(f: Frame, top: usize) -> String {
        text(&registry(Arc::new(Mutex::new(Some(f))), top))
    }

    #[test]
    fn per_process_series_bounded_by_top_with_other() {
        let mut f = frame(
            1.0,
            vec![
                process(11, 300, 300),
                process(12, 200, 200),
                process(13, 100, 100),
            ],
            2_000_000_000,
        );
        f.system.sysfs.insert("pages_sharing".into(), 600);
        f.system.sysfs.insert("pages_to_scan".into(), 100);
        f.system.merges = 600;
        f.system.timed_merges = 3;
        let t = scrape(f, 2);
        assert!(
            t.contains(r#"ksm_process_merges_total{pid="11",comm="p11",guest="",cgroup="/"} 300"#),
            "{t}"
        );
        assert!(
            t.contains(r#"ksm_process_merging_pages{pid="12",comm="p12",guest="",cgroup="/"} 200"#),
            "{t}"
        );
        assert!(
            !t.contains(r#"pid="13""#),
            "pid 13 is summed into other: {t}"
        );
        assert!(
            t.contains(r#"ksm_process_merges_total{pid="0",comm="other",guest="",cgroup=""} 100"#),
            "{t}"
        );
        assert!(t.contains("ksm_ksmd_cpu_seconds_total 2.0"), "{t}");
        assert!(t.contains("ksm_pages_sharing 600"), "{t}");
        assert!(t.contains(r#"ksm_knob{name="pages_to_scan"} 100"#), "{t}");
        assert!(t.contains("ksm_pages_scanned_total 2000000"), "{t}");
        assert!(t.contains("ksm_trace_merges_timed_total 3"), "{t}");
        assert!(
            !t.contains("ksm_process_cow_breaks"),
            "COW not traced here: {t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn latency_histogram_buckets_are_cumulative_in_seconds() {
        // process(2, ..) holds one merge timed at 2000 ns.
        let t = scrape(frame(1.0, vec![process(2, 5, 5)], 0), 10);
        let l = r#"pid="2",comm="p2",guest="",cgroup="/""#;
        assert!(
            t.contains(&format!("ksm_process_merge_latency_seconds_count{{{l}}} 1")),
            "{t}"
        );
        let bucket = |le: &str, n: u64| {
            format!("ksm_process_merge_latency_seconds_bucket{{le=\"{le}\",{l}}} {n}\n")
        };
        assert!(t.contains(&bucket("0.000001", 0)), "{t}");
        assert!(t.contains(&bucket("0.000002", 1)), "{t}");
        assert!(t.contains(&bucket("0.01", 1)), "{t}");
        assert!(t.contains(&bucket("+Inf", 1)), "{t}");
        assert!(
            t.contains(&format!(
                "ksm_process_merge_latency_seconds_sum{{{l}}} 0.000002"
            )),
            "{t}"
        );
    }

    #[test]
    fn no_frame_yet_exports_nothing_but_eof() {
        let t = text(&registry(Arc::new(Mutex::new(None)), 10));
        assert_eq!(t, "# EOF\n");
    }
}
