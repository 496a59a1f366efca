//! `ksm-trace lab`: ksm-trace's scenario on another kernel, booted in a QEMU guest, or on this
//! one.
use anyhow::Result;

use crate::cli::LabArgs;

pub fn run(args: &LabArgs) -> Result<()> {
    crate::lab::run(&args.options())
}
