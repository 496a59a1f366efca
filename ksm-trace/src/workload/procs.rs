//! `procs`: N worker processes with mergeable anonymous memory, as the KSM study's spawner ran
//! them: a fraction of pages identical across workers, a fraction zero, the rest unique;
//! optional rounds that rewrite the pattern (breaking and re-merging pages) and a steady write
//! rate on the identical pages (copy-on-write pressure).
//!
//! Workers are this binary re-executed (`__procs-worker`), so nothing forks inside the async
//! runtime. Protocol on the worker's stdout: `ready <fill_ns>`, then `done` once its rounds
//! have run, then `report <json>` when its stdin closes (the parent is stopping it). Workers die
//! with their parent (PR_SET_PDEATHSIG).
use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    num::NonZeroUsize,
    os::unix::fs::FileExt as _,
    process::{Child, ChildStdout, Command, Stdio},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous};
use serde::{Deserialize, Serialize};

use super::{
    Worker,
    spec::{MergeMode, ProcsSpec},
};
use crate::histogram::Histogram;

pub struct ProcsWorkload {
    children: Vec<Child>,
    lines: Vec<BufReader<ChildStdout>>,
    done: Vec<bool>,
    pub workers: Vec<Worker>,
}

/// What a worker reports when it is stopped.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Latency of writes to pages that were KSM pages when written (each a copy-on-write
    /// break); all writes to identical pages if /proc/kpageflags is not readable.
    pub write_fault_ns: Histogram,
    /// Whether pages were classified through /proc/kpageflags.
    pub classified: bool,
}

pub fn worker_comm(index: u32) -> String {
    format!("ksm-procs-{index}")
}

impl ProcsWorkload {
    pub fn start(spec: &ProcsSpec) -> Result<Self> {
        let exe = std::env::current_exe().context("finding ksm-trace's own executable")?;
        // One value per run so our pages never merge with another run's leftovers.
        let nonce = crate::kernel::monotonic_ns() ^ (std::process::id() as u64) << 32;
        let spec_json = serde_json::to_string(spec)?;
        let mut workload = Self {
            children: Vec::new(),
            lines: Vec::new(),
            done: Vec::new(),
            workers: Vec::new(),
        };
        for index in 0..spec.count {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "__procs-worker",
                &index.to_string(),
                &nonce.to_string(),
                &spec_json,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
            crate::child::end_with_parent(&mut cmd, nix::sys::signal::Signal::SIGKILL);
            workload
                .children
                .push(cmd.spawn().context("starting a procs worker")?);
        }
        for (index, child) in workload.children.iter_mut().enumerate() {
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker has no stdout"))?;
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .context("waiting for a procs worker")?;
            let fill_ns = line
                .strip_prefix("ready ")
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| anyhow!("procs worker {index} failed before it was ready"))?;
            workload.workers.push(Worker {
                pid: child.id(),
                comm: worker_comm(index as u32),
                ready_ns: fill_ns,
                bytes: spec.pages * crate::kernel::page_size(),
                ..Default::default()
            });
            workload.lines.push(reader);
            workload.done.push(false);
        }
        for reader in &workload.lines {
            set_nonblocking(reader.get_ref())?;
        }
        Ok(workload)
    }

    /// True when every worker has run its rounds (or exited).
    pub fn finished(&mut self) -> bool {
        for (i, reader) in self.lines.iter_mut().enumerate() {
            let mut line = String::new();
            while let Ok(n) = reader.read_line(&mut line) {
                if n == 0 {
                    self.done[i] = true;
                    break;
                }
                if line.trim() == "done" {
                    self.done[i] = true;
                }
                line.clear();
            }
        }
        !self.done.is_empty() && self.done.iter().all(|d| *d)
    }

    /// Closes the workers' stdin, collects their reports, and kills any that have not exited
    /// within two seconds. Idempotent.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for (i, reader) in self.lines.iter_mut().enumerate() {
            let mut line = String::new();
            while Instant::now() < deadline {
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if let Some(json) = line.strip_prefix("report ")
                            && let Ok(report) = serde_json::from_str::<WorkerReport>(json)
                        {
                            self.workers[i].write_fault_ns = report.write_fault_ns;
                        }
                        line.clear();
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        for child in &mut self.children {
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.lines.clear();
        self.children.clear();
    }
}

impl Drop for ProcsWorkload {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_nonblocking(stdout: &ChildStdout) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(stdout, FcntlArg::F_GETFL)?);
    fcntl(stdout, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Whether an address is backed by a KSM page right now, from /proc/self/pagemap and
/// /proc/kpageflags (root only).
struct KsmPages {
    pagemap: File,
    kpageflags: File,
    page: usize,
}

impl KsmPages {
    fn open(page: usize) -> Option<Self> {
        Some(Self {
            pagemap: File::open("/proc/self/pagemap").ok()?,
            kpageflags: File::open("/proc/kpageflags").ok()?,
            page,
        })
    }

    fn is_ksm(&self, addr: usize) -> bool {
        const PRESENT: u64 = 1 << 63;
        const PFN_MASK: u64 = (1 << 55) - 1;
        const KPF_KSM: u64 = 1 << 21;
        let mut buf = [0u8; 8];
        if self
            .pagemap
            .read_exact_at(&mut buf, (addr / self.page * 8) as u64)
            .is_err()
        {
            return false;
        }
        let entry = u64::from_ne_bytes(buf);
        let pfn = entry & PFN_MASK;
        if entry & PRESENT == 0 || pfn == 0 {
            return false;
        }
        self.kpageflags.read_exact_at(&mut buf, pfn * 8).is_ok()
            && u64::from_ne_bytes(buf) & KPF_KSM != 0
    }
}

/// The worker's memory and its page pattern.
struct Memory<'a> {
    words: &'a mut [u64],
    words_per_page: usize,
    page: usize,
    dup_pages: usize,
    zero_pages: usize,
    index: u32,
    nonce: u64,
}

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

    fn write(&mut self, p: usize, (a, b): (u64, u64)) {
        let w = p * self.words_per_page;
        // Volatile: the writes are the workload; the compiler must not drop or merge them.
        unsafe {
            std::ptr::write_volatile(&mut self.words[w], a);
            std::ptr::write_volatile(&mut self.words[w + 1], b);
        }
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
            Some(k) => k.is_ksm(self.addr(p)),
            None => p < self.dup_pages,
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
        // SAFETY: plain prctl; marks this process's current and future VMAs mergeable.
        if unsafe { libc::prctl(libc::PR_SET_MEMORY_MERGE, 1, 0, 0, 0) } != 0 {
            bail!(
                "prctl(PR_SET_MEMORY_MERGE): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let page = crate::kernel::page_size() as usize;
    let pages = spec.pages as usize;
    let len = NonZeroUsize::new(pages * page).ok_or_else(|| anyhow!("no pages"))?;
    // SAFETY: a fresh private anonymous mapping, used only through `memory` below.
    let base: NonNull<std::ffi::c_void> = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
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
    };
    let started = Instant::now();
    if spec.same {
        // The kernel selftest's fill: every page identical.
        memory.words.fill(u64::from_ne_bytes([b'*'; 8]));
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
    println!("ready {fill_ns}");

    // Stop when the parent closes stdin (or dies: PDEATHSIG).
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while stdin.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        stop_reader.store(true, Ordering::SeqCst);
    });

    let ksm = KsmPages::open(page);
    let mut faults = Histogram::new();
    let mut round = 0u32;
    let mut next_round = started + spec.wait;
    let mut said_done = spec.rounds <= 1;
    // Steady writes: each second, un-share the next chunk of identical pages and restore the
    // chunk written a second earlier, so KSM keeps merging and the workload keeps breaking.
    let per_tick = (memory.dup_pages as f64 * spec.write).ceil() as usize;
    let mut cursor = 0usize;
    let mut previous: Option<(usize, usize)> = None;
    let mut next_write = started + Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if !said_done && now >= next_round {
            if round + 1 < spec.rounds {
                round += 1;
                for p in 0..memory.pages() {
                    let value = memory.header(p, round);
                    memory.timed_write(p, value, ksm.as_ref(), &mut faults);
                }
            } else {
                println!("done");
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
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = WorkerReport {
        write_fault_ns: faults,
        classified: ksm.is_some(),
    };
    println!("report {}", serde_json::to_string(&report)?);
    Ok(())
}
