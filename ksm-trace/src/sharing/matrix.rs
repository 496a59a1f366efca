//! From "which processes map each KSM page" to what an operator asks: which groups (processes,
//! guests, cgroups) share pages with which, how many pages are shared by exactly k processes,
//! and — given trust domains — how many pages are shared across a domain boundary, the memory
//! a deduplication side channel could probe from one domain into another.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::snapshot::{Sharer, Snapshot};
pub use crate::kernel::process::By;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Matrix {
    pub groups: Vec<String>,
    /// KSM pages each group maps.
    pub group_pages: Vec<u64>,
    /// (group a, group b, KSM pages both map), a < b, most first.
    pub pairs: Vec<(String, String, u64)>,
    /// k → KSM pages mapped by exactly k processes.
    pub pages_by_sharers: BTreeMap<usize, u64>,
    /// Distinct KSM pages mapped by the processes seen.
    pub ksm_pages: u64,
    /// Given domains: (domain a, domain b, KSM pages mapped from both), and their total.
    pub cross_domain: Vec<(String, String, u64)>,
    pub cross_domain_pages: u64,
}

impl Matrix {
    /// `domains`: cgroup path prefixes; a process belongs to the first that its cgroup starts
    /// with, or to none.
    pub fn build(snapshot: &Snapshot, by: By, domains: &[String]) -> Matrix {
        let names: Vec<String> = snapshot.sharers.iter().map(|s| by.group(s)).collect();
        let groups: Vec<String> = names
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index = |name: &String| groups.binary_search(name).expect("a group of these names");
        let mut m = Matrix {
            group_pages: vec![0; groups.len()],
            ksm_pages: snapshot.pages.len() as u64,
            ..Default::default()
        };
        let domain = |s: &Sharer| {
            domains
                .iter()
                .find(|d| s.cgroup.starts_with(d.as_str()))
                .cloned()
        };
        let mut pairs: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut cross: BTreeMap<(String, String), u64> = BTreeMap::new();
        for sharers in snapshot.pages.values() {
            *m.pages_by_sharers.entry(sharers.len()).or_default() += 1;
            let in_groups: BTreeSet<usize> = sharers.iter().map(|&s| index(&names[s])).collect();
            for &g in &in_groups {
                m.group_pages[g] += 1;
            }
            for (i, &a) in in_groups.iter().enumerate() {
                for &b in in_groups.iter().skip(i + 1) {
                    *pairs.entry((a, b)).or_default() += 1;
                }
            }
            let in_domains: BTreeSet<String> = sharers
                .iter()
                .filter_map(|&s| domain(&snapshot.sharers[s]))
                .collect();
            if in_domains.len() > 1 {
                m.cross_domain_pages += 1;
                let list: Vec<&String> = in_domains.iter().collect();
                for (i, a) in list.iter().enumerate() {
                    for b in list.iter().skip(i + 1) {
                        *cross.entry(((*a).clone(), (*b).clone())).or_default() += 1;
                    }
                }
            }
        }
        m.pairs = pairs
            .into_iter()
            .map(|((a, b), n)| (groups[a].clone(), groups[b].clone(), n))
            .collect();
        m.pairs.sort_by(|x, y| y.2.cmp(&x.2).then(x.0.cmp(&y.0)));
        m.cross_domain = cross.into_iter().map(|((a, b), n)| (a, b, n)).collect();
        m.groups = groups;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharer(pid: u32, cgroup: &str) -> Sharer {
        Sharer {
            pid,
            comm: format!("p{pid}"),
            cgroup: cgroup.into(),
            guest: None,
        }
    }

    #[test]
    fn pairs_groups_and_domains() {
        // 1 and 2 in /a, 3 in /b/x, 4 in /c.
        let snapshot = Snapshot {
            sharers: vec![
                sharer(1, "/a"),
                sharer(2, "/a"),
                sharer(3, "/b/x"),
                sharer(4, "/c"),
            ],
            pages: [
                (100, vec![0, 1]),    // inside /a
                (101, vec![1, 2]),    // /a with /b
                (102, vec![0, 1, 2]), // /a with /b, three sharers
                (103, vec![2, 3]),    // /b with /c
                (104, vec![3]),       // one process, twice (within itself)
            ]
            .into(),
        };
        let by_process = Matrix::build(&snapshot, By::Process, &[]);
        assert_eq!(by_process.ksm_pages, 5);
        assert_eq!(by_process.pages_by_sharers, [(1, 1), (2, 3), (3, 1)].into());
        assert!(
            by_process
                .pairs
                .contains(&("p1[1]".into(), "p2[2]".into(), 2))
        );
        let by_cgroup = Matrix::build(&snapshot, By::Cgroup, &[]);
        assert_eq!(by_cgroup.groups, ["/a", "/b/x", "/c"]);
        assert_eq!(by_cgroup.group_pages, [3, 3, 2]);
        assert_eq!(
            by_cgroup.pairs,
            [
                ("/a".to_string(), "/b/x".to_string(), 2),
                ("/b/x".to_string(), "/c".to_string(), 1)
            ]
        );
        let domains = ["/a".to_string(), "/b".to_string()];
        let exposed = Matrix::build(&snapshot, By::Cgroup, &domains);
        // /c is in no domain: only /a–/b pages cross a boundary.
        assert_eq!(exposed.cross_domain_pages, 2);
        assert_eq!(exposed.cross_domain, [("/a".into(), "/b".into(), 2)]);
    }
}
