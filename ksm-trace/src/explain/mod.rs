//! `ksm-trace explain`: why memory is not merged. A funnel per process (summed per guest or
//! cgroup): anonymous private memory → opted in (VmFlags `mg`) → known to KSM (rmap items) →
//! merged, and every opted-in page that is not merged counted under one reason, never guessed:
//! in a huge page not split yet, swapped out, zero-filled, identical to another page but not
//! merged yet, or unique among the processes read. Beside the funnel what KSM never merges —
//! shared mappings (named) and hugetlbfs — and what holds for the whole machine (KSM off,
//! rmap items far above merged pages). "Identical" comes from hashing the contents of the
//! unmerged pages (and of the KSM pages), read through /proc/<pid>/mem: hashes only stay, in
//! this process's memory; nothing is written. A host with more opted-in memory than the budget
//! (`--max-pages`) is read as a uniform random sample, and what the contents decide is then an
//! estimate with its 95 % interval (`--full` reads every page).
pub mod contents;
pub mod smaps;
pub mod text;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::kernel::{
    KsmStat,
    process::{By, ProcessIdentity},
};
use contents::{ContentCounts, PageClass, Reading};
use smaps::Vma;

/// A process read: who it is, its funnel, and its mappings KSM never merges (name, pages).
type ProcessRead = (ProcessIdentity, Funnel, Vec<(String, u64)>);

/// A process and the text of its /proc/<pid>/smaps.
type ProcessSmaps = (u32, String);

/// What `explain` was asked for.
pub struct ExplainOptions {
    /// These processes only (with `vms`, also the guests named); empty: every process with
    /// memory opted in to KSM.
    pub pids: Vec<u32>,
    pub vms: Vec<String>,
    pub by: By,
    /// Name every mapping that holds a reason.
    pub vmas: bool,
    /// Read about this many pages' contents: beyond it, a uniform random sample of that size.
    /// None: read every page.
    pub max_pages: Option<u64>,
    /// The sample's seed (the same seed on the same memory takes the same sample).
    pub seed: Option<u64>,
    pub json: bool,
}

/// Pages of one process (or group), by where they stand.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Funnel {
    pub name: String,
    pub pids: Vec<u32>,
    /// Resident anonymous memory of its private mappings.
    pub anon_private: u64,
    /// Of it, in mappings opted in to KSM.
    pub opted_in: u64,
    /// ksm_rmap_items: the pages KSM has met in its scans.
    pub known: u64,
    /// Mapped to KSM pages now (a page table walk; ksm_merging_pages says the same).
    pub merged: u64,
    pub ksm_merging_pages: u64,
    /// Merged with the kernel's zero page (use_zero_pages).
    pub zero_page_merges: u64,
    /// Opted-in pages not merged, by reason (see [`PageClass`]); what the contents decide is
    /// estimated from `content` when it is a sample.
    pub not_merged: BTreeMap<&'static str, u64>,
    /// With a sample: each estimated reason's 95 % interval, in pages.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_merged_95: BTreeMap<&'static str, [u64; 2]>,
    /// The unmerged pages that could be read, how many were, and what their contents showed.
    pub content: ContentCounts,
    /// Anonymous private memory not opted in.
    pub not_opted_in: u64,
    /// Resident pages of shared mappings, hugetlbfs, and the file pages (page cache) of
    /// private file mappings: KSM never merges them (it merges anonymous memory only).
    pub shared_mapping: u64,
    pub hugetlbfs: u64,
    pub file_backed: u64,
    /// The mappings behind those (with `--vmas`, or the largest few).
    pub never_merged_vmas: Vec<(String, u64)>,
    /// rmap items per merged page, when over 64: the kernel documents the process's profit
    /// as negative then.
    pub rmap_ratio_over_64: Option<f64>,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// Machine-wide: KSM's state and knobs that decide what merges.
    pub run: i64,
    pub use_zero_pages: bool,
    pub smart_scan: Option<bool>,
    pub max_page_sharing: i64,
    /// KSM pages beyond the first for a content mapped more than max_page_sharing times: the
    /// kernel's stable_node_dups (every KSM page of such a content) less stable_node_chains
    /// (one per content), where the kernel has them.
    pub ksm_pages_over_max_sharing: Option<u64>,
    pub groups: Vec<Funnel>,
    pub reading: Reading,
    /// Pages merging everything identical would still save (from a sample: an estimate that
    /// can only under-count, see [`contents::Reader::would_save`]).
    pub would_save_pages: u64,
    pub page_size: u64,
    /// Processes that exited while they were read.
    pub exited: Vec<u32>,
}

/// Explains the processes `o` names.
pub fn explain(o: &ExplainOptions) -> Result<Explanation> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "ksm-trace explain reads other processes' page tables and memory: run it as root, e.g. with sudo"
        );
    }
    if !std::path::Path::new(crate::kernel::sysfs::KSM_DIR).exists() {
        bail!("this kernel has no KSM (/sys/kernel/mm/ksm is missing): nothing to explain");
    }
    // Which pages are KSM pages comes from /proc/kpageflags, which some kernels get wrong.
    crate::kernel::pagemap::kpf_ksm_is_truthful()?;
    let knobs = crate::kernel::sysfs::read_all().unwrap_or_default();
    let knob = |k: &str| knobs.get(k).copied();
    let use_zero_pages = knob("use_zero_pages") == Some(1);
    let (candidates, mut exited) = candidates(o)?;
    // The mappings first: how many pages there are decides how many are read.
    let mut mapped: Vec<(ProcessRead, Vec<Vma>)> = candidates
        .into_iter()
        .map(|(pid, smaps)| {
            let vmas = smaps::parse(&smaps);
            (mappings(pid, &vmas, o.vmas), vmas)
        })
        .collect();
    let unmerged: u64 = mapped
        .iter()
        .map(|((_, f, _), _)| f.opted_in.saturating_sub(f.ksm_merging_pages))
        .sum();
    let ksm_pages = knob("pages_shared").unwrap_or(0).max(0) as u64;
    let seed = o.seed.unwrap_or_else(|| fastrand::u64(..));
    let plan = contents::Plan::new(o.max_pages, unmerged, ksm_pages, seed);
    let planned = (plan.rate * unmerged as f64 + plan.ksm_rate * ksm_pages as f64) as u64;
    let mut reading = contents::Reader::new(plan, o.max_pages, planned)?;
    mapped.retain(|((identity, _, _), vmas)| {
        let opted: Vec<&Vma> = vmas
            .iter()
            .filter(|v| v.mergeable() && !v.shared() && !v.hugetlb())
            .collect();
        let read = opted.is_empty() || reading.walk(identity.pid, &opted);
        if !read {
            exited.push(identity.pid);
        }
        read
    });
    reading.finish();
    // Place each process's pages now that every content has been seen.
    let mut per_process: Vec<ProcessRead> = mapped.into_iter().map(|(p, _)| p).collect();
    for (identity, f, _) in &mut per_process {
        let pid = identity.pid;
        for (class, n) in reading.placed(pid) {
            match class {
                PageClass::Merged => f.merged += n,
                other => *f.not_merged.entry(other.key()).or_default() += n,
            }
        }
        f.content = reading.contents(pid);
        if f.merged > 0 && f.known as f64 / f.merged as f64 > 64.0 {
            f.rmap_ratio_over_64 = Some(f.known as f64 / f.merged as f64);
        }
    }
    let mut groups = group(per_process, o.by);
    for g in &mut groups {
        for e in g.content.estimates(plan.ksm_rate < 1.0) {
            *g.not_merged.entry(e.key).or_default() += e.pages;
            if let Some((lo, hi)) = e.interval {
                g.not_merged_95.insert(e.key, [lo, hi]);
            }
        }
    }
    exited.sort_unstable();
    Ok(Explanation {
        run: knob("run").unwrap_or(0),
        use_zero_pages,
        smart_scan: knob("smart_scan").map(|v| v == 1),
        max_page_sharing: knob("max_page_sharing").unwrap_or(0),
        ksm_pages_over_max_sharing: knob("stable_node_dups")
            .zip(knob("stable_node_chains"))
            .map(|(dups, chains)| (dups - chains).max(0) as u64),
        groups,
        would_save_pages: reading.would_save(use_zero_pages),
        reading: reading.summary(),
        page_size: crate::kernel::page_size(),
        exited,
    })
}

/// A process's funnel as far as its mappings and KSM's accounting tell, naming every mapping
/// KSM never merges (`all_vmas`) or the largest three shared ones and three file ones.
fn mappings(pid: u32, vmas: &[Vma], all_vmas: bool) -> ProcessRead {
    let stat = KsmStat::read(pid).unwrap_or_default();
    let mut f = Funnel {
        pids: vec![pid],
        known: stat.ksm_rmap_items,
        ksm_merging_pages: stat.ksm_merging_pages,
        zero_page_merges: stat.ksm_zero_pages,
        ..Default::default()
    };
    let page_kib = crate::kernel::page_size() / 1024;
    let (mut shared, mut files) = (Vec::new(), Vec::new());
    for v in vmas {
        if v.hugetlb() {
            f.hugetlbfs += v.hugetlb_kib / page_kib;
            shared.push((v.name(), v.hugetlb_kib / page_kib));
        } else if v.shared() {
            f.shared_mapping += v.rss_kib / page_kib;
            if v.rss_kib > 0 {
                shared.push((v.name(), v.rss_kib / page_kib));
            }
        } else {
            f.anon_private += v.anonymous_kib / page_kib;
            if v.mergeable() {
                f.opted_in += v.anonymous_kib / page_kib;
            }
            // A mapped file's pages not yet copied on write: page cache, never merged.
            let file_pages = v.rss_kib.saturating_sub(v.anonymous_kib) / page_kib;
            if v.path.starts_with('/') && file_pages > 0 {
                f.file_backed += file_pages;
                files.push((v.name(), file_pages));
            }
        }
    }
    f.not_opted_in = f.anon_private - f.opted_in;
    let keep = if all_vmas { usize::MAX } else { 3 };
    for list in [&mut shared, &mut files] {
        list.sort_by_key(|v| std::cmp::Reverse(v.1));
        list.truncate(keep);
    }
    shared.extend(files);
    (ProcessIdentity::read(pid), f, shared)
}

/// The processes asked for, each with the text of its smaps (read once), and those that were
/// gone before it could be read. By default every process with memory opted in to KSM (a
/// mapping marked `mg`, or KSM's own accounting), and every QEMU guest.
fn candidates(o: &ExplainOptions) -> Result<(Vec<ProcessSmaps>, Vec<u32>)> {
    let mut pids = o.pids.clone();
    let all_pids = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&pid| pid != std::process::id())
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in &o.vms {
        let found: Vec<u32> = all_pids()
            .into_iter()
            .filter(|&pid| ProcessIdentity::read(pid).guest.as_deref() == Some(name.as_str()))
            .collect();
        if found.is_empty() {
            bail!(
                "no running guest is named {name:?} (QEMU's -name): see `ksm-trace sharing --now --by guest`"
            );
        }
        pids.extend(found);
    }
    for &pid in &o.pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("no process {pid}: give the pid of a running process");
        }
    }
    let asked = !pids.is_empty();
    if !asked {
        pids = all_pids();
    }
    pids.sort_unstable();
    pids.dedup();
    let (mut found, mut gone) = (Vec::new(), Vec::new());
    for pid in pids {
        match std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
            // QEMU guests too: a VMM whose guest RAM is a shared mapping has madvised it in
            // vain, and nothing marks it (MADV_MERGEABLE on a shared mapping sets no flag).
            Ok(smaps)
                if asked || opted_in(pid, &smaps) || ProcessIdentity::read(pid).guest.is_some() =>
            {
                found.push((pid, smaps))
            }
            Ok(_) => {}
            Err(_) if asked => gone.push(pid),
            Err(_) => {}
        }
    }
    Ok((found, gone))
}

/// Whether any of `pid`'s mappings is opted in (`smaps`, its text), or KSM tracks it.
fn opted_in(pid: u32, smaps: &str) -> bool {
    KsmStat::read(pid).is_ok_and(|s| s.ksm_rmap_items > 0 || s.ksm_merging_pages > 0)
        || smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.contains(" mg"))
}

/// The processes' funnels summed per group (`By::Process`: one each).
fn group(per_process: Vec<ProcessRead>, by: By) -> Vec<Funnel> {
    let mut groups: BTreeMap<String, Funnel> = BTreeMap::new();
    for (identity, f, shared) in per_process {
        let name = by.group(&identity);
        let g = groups.entry(name.clone()).or_default();
        g.name = name;
        g.pids.extend(&f.pids);
        g.anon_private += f.anon_private;
        g.opted_in += f.opted_in;
        g.known += f.known;
        g.merged += f.merged;
        g.ksm_merging_pages += f.ksm_merging_pages;
        g.zero_page_merges += f.zero_page_merges;
        g.not_opted_in += f.not_opted_in;
        g.shared_mapping += f.shared_mapping;
        g.hugetlbfs += f.hugetlbfs;
        g.file_backed += f.file_backed;
        for (k, v) in f.not_merged {
            *g.not_merged.entry(k).or_default() += v;
        }
        g.content.add(&f.content);
        let pid = identity.pid;
        g.never_merged_vmas
            .extend(shared.into_iter().map(|(n, p)| (format!("[{pid}] {n}"), p)));
        g.rmap_ratio_over_64 = match (g.rmap_ratio_over_64, f.rmap_ratio_over_64) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let mut out: Vec<Funnel> = groups.into_values().collect();
    out.sort_by(|a, b| {
        b.opted_in
            .cmp(&a.opted_in)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// `explain` as text or JSON.
pub fn run(o: &ExplainOptions) -> Result<String> {
    let e = explain(o)?;
    if o.json {
        return Ok(serde_json::to_string_pretty(&e)? + "\n");
    }
    Ok(text::render(&e))
}
