//! The text report: one function per section, in the order they are printed; every histogram
//! through the one renderer (`report::histogram`), every table through [`table`].
mod advisor;
mod counters;
mod cow;
mod footer;
mod header;
mod latency;
mod phases;
mod processes;
pub mod savings;
mod scans;
mod table;
mod tlb;
mod unmerge;
mod workers;

use super::model::Report;
use crate::{kernel::process::By, recording::Recording};

const MIB: f64 = (1u64 << 20) as f64;

pub fn render(rec: &Recording, r: &Report, by: By) -> String {
    let mut o = String::new();
    header::title(&mut o, r);
    workers::section(&mut o, rec, r);
    header::knobs(&mut o, rec, r);
    processes::section(&mut o, rec, r, by);
    savings::section(&mut o, r, by);
    cow::section(&mut o, r);
    latency::section(&mut o, rec, r);
    scans::section(&mut o, rec, r);
    advisor::section(&mut o, r);
    phases::section(&mut o, r);
    tlb::section(&mut o, r);
    unmerge::section(&mut o, r);
    counters::section(&mut o, rec, r);
    footer::section(&mut o, rec, r);
    o
}
