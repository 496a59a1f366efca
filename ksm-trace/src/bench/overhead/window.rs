//! One measured window: ksmd's pages scanned per second (and per second it ran), another
//! process's rate beside it, and, when traced, the events drained and the bracket's policy run
//! as `record` runs them.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    collect::Collector,
    histogram::Histogram,
    kernel::sysfs,
    probes::{Probes, bracket},
};

/// What one window measured.
#[derive(Clone, Copy)]
pub(super) struct Rates {
    /// ksmd's pages scanned per second: the figure the overhead target is about.
    pub(super) pages_per_s: f64,
    /// ksmd's pages scanned per second it ran (its own scheduler time): the cost tracing adds
    /// inside ksmd, without the noise of how much CPU the scheduler gave ksmd.
    pub(super) pages_per_cpu_s: f64,
    /// The other process's mmap/touch/munmap per second.
    pub(super) other_per_s: f64,
}

pub(super) struct Window {
    pub(super) rates: Rates,
    /// ksmd's CPU time in the window.
    pub(super) ksmd_cpu_ns: u64,
    pub(super) collector: Collector,
}

/// ksmd's pages scanned per second and the other process's operations per second over
/// `length`, draining the probes' events (and running the bracket policy) if tracing.
pub(super) async fn window(
    mut probes: Option<(&mut Probes, &mut bracket::BracketPolicy)>,
    length: Duration,
    ksmd: u32,
    other: &OtherProcess,
) -> Result<Window> {
    let mut ring = match probes.as_mut() {
        Some((p, _)) => Some(p.take_event_ring()?),
        None => None,
    };
    let mut collector = Collector::default();
    // Kept for holding the sampled default against `always` (merges' ages in their bursts).
    collector.merges.keep_latency_windows = true;
    collector.merges.keep_aged_latencies = true;
    let start = sysfs::read_i64("pages_scanned")?;
    let cpu_start = crate::kernel::cpu_time_ns(ksmd)?;
    let ops = other.ops();
    let t0 = Instant::now();
    let end = tokio::time::sleep(length);
    tokio::pin!(end);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // As `record` drives the bracket: when merges start, at each drain, at the deadline.
        let deadline = probes.as_ref().and_then(|(_, policy)| policy.deadline());
        tokio::select! {
            () = &mut end => break,
            () = bracket::wake(ring.as_ref(), deadline) => {}
            _ = tick.tick() => {}
        }
        if let Some(ring) = ring.as_mut() {
            collector.drain(ring.get_mut());
        }
        if let Some((p, policy)) = probes.as_mut() {
            policy.update(p, collector.merge_clock())?;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let pages = (sysfs::read_i64("pages_scanned")? - start) as f64;
    let ksmd_cpu_ns = crate::kernel::cpu_time_ns(ksmd)?.saturating_sub(cpu_start);
    let cpu_s = ksmd_cpu_ns as f64 / 1e9;
    Ok(Window {
        rates: Rates {
            pages_per_s: pages / secs,
            pages_per_cpu_s: pages / cpu_s.max(1e-9),
            other_per_s: other.ops().saturating_sub(ops) as f64 / secs,
        },
        ksmd_cpu_ns,
        collector,
    })
}

pub(super) fn merge_latencies(c: &Collector) -> Histogram {
    let mut h = Histogram::new();
    for stats in c.merges.by_pid.values() {
        h.add(&stats.merge_latency_ns);
    }
    h
}

/// Another process's work, as the mmap_lock tracepoints see it: map 16 pages, touch each,
/// unmap, in a loop on its own thread (each mmap/munmap takes mmap_lock for writing).
pub(super) struct OtherProcess {
    ops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtherProcess {
    pub(super) fn start() -> Self {
        let (ops, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, s) = (ops.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let len = 16 * crate::kernel::page_size() as usize;
            while !s.load(Ordering::Relaxed) {
                // SAFETY: a private anonymous mapping of our own, written then unmapped.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p == libc::MAP_FAILED {
                        continue;
                    }
                    for off in (0..len).step_by(4096) {
                        std::ptr::write_volatile((p as *mut u8).add(off), 1);
                    }
                    libc::munmap(p, len);
                }
                o.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            ops,
            stop,
            thread: Some(thread),
        }
    }

    pub(super) fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
}

impl Drop for OtherProcess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
