//! What each process (guest, cgroup) really saves, and what it owes back. A KSM page mapped m
//! times saves m − 1 pages, which no one mapping saves alone: each mapping is credited
//! (m − 1)/m, so the processes' savings sum to the pages_sharing their mappings make up,
//! exactly, and with their zero-page merges and rmap items to general_profit. What a process
//! owes is the memory the host must find if it wrote every merged page now: a new page per
//! mapping and per zero-page merge, less the KSM pages only it maps (freed as it leaves them).
//! If every process did (a COW storm), the host must find all the KSM savings at once.
use std::collections::BTreeMap;

use super::Snapshot;
use crate::recording::schema::KsmStat;
pub use crate::recording::schema::{ProcessSavings, Savings};

/// sizeof(struct ksm_rmap_item) on 64-bit kernels, when no ksm_stat lets it be derived.
const RMAP_ITEM_BYTES: i64 = 64;

impl Savings {
    /// The split of `snapshot`'s KSM pages (a snapshot of every process with KSM pages: a
    /// page's sharers must all be in it for its split to be right), with the ksm_stat of every
    /// process KSM tracks and the machine's counters, read just after the page tables.
    pub fn now(snapshot: &Snapshot) -> Self {
        use procfs::Current as _;
        let stats = KsmStat::tracked();
        let ksm = crate::kernel::sysfs::read_all().unwrap_or_default();
        let available = procfs::Meminfo::current()
            .ok()
            .and_then(|m| m.mem_available);
        Self::split(
            snapshot,
            &stats,
            &ksm,
            crate::kernel::page_size(),
            available,
        )
    }

    /// The split of `snapshot`'s KSM pages, with each process's ksm_stat and the machine's
    /// counters (`ksm`: /sys/kernel/mm/ksm by name) read around it.
    pub fn split(
        snapshot: &Snapshot,
        stats: &BTreeMap<u32, KsmStat>,
        ksm: &BTreeMap<String, i64>,
        page_size: u64,
        mem_available_bytes: Option<u64>,
    ) -> Self {
        let mut per: Vec<ProcessSavings> = snapshot
            .sharers
            .iter()
            .map(|s| ProcessSavings {
                pid: s.pid,
                ..Default::default()
            })
            .collect();
        // KSM pages only one process maps: freed when it has written them all.
        let mut sole = vec![0u64; per.len()];
        for mappings in snapshot.pages.values() {
            let m = mappings.len() as f64;
            for &i in mappings {
                per[i].ksm_mappings += 1;
                per[i].saved_pages += (m - 1.0) / m;
            }
            if mappings.iter().all(|&i| i == mappings[0]) {
                sole[mappings[0]] += 1;
            }
        }
        let rmap_item_bytes = rmap_item_bytes(stats.values(), page_size);
        let page = page_size as i64;
        for (p, sole) in per.iter_mut().zip(sole) {
            let stat = stats.get(&p.pid).copied().unwrap_or_default();
            p.zero_pages = stat.ksm_zero_pages;
            p.rmap_items = stat.ksm_rmap_items;
            p.kernel_profit_bytes = stat.ksm_process_profit;
            p.saved_bytes = (p.saved_pages * page as f64).round() as i64
                + stat.ksm_zero_pages as i64 * page
                - stat.ksm_rmap_items as i64 * rmap_item_bytes;
            p.owes_pages = p.ksm_mappings + p.zero_pages - sole;
        }
        // Processes with zero-page merges or rmap items but no KSM page mapped.
        for (&pid, stat) in stats {
            if per.iter().any(|p| p.pid == pid) {
                continue;
            }
            per.push(ProcessSavings {
                pid,
                zero_pages: stat.ksm_zero_pages,
                rmap_items: stat.ksm_rmap_items,
                kernel_profit_bytes: stat.ksm_process_profit,
                saved_bytes: stat.ksm_zero_pages as i64 * page
                    - stat.ksm_rmap_items as i64 * rmap_item_bytes,
                owes_pages: stat.ksm_zero_pages,
                ..Default::default()
            });
        }
        per.sort_by(|a, b| b.saved_bytes.cmp(&a.saved_bytes).then(a.pid.cmp(&b.pid)));
        let saved_pages: f64 = per.iter().map(|p| p.saved_pages).sum();
        let pages_sharing = ksm.get("pages_sharing").copied().unwrap_or(0);
        let zero: u64 = per.iter().map(|p| p.zero_pages).sum();
        Savings {
            page_size,
            rmap_item_bytes,
            saved_pages,
            pages_sharing,
            stale_pages: pages_sharing as f64 - saved_pages,
            saved_bytes: per.iter().map(|p| p.saved_bytes).sum(),
            general_profit: ksm.get("general_profit").copied(),
            kernel_profit_bytes: per.iter().map(|p| p.kernel_profit_bytes).sum(),
            storm_pages: saved_pages.round() as u64 + zero,
            mem_available_bytes,
            processes: per,
        }
    }

    /// Whether the COW storm would not fit in what the machine has available.
    pub fn storm_exceeds_available(&self) -> bool {
        self.mem_available_bytes
            .is_some_and(|avail| self.storm_pages * self.page_size > avail)
    }
}

/// sizeof(struct ksm_rmap_item), from a process whose ksm_stat implies it:
/// ksm_process_profit = (merging + zero pages) × page − rmap items × size.
fn rmap_item_bytes<'a>(stats: impl Iterator<Item = &'a KsmStat>, page_size: u64) -> i64 {
    stats
        .filter(|s| s.ksm_rmap_items > 0)
        .map(|s| {
            let gross = (s.ksm_merging_pages + s.ksm_zero_pages) as i64 * page_size as i64;
            (gross - s.ksm_process_profit) / s.ksm_rmap_items as i64
        })
        .find(|&size| size > 0)
        .unwrap_or(RMAP_ITEM_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::process::ProcessIdentity;

    fn sharer(pid: u32) -> ProcessIdentity {
        ProcessIdentity::made_up(pid, "/")
    }

    #[test]
    fn the_split_sums_to_pages_sharing_and_a_sole_mapper_owes_less() {
        // pfn 1: mapped by 10 twice and 20 once (m = 3, saves 2); pfn 2: by 20 and 30 (saves 1);
        // pfn 3: by 30 four times (saves 3, only 30's).
        let snapshot = Snapshot {
            sharers: vec![sharer(10), sharer(20), sharer(30)],
            pages: [(1, vec![0, 0, 1]), (2, vec![1, 2]), (3, vec![2, 2, 2, 2])].into(),
        };
        let stat = |merging, rmap, profit| KsmStat {
            ksm_rmap_items: rmap,
            ksm_zero_pages: 0,
            ksm_merging_pages: merging,
            ksm_process_profit: profit,
        };
        let stats = [
            (10, stat(2, 2, 2 * 4096 - 2 * 64)),
            (20, stat(2, 2, 2 * 4096 - 2 * 64)),
            (30, stat(5, 5, 5 * 4096 - 5 * 64)),
        ]
        .into();
        let ksm = [
            ("pages_sharing".to_owned(), 6),
            ("general_profit".to_owned(), 6 * 4096 - 9 * 64),
        ]
        .into();
        let s = Savings::split(&snapshot, &stats, &ksm, 4096, Some(1 << 30));
        assert!((s.saved_pages - 6.0).abs() < 1e-9, "{}", s.saved_pages);
        assert!(s.stale_pages.abs() < 1e-9);
        assert_eq!(s.rmap_item_bytes, 64);
        assert_eq!(s.saved_bytes, s.general_profit.unwrap());
        let p = |pid| s.processes.iter().find(|p| p.pid == pid).unwrap();
        assert!((p(10).saved_pages - 4.0 / 3.0).abs() < 1e-9);
        assert!((p(20).saved_pages - (2.0 / 3.0 + 0.5)).abs() < 1e-9);
        assert!((p(30).saved_pages - (0.5 + 3.0)).abs() < 1e-9);
        // 30 writing its 5 mappings takes 5 new pages and frees pfn 3, only its own.
        assert_eq!(
            (p(10).owes_pages, p(20).owes_pages, p(30).owes_pages),
            (2, 2, 4)
        );
        // Everyone writing: a page per mapping (9) less the 3 KSM pages freed.
        assert_eq!(s.storm_pages, 6);
        // The kernel credits each merged mapping a whole page: 9 pages, against 6 saved.
        assert_eq!(s.kernel_profit_bytes - s.saved_bytes, 3 * 4096);
        assert!(!s.storm_exceeds_available());
    }
}
