//! What `explain` learns from the pages themselves: each opted-in page of each process is
//! merged (a KSM page), in a huge page not split yet, swapped out, or — all of them, or a
//! uniform random sample on a host too large to read whole — read through /proc/<pid>/mem and
//! hashed. Once every process is read, a hashed page is zero-filled, identical to a KSM page,
//! identical to another unmerged page read, or unique among the pages read. Only the 64-bit
//! hashes are kept; contents never leave this process, nothing is written.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt as _,
    time::Instant,
};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
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
    /// A KSM page already holds its content: ksmd merges it when it next meets it unchanged.
    IdenticalToMerged,
    /// Identical to another unmerged page read, not merged yet.
    Identical,
    /// No other page read has its content.
    Unique,
    /// Left out of the random sample, in a process none of whose pages the sample took.
    NotRead,
}

impl PageClass {
    pub fn key(self) -> &'static str {
        match self {
            Self::Merged => "merged",
            Self::HugePage => "huge_page",
            Self::Swapped => "swapped",
            Self::ZeroFilled => "zero_filled",
            Self::IdenticalToMerged => "identical_to_merged",
            Self::Identical => "identical_not_merged",
            Self::Unique => "unique",
            Self::NotRead => "not_read",
        }
    }
}

/// How much is read: every page, or a uniform random sample of the unmerged pages (and of the
/// KSM pages, when they alone would take half the budget).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// Share of the unmerged pages read (1: all).
    pub rate: f64,
    /// Share of the KSM pages read (1: all).
    pub ksm_rate: f64,
    pub seed: u64,
}

impl Plan {
    /// `budget`: about how many pages to read (None: all); `unmerged`, `ksm`: about how many
    /// there are.
    pub fn new(budget: Option<u64>, unmerged: u64, ksm: u64, seed: u64) -> Self {
        let all = Self {
            rate: 1.0,
            ksm_rate: 1.0,
            seed,
        };
        let Some(budget) = budget.filter(|&b| unmerged + ksm > b) else {
            return all;
        };
        // The KSM pages are the reference an unmerged page is compared with: read them all
        // unless they would take more than half the budget.
        let ksm_rate = (budget as f64 / 2.0 / ksm.max(1) as f64).min(1.0);
        let left = budget as f64 - ksm_rate * ksm as f64;
        Self {
            rate: (left / unmerged.max(1) as f64).min(1.0),
            ksm_rate,
            seed,
        }
    }

    pub fn sampled(&self) -> bool {
        self.rate < 1.0 || self.ksm_rate < 1.0
    }
}

/// What the reading cost and covered.
#[derive(Clone, Debug, Serialize)]
pub struct Reading {
    /// Unmerged pages read and hashed, and KSM pages (one read per KSM page).
    pub pages_read: u64,
    pub ksm_pages_read: u64,
    /// Unmerged pages that could have been read: the sample's population.
    pub pages_eligible: u64,
    pub plan: Plan,
    /// The budget asked for (`--max-pages`); None with `--full`.
    pub budget: Option<u64>,
    pub seconds: f64,
    pub pages_per_second: f64,
    /// Among the KSM pages read, those beyond the first of a content held by several: pages
    /// max_page_sharing (or merge_across_nodes=0) keeps from being saved.
    pub ksm_pages_duplicated: u64,
}

/// The opted-in unmerged pages of a process (or group): how many could have been read, how
/// many were, and what the contents of those showed, by class key.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ContentCounts {
    pub eligible: u64,
    pub read: u64,
    pub by_class: BTreeMap<&'static str, u64>,
}

/// A class's pages among all the eligible ones: exact when all were read, else estimated with
/// its 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub key: &'static str,
    pub pages: u64,
    pub interval: Option<(u64, u64)>,
}

impl ContentCounts {
    pub fn add(&mut self, other: &Self) {
        self.eligible += other.eligible;
        self.read += other.read;
        for (k, v) in &other.by_class {
            *self.by_class.entry(k).or_default() += v;
        }
    }

    /// Every class scaled from the pages read to the eligible ones (largest remainders, so the
    /// estimates add up to the eligible pages exactly), with its 95 % interval when sampled.
    /// The sample is uniform over every process read, so a group's pooled counts are a sample of
    /// the group. Zero-filled and a KSM page's content are properties of the page itself:
    /// Wilson's interval holds. A twin among the unmerged pages is seen only when it was sampled
    /// too, and how many unseen twins there are cannot be estimated from a sample (the
    /// distinct-values problem): "identical" is what was seen, its interval reaching up to
    /// every page not otherwise placed, and "unique" reaches down to none. So is "identical to
    /// a KSM page" when only a sample of the KSM pages was read (`ksm_sampled`).
    pub fn estimates(&self, ksm_sampled: bool) -> Vec<Estimate> {
        if self.read == 0 {
            return (self.eligible > 0)
                .then_some(Estimate {
                    key: PageClass::NotRead.key(),
                    pages: self.eligible,
                    interval: None,
                })
                .into_iter()
                .collect();
        }
        let scale = self.eligible as f64 / self.read as f64;
        let sampled = self.read < self.eligible;
        let mut out: Vec<(Estimate, f64)> = self
            .by_class
            .iter()
            .map(|(&key, &k)| {
                let exact = k as f64 * scale;
                let interval =
                    sampled.then(|| crate::stats::sampled_total(k, self.read, self.eligible));
                let pages = exact.floor() as u64;
                (
                    Estimate {
                        key,
                        pages,
                        interval,
                    },
                    exact - pages as f64,
                )
            })
            .collect();
        let short = self.eligible - out.iter().map(|(e, _)| e.pages).sum::<u64>();
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&a, &b| out[b].1.total_cmp(&out[a].1));
        for &i in order.iter().take(short as usize) {
            out[i].0.pages += 1;
        }
        let mut out: Vec<Estimate> = out.into_iter().map(|(e, _)| e).collect();
        if sampled || ksm_sampled {
            floors(&mut out, self.eligible, ksm_sampled);
        }
        out
    }
}

/// Widens the intervals of the classes a sample can only under-count (a twin that was not read
/// goes unseen) up to every page seen unique, and that of "unique" down to none.
fn floors(out: &mut Vec<Estimate>, eligible: u64, ksm_sampled: bool) {
    let unique = PageClass::Unique.key();
    let unique_hi = out
        .iter()
        .find(|e| e.key == unique)
        .map_or(0, |e| e.interval.map_or(e.pages, |i| i.1));
    if unique_hi == 0 {
        return;
    }
    let mut under = vec![PageClass::Identical.key()];
    if ksm_sampled {
        under.push(PageClass::IdenticalToMerged.key());
    }
    for key in &under {
        if !out.iter().any(|e| e.key == *key) {
            out.push(Estimate {
                key,
                pages: 0,
                interval: None,
            });
        }
    }
    for e in out.iter_mut() {
        let (lo, hi) = e.interval.unwrap_or((e.pages, e.pages));
        if e.key == unique {
            e.interval = Some((0, hi));
        } else if under.contains(&e.key) {
            e.interval = Some((lo, (hi + unique_hi).min(eligible)));
        }
    }
}

/// What one process's walk placed without reading, and the hashes of what it read.
#[derive(Default)]
struct ProcessPages {
    placed: BTreeMap<&'static str, (PageClass, u64)>,
    hashes: Vec<u64>,
    eligible: u64,
}

pub struct Reader {
    plan: Plan,
    budget: Option<u64>,
    rng: fastrand::Rng,
    page: usize,
    started: Instant,
    /// Content hash → (unmerged pages read with it, KSM pages read with it).
    seen: HashMap<u64, (u64, u64)>,
    pages: BTreeMap<u32, ProcessPages>,
    /// KSM pages met, read or left out of the sample: each is decided once.
    ksm_pfns_met: HashSet<u64>,
    zero_pfn: Option<u64>,
    zero_hash: u64,
    ksm_read: u64,
    progress: ProgressBar,
    seconds: f64,
}

/// XXH3, as KSM's own checksum uses xxhash: a page's hash costs a fraction of its read.
fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl Reader {
    /// `planned`: about how many pages the plan reads (the progress bar's length).
    pub fn new(plan: Plan, budget: Option<u64>, planned: u64) -> Result<Self> {
        let page = crate::kernel::page_size() as usize;
        // Drawn on stderr, and only when it is a terminal.
        let progress = ProgressBar::new(planned).with_style(
            ProgressStyle::with_template(
                "ksm-trace explain: [{bar:30}] {human_pos}/~{human_len} pages read, {per_sec}, {eta} left",
            )?
            .progress_chars("=> "),
        );
        Ok(Self {
            plan,
            budget,
            rng: fastrand::Rng::with_seed(plan.seed),
            page,
            started: Instant::now(),
            seen: HashMap::new(),
            pages: BTreeMap::new(),
            ksm_pfns_met: HashSet::new(),
            zero_pfn: zero_page_pfn().ok(),
            zero_hash: hash(&vec![0u8; page]),
            ksm_read: 0,
            progress,
            seconds: 0.0,
        })
    }

    fn take(rng: &mut fastrand::Rng, rate: f64) -> bool {
        rate >= 1.0 || rng.f64() < rate
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
        let mut p = ProcessPages::default();
        let mut ksm_contents = Vec::new();
        let mut ksm_pfns = HashSet::new();
        let mut buf = vec![0u8; self.page];
        for (addr, state) in states {
            let class = match state {
                PageState::NotPresent => continue,
                PageState::Swapped => PageClass::Swapped,
                PageState::Page { pfn, ksm: true, .. } => {
                    if !self.ksm_pfns_met.contains(&pfn)
                        && ksm_pfns.insert(pfn)
                        && Self::take(&mut self.rng, self.plan.ksm_rate)
                    {
                        if mem.read_exact_at(&mut buf, addr).is_err() {
                            return false;
                        }
                        ksm_contents.push(hash(&buf));
                        self.progress.inc(1);
                    }
                    PageClass::Merged
                }
                PageState::Page { thp: true, .. } => PageClass::HugePage,
                // The kernel's zero page: a zero-page merge or a page never written.
                PageState::Page { pfn, .. } if Some(pfn) == self.zero_pfn => continue,
                PageState::Page { .. } => {
                    p.eligible += 1;
                    if Self::take(&mut self.rng, self.plan.rate) {
                        if mem.read_exact_at(&mut buf, addr).is_err() {
                            return false;
                        }
                        p.hashes.push(hash(&buf));
                        self.progress.inc(1);
                    }
                    continue;
                }
            };
            p.placed.entry(class.key()).or_insert((class, 0)).1 += 1;
        }
        for h in &p.hashes {
            self.seen.entry(*h).or_default().0 += 1;
        }
        for h in &ksm_contents {
            self.seen.entry(*h).or_default().1 += 1;
        }
        self.ksm_read += ksm_contents.len() as u64;
        self.ksm_pfns_met.extend(ksm_pfns);
        self.pages.insert(pid, p);
        true
    }

    /// Ends the reading (its time is what was measured).
    pub fn finish(&mut self) {
        self.seconds = self.started.elapsed().as_secs_f64();
        self.progress.finish_and_clear();
    }

    /// `pid`'s pages placed without reading them, by class.
    pub fn placed(&self, pid: u32) -> Vec<(PageClass, u64)> {
        self.pages
            .get(&pid)
            .map(|p| p.placed.values().copied().collect())
            .unwrap_or_default()
    }

    /// What the contents `pid`'s read pages showed, now that every process is read.
    pub fn contents(&self, pid: u32) -> ContentCounts {
        let Some(p) = self.pages.get(&pid) else {
            return ContentCounts::default();
        };
        let mut c = ContentCounts {
            eligible: p.eligible,
            read: p.hashes.len() as u64,
            by_class: BTreeMap::new(),
        };
        for h in &p.hashes {
            let (unmerged, ksm) = self.seen[h];
            let class = if *h == self.zero_hash {
                PageClass::ZeroFilled
            } else if ksm > 0 {
                PageClass::IdenticalToMerged
            } else if unmerged >= 2 {
                PageClass::Identical
            } else {
                PageClass::Unique
            };
            *c.by_class.entry(class.key()).or_default() += 1;
        }
        c
    }

    /// Pages merging every identical page would still save: each content held by n unmerged
    /// pages saves n of them where a KSM page (or, with use_zero_pages, the zero page) already
    /// has it, n − 1 otherwise. From a sample, n is scaled up where a page's content decides
    /// (zero-filled, a KSM page's); a twin that was not sampled goes unseen, so the rest is at
    /// least (n − 1) / rate in expectation — an under-count, said as such.
    pub fn would_save(&self, use_zero_pages: bool) -> u64 {
        let rate = self.plan.rate;
        self.seen
            .iter()
            .map(|(&h, &(unmerged, ksm))| {
                let n = unmerged as f64;
                if ksm > 0 || (use_zero_pages && h == self.zero_hash) {
                    n / rate
                } else if h == self.zero_hash {
                    (n / rate - 1.0).max(0.0)
                } else {
                    (n - 1.0).max(0.0) / rate
                }
            })
            .sum::<f64>()
            .round() as u64
    }

    pub fn summary(&self) -> Reading {
        // What every process kept: one that exited half-way is not among them.
        let read: u64 = self.pages.values().map(|p| p.hashes.len() as u64).sum();
        let total = read + self.ksm_read;
        Reading {
            pages_read: read,
            ksm_pages_read: self.ksm_read,
            pages_eligible: self.pages.values().map(|p| p.eligible).sum(),
            plan: self.plan,
            budget: self.budget,
            seconds: self.seconds,
            pages_per_second: total as f64 / self.seconds.max(1e-9),
            ksm_pages_duplicated: self
                .seen
                .values()
                .map(|&(_, ksm)| ksm.saturating_sub(1))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_everything_within_the_budget_and_samples_beyond_it() {
        let all = Plan::new(Some(1000), 600, 400, 7);
        assert_eq!((all.rate, all.ksm_rate, all.sampled()), (1.0, 1.0, false));
        assert!(!Plan::new(None, 1 << 40, 1 << 30, 7).sampled());
        // KSM pages are read whole while they fit in half the budget.
        let p = Plan::new(Some(1000), 9_600, 400, 7);
        assert_eq!(p.ksm_rate, 1.0);
        assert!((p.rate - 600.0 / 9_600.0).abs() < 1e-12, "{p:?}");
        let p = Plan::new(Some(1000), 10_000, 2_000, 7);
        assert_eq!(p.ksm_rate, 0.25);
        assert!((p.rate - 0.05).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn estimates_add_up_to_the_eligible_pages() {
        let c = ContentCounts {
            eligible: 1000,
            read: 3,
            by_class: [
                ("unique", 1),
                ("zero_filled", 1),
                ("identical_to_merged", 1),
            ]
            .into(),
        };
        let e = c.estimates(false);
        assert_eq!(e.iter().map(|e| e.pages).sum::<u64>(), 1000);
        assert!(
            e.iter()
                .all(|e| e.pages == 0 || e.pages == 333 || e.pages == 334),
            "{e:?}"
        );
        assert!(e.iter().all(|e| e.interval.is_some()));
        // A twin outside the sample goes unseen: "unique" reaches down to none, and
        // "identical" (none seen here) up to every page seen unique.
        let of = |key| *e.iter().find(|e| e.key == key).unwrap();
        assert_eq!(of("unique").interval.unwrap().0, 0);
        assert_eq!(of("identical_not_merged").pages, 0);
        assert_eq!(
            of("identical_not_merged").interval.unwrap(),
            (0, of("unique").interval.unwrap().1)
        );
        // Zero-filled is a property of the page itself: Wilson's interval, around the estimate.
        let (lo, hi) = of("zero_filled").interval.unwrap();
        assert!(lo > 0 && lo < 333 && hi > 334 && hi < 1000, "{lo}..{hi}");
        // Everything read: exact, no interval.
        let c = ContentCounts {
            eligible: 3,
            read: 3,
            by_class: [("unique", 2), ("zero_filled", 1)].into(),
        };
        let e = c.estimates(false);
        assert_eq!(
            e.iter()
                .map(|e| (e.key, e.pages, e.interval))
                .collect::<Vec<_>>(),
            [("unique", 2, None), ("zero_filled", 1, None)]
        );
        // Every unmerged page read but only some KSM pages: a KSM page's twin can go unseen.
        let c = ContentCounts {
            eligible: 10,
            read: 10,
            by_class: [("unique", 6), ("identical_to_merged", 4)].into(),
        };
        let e = c.estimates(true);
        let of = |key| *e.iter().find(|e| e.key == key).unwrap();
        assert_eq!(of("identical_to_merged").interval, Some((4, 10)));
        assert_eq!(of("unique").interval, Some((0, 6)));
        assert_eq!(
            c.estimates(false)
                .iter()
                .filter(|e| e.interval.is_some())
                .count(),
            0
        );
        // A process the sample missed entirely: its pages are said to be not read.
        let c = ContentCounts {
            eligible: 5,
            ..Default::default()
        };
        assert_eq!(c.estimates(false)[0].key, "not_read");
    }
}
