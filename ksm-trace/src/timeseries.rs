//! The recording's counter time series as rows of derived figures: what `report --csv` writes
//! and `plot` draws, computed in one place.
use crate::recording::Recording;

/// One interval of the time series.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub t_s: f64,
    pub full_scans: i64,
    pub pages_shared: i64,
    pub pages_sharing: i64,
    pub pages_unshared: i64,
    pub pages_volatile: i64,
    /// None where the kernel has no such file (before 6.5 and 6.6): not available, not 0.
    pub ksm_zero_pages: Option<i64>,
    pub general_profit: Option<i64>,
    pub cow_ksm: i64,
    /// Since the previous row.
    pub ksmd_cpu_percent: f64,
    pub merges: u64,
    pub merges_per_s: f64,
    pub cow_ksm_per_s: f64,
    /// ksm_merging_pages of each traced process (None once it is gone).
    pub processes: Vec<Option<u64>>,
}

/// The pids that have a ksm_merging_pages column, in column order, with their comms.
pub fn process_columns(rec: &Recording) -> Vec<(u32, String)> {
    let mut pids: Vec<u32> = rec
        .timeseries
        .iter()
        .flat_map(|s| s.processes.keys().copied())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| {
            let comm = rec
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .map(|p| p.stats.comm.clone())
                .unwrap_or_default();
            (pid, comm)
        })
        .collect()
}

pub fn rows(rec: &Recording) -> Vec<Row> {
    let columns = process_columns(rec);
    let mut out: Vec<Row> = Vec::new();
    for (i, s) in rec.timeseries.iter().enumerate() {
        let k = |name: &str| s.counters.ksm(name);
        let cow = s.counters.vmstat.get("cow_ksm").copied().unwrap_or(0);
        let (cpu, merges_per_s, cow_per_s) = match i.checked_sub(1).map(|j| &rec.timeseries[j]) {
            Some(prev) => {
                let dt = (s.t_ns.saturating_sub(prev.t_ns)).max(1) as f64;
                let prev_cow = prev.counters.vmstat.get("cow_ksm").copied().unwrap_or(0);
                (
                    s.counters
                        .ksmd_cpu_ns
                        .saturating_sub(prev.counters.ksmd_cpu_ns) as f64
                        * 100.0
                        / dt,
                    s.merges.saturating_sub(prev.merges) as f64 * 1e9 / dt,
                    (cow - prev_cow) as f64 * 1e9 / dt,
                )
            }
            None => (0.0, 0.0, 0.0),
        };
        out.push(Row {
            t_s: s.t_ns as f64 / 1e9,
            full_scans: k("full_scans"),
            pages_shared: k("pages_shared"),
            pages_sharing: k("pages_sharing"),
            pages_unshared: k("pages_unshared"),
            pages_volatile: k("pages_volatile"),
            ksm_zero_pages: s.counters.ksm.get("ksm_zero_pages").copied(),
            general_profit: s.counters.ksm.get("general_profit").copied(),
            cow_ksm: cow,
            ksmd_cpu_percent: cpu,
            merges: s.merges,
            merges_per_s,
            cow_ksm_per_s: cow_per_s,
            processes: columns
                .iter()
                .map(|(pid, _)| s.processes.get(pid).map(|p| p.ksm_merging_pages))
                .collect(),
        });
    }
    out
}

pub fn csv(rec: &Recording) -> String {
    let mut out = String::from(
        "t_s,full_scans,pages_shared,pages_sharing,pages_unshared,pages_volatile,ksm_zero_pages,general_profit,cow_ksm,ksmd_cpu_percent,merges,merges_per_s,cow_ksm_per_s",
    );
    for (pid, comm) in process_columns(rec) {
        out.push_str(&format!(",ksm_merging_pages:{comm}[{pid}]"));
    }
    out.push('\n');
    for r in rows(rec) {
        out.push_str(&format!(
            "{:.3},{},{},{},{},{},{},{},{},{:.2},{},{:.1},{:.1}",
            r.t_s,
            r.full_scans,
            r.pages_shared,
            r.pages_sharing,
            r.pages_unshared,
            r.pages_volatile,
            cell(r.ksm_zero_pages),
            cell(r.general_profit),
            r.cow_ksm,
            r.ksmd_cpu_percent,
            r.merges,
            r.merges_per_s,
            r.cow_ksm_per_s
        ));
        for p in &r.processes {
            out.push(',');
            if let Some(v) = p {
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// A counter the kernel may not have: an empty cell, never 0, where it does not.
fn cell(v: Option<i64>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}
