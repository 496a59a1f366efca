//! `ksm-trace workload SPEC`: runs a workload without tracing, for use with other tools,
//! printing KSM's counters as it goes. Knobs and ksmd are handled as `record` handles them.
use std::time::Duration;

use anyhow::Result;

use crate::{
    interrupts::Interrupts,
    kernel,
    knobs::KnobSettings,
    report::histogram::fmt_ns,
    session::{self, Progress},
};

pub async fn run(
    spec_text: &str,
    duration: Option<Duration>,
    knobs: &KnobSettings,
    refresh: bool,
) -> Result<()> {
    let mut interrupts = Interrupts::install()?;
    let (spec, _lock) = session::preflight(Some(spec_text), knobs)?;
    let spec = spec.expect("a spec was given");
    let ksmd = kernel::ksmd_pid()?;

    let (mut guard, workload) = session::prepare(knobs, Some(&spec), refresh)?;
    let mut workload = workload.expect("a spec was given");
    for w in workload.workers() {
        println!(
            "started {} (pid {}), ready in {}",
            w.comm,
            w.pid,
            fmt_ns(w.ready_ns)
        );
    }
    if guard.original_run == 0 {
        println!("ksmd was off (run=0): started it for this run; it is stopped again afterwards");
    }
    guard.run_ksmd()?;

    let mut progress = Progress::new(ksmd);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let ended_by = loop {
        tokio::select! {
            _ = tick.tick() => {
                println!("{}", progress.line(None));
                if duration.is_some_and(|d| progress.elapsed() >= d) {
                    break "duration";
                }
                if workload.finished() {
                    break "workload-finished";
                }
            }
            why = interrupts.recv() => break why,
        }
    };
    workload.stop();
    for w in workload.workers() {
        let f = w.write_fault_ns.summary();
        if f.count > 0 {
            println!(
                "{}: {} writes to KSM pages (COW breaks), fault p50 {} p99 {}",
                w.comm,
                f.count,
                fmt_ns(f.p50),
                fmt_ns(f.p99)
            );
        }
    }
    drop(guard);
    println!("stopped ({ended_by}); KSM knobs restored");
    Ok(())
}
