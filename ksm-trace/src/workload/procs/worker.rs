//! The body of one `procs` worker (`ksm-trace __procs-worker INDEX NONCE SPEC_JSON`): maps its
//! anonymous memory, writes the page pattern (identical across workers, zero, or unique),
//! marks it mergeable, says `ready`, then runs its rounds and steady writes, timing each write
//! that hits a page /proc/kpageflags shows as a KSM page (a copy-on-write break), and prints
//! its [`WorkerReport`] when its stdin closes.
use std::{
    io::Read as _,
    num::NonZeroUsize,
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous};

use super::{WorkerReport, worker_comm};
use crate::{
    histogram::Histogram,
    kernel::pagemap::{KsmPages, Pagemap, zero_page_pfn},
    recording::schema::UnmergeTiming,
    workload::spec::{MergeMode, ProcsSpec},
};

/// The worker's memory and its page pattern.
struct Memory<'a> {
    words: &'a mut [u64],
    words_per_page: usize,
    page: usize,
    dup_pages: usize,
    zero_pages: usize,
    index: u32,
    nonce: u64,
    /// The selftest's pattern: every word '*', whatever the round.
    same: bool,
    /// With zero pages: this process's page table and the kernel's zero pfn, to count the
    /// rewrites that find a zero-filled page mapped to the zero page.
    zero_page: Option<(Pagemap, u64)>,
}

const STAR: u64 = u64::from_ne_bytes([b'*'; 8]);

impl Memory<'_> {
    fn pages(&self) -> usize {
        self.words.len() / self.words_per_page
    }

    fn addr(&self, p: usize) -> usize {
        self.words.as_ptr() as usize + p * self.page
    }

    /// Two header words make each page distinct; the rest stays zero. Identical pages carry
    /// the same header in every worker, unique pages carry the worker's index; `round` changes
    /// the pattern so a rewrite breaks merged pages.
    fn header(&self, p: usize, round: u32) -> (u64, u64) {
        if self.same {
            return (STAR, STAR);
        }
        let seed = self.nonce ^ (round as u64) << 48;
        let first = seed ^ (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        if p < self.dup_pages {
            (first, 0x5348_4152_4544)
        } else if p < self.dup_pages + self.zero_pages {
            (0, 0)
        } else {
            (first, (self.index as u64 + 1) << 40 | p as u64)
        }
    }

    /// Whether page `p` is one of the zero-filled pages and is mapped to the zero page (by KSM,
    /// or on 6.12+ by a huge-page split: see the recording's `zero_pages_broken`).
    fn on_zero_page(&self, p: usize) -> bool {
        let zero_filled = (self.dup_pages..self.dup_pages + self.zero_pages).contains(&p);
        zero_filled
            && self
                .zero_page
                .as_ref()
                .is_some_and(|(pagemap, pfn)| pagemap.pfn(self.addr(p) as u64) == Some(*pfn))
    }

    fn write(&mut self, p: usize, (a, b): (u64, u64)) {
        let w = p * self.words_per_page;
        // Volatile: the writes are the workload; the compiler must not drop or merge them.
        unsafe {
            std::ptr::write_volatile(&mut self.words[w], a);
            std::ptr::write_volatile(&mut self.words[w + 1], b);
        }
    }

    /// Pages meant to merge across workers: a prefix of the mapping.
    fn identical_pages(&self) -> usize {
        if self.same {
            self.pages()
        } else {
            self.dup_pages
        }
    }

    /// Unmerges the first `pages` pages in one timed MADV_UNMERGEABLE call (as the kernel
    /// selftest's `ksm_tests -D` does), counting those that were KSM pages just before; with
    /// `again`, marks them mergeable again so ksmd merges them anew for the next round. With
    /// `prctl`, the call is prctl(PR_SET_MEMORY_MERGE, 0) instead, which unmerges the whole
    /// process (`pages` is then all of them), and merging is turned on again the same way.
    fn unmerge(
        &self,
        pages: usize,
        prctl: bool,
        again: bool,
        ksm: Option<&KsmPages>,
        t: &mut UnmergeTiming,
    ) -> Result<()> {
        let start = self.addr(0);
        let len = pages * self.page;
        // prctl off unmerges every private mapping of the process (heap and stack too).
        let ranges = if prctl {
            crate::kernel::pagemap::private_ranges(std::process::id())
        } else {
            vec![(start as u64, (start + len) as u64)]
        };
        let were_ksm = ksm.map(|k| {
            let mut pfns = Vec::new();
            for (from, to) in ranges {
                k.ksm_pfns(from, to, &mut pfns);
            }
            pfns.len() as u64
        });
        let base = NonNull::new(start as *mut std::ffi::c_void).expect("a mapping is not null");
        // The worker's own ksm_merging_pages would not do: the kernel drops the unmerged
        // pages' rmap items only when ksmd next passes.
        let cow_ksm = || {
            crate::kernel::vmstat()
                .ok()
                .and_then(|v| v.get("cow_ksm").copied())
        };
        let cow_before = cow_ksm();
        let began = Instant::now();
        if prctl {
            set_memory_merge(false)?;
        } else {
            // SAFETY: a prefix of this worker's own mapping.
            unsafe { madvise(base, len, MmapAdvise::MADV_UNMERGEABLE) }
                .context("madvise(MADV_UNMERGEABLE)")?;
        }
        let ns = began.elapsed().as_nanos() as u64;
        let rose = cow_before
            .zip(cow_ksm())
            .map(|(before, after)| (after - before).max(0) as u64);
        if again && prctl {
            set_memory_merge(true)?;
        } else if again {
            unsafe { madvise(base, len, MmapAdvise::MADV_MERGEABLE) }
                .context("madvise(MADV_MERGEABLE)")?;
        }
        t.call_ns.record(ns);
        t.total_ns += ns;
        t.pages += pages as u64;
        // Pages are classified on every call or on none (kpageflags opened once).
        t.ksm_pages = were_ksm.map(|n| t.ksm_pages.unwrap_or(0) + n);
        t.cow_ksm_during = rose.map(|n| t.cow_ksm_during.unwrap_or(0) + n);
        Ok(())
    }

    /// Writes page `p`, timing the write if it hits a KSM page (or every write to an identical
    /// page when pages cannot be classified).
    fn timed_write(
        &mut self,
        p: usize,
        value: (u64, u64),
        ksm: Option<&KsmPages>,
        faults: &mut Histogram,
    ) {
        let timed = match ksm {
            Some(k) => k.ksm_pfn(self.addr(p) as u64).is_some(),
            None => p < self.identical_pages(),
        };
        let start = Instant::now();
        self.write(p, value);
        if timed {
            faults.record(start.elapsed().as_nanos() as u64);
        }
    }
}

/// The worker's body (`ksm-trace __procs-worker INDEX NONCE SPEC_JSON`).
pub fn worker_main(args: &[String]) -> Result<()> {
    let [index, nonce, spec] = args else {
        bail!("usage: __procs-worker INDEX NONCE SPEC_JSON");
    };
    let index: u32 = index.parse()?;
    let nonce: u64 = nonce.parse()?;
    let spec: ProcsSpec = serde_json::from_str(spec)?;
    nix::sys::prctl::set_name(&std::ffi::CString::new(worker_comm(index))?)?;
    if spec.mode == MergeMode::Prctl {
        set_memory_merge(true)?;
    }
    let page = crate::kernel::page_size() as usize;
    let pages = spec.pages as usize;
    let len = NonZeroUsize::new(pages * page).ok_or_else(|| anyhow!("no pages"))?;
    // SAFETY: a fresh anonymous mapping (private, or shared with no one), used only through
    // `memory` below.
    let base: NonNull<std::ffi::c_void> = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            if spec.shared {
                MapFlags::MAP_SHARED
            } else {
                MapFlags::MAP_PRIVATE
            },
        )
    }?;
    if let Some(thp) = spec.thp {
        let advice = if thp {
            MmapAdvise::MADV_HUGEPAGE
        } else {
            MmapAdvise::MADV_NOHUGEPAGE
        };
        unsafe { madvise(base, len.get(), advice) }.context("madvise(MADV_[NO]HUGEPAGE)")?;
    }
    let mut memory = Memory {
        words: unsafe {
            std::slice::from_raw_parts_mut(base.as_ptr().cast::<u64>(), len.get() / 8)
        },
        words_per_page: page / 8,
        page,
        dup_pages: (pages as f64 * spec.dup).round() as usize,
        zero_pages: (pages as f64 * spec.zero).round() as usize,
        index,
        nonce,
        same: spec.same,
        zero_page: None,
    };
    if spec.zero > 0.0 && !spec.same {
        memory.zero_page = Pagemap::open(None).ok().zip(zero_page_pfn().ok());
    }
    let mut zero_pages_broken = 0u64;
    let started = Instant::now();
    // Fault the whole mapping in with one call: a fault per page costs an exception each,
    // which on a VM held the fill to ~1.6 GiB/s per worker. Kernels before 5.14 lack the
    // advice (EINVAL); the writes below then fault the pages in one by one, as before.
    // SAFETY: the mapping made above.
    let _ = unsafe { madvise(base, len.get(), MmapAdvise::MADV_POPULATE_WRITE) };
    if spec.same {
        // The kernel selftest's fill: every page identical.
        memory.words.fill(STAR);
    } else {
        for p in 0..memory.pages() {
            // Zero pages are written too, so they are resident for KSM to find.
            let value = memory.header(p, 0);
            memory.write(p, value);
        }
    }
    let fill_ns = started.elapsed().as_nanos() as u64;
    if spec.mode == MergeMode::Madvise {
        // SAFETY: the whole mapping made above.
        unsafe { madvise(base, len.get(), MmapAdvise::MADV_MERGEABLE) }
            .context("madvise(MADV_MERGEABLE)")?;
    }
    say(&format!("ready {fill_ns}"));

    // Stop when the parent closes stdin (or dies: PDEATHSIG).
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while stdin.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        stop_reader.store(true, Ordering::SeqCst);
    });

    let ksm = KsmPages::open(None).ok();
    let mut faults = Histogram::new();
    let mut round = 0u32;
    let mut next_round = started + spec.wait;
    // prctl mode unmerges all or nothing: unmerge=1 is prctl(PR_SET_MEMORY_MERGE, 0).
    let prctl_off = spec.mode == MergeMode::Prctl && spec.unmerge >= 1.0;
    let unmerge_pages = if prctl_off {
        memory.pages()
    } else {
        (memory.identical_pages() as f64 * spec.unmerge).round() as usize
    };
    let mut unmerge = (unmerge_pages > 0).then(UnmergeTiming::default);
    // A round ends at each `wait`; with unmerging, the single round ends too.
    let mut said_done = spec.rounds <= 1 && unmerge.is_none();
    // Steady writes: each second, un-share the next chunk of identical pages and restore the
    // chunk written a second earlier, so KSM keeps merging and the workload keeps breaking.
    let per_tick = (memory.dup_pages as f64 * spec.write).ceil() as usize;
    let mut cursor = 0usize;
    let mut previous: Option<(usize, usize)> = None;
    let mut next_write = started + Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if !said_done && now >= next_round {
            if let Some(t) = unmerge.as_mut() {
                // After the last round the pages stay unmerged, as the selftest leaves them.
                let again = round + 1 < spec.rounds;
                memory.unmerge(unmerge_pages, prctl_off, again, ksm.as_ref(), t)?;
            }
            if round + 1 < spec.rounds {
                round += 1;
                // The selftest's pattern is the same in every round: rewriting it would only
                // break the merges ksmd made since the last unmerge, with nothing new to merge.
                let rewrite = if memory.same { 0 } else { memory.pages() };
                for p in 0..rewrite {
                    if memory.on_zero_page(p) {
                        zero_pages_broken += 1;
                    }
                    let value = memory.header(p, round);
                    memory.timed_write(p, value, ksm.as_ref(), &mut faults);
                }
            } else {
                say("done");
                said_done = true;
            }
            next_round += spec.wait;
        }
        if per_tick > 0 && memory.dup_pages > 0 && now >= next_write {
            if let Some((from, to)) = previous.take() {
                for p in from..to {
                    let value = memory.header(p, round);
                    memory.timed_write(p, value, ksm.as_ref(), &mut faults);
                }
            }
            let from = cursor;
            let to = (from + per_tick).min(memory.dup_pages);
            for p in from..to {
                let (a, _) = memory.header(p, round);
                memory.timed_write(p, (a, u64::MAX - index as u64), ksm.as_ref(), &mut faults);
            }
            previous = Some((from, to));
            cursor = if to >= memory.dup_pages { 0 } else { to };
            next_write += Duration::from_secs(1);
        }
        let until = Instant::now() + Duration::from_millis(20);
        if spec.busy {
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let report = WorkerReport {
        write_fault_ns: faults,
        classified: ksm.is_some(),
        unmerge,
        zero_pages_broken: memory.zero_page.is_some().then_some(zero_pages_broken),
    };
    say(&format!("report {}", serde_json::to_string(&report)?));
    Ok(())
}

/// prctl(PR_SET_MEMORY_MERGE): merging of every VMA of this process on or off (off unmerges).
fn set_memory_merge(on: bool) -> Result<()> {
    // SAFETY: plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_MEMORY_MERGE, on as libc::c_ulong, 0, 0, 0) } != 0 {
        bail!(
            "prctl(PR_SET_MEMORY_MERGE, {}): {}",
            on as u8,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// One line to the parent. A parent that is gone (killed, its pipe closed) is no error worth
/// a panic: this worker is about to end with it anyway.
fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
