//! Who maps which KSM page right now, without tracing: for every process the kernel counts
//! KSM pages for (ksm_stat), the pfns behind its private mappings (/proc/<pid>/pagemap) that
//! /proc/kpageflags marks KSM. Root only; reads, never writes.
use std::collections::{BTreeMap, BTreeSet};

use crate::kernel::{
    KsmStat,
    pagemap::{KsmPages, private_ranges},
    process::ProcessIdentity,
};

/// One process that maps KSM pages.
pub type Sharer = ProcessIdentity;

/// KSM page (pfn) → its mappings: the process of each (an index into `sharers`, once per
/// address, so a process mapping the page twice is in it twice).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sharers: Vec<Sharer>,
    pub pages: BTreeMap<u64, Vec<usize>>,
}

impl Snapshot {
    /// Every process with KSM pages (or only `pids`, when given).
    pub fn take(pids: &[u32]) -> Snapshot {
        let candidates: Vec<u32> = if pids.is_empty() {
            KsmStat::tracked_processes()
        } else {
            pids.to_vec()
        };
        let mut snapshot = Snapshot::default();
        let mut pfns = Vec::new();
        for pid in candidates {
            if !KsmStat::read(pid).is_ok_and(|s| s.ksm_merging_pages > 0) {
                continue;
            }
            let Ok(map) = KsmPages::open(Some(pid)) else {
                continue; // exited meanwhile
            };
            pfns.clear();
            for (start, end) in private_ranges(pid) {
                map.ksm_pfns(start, end, &mut pfns);
            }
            if pfns.is_empty() {
                continue;
            }
            let index = snapshot.sharers.len();
            snapshot.sharers.push(ProcessIdentity::read(pid));
            for &pfn in &pfns {
                snapshot.pages.entry(pfn).or_default().push(index);
            }
        }
        snapshot
    }

    /// The same pages, as far as the processes `keep` accepts map them.
    pub fn only(&self, keep: impl Fn(u32) -> bool) -> Snapshot {
        let kept: Vec<Option<usize>> = {
            let mut next = 0;
            self.sharers
                .iter()
                .map(|s| {
                    keep(s.pid).then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect()
        };
        Snapshot {
            sharers: self
                .sharers
                .iter()
                .filter(|s| keep(s.pid))
                .cloned()
                .collect(),
            pages: self
                .pages
                .iter()
                .filter_map(|(&pfn, list)| {
                    let list: Vec<usize> = list.iter().filter_map(|&i| kept[i]).collect();
                    (!list.is_empty()).then_some((pfn, list))
                })
                .collect(),
        }
    }

    /// KSM page pfn → the pids mapping it.
    pub fn pids_by_page(&self) -> BTreeMap<u64, BTreeSet<u32>> {
        self.pages
            .iter()
            .map(|(&pfn, list)| (pfn, list.iter().map(|&i| self.sharers[i].pid).collect()))
            .collect()
    }
}
