//! Reports read a recording and nothing else: [`model`] computes the figures once, [`text`] and
//! JSON (serde of the model) present them, [`histogram`] draws every histogram.
pub mod advisor;
pub mod histogram;
pub mod mechanisms;
pub mod model;
pub mod others;
pub mod phases;
pub mod text;

use std::path::Path;

use anyhow::Result;

pub use model::Report;

use crate::{kernel::process::By, recording::Recording};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    /// Text, its per-process tables summed by guest or cgroup (`--by`).
    TextBy(crate::kernel::process::By),
    Json,
    /// The counter time series.
    Csv,
}

pub fn render(rec: &Recording, format: Format) -> Result<String> {
    let report = Report::from_recording(rec);
    Ok(match format {
        Format::Text => text::render(rec, &report, By::Process),
        Format::TextBy(by) => text::render(rec, &report, by),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Csv => crate::timeseries::csv(rec),
    })
}

pub fn render_file(path: &Path, format: Format) -> Result<String> {
    render(&Recording::read(path)?, format)
}
