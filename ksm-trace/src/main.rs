//! ksm-trace's command line: parse, run, and turn any error into one line and a non-zero exit.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;
use ksm_trace::{cli::Cli, commands, run::knobs};

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
        .and_then(|runtime| runtime.block_on(commands::run(cli.command)));
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
