//! `ksm-trace workload SPEC`: runs a workload without tracing, for use with other tools,
//! printing KSM's counters as it goes, in the same [`Session`](crate::run::session::Session) as
//! `record`: knobs and ksmd are handled as `record` handles them.
use std::time::Duration;

use anyhow::Result;

use crate::{
    cli::WorkloadArgs,
    report::histogram::fmt_ns,
    run::{
        interrupts::Interrupts,
        session::{Preflight, Progress},
    },
};

pub async fn run(args: &WorkloadArgs) -> Result<()> {
    let (spec_text, duration, knobs, refresh) = (
        args.spec.as_str(),
        args.duration,
        &args.knobs.settings(),
        args.refresh,
    );
    let mut interrupts = Interrupts::install()?;
    let pre = Preflight::run(Some(crate::workload::parse(spec_text)?), knobs)?;
    let ksmd = pre.ksmd;
    let plan = pre.scan_plan(knobs)?;
    if let Some(line) = &plan.message {
        println!("{line}");
    }
    let mut session = pre.start(&plan.settings, refresh)?;
    for w in session.workload.iter().flat_map(|w| w.workers()) {
        println!(
            "started {} (pid {}), ready in {}",
            w.comm,
            w.pid,
            fmt_ns(w.ready_ns)
        );
    }
    if session.ksmd_started_for_run() {
        println!("ksmd was off (run=0): started it for this run; it is stopped again afterwards");
    }
    session.run_ksmd()?;

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
                if session.workload.as_mut().is_some_and(|w| w.finished()) {
                    break "workload-finished";
                }
            }
            why = interrupts.recv() => break why,
        }
    };
    for w in session.stop_workload() {
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
    drop(session);
    println!("stopped ({ended_by}); KSM knobs restored");
    Ok(())
}
