//! /proc/<pid>/ksm_stat: the kernel's per-process KSM accounting.
use std::fs;

use crate::recording::schema::KsmStat;
use anyhow::{Context as _, Result};

impl KsmStat {
    pub fn read(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/ksm_stat");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut stat = Self::parse(&text);
        // Older kernels' ksm_stat (Debian 12's 6.1) has no ksm_merging_pages line; the count is
        // in /proc/<pid>/ksm_merging_pages there.
        if !text.contains("ksm_merging_pages") {
            let path = format!("/proc/{pid}/ksm_merging_pages");
            if let Ok(count) = fs::read_to_string(&path) {
                stat.ksm_merging_pages = count.trim().parse().unwrap_or(0);
            }
        }
        Ok(stat)
    }

    /// Every process the kernel tracks in KSM now (rmap items or merged pages), so a run can
    /// read their counts at its start rather than meet them later with no start value.
    pub fn tracked_processes() -> Vec<u32> {
        Self::tracked().into_keys().collect()
    }

    /// The same processes with the ksm_stat just read (one read per process).
    pub fn tracked() -> std::collections::BTreeMap<u32, Self> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Default::default();
        };
        let me = std::process::id();
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter_map(|pid| Some((pid, Self::read(pid).ok()?)))
            .filter(|(_, s)| s.ksm_rmap_items > 0 || s.ksm_merging_pages > 0)
            .collect()
    }

    /// Parses `name value` lines; unknown lines (ksm_merge_any, ksm_mergeable, ...) are ignored.
    pub fn parse(text: &str) -> Self {
        let mut stat = Self::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            match name {
                "ksm_rmap_items" => stat.ksm_rmap_items = value.parse().unwrap_or(0),
                "ksm_zero_pages" => stat.ksm_zero_pages = value.parse().unwrap_or(0),
                "ksm_merging_pages" => stat.ksm_merging_pages = value.parse().unwrap_or(0),
                "ksm_process_profit" => stat.ksm_process_profit = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        stat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_format() {
        let text = "ksm_rmap_items 2048\nksm_zero_pages 3\nksm_merging_pages 1000\n\
                    ksm_process_profit -4096\nksm_merge_any: no\nksm_mergeable: yes\n";
        let s = KsmStat::parse(text);
        assert_eq!(s.ksm_rmap_items, 2048);
        assert_eq!(s.ksm_zero_pages, 3);
        assert_eq!(s.ksm_merging_pages, 1000);
        assert_eq!(s.ksm_process_profit, -4096);
    }
}
