//! `ksm-trace plot`: SVG charts of a recording's time series.
use anyhow::Result;

use crate::{cli::PlotArgs, plot, recording::Recording};

pub fn run(args: &PlotArgs) -> Result<()> {
    for f in plot::plot(&Recording::read(&args.file)?, &args.output)? {
        eprintln!("ksm-trace: wrote {}", f.display());
    }
    Ok(())
}
