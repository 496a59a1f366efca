//! What a run needs of a workload, whatever its kind: `workload/` implements these for procs and
//! vms, and the session, `record` and the reports use nothing else, so a new kind is a change in
//! `workload/` alone.
use std::time::Duration;

use anyhow::Result;

use crate::recording::{WorkloadKind, schema::Worker};

/// A workload as asked for (a parsed spec), before anything starts.
pub trait Workload {
    /// The kind, as the recording names it.
    fn kind(&self) -> WorkloadKind;
    /// Refuses, in one line, a workload this machine cannot hold or run, before anything starts.
    fn check_fits(&self) -> Result<()>;
    /// Pages it makes mergeable (the scan plan sizes pages_to_scan to reach them).
    fn mergeable_pages(&self, page_size: u64) -> u64;
    /// Its end condition: how long its own script runs (a load inside guests, rounds of
    /// rewrites), after which the run ends when it finishes; None when it fills once and holds.
    fn scripted_time(&self) -> Option<Duration>;
    /// Starts it and waits until every worker is ready (a Ctrl-C during the wait ends what was
    /// started and fails with one line).
    fn start(&self, refresh: bool) -> Result<Box<dyn RunningWorkload>>;
}

/// A workload that was started; dropping it ends every worker.
pub trait RunningWorkload {
    /// One entry per worker process, with its own measurements once stopped.
    fn workers(&self) -> &[Worker];
    /// True once it has run its course or every worker exited.
    fn finished(&mut self) -> bool;
    /// Stops every worker (they hand over their own measurements); idempotent.
    fn stop(&mut self);

    /// Stops (SIGSTOP) every worker and waits until the kernel shows them stopped, so the
    /// recording window closes on a workload that cannot write (copy-on-write breaks would
    /// otherwise race the end snapshot of cow_ksm).
    fn freeze(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGSTOP);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        for w in self.workers() {
            while std::time::Instant::now() < deadline && !is_stopped(w.pid) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Resumes workers stopped by [`RunningWorkload::freeze`].
    fn thaw(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for w in self.workers() {
            super::child::send(w.pid, signal);
        }
    }
}

/// Whether `pid` is stopped (or gone).
fn is_stopped(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map(|s| matches!(s.state, 'T' | 't' | 'Z' | 'X'))
        .unwrap_or(true)
}
