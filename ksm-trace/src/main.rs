//! ksm-trace's command line: parse, run, and turn any error into one line and a non-zero exit.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use ksm_trace::{
    cli::{Cli, Command},
    doctor, flame, knobs,
    record::{self, RecordOptions},
    recording::Recording,
    report::{self, Format},
    workload,
};

fn main() -> ExitCode {
    let cli = parse_command_line();
    init_logging(cli.verbose);
    // A panic must not leave KSM knobs changed: restore them before the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        knobs::restore_saved();
        default_hook(info);
    }));
    // One runtime for every command; the lab's blocking waits run on it too.
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ksm-trace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Clap's messages, except that a refused value (`--duration 1e20`, `--by pid`) is one line in
/// the tool's own style: it names the option and says what to give instead.
fn parse_command_line() -> Cli {
    use clap::error::ErrorKind;
    let e = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        e.exit();
    }
    // Clap's first paragraph (the error and any possible values), without its usage tip.
    let text = e.to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    eprintln!("ksm-trace: {}", first.join(" "));
    std::process::exit(2);
}

/// Warnings and errors logged anywhere in ksm-trace reach stderr as `ksm-trace: warning: ...`;
/// -v adds info, -vv debug (ksm-trace's own messages: its dependencies stay at warnings).
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("ksm_trace", level)
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug => "debug",
                log::Level::Trace => "trace",
            };
            writeln!(buf, "ksm-trace: {level}: {}", record.args())
        })
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Record(args) => {
            let (duration, until_settled, settle_margin) =
                record::end_policy(args.workload.as_deref(), args.duration, args.until_settled);
            let opts = RecordOptions {
                duration,
                until_settled,
                settle_margin,
                auto_scan: true,
                workload: args.workload,
                pids: args.guests.with_pids(&args.pids)?,
                output: args.output,
                knobs: args.knobs.settings(),
                probes: ksm_trace::probes::ProbeOptions {
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
            let recording = record::record(&opts, std::env::args().collect()).await?;
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
        Command::Report(args) => {
            let format = match (args.json, args.csv) {
                (true, _) => Format::Json,
                (_, true) => Format::Csv,
                _ => Format::TextBy(args.by),
            };
            print(&report::render_file(&args.file, format)?)
        }
        Command::Sweep(args) => {
            let opts = ksm_trace::sweep::SweepOptions {
                workload: args.workload,
                pages_to_scan: args.pages_to_scan,
                sleep_ms: args.sleep_ms,
                smart_scan: args.smart_scan,
                use_zero_pages: args.use_zero_pages,
                max_page_sharing: args.max_page_sharing,
                advisor: args.advisor,
                duration: args.timeout.unwrap_or(args.duration),
                until_settled: args.until_settled,
                interval: args.interval,
                merge_latency: args.merge_latency,
                out_dir: args.output,
                baseline: args.baseline,
            };
            let summaries = ksm_trace::sweep::run(&opts, std::env::args().collect()).await?;
            print(&ksm_trace::sweep::render(&summaries))?;
            eprintln!(
                "ksm-trace: recordings, summary.csv, summary.json and charts in {}",
                opts.out_dir.display()
            );
            Ok(())
        }
        Command::Bench(ksm_trace::cli::BenchCommand::Merge(args)) => {
            let bench = ksm_trace::bench::MergeBench {
                owners: args.owner,
                size: args.size,
                thp: args.thp,
                pages_to_scan: args.pages_to_scan,
                merge_latency: args.merge_latency,
                timeout: args.timeout,
                output: args.output,
            };
            let (_, summary) = ksm_trace::bench::merge(&bench, std::env::args().collect()).await?;
            print(&summary)
        }
        Command::Bench(ksm_trace::cli::BenchCommand::Unmerge(args)) => {
            let bench = ksm_trace::bench::UnmergeBench {
                size: args.size,
                rounds: args.rounds,
                wait: args.wait,
                pages_to_scan: args.pages_to_scan,
                output: args.output,
            };
            let (_, summary) =
                ksm_trace::bench::unmerge(&bench, std::env::args().collect()).await?;
            print(&summary)
        }
        Command::Bench(ksm_trace::cli::BenchCommand::Overhead(args)) => {
            let bench = ksm_trace::bench::OverheadBench {
                workload: args.workload,
                merging_write: args.merging_write,
                scenarios: args.scenario,
                pages_to_scan: args.pages_to_scan,
                window: args.window,
                repetitions: args.repetitions,
                default_repetitions: args.default_repetitions,
                short_pairs: args.short_pairs,
                short_window: args.short_window,
            };
            print(&ksm_trace::bench::overhead(&bench).await?)
        }
        Command::Plot(args) => {
            let files = ksm_trace::plot::plot(&Recording::read(&args.file)?, &args.output)?;
            for f in files {
                eprintln!("ksm-trace: wrote {}", f.display());
            }
            Ok(())
        }
        Command::Sharing(args) => {
            use ksm_trace::sharing::{Source, View};
            let source = match &args.file {
                Some(path) => Source::Recording {
                    path,
                    snapshot: args.snapshot,
                },
                None => Source::Now { pids: &args.pids },
            };
            let view = View {
                by: args.by,
                domains: &args.domains,
                json: args.json,
                svg: args.svg.as_deref(),
            };
            print(&ksm_trace::sharing::run(source, &view)?)
        }
        Command::Top(args) => {
            ksm_trace::top::run(&ksm_trace::top::TopOptions {
                pids: args.guests.with_pids(&args.pids)?,
                interval: args.interval,
                batch: args.batch,
                limit: args.limit,
                probes: args.switches.options(args.merge_latency),
            })
            .await
        }
        Command::Serve(args) => {
            ksm_trace::serve::run(&ksm_trace::serve::ServeOptions {
                listen: args.listen,
                interval: args.interval,
                top: args.top,
                probes: args.switches.options(args.merge_latency),
            })
            .await
        }
        Command::Recover => print(&ksm_trace::recovery::recover_command()?),
        Command::Doctor(args) => print(&doctor::run(args.json)?),
        Command::Lab(args) => ksm_trace::lab::run(&args.options()),
        Command::Flame(args) => flame_command(&args),
        Command::Workload(args) => {
            ksm_trace::standalone::run(
                &args.spec,
                args.duration,
                &args.knobs.settings(),
                args.refresh,
            )
            .await
        }
        Command::ProcsWorker { args } => workload::procs::worker_main(&args),
    }
}

fn flame_command(args: &ksm_trace::cli::FlameArgs) -> anyhow::Result<()> {
    let folded: Vec<flame::Folded> = args
        .files
        .iter()
        .map(|f| {
            flame::folded(&Recording::read(f)?, args.by)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    if args.folded {
        if folded.len() > 1 {
            anyhow::bail!("--folded takes one recording: drop the second file");
        }
        let text = folded[0].lines.join("\n") + "\n";
        return match &args.output {
            Some(path) => Ok(std::fs::write(path, text)?),
            None => print(&text),
        };
    }
    let path = args
        .output
        .clone()
        .ok_or_else(|| anyhow::anyhow!("give the SVG's path with -o (e.g. -o merge-cost.svg)"))?;
    let mut svg = Vec::new();
    match folded.as_slice() {
        [one] => flame::svg(one, &mut svg)?,
        [before, after] => flame::diff_svg(before, after, &mut svg)?,
        _ => unreachable!("clap allows one or two files"),
    }
    std::fs::write(&path, svg).map_err(|e| {
        anyhow::anyhow!(
            "cannot write {} ({e}): choose a writable path with -o",
            path.display()
        )
    })?;
    eprintln!("ksm-trace: flame graph written to {}", path.display());
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
fn print(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
