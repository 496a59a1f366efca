//! Who maps each KSM page, as a recording keeps it: the distinct sets of processes that map
//! the same pages, and how many pages each set maps. Every figure of the matrix (pairs, group
//! totals, pages shared by k, trust domains) depends on a page only through its set of sharers,
//! so sets lose nothing and keep a recording small: a handful of rows instead of one per page.
//!
//! The traced sets come from the merge events (pfn of the KSM page → the processes that merged
//! into it, less those the kernel reported leaving). A sharer that leaves a KSM page others
//! still map (a write breaks COW, MADV_UNMERGEABLE, exit) fires no tracepoint, so at the
//! window's end the traced sets are reconciled against a snapshot of the same processes' page
//! tables: a traced sharer the snapshot does not show on that page has left silently.
use std::collections::{BTreeMap, BTreeSet};

use super::snapshot::Snapshot;
use crate::recording::schema::{SharerSet, SharingRecord, SharingSnapshot};

/// Counts identical sharer sets, largest first (a page mapped by no one is skipped).
pub fn fold(pages: impl IntoIterator<Item = BTreeSet<u32>>) -> Vec<SharerSet> {
    let mut counts: BTreeMap<Vec<u32>, u64> = BTreeMap::new();
    for set in pages {
        if !set.is_empty() {
            *counts.entry(set.into_iter().collect()).or_default() += 1;
        }
    }
    let mut sets: Vec<SharerSet> = counts
        .into_iter()
        .map(|(pids, pages)| SharerSet { pids, pages })
        .collect();
    sets.sort_by(|a, b| b.pages.cmp(&a.pages).then_with(|| a.pids.cmp(&b.pids)));
    sets
}

/// The recording's sharing from `traced` (KSM page pfn → the processes the events say map it)
/// and, where the kernel allows one, the snapshot of the same processes taken at the window's
/// end and how long it took.
pub fn record(
    traced: BTreeMap<u64, BTreeSet<u32>>,
    snapshot: Option<(&Snapshot, f64)>,
) -> SharingRecord {
    let end_snapshot = snapshot.map(|(snapshot, took_ms)| {
        let mapped = snapshot.pids_by_page();
        let mut left_silently = 0;
        let still_mapped = fold(traced.iter().map(|(pfn, sharers)| {
            let now = mapped.get(pfn);
            let kept: BTreeSet<u32> = sharers
                .iter()
                .copied()
                .filter(|pid| now.is_some_and(|n| n.contains(pid)))
                .collect();
            left_silently += (sharers.len() - kept.len()) as u64;
            kept
        }));
        let merged_before = mapped
            .iter()
            .map(|(pfn, now)| {
                let seen = traced.get(pfn);
                now.iter()
                    .filter(|pid| !seen.is_some_and(|s| s.contains(pid)))
                    .count() as u64
            })
            .sum();
        SharingSnapshot {
            sets: fold(mapped.into_values()),
            took_ms,
            traced_still_mapped: still_mapped,
            left_silently,
            merged_before,
            savings: None,
        }
    });
    SharingRecord {
        traced: fold(traced.into_values()),
        end_snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::process::ProcessIdentity;

    fn set(pids: &[u32]) -> BTreeSet<u32> {
        pids.iter().copied().collect()
    }

    fn sharer(pid: u32) -> ProcessIdentity {
        ProcessIdentity::made_up(pid, "/")
    }

    #[test]
    fn identical_sets_fold_into_one_row() {
        let sets = fold([set(&[2, 1]), set(&[1, 2]), set(&[3]), set(&[])]);
        assert_eq!(
            sets,
            [
                SharerSet {
                    pids: vec![1, 2],
                    pages: 2
                },
                SharerSet {
                    pids: vec![3],
                    pages: 1
                }
            ]
        );
    }

    #[test]
    fn the_snapshot_reconciles_silent_departures_and_earlier_merges() {
        // Traced: page 10 merged by 1 and 2, page 11 by 1, 2 and 3.
        let traced: BTreeMap<u64, BTreeSet<u32>> =
            [(10, set(&[1, 2])), (11, set(&[1, 2, 3]))].into();
        // At the end: 3 wrote its copy of page 11 (COW, no event); page 12 was merged by 1
        // and 2 before tracing began.
        let snapshot = Snapshot {
            sharers: vec![sharer(1), sharer(2), sharer(3)],
            pages: [(10, vec![0, 1]), (11, vec![0, 1]), (12, vec![0, 1])].into(),
        };
        let rec = record(traced, Some((&snapshot, 1.5)));
        assert_eq!(
            rec.traced,
            [
                SharerSet {
                    pids: vec![1, 2],
                    pages: 1
                },
                SharerSet {
                    pids: vec![1, 2, 3],
                    pages: 1
                }
            ]
        );
        let end = rec.end_snapshot.unwrap();
        assert_eq!(end.left_silently, 1);
        assert_eq!(end.merged_before, 2);
        assert_eq!(
            end.traced_still_mapped,
            [SharerSet {
                pids: vec![1, 2],
                pages: 2
            }]
        );
        assert_eq!(
            end.sets,
            [SharerSet {
                pids: vec![1, 2],
                pages: 3
            }]
        );
    }
}
