//! `ksm-trace sharing`: who shares KSM pages with whom — by process, guest or cgroup — how
//! many pages are shared by exactly k processes, and, given trust domains, how much memory is
//! shared across a domain boundary. Either now, from a snapshot of page tables ([`snapshot`];
//! no tracing, no knob changed), or from a recording, whose merge events give the traced
//! matrix, reconciled with the snapshot `record` takes at the window's end ([`sets`]).
pub mod heatmap;
pub mod matrix;
pub mod savings;
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
    schema::{KsmStat, SharerSet, SharingRecord},
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
        text += &render_savings(savings, &sharers, view.by);
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
    let snapshot = Snapshot::take(pids);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let savings = savings_now(&snapshot, pids);
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

/// The split of the snapshot's KSM pages, with the ksm_stat of every process KSM tracks (or of
/// `pids`) and the machine's counters read just after the page tables.
fn savings_now(snapshot: &Snapshot, pids: &[u32]) -> Savings {
    let mut stats = KsmStat::tracked();
    if !pids.is_empty() {
        stats.retain(|pid, _| pids.contains(pid));
    }
    let ksm = crate::kernel::sysfs::read_all().unwrap_or_default();
    use procfs::Current as _;
    let available = procfs::Meminfo::current()
        .ok()
        .and_then(|m| m.mem_available);
    Savings::split(
        snapshot,
        &stats,
        &ksm,
        crate::kernel::page_size(),
        available,
    )
}

/// What each group saves and owes, against the kernel's own figures.
fn render_savings(s: &Savings, sharers: &BTreeMap<u32, Sharer>, by: By) -> String {
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let page = s.page_size as f64;
    let mut groups: BTreeMap<String, (f64, i64, i64, u64)> = BTreeMap::new();
    for p in &s.processes {
        let name = sharers
            .get(&p.pid)
            .map_or_else(|| p.pid.to_string(), |w| by.group(w));
        let g = groups.entry(name).or_default();
        g.0 += p.saved_pages + p.zero_pages as f64;
        g.1 += p.saved_bytes;
        g.2 += p.kernel_profit_bytes;
        g.3 += p.owes_pages;
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nWhat each saves and owes (a KSM page mapped m times saves m − 1 pages, credited (m − 1)/m to each mapping; zero-page merges a page each; less {} B of rmap item per page KSM tracks):",
        s.rmap_item_bytes
    );
    let _ = writeln!(
        o,
        "  {:>12} {:>12} {:>14} {:>12}  group",
        "saved pages", "net MiB", "kernel's MiB", "owes MiB"
    );
    for (name, (pages, bytes, kernel, owes)) in &rows {
        let _ = writeln!(
            o,
            "  {pages:>12.1} {:>12.2} {:>14.2} {:>12.2}  {name}",
            mib(*bytes as f64),
            mib(*kernel as f64),
            mib(*owes as f64 * page)
        );
    }
    let _ = writeln!(
        o,
        "  (net: what the group saves less its rmap items; kernel's: ksm_process_profit summed, which credits every merged mapping a whole page; owes: what the host must find if the group wrote all its merged pages now)"
    );
    let _ = writeln!(
        o,
        "\nSplit saved pages: {:.1} of pages_sharing {}{}",
        s.saved_pages,
        s.pages_sharing,
        if s.stale_pages.abs() >= 0.5 {
            format!(
                "; {:.0} are stale: KSM pages of processes that exited or unmapped them since ksmd last passed (it drops their rmap items then)",
                s.stale_pages
            )
        } else {
            " (all of it)".into()
        }
    );
    let _ = writeln!(
        o,
        "Net saving: {:.2} MiB; general_profit {}; the kernel's per-process profits sum to {:.2} MiB ({:+.2} MiB against the exact split)",
        mib(s.saved_bytes as f64),
        s.general_profit
            .map_or("not on this kernel".into(), |g| format!(
                "{:.2} MiB",
                mib(g as f64)
            )),
        mib(s.kernel_profit_bytes as f64),
        mib((s.kernel_profit_bytes - s.saved_bytes) as f64)
    );
    let storm = mib(s.storm_pages as f64 * page);
    match s.mem_available_bytes {
        Some(avail) if s.storm_exceeds_available() => {
            let _ = writeln!(
                o,
                "WARNING: a COW storm (every merged page written now) needs {storm:.2} MiB, more than the {:.2} MiB available: the host would reclaim, swap or OOM",
                mib(avail as f64)
            );
        }
        Some(avail) => {
            let _ = writeln!(
                o,
                "COW storm (every merged page written now): {storm:.2} MiB to find, of {:.2} MiB available ({:.1} %)",
                mib(avail as f64),
                storm / mib(avail as f64) * 100.0
            );
        }
        None => {
            let _ = writeln!(
                o,
                "COW storm (every merged page written now): {storm:.2} MiB to find"
            );
        }
    }
    o
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
