//! From "which processes map each KSM page" to what an operator asks: which groups (processes,
//! guests, cgroups) share pages with which, how many pages are shared by exactly k processes,
//! and — given trust domains — how many pages are shared across a domain boundary, the memory
//! a deduplication side channel could probe from one domain into another.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::snapshot::Sharer;
pub use crate::kernel::process::By;
use crate::recording::schema::SharerSet;

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
    /// `sets`: the pages each set of processes maps; `sharers`: who those processes are (a pid
    /// missing there is labelled as gone). `domains`: cgroup path prefixes; a process belongs
    /// to the first that its cgroup starts with, or to none.
    pub fn build(
        sharers: &BTreeMap<u32, Sharer>,
        sets: &[SharerSet],
        by: By,
        domains: &[String],
    ) -> Matrix {
        let who = |pid: u32| {
            sharers.get(&pid).cloned().unwrap_or_else(|| Sharer {
                pid,
                comm: "(gone)".into(),
                cgroup: "(gone)".into(),
                guest: None,
            })
        };
        let name_of: BTreeMap<u32, String> = sets
            .iter()
            .flat_map(|s| &s.pids)
            .map(|&pid| (pid, by.group(&who(pid))))
            .collect();
        let groups: Vec<String> = name_of
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index = |pid: &u32| {
            groups
                .binary_search(&name_of[pid])
                .expect("a group of these names")
        };
        let domain = |pid: &u32| {
            let cgroup = who(*pid).cgroup;
            domains
                .iter()
                .find(|d| cgroup.starts_with(d.as_str()))
                .cloned()
        };
        let mut m = Matrix {
            group_pages: vec![0; groups.len()],
            ksm_pages: sets.iter().map(|s| s.pages).sum(),
            ..Default::default()
        };
        let mut pairs: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        let mut cross: BTreeMap<(String, String), u64> = BTreeMap::new();
        for SharerSet { pids, pages } in sets {
            *m.pages_by_sharers.entry(pids.len()).or_default() += pages;
            let in_groups: BTreeSet<usize> = pids.iter().map(index).collect();
            for &g in &in_groups {
                m.group_pages[g] += pages;
            }
            for (i, &a) in in_groups.iter().enumerate() {
                for &b in in_groups.iter().skip(i + 1) {
                    *pairs.entry((a, b)).or_default() += pages;
                }
            }
            let in_domains: BTreeSet<String> = pids.iter().filter_map(domain).collect();
            if in_domains.len() > 1 {
                m.cross_domain_pages += pages;
                let list: Vec<&String> = in_domains.iter().collect();
                for (i, a) in list.iter().enumerate() {
                    for b in list.iter().skip(i + 1) {
                        *cross.entry(((*a).clone(), (*b).clone())).or_default() += pages;
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
        Sharer::made_up(pid, cgroup)
    }

    #[test]
    fn pairs_groups_and_domains() {
        // 1 and 2 in /a, 3 in /b/x, 4 in /c.
        let sharers: BTreeMap<u32, Sharer> = [
            sharer(1, "/a"),
            sharer(2, "/a"),
            sharer(3, "/b/x"),
            sharer(4, "/c"),
        ]
        .into_iter()
        .map(|s| (s.pid, s))
        .collect();
        let set = |pids: &[u32], pages| SharerSet {
            pids: pids.to_vec(),
            pages,
        };
        let sets = [
            set(&[1, 2], 1),    // inside /a
            set(&[2, 3], 1),    // /a with /b
            set(&[1, 2, 3], 1), // /a with /b, three sharers
            set(&[3, 4], 1),    // /b with /c
            set(&[4], 1),       // one process, twice (within itself)
        ];
        let build = |by, domains: &[String]| Matrix::build(&sharers, &sets, by, domains);
        let by_process = build(By::Process, &[]);
        assert_eq!(by_process.ksm_pages, 5);
        assert_eq!(by_process.pages_by_sharers, [(1, 1), (2, 3), (3, 1)].into());
        assert!(
            by_process
                .pairs
                .contains(&("p1[1]".into(), "p2[2]".into(), 2))
        );
        let by_cgroup = build(By::Cgroup, &[]);
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
        let exposed = build(By::Cgroup, &domains);
        // /c is in no domain: only /a–/b pages cross a boundary.
        assert_eq!(exposed.cross_domain_pages, 2);
        assert_eq!(exposed.cross_domain, [("/a".into(), "/b".into(), 2)]);
    }
}
