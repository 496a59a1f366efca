//! QEMU guests that already run on the machine (started by libvirt, by hand, by another tool),
//! found by the name QEMU was given (`-name guest=NAME` as libvirt writes it, or `-name NAME`),
//! so `record --vm NAME` can trace them as it traces `--pid`s.
use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::kernel::process::guest_name;

/// Every running QEMU process with a guest name: name → pids (one per name unless two guests
/// were given the same name).
pub fn list() -> BTreeMap<String, Vec<u32>> {
    let mut guests: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return guests;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .map(str::to_owned)
            .collect();
        if let Some(name) = guest_name(&args) {
            guests.entry(name).or_default().push(pid);
        }
    }
    guests
}

/// The pids of the guests named in `names`, or of every guest with `all`. A name no running
/// guest has is refused with the names that do run.
pub fn select(names: &[String], all: bool) -> Result<Vec<u32>> {
    pick(&list(), names, all)
}

fn pick(running: &BTreeMap<String, Vec<u32>>, names: &[String], all: bool) -> Result<Vec<u32>> {
    let known = || {
        if running.is_empty() {
            "no QEMU guest is running".to_owned()
        } else {
            let names: Vec<&str> = running.keys().map(String::as_str).collect();
            format!("running guests: {}", names.join(", "))
        }
    };
    if all && running.is_empty() {
        bail!("--all-vms found no running QEMU guest: start the guests first, or use --pid");
    }
    let mut pids: Vec<u32> = if all {
        running.values().flatten().copied().collect()
    } else {
        Vec::new()
    };
    for name in names {
        match running.get(name) {
            Some(found) => pids.extend(found),
            None => bail!(
                "no running QEMU guest is named {name:?} ({}): give a name from `virsh list` or QEMU's -name",
                known()
            ),
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_guests_by_name_or_all_and_names_the_running_ones_on_a_miss() {
        let running: BTreeMap<String, Vec<u32>> =
            [("db1".into(), vec![10]), ("web".into(), vec![20, 21])].into();
        assert_eq!(pick(&running, &["web".into()], false).unwrap(), [20, 21]);
        assert_eq!(pick(&running, &["db1".into()], true).unwrap(), [10, 20, 21]);
        let miss = pick(&running, &["db2".into()], false)
            .unwrap_err()
            .to_string();
        assert!(
            miss.contains("\"db2\"") && miss.contains("running guests: db1, web"),
            "{miss}"
        );
        let none = pick(&BTreeMap::new(), &[], true).unwrap_err().to_string();
        assert!(none.contains("no running QEMU guest"), "{none}");
        let none = pick(&BTreeMap::new(), &["x".into()], false)
            .unwrap_err()
            .to_string();
        assert!(none.contains("no QEMU guest is running"), "{none}");
    }
}
