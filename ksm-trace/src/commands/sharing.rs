//! `ksm-trace sharing`: who shares KSM pages with whom, now or in a recording.
use anyhow::Result;

use super::print;
use crate::{
    cli::SharingArgs,
    sharing::{self, Source, View},
};

pub fn run(args: &SharingArgs) -> Result<()> {
    let source = match &args.file {
        Some(path) => Source::Recording {
            path,
            snapshot: args.snapshot,
        },
        None => Source::Now { pids: &args.pids },
    };
    let view = View {
        by: args.by,
        domains: &args.domains,
        json: args.json,
        svg: args.svg.as_deref(),
    };
    print(&sharing::run(source, &view)?)
}
