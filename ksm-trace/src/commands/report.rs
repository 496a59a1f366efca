//! `ksm-trace report`: a recording's report as text (by process, guest or cgroup), JSON, or its
//! counter time series as CSV.
use anyhow::Result;

use super::print;
use crate::{
    cli::ReportArgs,
    report::{self, Format},
};

pub fn run(args: &ReportArgs) -> Result<()> {
    let format = match (args.json, args.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => Format::TextBy(args.by),
    };
    print(&report::render_file(&args.file, format)?)
}
