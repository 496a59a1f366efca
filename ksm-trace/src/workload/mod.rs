//! Workloads that drive ksmd: one module per kind, each implementing the run's workload
//! interface ([`crate::run::workload`]), so the session, `record` and the reports do not care
//! which kind runs. Adding a kind: its module here, its arm in `spec.rs`, and its arms below.
pub mod procs;
pub mod spec;
pub mod vms;

use anyhow::{Result, bail};
use procfs::Current as _;
pub use spec::WorkloadSpec;

pub use crate::recording::schema::Worker;
use crate::{
    recording::WorkloadKind,
    report::histogram::fmt_ns,
    run::workload::{RunningWorkload, Workload},
};

/// Parses a spec (`procs:4,…`, `vms:2,…`) into the workload a session runs.
pub fn parse(text: &str) -> Result<Box<dyn Workload>> {
    Ok(Box::new(WorkloadSpec::parse(text)?))
}

impl Workload for WorkloadSpec {
    fn kind(&self) -> WorkloadKind {
        match self {
            Self::Procs(_) => WorkloadKind::Procs,
            Self::Vms(_) => WorkloadKind::Vms,
        }
    }

    fn check_fits(&self) -> Result<()> {
        let need = self.memory_bytes(crate::kernel::page_size());
        let meminfo = procfs::Meminfo::current()?;
        let available = meminfo.mem_available.unwrap_or(meminfo.mem_free);
        if need > available / 10 * 9 {
            bail!(
                "workload needs {} MiB but only {} MiB is available: use fewer or smaller workers",
                need >> 20,
                available >> 20
            );
        }
        if let Self::Vms(v) = self {
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

    fn mergeable_pages(&self, page_size: u64) -> u64 {
        match self {
            Self::Procs(p) => p.count as u64 * p.pages,
            // QEMU marks all guest RAM mergeable.
            Self::Vms(v) => v.count as u64 * v.mem / page_size,
        }
    }

    fn scripted_time(&self) -> Option<std::time::Duration> {
        self.load_time().or_else(|| self.rounds_time())
    }

    fn start(&self, refresh: bool) -> Result<Box<dyn RunningWorkload>> {
        Ok(match self {
            Self::Procs(p) => Box::new(procs::ProcsWorkload::start(p)?),
            Self::Vms(v) => Box::new(vms::VmsWorkload::start(v, refresh)?),
        })
    }
}

impl RunningWorkload for procs::ProcsWorkload {
    fn workers(&self) -> &[Worker] {
        &self.workers
    }

    fn finished(&mut self) -> bool {
        procs::ProcsWorkload::finished(self)
    }

    fn stop(&mut self) {
        // A frozen worker could not exit.
        self.thaw();
        procs::ProcsWorkload::stop(self)
    }
}

impl RunningWorkload for vms::VmsWorkload {
    fn workers(&self) -> &[Worker] {
        &self.workers
    }

    fn finished(&mut self) -> bool {
        vms::VmsWorkload::finished(self)
    }

    fn stop(&mut self) {
        // A frozen guest could not answer QMP.
        self.thaw();
        vms::VmsWorkload::stop(self)
    }
}

impl WorkloadKind {
    /// How the worker got ready, as a report's worker line says it.
    pub fn ready_summary(self, w: &Worker) -> String {
        match self {
            Self::Procs => format!(
                "filled {} MiB at {:.2} GiB/s",
                w.bytes >> 20,
                w.fill_gib_per_s()
            ),
            // A user's own image prints no marker ksm-trace knows.
            Self::Vms if w.ready_ns == 0 => "booting (no ready marker)".to_owned(),
            Self::Vms => format!("booted to ready in {}", fmt_ns(w.ready_ns)),
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
    match crate::run::interrupts::stop_requested() {
        Some(why) => {
            bail!("the workload was stopped ({why}) while {doing}; what had started is ended")
        }
        None => Ok(()),
    }
}
