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
        // Old index → new index, for the sharers kept.
        let mut sharers = Vec::new();
        let index: Vec<Option<usize>> = self
            .sharers
            .iter()
            .map(|s| {
                keep(s.pid).then(|| {
                    sharers.push(s.clone());
                    sharers.len() - 1
                })
            })
            .collect();
        let pages = self
            .pages
            .iter()
            .filter_map(|(&pfn, list)| {
                let list: Vec<usize> = list.iter().filter_map(|&i| index[i]).collect();
                (!list.is_empty()).then_some((pfn, list))
            })
            .collect();
        Snapshot { sharers, pages }
    }

    /// KSM page pfn → the pids mapping it.
    pub fn pids_by_page(&self) -> BTreeMap<u64, BTreeSet<u32>> {
        self.pages
            .iter()
            .map(|(&pfn, list)| (pfn, list.iter().map(|&i| self.sharers[i].pid).collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keeps_the_chosen_sharers_mappings_and_reindexes_them() {
        let s = Snapshot {
            sharers: [10, 20, 30]
                .map(|p| ProcessIdentity::made_up(p, "/"))
                .to_vec(),
            // pfn 1: 10 twice and 30; pfn 2: 20 only.
            pages: [(1, vec![0, 0, 2]), (2, vec![1])].into(),
        };
        let kept = s.only(|pid| pid != 20);
        assert_eq!(
            kept.sharers.iter().map(|s| s.pid).collect::<Vec<_>>(),
            [10, 30]
        );
        assert_eq!(kept.pages, [(1, vec![0, 0, 1])].into());
    }
}
