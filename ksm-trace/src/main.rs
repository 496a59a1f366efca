//! ksm-trace's command line: parse, run, and turn any error into one line and a non-zero exit.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use ksm_trace::{
    cli::{Cli, Command},
    doctor, knobs,
    record::{self, RecordOptions},
    report::{self, Format},
    workload,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic must not leave KSM knobs changed: restore them before the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        knobs::restore_saved();
        default_hook(info);
    }));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ksm-trace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Record(args) => {
            let opts = RecordOptions {
                duration: args.duration,
                workload: args.workload,
                pids: args.pids,
                output: args.output,
                knobs: args.knobs.settings(),
                merge_latency: args.merge_latency,
                progress: !args.quiet,
                refresh: args.refresh,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let recording = runtime.block_on(record::record(&opts, std::env::args().collect()))?;
            recording.write(&opts.output)?;
            if !args.quiet {
                let format = if args.json {
                    Format::Json
                } else {
                    Format::Text
                };
                print(&report::render(&recording, format)?)?;
                eprintln!("ksm-trace: recording written to {}", opts.output.display());
            }
            Ok(())
        }
        Command::Report(args) => {
            let format = if args.json {
                Format::Json
            } else {
                Format::Text
            };
            print(&report::render_file(&args.file, format)?)
        }
        Command::Doctor(args) => print(&doctor::run(args.json)?),
        Command::Workload(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(workload::standalone::run(
                &args.spec,
                args.duration,
                &args.knobs.settings(),
                args.refresh,
            ))
        }
        Command::ProcsWorker { args } => workload::procs::worker_main(&args),
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
fn print(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
