//! `ksm-trace sharing --now`: who shares KSM pages with whom on this machine right now — by
//! process, guest or cgroup — how many pages are shared by exactly k processes, and, given
//! trust domains, how much memory is shared across a domain boundary. From a snapshot of page
//! tables ([`snapshot`]); no tracing, no knob changed.
pub mod heatmap;
pub mod matrix;
pub mod snapshot;

use std::fmt::Write as _;

use anyhow::{Result, bail};

pub use matrix::{By, Matrix};
pub use snapshot::Snapshot;

/// Takes the snapshot and renders it as text or JSON (and the heatmap SVG to `svg`).
pub fn run(
    by: By,
    domains: &[String],
    pids: &[u32],
    json: bool,
    svg: Option<&std::path::Path>,
) -> Result<String> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "ksm-trace sharing reads other processes' page tables: run it as root, e.g. with sudo"
        );
    }
    if !std::path::Path::new("/proc/kpageflags").exists() {
        bail!(
            "this kernel has no /proc/kpageflags (CONFIG_PROC_PAGE_MONITOR=n): the snapshot cannot tell KSM pages"
        );
    }
    let started = std::time::Instant::now();
    let snapshot = Snapshot::take(pids);
    let matrix = Matrix::build(&snapshot, by, domains);
    let elapsed = started.elapsed();
    if let Some(path) = svg {
        heatmap::svg(&matrix, path)?;
    }
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "processes": snapshot.sharers.len(),
            "snapshot_ms": elapsed.as_secs_f64() * 1e3,
            "matrix": matrix,
        }))? + "\n");
    }
    Ok(render(&snapshot, &matrix, domains, elapsed))
}

fn render(
    snapshot: &Snapshot,
    m: &Matrix,
    domains: &[String],
    elapsed: std::time::Duration,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "KSM pages mapped right now: {} distinct, by {} processes in {} groups (snapshot of their page tables, {:.0} ms)",
        m.ksm_pages,
        snapshot.sharers.len(),
        m.groups.len(),
        elapsed.as_secs_f64() * 1e3
    );
    let _ = writeln!(o, "\nPages shared by exactly k processes:");
    for (k, pages) in &m.pages_by_sharers {
        let _ = writeln!(o, "  k={k:<4} {pages:>10}");
    }
    let _ = writeln!(o, "\nKSM pages per group:");
    for (g, pages) in m.groups.iter().zip(&m.group_pages) {
        let _ = writeln!(o, "  {pages:>10}  {g}");
    }
    let _ = writeln!(o, "\nShared between groups (most first):");
    if m.pairs.is_empty() {
        let _ = writeln!(o, "  (no KSM page is mapped by two groups)");
    }
    for (a, b, n) in m.pairs.iter().take(20) {
        let _ = writeln!(o, "  {n:>10}  {a}  ↔  {b}");
    }
    if !domains.is_empty() {
        let _ = writeln!(
            o,
            "\nAcross trust domains ({}): {} KSM pages are mapped from more than one domain — memory whose merging one domain can observe by timing its own writes",
            domains.join(", "),
            m.cross_domain_pages
        );
        for (a, b, n) in &m.cross_domain {
            let _ = writeln!(o, "  {n:>10}  {a}  ↔  {b}");
        }
    }
    let _ = writeln!(
        o,
        "\nZero-page merges (use_zero_pages) map the shared zero page, which is not a KSM page: they are not in these figures."
    );
    o
}
