//! `procs`: N worker processes with mergeable anonymous memory, as the KSM study's spawner ran
//! them: a fraction of pages identical across workers, a fraction zero, the rest unique;
//! optional rounds that rewrite the pattern (breaking and re-merging pages) and a steady write
//! rate on the identical pages (copy-on-write pressure).
//!
//! Workers are this binary re-executed (`__procs-worker`), so nothing forks inside the async
//! runtime. Protocol on the worker's stdout: `ready <fill_ns>`, then `done` once its rounds
//! have run, then `report <json>` when its stdin closes (the parent is stopping it). Workers die
//! with their parent (PR_SET_PDEATHSIG).
mod worker;

use std::{
    io::{BufRead as _, BufReader, ErrorKind},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
pub use worker::worker_main;

use super::{Worker, spec::ProcsSpec};
use crate::histogram::Histogram;

/// The workers must all be ready within this, plus [`START_TIMEOUT_PER_GIB`] per GiB they
/// fill together (filling runs at GB/s; this is for a machine under heavy load).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT_PER_GIB: Duration = Duration::from_secs(10);

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
    /// With `unmerge=F`: the worker's timed MADV_UNMERGEABLE calls.
    pub unmerge: Option<crate::recording::schema::UnmergeTiming>,
    /// With `zero=F`: rewrites that found a zero-filled page on the kernel's zero page.
    pub zero_pages_broken: Option<u64>,
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
        open_files_for(spec.count)?;
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
            crate::run::child::end_with_parent(&mut cmd, nix::sys::signal::Signal::SIGKILL);
            workload
                .children
                .push(cmd.spawn().context("starting a procs worker")?);
        }
        for child in &mut workload.children {
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker has no stdout"))?;
            set_nonblocking(&stdout)?;
            workload.lines.push(BufReader::new(stdout));
            workload.done.push(false);
        }
        // On an error, dropping `workload` ends the workers already started.
        workload.wait_ready(spec)?;
        Ok(workload)
    }

    /// Waits for every worker's `ready <fill_ns>` line, polling, so that a stop request, a
    /// worker that died and the start timeout all end the wait.
    fn wait_ready(&mut self, spec: &ProcsSpec) -> Result<()> {
        let bytes = spec.count as u64 * spec.pages * crate::kernel::page_size();
        let timeout = START_TIMEOUT + START_TIMEOUT_PER_GIB * (bytes >> 30) as u32;
        let deadline = Instant::now() + timeout;
        let mut lines = vec![String::new(); self.lines.len()];
        let mut fill_ns: Vec<Option<u64>> = vec![None; self.lines.len()];
        while fill_ns.iter().any(Option::is_none) {
            // First: a terminal's Ctrl-C also kills the workers (same process group), and the
            // error should say why they died.
            super::stopped_during_start("the procs workers were filling their memory")?;
            for (index, reader) in self.lines.iter_mut().enumerate() {
                if fill_ns[index].is_some() {
                    continue;
                }
                let line = &mut lines[index];
                match reader.read_line(line) {
                    Ok(0) => bail!("procs worker {index} exited before it was ready"),
                    Ok(_) if line.ends_with('\n') => {
                        let ns = line
                            .strip_prefix("ready ")
                            .and_then(|n| n.trim().parse().ok());
                        let ns = ns.ok_or_else(|| {
                            anyhow!("procs worker {index} failed before it was ready: {line:?}")
                        })?;
                        fill_ns[index] = Some(ns);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e).context("waiting for a procs worker"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the procs workers were not ready within {} s (filling {} MiB): use fewer or smaller workers",
                    timeout.as_secs(),
                    bytes >> 20
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.workers = self
            .children
            .iter()
            .zip(fill_ns)
            .enumerate()
            .map(|(index, (child, ns))| Worker {
                pid: child.id(),
                comm: worker_comm(index as u32),
                ready_ns: ns.unwrap_or_default(),
                bytes: spec.pages * crate::kernel::page_size(),
                ..Default::default()
            })
            .collect();
        Ok(())
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
                            && let Some(worker) = self.workers.get_mut(i)
                        {
                            worker.write_fault_ns = report.write_fault_ns;
                            worker.unmerge = report.unmerge;
                            worker.zero_pages_broken = report.zero_pages_broken;
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

/// Raises the soft open-file limit (usually 1024) towards the hard one so that `count` workers'
/// pipes fit, with room for everything else ksm-trace opens.
fn open_files_for(count: u32) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let need = 2 * count as u64 + 256;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        bail!(
            "{count} procs workers need {need} open files but the hard limit is {hard}: raise it (ulimit -Hn) or start fewer workers"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard)
        .context("raising the open-file limit for the procs workers")
}
