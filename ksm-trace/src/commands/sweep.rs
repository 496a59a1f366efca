//! `ksm-trace sweep`: one recording per combination of KSM settings, then the trade-off table
//! and charts.
use anyhow::Result;

use super::print;
use crate::{
    cli::SweepArgs,
    sweep::{self, SweepOptions},
};

pub async fn run(args: SweepArgs) -> Result<()> {
    let opts = SweepOptions {
        workload: args.workload,
        pages_to_scan: args.pages_to_scan,
        sleep_ms: args.sleep_ms,
        smart_scan: args.smart_scan,
        use_zero_pages: args.use_zero_pages,
        max_page_sharing: args.max_page_sharing,
        advisor: args.advisor,
        advisor_bounds: args.advisor_bounds.bounds(),
        duration: args.timeout.unwrap_or(args.duration),
        until_settled: args.until_settled,
        interval: args.interval,
        merge_latency: args.merge_latency,
        out_dir: args.output,
        baseline: args.baseline,
    };
    let summaries = sweep::run(&opts, std::env::args().collect()).await?;
    print(&sweep::render(&summaries))?;
    eprintln!(
        "ksm-trace: recordings, summary.csv, summary.json and charts in {}",
        opts.out_dir.display()
    );
    Ok(())
}
