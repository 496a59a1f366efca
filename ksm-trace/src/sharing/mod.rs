//! `ksm-trace sharing`: who shares KSM pages with whom — by process, guest or cgroup — how
//! many pages are shared by exactly k processes, and, given trust domains, how much memory is
//! shared across a domain boundary. Either now, from a snapshot of page tables ([`snapshot`];
//! no tracing, no knob changed), or from a recording, whose merge events give the traced
//! matrix, reconciled with the snapshot `record` takes at the window's end ([`sets`]).
pub mod heatmap;
pub mod matrix;
pub mod savings;
pub mod savings_table;
pub mod sets;
pub mod snapshot;

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Result, bail};

pub use matrix::{By, Matrix};
use savings::Savings;
use snapshot::Sharer;
pub use snapshot::Snapshot;

use crate::recording::{
    Recording,
    schema::{SharerSet, SharingRecord},
};

/// Where the matrix comes from.
pub enum Source<'a> {
    /// A snapshot of these processes' page tables now (every process with KSM pages if empty).
    Now { pids: &'a [u32] },
    /// A recording; `snapshot`: its end snapshot instead of the traced matrix.
    Recording { path: &'a Path, snapshot: bool },
}

/// How to show the matrix.
pub struct View<'a> {
    pub by: By,
    pub domains: &'a [String],
    pub json: bool,
    /// Also draw the heatmap (SVG) here.
    pub svg: Option<&'a Path>,
}

/// Builds the matrix from `source` and renders it as text or JSON (and the heatmap).
pub fn run(source: Source, view: &View) -> Result<String> {
    let (sharers, sets, header, mut extra, savings) = match source {
        Source::Now { pids } => now(pids)?,
        Source::Recording { path, snapshot } => recorded(path, snapshot)?,
    };
    let matrix = Matrix::build(&sharers, &sets, view.by, view.domains);
    if let Some(path) = view.svg {
        heatmap::svg(&matrix, path)?;
    }
    if view.json {
        extra.insert("matrix".into(), serde_json::to_value(&matrix)?);
        if let Some(savings) = &savings {
            extra.insert("savings".into(), serde_json::to_value(savings)?);
        }
        return Ok(serde_json::to_string_pretty(&extra)? + "\n");
    }
    let mut text = render(&header, &matrix, view.domains);
    if let Some(savings) = &savings {
        text += &savings_table::text(savings, |pid| {
            sharers
                .get(&pid)
                .map_or_else(|| pid.to_string(), |w| view.by.group(w))
        });
    }
    Ok(text)
}

type Built = (
    BTreeMap<u32, Sharer>,
    Vec<SharerSet>,
    String,
    serde_json::Map<String, serde_json::Value>,
    Option<Savings>,
);

fn now(pids: &[u32]) -> Result<Built> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "ksm-trace sharing reads other processes' page tables: run it as root, e.g. with sudo"
        );
    }
    if !Path::new("/proc/kpageflags").exists() {
        bail!(
            "this kernel has no /proc/kpageflags (CONFIG_PROC_PAGE_MONITOR=n): the snapshot cannot tell KSM pages"
        );
    }
    let started = std::time::Instant::now();
    // Every process with KSM pages, whatever `pids` says: a page's split counts all its
    // sharers. The matrix and the rows shown are then those of `pids`.
    let all = Snapshot::take(&[]);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let mut savings = Savings::now(&all);
    let snapshot = if pids.is_empty() {
        all
    } else {
        savings.processes.retain(|p| pids.contains(&p.pid));
        all.only(|pid| pids.contains(&pid))
    };
    let sets = sets::fold(snapshot.pids_by_page().into_values());
    let header = format!(
        "KSM pages mapped right now: {{pages}} distinct, by {} processes in {{groups}} groups (snapshot of their page tables, {ms:.0} ms)",
        snapshot.sharers.len(),
    );
    let extra = serde_json::json!({
        "source": "snapshot",
        "processes": snapshot.sharers.len(),
        "snapshot_ms": ms,
    });
    let mut sharers: BTreeMap<u32, Sharer> =
        snapshot.sharers.into_iter().map(|s| (s.pid, s)).collect();
    for p in &savings.processes {
        sharers
            .entry(p.pid)
            .or_insert_with(|| crate::kernel::process::ProcessIdentity::read(p.pid));
    }
    Ok((sharers, sets, header, object(extra), Some(savings)))
}

fn recorded(path: &Path, use_snapshot: bool) -> Result<Built> {
    let rec = Recording::read(path)?;
    let Some(sharing) = &rec.sharing else {
        bail!(
            "{} holds no sharing matrix (recorded before format version 5): record again, or take a snapshot now with `ksm-trace sharing --now`",
            path.display()
        );
    };
    let sharers = sharers_of(&rec);
    let end = sharing.end_snapshot.as_ref();
    let mut extra = object(serde_json::json!({
        "source": if use_snapshot { "end snapshot" } else { "traced" },
        "recording": path.display().to_string(),
        "left_silently": end.map(|e| e.left_silently),
        "merged_before": end.map(|e| e.merged_before),
        "snapshot_ms": end.map(|e| e.took_ms),
    }));
    let (sets, header) = match (use_snapshot, end) {
        (true, None) => bail!(
            "{} has no end snapshot (the recording kernel had no /proc/kpageflags): leave out --snapshot for the traced matrix",
            path.display()
        ),
        (true, Some(end)) => (
            end.sets.clone(),
            format!(
                "KSM pages the recorded processes mapped at the window's end: {{pages}} distinct, in {{groups}} groups (snapshot of their page tables, {:.0} ms; {} page mappings predate the window)",
                end.took_ms, end.merged_before
            ),
        ),
        (false, Some(end)) => (
            traced_sets(sharing).to_vec(),
            format!(
                "KSM pages merged in the window and still mapped at its end: {{pages}} distinct, in {{groups}} groups (from the merge events, reconciled with the end snapshot: {} sharers had left without an event; {} page mappings that predate the window are in --snapshot)",
                end.left_silently, end.merged_before
            ),
        ),
        (false, None) => (
            traced_sets(sharing).to_vec(),
            "KSM pages merged in the window: {pages} distinct, in {groups} groups (from the merge events alone: no end snapshot on this kernel, so sharers that left without an event (a write, MADV_UNMERGEABLE, exit) are still counted)".to_string(),
        ),
    };
    extra.insert(
        "traced_pages".into(),
        sharing.traced.iter().map(|s| s.pages).sum::<u64>().into(),
    );
    Ok((sharers, sets, header, extra, None))
}

/// Who each recorded process was (a cgroup not read because the process had gone: `(gone)`).
pub fn sharers_of(rec: &Recording) -> BTreeMap<u32, Sharer> {
    rec.processes
        .iter()
        .map(|p| {
            let who = Sharer {
                pid: p.pid,
                comm: p.stats.comm.clone(),
                cgroup: p.cgroup.clone().unwrap_or_else(|| "(gone)".into()),
                guest: p.guest.clone(),
            };
            (p.pid, who)
        })
        .collect()
}

/// The traced matrix of a recording, grouped `by` (None: sharing not recorded).
pub fn traced_matrix(rec: &Recording, by: By) -> Option<Matrix> {
    let sharing = rec.sharing.as_ref()?;
    Some(Matrix::build(
        &sharers_of(rec),
        traced_sets(sharing),
        by,
        &[],
    ))
}

/// The traced matrix's sets: reconciled with the end snapshot where there is one.
pub fn traced_sets(sharing: &SharingRecord) -> &[SharerSet] {
    match &sharing.end_snapshot {
        Some(end) => &end.traced_still_mapped,
        None => &sharing.traced,
    }
}

fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// `header` names the source; `{pages}` and `{groups}` in it are filled from the matrix.
fn render(header: &str, m: &Matrix, domains: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}",
        header
            .replace("{pages}", &m.ksm_pages.to_string())
            .replace("{groups}", &m.groups.len().to_string())
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
