//! Who maps which KSM page right now, without tracing: for every process the kernel counts
//! KSM pages for (ksm_stat), the pfns behind its private mappings (/proc/<pid>/pagemap) that
//! /proc/kpageflags marks KSM. Root only; reads, never writes.
use std::{collections::BTreeMap, fs};

use crate::kernel::{KsmStat, pagemap::KsmPages};

/// One process that maps KSM pages.
#[derive(Clone, Debug, PartialEq)]
pub struct Sharer {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup v2 path (`/` when it has none of its own).
    pub cgroup: String,
    /// The guest's name, for a QEMU process (`-name guest=NAME` or `-name NAME`).
    pub guest: Option<String>,
}

/// KSM page (pfn) → the processes mapping it (indices into `sharers`, each once).
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
            snapshot.sharers.push(describe(pid));
            for &pfn in &pfns {
                let list = snapshot.pages.entry(pfn).or_default();
                if list.last() != Some(&index) {
                    list.push(index);
                }
            }
        }
        snapshot
    }
}

/// `[start, end)` of each private mapping (KSM merges only private anonymous memory).
fn private_ranges(pid: u32) -> Vec<(u64, u64)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.ends_with('p') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

fn describe(pid: u32) -> Sharer {
    let read = |file: &str| fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    let cmdline: Vec<String> = read("cmdline").split('\0').map(str::to_owned).collect();
    Sharer {
        pid,
        comm: read("comm").trim().to_owned(),
        cgroup: cgroup_v2(&read("cgroup")),
        guest: guest_name(&cmdline),
    }
}

/// The `0::PATH` line of /proc/<pid>/cgroup.
pub fn cgroup_v2(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_owned()
}

/// QEMU's `-name guest=NAME,...` or `-name NAME` (how libvirt and ksm-trace name guests).
pub fn guest_name(cmdline: &[String]) -> Option<String> {
    let exe = cmdline.first()?;
    if !exe.contains("qemu") {
        return None;
    }
    let value = cmdline
        .iter()
        .position(|a| a == "-name")
        .and_then(|i| cmdline.get(i + 1))?;
    let first = value.split(',').next()?;
    Some(first.strip_prefix("guest=").unwrap_or(first).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_guest_names() {
        assert_eq!(
            cgroup_v2("12:memory:/x\n0::/system.slice/qemu.scope\n"),
            "/system.slice/qemu.scope"
        );
        assert_eq!(cgroup_v2("4:memory:/only-v1\n"), "/");
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            guest_name(&args(
                "/usr/bin/qemu-system-x86_64 -name guest=db1,debug-threads=on -m 1G"
            )),
            Some("db1".into())
        );
        assert_eq!(
            guest_name(&args("qemu-system-x86_64 -name ksm-vm0 -m 256M")),
            Some("ksm-vm0".into())
        );
        assert_eq!(guest_name(&args("/bin/sleep -name x")), None);
    }
}
