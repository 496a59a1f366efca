//! `ksm-trace top`: the live per-process view, in a terminal or as text.
use anyhow::Result;

use crate::{
    cli::TopArgs,
    top::{self, TopOptions},
};

pub async fn run(args: &TopArgs) -> Result<()> {
    top::run(&TopOptions {
        pids: args.guests.with_pids(&args.pids)?,
        interval: args.interval,
        batch: args.batch,
        limit: args.limit,
        probes: args.switches.options(args.merge_latency),
    })
    .await
}
