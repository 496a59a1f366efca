//! `ksm-trace serve`: the live figures as OpenMetrics for Prometheus.
use anyhow::Result;

use crate::{
    cli::ServeArgs,
    serve::{self, ServeOptions},
};

pub async fn run(args: &ServeArgs) -> Result<()> {
    serve::run(&ServeOptions {
        listen: args.listen,
        interval: args.interval,
        top: args.top,
        probes: args.switches.options(args.merge_latency),
    })
    .await
}
