//! `ksm-trace explain`: why memory is not merged.
use anyhow::Result;

use super::print;
use crate::{cli::ExplainArgs, explain::ExplainOptions};

pub fn run(args: &ExplainArgs) -> Result<()> {
    print(&crate::explain::run(&ExplainOptions {
        pids: args.pids.clone(),
        vms: args.vms.clone(),
        by: args.by,
        vmas: args.vmas,
        max_pages: (!args.full).then_some(args.max_pages),
        seed: args.seed,
        json: args.json,
    })?)
}
