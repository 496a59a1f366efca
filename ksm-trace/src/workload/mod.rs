//! Workloads that drive ksmd: one module per kind behind [`Workload`]; `record` does not care
//! which kind runs.
pub mod procs;
pub mod spec;
pub mod vms;

use anyhow::{Result, bail};
use procfs::Current as _;
pub use spec::WorkloadSpec;

pub use crate::recording::schema::Worker;

pub enum Workload {
    Procs(procs::ProcsWorkload),
    Vms(vms::VmsWorkload),
}

impl Workload {
    /// Refuses a spec the machine cannot hold, before anything starts.
    pub fn check_fits(spec: &WorkloadSpec) -> Result<()> {
        let need = spec.memory_bytes(crate::kernel::page_size());
        let meminfo = procfs::Meminfo::current()?;
        let available = meminfo.mem_available.unwrap_or(meminfo.mem_free);
        if need > available / 10 * 9 {
            bail!(
                "workload needs {} MiB but only {} MiB is available: use fewer or smaller workers",
                need >> 20,
                available >> 20
            );
        }
        if let WorkloadSpec::Vms(v) = spec {
            crate::guest::check_prerequisites()?;
            match &v.system {
                spec::GuestSystem::Busybox => {}
                spec::GuestSystem::Debian { .. } => vms::debian::check_tools()?,
                spec::GuestSystem::Image { path } => {
                    crate::guest::disk::format_of(path)?;
                }
            }
        }
        Ok(())
    }

    /// Starts the workload and waits until every worker is ready. The waits poll
    /// [`crate::interrupts::stop_requested`]: a Ctrl-C or SIGTERM during them ends what was
    /// started and fails with one line.
    pub fn start(spec: &WorkloadSpec, refresh: bool) -> Result<Self> {
        Ok(match spec {
            WorkloadSpec::Procs(p) => Self::Procs(procs::ProcsWorkload::start(p)?),
            WorkloadSpec::Vms(v) => Self::Vms(vms::VmsWorkload::start(v, refresh)?),
        })
    }

    pub fn workers(&self) -> &[Worker] {
        match self {
            Self::Procs(p) => &p.workers,
            Self::Vms(v) => &v.workers,
        }
    }

    /// True once the workload has run its course (procs with rounds) or every worker exited.
    pub fn finished(&mut self) -> bool {
        match self {
            Self::Procs(p) => p.finished(),
            Self::Vms(v) => v.finished(),
        }
    }

    /// Stops (SIGSTOP) every worker and waits until the kernel shows them stopped, so the
    /// recording window closes on a workload that cannot write (copy-on-write breaks would
    /// otherwise race the end snapshot of cow_ksm).
    pub fn freeze(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGSTOP);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        for w in self.workers() {
            while std::time::Instant::now() < deadline && !is_stopped(w.pid) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Resumes workers stopped by [`Workload::freeze`].
    pub fn thaw(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for w in self.workers() {
            crate::child::send(w.pid, signal);
        }
    }

    /// Stops every worker; idempotent. procs workers report their write-fault histograms here.
    pub fn stop(&mut self) {
        // A frozen worker could not exit or answer QMP.
        self.thaw();
        match self {
            Self::Procs(p) => p.stop(),
            Self::Vms(v) => v.stop(),
        }
    }
}

impl Worker {
    /// procs: how fast the worker made its memory resident, in GiB/s.
    pub fn fill_gib_per_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 30) as f64 / (self.ready_ns.max(1) as f64 / 1e9)
    }
}

/// Fails with one line once Ctrl-C or SIGTERM has asked to stop, for the waits of a start
/// (guests booting, workers filling their memory), so a stop request is not held up by them.
fn stopped_during_start(doing: &str) -> Result<()> {
    match crate::interrupts::stop_requested() {
        Some(why) => {
            bail!("the workload was stopped ({why}) while {doing}; what had started is ended")
        }
        None => Ok(()),
    }
}

/// Whether `pid` is stopped (or gone).
fn is_stopped(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map(|s| matches!(s.state, 'T' | 't' | 'Z' | 'X'))
        .unwrap_or(true)
}
