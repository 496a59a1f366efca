//! One file per subcommand: what its arguments ask for, the run that answers it, and what it
//! prints. The rooms they drive (probes, collect, recording, report, workload, …) do not know
//! about the command line.
pub mod bench;
pub mod compare;
pub mod doctor;
pub mod explain;
pub mod flame;
pub mod lab;
pub mod plot;
pub mod record;
pub mod recover;
pub mod report;
pub mod serve;
pub mod sharing;
pub mod sweep;
pub mod top;
pub mod workload;

use std::io::Write as _;

use anyhow::Result;

use crate::cli::Command;

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Record(args) => record::run(args).await,
        Command::Report(args) => report::run(&args),
        Command::Flame(args) => flame::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Sweep(args) => sweep::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Sharing(args) => sharing::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Recover => recover::run(),
        Command::Doctor(args) => print(&doctor::run(args.json)?),
        Command::Lab(args) => lab::run(&args),
        Command::Workload(args) => workload::run(&args).await,
        Command::Top(args) => top::run(&args).await,
        Command::Serve(args) => serve::run(&args).await,
        Command::ProcsWorker { args } => crate::workload::procs::worker_main(&args),
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a message.
pub fn print(text: &str) -> Result<()> {
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
