//! Workloads that drive ksmd: one module per kind behind [`Workload`]; `record` does not care
//! which kind runs.
pub mod procs;
pub mod spec;

use anyhow::{Result, bail};
use procfs::Current as _;

pub use procs::Worker;
pub use spec::WorkloadSpec;

pub enum Workload {
    Procs(procs::ProcsWorkload),
}

impl Workload {
    /// Refuses a spec the machine cannot hold, before anything starts.
    pub fn check_fits(spec: &WorkloadSpec) -> Result<()> {
        let need = spec.memory_bytes(crate::kernel::page_size());
        let meminfo = procfs::Meminfo::current()?;
        let available = meminfo.mem_available.unwrap_or(meminfo.mem_free);
        if need > available / 10 * 9 {
            bail!(
                "workload needs {} MiB but only {} MiB is available: use fewer processes or pages",
                need >> 20,
                available >> 20
            );
        }
        Ok(())
    }

    pub fn start(spec: &WorkloadSpec) -> Result<Self> {
        match spec {
            WorkloadSpec::Procs(p) => Ok(Self::Procs(procs::ProcsWorkload::start(p)?)),
        }
    }

    pub fn workers(&self) -> &[Worker] {
        match self {
            Self::Procs(p) => &p.workers,
        }
    }

    pub fn finished(&mut self) -> bool {
        match self {
            Self::Procs(p) => p.finished(),
        }
    }

    pub fn stop(&mut self) {
        match self {
            Self::Procs(p) => p.stop(),
        }
    }
}
