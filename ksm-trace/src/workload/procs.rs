//! `procs`: N worker processes, each filling anonymous memory of which a fraction is identical
//! across workers, marked MADV_MERGEABLE. Workers are this binary re-executed (`__procs-worker`)
//! so no fork happens inside the async runtime; each dies with its parent (PR_SET_PDEATHSIG) and
//! exits when its stdin closes.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    num::NonZeroUsize,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    ptr::NonNull,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous};

use super::{Worker, spec::ProcsSpec};

pub struct ProcsWorkload {
    children: Vec<Child>,
    pub workers: Vec<Worker>,
}

pub fn worker_comm(index: u32) -> String {
    format!("ksm-procs-{index}")
}

impl ProcsWorkload {
    pub fn start(spec: &ProcsSpec) -> Result<Self> {
        let exe = std::env::current_exe().context("finding ksm-trace's own executable")?;
        // One value per run so our pages never merge with another run's leftovers.
        let nonce = crate::kernel::monotonic_ns() ^ (std::process::id() as u64) << 32;
        let mut workload = Self {
            children: Vec::new(),
            workers: Vec::new(),
        };
        for index in 0..spec.count {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "__procs-worker",
                &index.to_string(),
                &spec.pages.to_string(),
                &spec.dup.to_string(),
                &nonce.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let child = cmd.spawn().context("starting a procs worker")?;
            workload.children.push(child);
        }
        for (index, child) in workload.children.iter_mut().enumerate() {
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker has no stdout"))?;
            let mut line = String::new();
            BufReader::new(stdout)
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
        }
        Ok(workload)
    }

    /// True when every worker has exited.
    pub fn finished(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Closes the workers' stdin, then kills any that have not exited within a second.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for ProcsWorkload {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The worker's body (`ksm-trace __procs-worker INDEX PAGES DUP NONCE`).
pub fn worker_main(args: &[String]) -> Result<()> {
    let [index, pages, dup, nonce] = args else {
        bail!("usage: __procs-worker INDEX PAGES DUP NONCE");
    };
    let index: u32 = index.parse()?;
    let pages: usize = pages.parse()?;
    let dup: f64 = dup.parse()?;
    let nonce: u64 = nonce.parse()?;
    nix::sys::prctl::set_name(&std::ffi::CString::new(worker_comm(index))?)?;
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        bail!("parent already gone");
    }
    let page = crate::kernel::page_size() as usize;
    let len = NonZeroUsize::new(pages * page).ok_or_else(|| anyhow!("no pages"))?;
    let started = Instant::now();
    // SAFETY: a fresh private anonymous mapping, used only through the slice below.
    let base: NonNull<std::ffi::c_void> = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }?;
    let memory =
        unsafe { std::slice::from_raw_parts_mut(base.as_ptr().cast::<u64>(), len.get() / 8) };
    let dup_pages = (pages as f64 * dup).round() as usize;
    let words = page / 8;
    for p in 0..pages {
        let page_words = &mut memory[p * words..(p + 1) * words];
        // Two header words make each page distinct; the rest stays zero. Shared pages have the
        // same header in every worker, unique pages carry the worker's index.
        page_words[0] = nonce ^ (p as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        page_words[1] = if p < dup_pages {
            0x5348_4152_4544
        } else {
            (index as u64 + 1) << 40 | p as u64
        };
    }
    let fill_ns = started.elapsed().as_nanos() as u64;
    // SAFETY: the whole mapping made above.
    unsafe { madvise(base, len.get(), MmapAdvise::MADV_MERGEABLE) }
        .context("madvise(MADV_MERGEABLE)")?;
    println!("ready {fill_ns}");
    // Live until the parent closes stdin (or dies: PDEATHSIG).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    while stdin.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    std::hint::black_box(memory);
    Ok(())
}
