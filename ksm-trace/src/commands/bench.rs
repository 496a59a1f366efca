//! `ksm-trace bench`: what tracing costs ksmd (`overhead`), and the kernel selftest's merge and
//! unmerge measurements (`merge`, `unmerge`).
use anyhow::Result;

use super::print;
use crate::{
    bench::{self, MergeBench, OverheadBench, UnmergeBench},
    cli::BenchCommand,
};

pub async fn run(command: BenchCommand) -> Result<()> {
    let command_line = std::env::args().collect();
    match command {
        BenchCommand::Merge(args) => {
            let bench = MergeBench {
                owners: args.owner,
                size: args.size,
                thp: args.thp,
                pages_to_scan: args.pages_to_scan,
                merge_latency: args.merge_latency,
                timeout: args.timeout,
                output: args.output,
            };
            print(&bench::merge(&bench, command_line).await?.1)
        }
        BenchCommand::Unmerge(args) => {
            let bench = UnmergeBench {
                size: args.size,
                rounds: args.rounds,
                wait: args.wait,
                pages_to_scan: args.pages_to_scan,
                output: args.output,
            };
            print(&bench::unmerge(&bench, command_line).await?.1)
        }
        BenchCommand::Overhead(args) => {
            let bench = OverheadBench {
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
            print(&bench::overhead(&bench).await?)
        }
    }
}
