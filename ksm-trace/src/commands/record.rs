//! `ksm-trace record`: how long the run goes (its end policy), the recorder, the file, and the
//! report printed.
use std::time::Duration;

use anyhow::Result;

use super::print;
use crate::{
    cli::RecordArgs,
    probes::ProbeOptions,
    recorder::{DEFAULT_SETTLE_MARGIN, DEFAULT_TIMEOUT, RecordOptions, record},
    report::{self, Format},
    workload,
};

/// When a run ends: `(duration or timeout, until_settled, settle_margin)`. `--duration` wins;
/// a workload run with neither `--duration` nor `--until-settled` ends once KSM has settled
/// and stayed so for [`DEFAULT_SETTLE_MARGIN`] full scans, or at [`DEFAULT_TIMEOUT`] — unless
/// the workload runs a script of its own (vms with sysbench, procs with rounds or unmerging),
/// which it ends when it finishes (with [`DEFAULT_TIMEOUT`] beyond the script's time as a
/// cap); a run on the machine's own processes runs until Ctrl-C.
pub fn end_policy(
    workload: Option<&str>,
    duration: Option<Duration>,
    until_settled: bool,
) -> (Option<Duration>, bool, u64) {
    let load_time = workload
        .and_then(|w| workload::parse(w).ok())
        .and_then(|w| w.scripted_time());
    match (duration, until_settled, workload.is_some(), load_time) {
        (None, false, true, Some(load)) => (Some(load + DEFAULT_TIMEOUT), false, 0),
        (None, false, true, None) => (Some(DEFAULT_TIMEOUT), true, DEFAULT_SETTLE_MARGIN),
        _ => (duration, until_settled, 0),
    }
}

/// `ksm-trace record ARGS`: records, writes the file and prints its report.
pub async fn run(args: RecordArgs) -> Result<()> {
    let (duration, until_settled, settle_margin) =
        end_policy(args.workload.as_deref(), args.duration, args.until_settled);
    let opts = RecordOptions {
        duration,
        until_settled,
        settle_margin,
        auto_scan: true,
        workload: args.workload,
        pids: args.guests.with_pids(&args.pids)?,
        output: args.output,
        knobs: args.knobs.settings(),
        probes: ProbeOptions {
            ring_buffer_bytes: args.ring_buffer,
            profile_hz: args.profile_hz,
            ..args.switches.options(args.merge_latency)
        },
        progress: !args.quiet,
        refresh: args.refresh,
        interval: args.interval,
        until_full_scans: None,
        ksm_off: false,
    };
    let recording = record(&opts, std::env::args().collect()).await?;
    recording.write(&opts.output)?;
    if !args.quiet {
        let format = if args.json {
            Format::Json
        } else {
            Format::TextBy(args.by)
        };
        print(&report::render(&recording, format)?)?;
        eprintln!("ksm-trace: recording written to {}", opts.output.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_ends_the_run_a_settled_workload_ends_it_otherwise() {
        let s = Duration::from_secs;
        assert_eq!(
            end_policy(Some("procs:2"), None, false),
            (Some(DEFAULT_TIMEOUT), true, DEFAULT_SETTLE_MARGIN)
        );
        assert_eq!(
            end_policy(Some("vms:2,load=sysbench,time=60s"), None, false),
            (Some(s(60) + DEFAULT_TIMEOUT), false, 0)
        );
        assert_eq!(
            end_policy(Some("vms:2,load=sysbench"), Some(s(120)), false),
            (Some(s(120)), false, 0)
        );
        assert_eq!(
            end_policy(Some("procs:2,rounds=3,wait=2s"), None, false),
            (Some(s(6) + DEFAULT_TIMEOUT), false, 0)
        );
        assert_eq!(
            end_policy(Some("procs:2,unmerge=1,wait=4s"), None, false),
            (Some(s(4) + DEFAULT_TIMEOUT), false, 0)
        );
        assert_eq!(end_policy(None, None, false), (None, false, 0));
    }
}
