//! What `explain` learns from the pages themselves: each opted-in page of each process is
//! merged (a KSM page), in a huge page not split yet, swapped out, or read through
//! /proc/<pid>/mem and hashed — and once every process is read, a hashed page is zero-filled,
//! identical to another page read (unmerged or KSM), or unique among them. Only the 64-bit
//! hashes are kept; contents never leave this process, nothing is written.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    hash::Hasher as _,
    io::IsTerminal as _,
    os::unix::fs::FileExt as _,
    time::Instant,
};

use anyhow::Result;
use serde::Serialize;

use super::smaps::Vma;
use crate::kernel::pagemap::{KsmPages, PageState, zero_page_pfn};

/// Where an opted-in page stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageClass {
    Merged,
    /// In a transparent huge page: KSM splits it before it can merge its pages.
    HugePage,
    Swapped,
    /// Zero-filled and not merged yet.
    ZeroFilled,
    /// Identical to another page read, not merged yet.
    Identical,
    /// No other page read has its content.
    Unique,
    /// Over the reading budget (`--max-pages`).
    NotRead,
}

impl PageClass {
    pub fn key(self) -> &'static str {
        match self {
            Self::Merged => "merged",
            Self::HugePage => "huge_page",
            Self::Swapped => "swapped",
            Self::ZeroFilled => "zero_filled",
            Self::Identical => "identical_not_merged",
            Self::Unique => "unique",
            Self::NotRead => "not_read",
        }
    }
}

/// What the reading cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reading {
    /// Unmerged pages read and hashed, and KSM pages (one read per KSM page).
    pub pages_read: u64,
    pub ksm_pages_read: u64,
    /// Opted-in pages over the budget, not read.
    pub not_read: u64,
    pub max_pages: u64,
    pub seconds: f64,
    pub pages_per_second: f64,
}

enum Entry {
    Class(PageClass),
    Content { hash: u64 },
}

pub struct Reader {
    max_pages: u64,
    page: usize,
    started: Instant,
    /// Content hash → (unmerged pages with it, KSM pages with it).
    seen: HashMap<u64, (u64, u64)>,
    pages: BTreeMap<u32, Vec<Entry>>,
    ksm_pfns_read: HashSet<u64>,
    zero_pfn: Option<u64>,
    zero_hash: u64,
    read: u64,
    ksm_read: u64,
    not_read: u64,
    progress: bool,
    last_progress: Instant,
    seconds: f64,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

impl Reader {
    pub fn new(max_pages: u64) -> Result<Self> {
        let page = crate::kernel::page_size() as usize;
        Ok(Self {
            max_pages,
            page,
            started: Instant::now(),
            seen: HashMap::new(),
            pages: BTreeMap::new(),
            ksm_pfns_read: HashSet::new(),
            zero_pfn: zero_page_pfn().ok(),
            zero_hash: hash(&vec![0u8; page]),
            read: 0,
            ksm_read: 0,
            not_read: 0,
            progress: std::io::stderr().is_terminal(),
            last_progress: Instant::now(),
            seconds: 0.0,
        })
    }

    /// Reads `pid`'s opted-in mappings; false when the process went away meanwhile (nothing of
    /// it is kept: no page, no hash, no count).
    pub fn walk(&mut self, pid: u32, vmas: &[&Vma]) -> bool {
        let (Ok(map), Ok(mem)) = (
            KsmPages::open(Some(pid)),
            File::open(format!("/proc/{pid}/mem")),
        ) else {
            return false;
        };
        let mut states = Vec::new();
        for v in vmas {
            map.each_page(v.start, v.end, |addr, state| states.push((addr, state)));
        }
        // What this process adds is kept apart until all of it is read: a process that exits
        // half-way must leave no hashes behind for the others' pages to match.
        let mut entries = Vec::with_capacity(states.len());
        let mut contents = Vec::new();
        let mut ksm_contents = Vec::new();
        let mut ksm_pfns = HashSet::new();
        let mut not_read = 0;
        let mut buf = vec![0u8; self.page];
        for (addr, state) in states {
            let pending = (contents.len() + ksm_contents.len()) as u64;
            let budget = self.read + self.ksm_read + pending < self.max_pages;
            let entry = match state {
                PageState::NotPresent => continue,
                PageState::Swapped => Entry::Class(PageClass::Swapped),
                PageState::Page { pfn, ksm: true, .. } => {
                    if budget && !self.ksm_pfns_read.contains(&pfn) && ksm_pfns.insert(pfn) {
                        if mem.read_exact_at(&mut buf, addr).is_err() {
                            return false;
                        }
                        ksm_contents.push(hash(&buf));
                    }
                    Entry::Class(PageClass::Merged)
                }
                PageState::Page { thp: true, .. } => Entry::Class(PageClass::HugePage),
                // The kernel's zero page: a zero-page merge or a page never written.
                PageState::Page { pfn, .. } if Some(pfn) == self.zero_pfn => continue,
                PageState::Page { .. } if !budget => {
                    not_read += 1;
                    Entry::Class(PageClass::NotRead)
                }
                PageState::Page { .. } => {
                    if mem.read_exact_at(&mut buf, addr).is_err() {
                        return false;
                    }
                    let h = hash(&buf);
                    contents.push(h);
                    Entry::Content { hash: h }
                }
            };
            entries.push(entry);
            self.report_progress(contents.len() + ksm_contents.len());
        }
        for h in &contents {
            self.seen.entry(*h).or_default().0 += 1;
        }
        for h in &ksm_contents {
            self.seen.entry(*h).or_default().1 += 1;
        }
        self.read += contents.len() as u64;
        self.ksm_read += ksm_contents.len() as u64;
        self.not_read += not_read;
        self.ksm_pfns_read.extend(ksm_pfns);
        self.pages.insert(pid, entries);
        true
    }

    /// `pending`: pages of the process being read, not counted yet.
    fn report_progress(&mut self, pending: usize) {
        if self.progress && self.last_progress.elapsed().as_secs_f64() >= 1.0 {
            let s = self.started.elapsed().as_secs_f64();
            let read = self.read + self.ksm_read + pending as u64;
            eprint!(
                "\rksm-trace explain: {read} pages read in {s:.0} s ({:.0} pages/s)   ",
                read as f64 / s
            );
            self.last_progress = Instant::now();
        }
    }

    /// Ends the reading (its time is what was measured).
    pub fn finish(&mut self) {
        self.seconds = self.started.elapsed().as_secs_f64();
        if self.progress && self.seconds >= 1.0 {
            eprintln!();
        }
    }

    /// `pid`'s pages counted by class; a hashed page is placed now that all are read.
    pub fn classes(&self, pid: u32) -> Vec<(PageClass, u64)> {
        let mut counts: BTreeMap<&'static str, (PageClass, u64)> = BTreeMap::new();
        for e in self.pages.get(&pid).into_iter().flatten() {
            let class = match e {
                Entry::Class(c) => *c,
                Entry::Content { hash } if *hash == self.zero_hash => PageClass::ZeroFilled,
                Entry::Content { hash } => {
                    let (unmerged, ksm) = self.seen[hash];
                    if unmerged + ksm >= 2 {
                        PageClass::Identical
                    } else {
                        PageClass::Unique
                    }
                }
            };
            counts.entry(class.key()).or_insert((class, 0)).1 += 1;
        }
        counts.into_values().collect()
    }

    /// Pages merging every identical page read would still save: each content held by n
    /// unmerged pages saves n of them where a KSM page (or, with use_zero_pages, the zero page)
    /// already has it, n − 1 otherwise.
    pub fn would_save(&self, use_zero_pages: bool) -> u64 {
        self.seen
            .iter()
            .map(|(&h, &(unmerged, ksm))| {
                if ksm > 0 || (use_zero_pages && h == self.zero_hash) {
                    unmerged
                } else {
                    unmerged.saturating_sub(1)
                }
            })
            .sum()
    }

    pub fn summary(&self) -> Reading {
        let total = self.read + self.ksm_read;
        Reading {
            pages_read: self.read,
            ksm_pages_read: self.ksm_read,
            not_read: self.not_read,
            max_pages: self.max_pages,
            seconds: self.seconds,
            pages_per_second: total as f64 / self.seconds.max(1e-9),
        }
    }
}
