//! /sys/kernel/mm/ksm: counters and knobs.
use std::{collections::BTreeMap, fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};

pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";

fn path(name: &str) -> PathBuf {
    PathBuf::from(KSM_DIR).join(name)
}

pub fn available() -> bool {
    path("run").exists()
}

pub fn read(name: &str) -> Result<String> {
    Ok(fs::read_to_string(path(name))
        .with_context(|| format!("reading {}", path(name).display()))?
        .trim()
        .to_owned())
}

pub fn read_i64(name: &str) -> Result<i64> {
    let text = read(name)?;
    text.parse()
        .with_context(|| format!("{}: not a number: {text:?}", path(name).display()))
}

pub fn write(name: &str, value: &str) -> Result<()> {
    fs::write(path(name), value)
        .with_context(|| format!("writing {value:?} to {}", path(name).display()))
}

/// The files in /sys/kernel/mm/ksm that are settings, not counters.
pub const KNOBS: [&str; 13] = [
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "max_page_sharing",
    "smart_scan",
    "merge_across_nodes",
    "stable_node_chains_prune_millisecs",
    "advisor_mode",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
];

/// Current value of every knob this kernel has (choice files as their selected value).
pub fn knob_values() -> BTreeMap<String, String> {
    KNOBS
        .iter()
        .filter_map(|k| read(k).ok().map(|v| (k.to_string(), selected(&v))))
        .collect()
}

/// Every numeric file in the directory (advisor_mode and the like are skipped).
pub fn read_all() -> Result<BTreeMap<String, i64>> {
    if !available() {
        bail!("{KSM_DIR} is missing: this kernel has no KSM (CONFIG_KSM=n)");
    }
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(KSM_DIR).with_context(|| format!("listing {KSM_DIR}"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Ok(value) = read_i64(&name) {
            out.insert(name, value);
        }
    }
    Ok(out)
}

/// The selected value of a choice file (`[none] scan-time` → `none`); other values unchanged.
pub fn selected(value: &str) -> String {
    match (value.find('['), value.find(']')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn selected_choice() {
        assert_eq!(super::selected("[none] scan-time"), "none");
        assert_eq!(super::selected("always [madvise] never"), "madvise");
        assert_eq!(super::selected("100"), "100");
    }
}
