//! sysbench inside a Debian guest: the parameters it gets (on the kernel command line, read
//! by the image's init) and its own figures read back from the guest's console, where each
//! line of its output arrives prefixed with [`LOAD_PREFIX`].
use super::debian::{LOAD_DONE_MARKER, LOAD_PREFIX};
use crate::{recording::schema::LoadResult, workload::spec::SysbenchLoad};

/// sysbench's per-interval report period, seconds.
const INTERVAL_S: u64 = 5;

/// The kernel command line words the guest's init reads.
pub fn kernel_args(load: Option<&SysbenchLoad>) -> String {
    match load {
        None => "ksm.load=none".into(),
        Some(l) => format!(
            "ksm.load=sysbench ksm.tables={} ksm.table_size={} ksm.threads={} ksm.time={} ksm.interval={INTERVAL_S}",
            l.tables,
            l.table_size,
            l.threads,
            l.time.as_secs().max(1)
        ),
    }
}

/// The command the guest runs, as the recording names it.
pub fn command(l: &SysbenchLoad) -> String {
    format!(
        "sysbench oltp_read_write --tables={} --table-size={} --threads={} --time={}",
        l.tables,
        l.table_size,
        l.threads,
        l.time.as_secs().max(1)
    )
}

/// Whether the console shows that sysbench has finished.
pub fn done(console: &str) -> bool {
    console.lines().any(|l| l.starts_with(LOAD_DONE_MARKER))
}

/// sysbench's summary from a guest's console, once it has finished (None before, or when
/// the summary lacks its transactions line).
pub fn result(console: &str, load: &SysbenchLoad) -> Option<LoadResult> {
    if !done(console) {
        return None;
    }
    let lines: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(LOAD_PREFIX))
        .collect();
    // "    transactions:   1435   (47.79 per sec.)" → (1435, 47.79)
    let counted = |name: &str| -> Option<(f64, f64)> {
        let rest = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?;
        let mut words = rest.split_whitespace();
        let total = words.next()?.parse().ok()?;
        let rate = words.next()?.trim_start_matches('(').parse().ok()?;
        Some((total, rate))
    };
    // "         95th percentile:     28.16"
    let value = |name: &str| -> Option<f64> {
        lines.iter().find_map(|l| {
            l.trim()
                .strip_prefix(name)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches('s')
                .parse()
                .ok()
        })
    };
    let (transactions, tps) = counted("transactions")?;
    let (_, qps) = counted("queries")?;
    let errors =
        counted("ignored errors").map_or(0.0, |c| c.0) + counted("reconnects").map_or(0.0, |c| c.0);
    // "[ 10s ] thds: 1 tps: 45.37 qps: ..."
    let interval_tps = lines
        .iter()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| {
            l.split("tps:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    Some(LoadResult {
        command: command(load),
        duration_s: value("total time")?,
        transactions: transactions as u64,
        transactions_per_sec: tps,
        queries_per_sec: qps,
        errors: errors as u64,
        latency_ms_avg: value("avg")?,
        latency_ms_p95: value("95th percentile")?,
        latency_ms_max: value("max")?,
        interval_tps,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// sysbench 1.0.20's output as a Debian guest printed it (trimmed), with the kernel's
    /// lines around it.
    const CONSOLE: &str = "\
[    1.234] random kernel line
KSM-TRACE-READY
KSM-TRACE-LOAD sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)
KSM-TRACE-LOAD Threads started!
KSM-TRACE-LOAD [ 10s ] thds: 1 tps: 45.37 qps: 908.04 (r/w/o: 635.71/181.49/90.84) lat (ms,95%): 31.94 err/s: 0.00 reconn/s: 0.00
KSM-TRACE-LOAD [ 20s ] thds: 1 tps: 47.21 qps: 944.00 (r/w/o: 660.71/188.86/94.43) lat (ms,95%): 27.66 err/s: 0.00 reconn/s: 0.00
KSM-TRACE-LOAD SQL statistics:
KSM-TRACE-LOAD     queries performed:
KSM-TRACE-LOAD         read:                            20090
KSM-TRACE-LOAD         total:                           28700
KSM-TRACE-LOAD     transactions:                        1435   (47.79 per sec.)
KSM-TRACE-LOAD     queries:                             28700  (955.79 per sec.)
KSM-TRACE-LOAD     ignored errors:                      2      (0.07 per sec.)
KSM-TRACE-LOAD     reconnects:                          0      (0.00 per sec.)
KSM-TRACE-LOAD General statistics:
KSM-TRACE-LOAD     total time:                          30.0257s
KSM-TRACE-LOAD Latency (ms):
KSM-TRACE-LOAD          min:                                   16.32
KSM-TRACE-LOAD          avg:                                   20.87
KSM-TRACE-LOAD          max:                                  131.86
KSM-TRACE-LOAD          95th percentile:                       28.16
KSM-TRACE-LOAD-DONE
";

    fn load() -> SysbenchLoad {
        SysbenchLoad {
            tables: 2,
            table_size: 10_000,
            threads: 1,
            time: Duration::from_secs(30),
        }
    }

    #[test]
    fn reads_sysbench_summary_from_the_console() {
        let r = result(CONSOLE, &load()).unwrap();
        assert_eq!(r.transactions, 1435);
        assert_eq!(
            (r.transactions_per_sec, r.queries_per_sec, r.errors),
            (47.79, 955.79, 2)
        );
        assert_eq!(r.duration_s, 30.0257);
        assert_eq!(
            (r.latency_ms_avg, r.latency_ms_p95, r.latency_ms_max),
            (20.87, 28.16, 131.86)
        );
        assert_eq!(r.interval_tps, [45.37, 47.21]);
        assert_eq!(
            r.command,
            "sysbench oltp_read_write --tables=2 --table-size=10000 --threads=1 --time=30"
        );
    }

    #[test]
    fn no_result_before_the_load_is_done_or_without_a_summary() {
        let running = CONSOLE.replace("KSM-TRACE-LOAD-DONE\n", "");
        assert!(result(&running, &load()).is_none());
        let no_summary = "KSM-TRACE-READY\nKSM-TRACE-LOAD FATAL: error\nKSM-TRACE-LOAD-DONE\n";
        assert!(result(no_summary, &load()).is_none());
    }

    #[test]
    fn kernel_args_carry_the_parameters() {
        assert_eq!(
            kernel_args(Some(&load())),
            "ksm.load=sysbench ksm.tables=2 ksm.table_size=10000 ksm.threads=1 ksm.time=30 ksm.interval=5"
        );
        assert_eq!(kernel_args(None), "ksm.load=none");
    }
}
