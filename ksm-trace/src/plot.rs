//! `ksm-trace plot`: SVG charts of a recording's time series (plotters), one line-chart helper
//! for all of them: memory saved, ksmd CPU, merge and COW-break rates, full-scan duration, and
//! merged pages per process.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use plotters::prelude::*;

use crate::{recording::Recording, timeseries};

type Series = (String, Vec<(f64, f64)>);

/// Writes every chart into `dir`; returns the files written.
pub fn plot(rec: &Recording, dir: &Path) -> Result<Vec<PathBuf>> {
    if rec.timeseries.len() < 2 {
        bail!(
            "the recording has fewer than two time-series samples: record for longer than --interval"
        );
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {} : choose a writable directory with -o",
            dir.display()
        )
    })?;
    let rows = timeseries::rows(rec);
    let mib = |pages: i64| pages as f64 * rec.meta.page_size as f64 / (1 << 20) as f64;
    let line = |f: &dyn Fn(&timeseries::Row) -> f64| {
        rows.iter().map(|r| (r.t_s, f(r))).collect::<Vec<_>>()
    };
    let mut written = Vec::new();
    let mut chart = |file: &str, title: &str, y: &str, series: Vec<Series>| -> Result<()> {
        let path = dir.join(file);
        line_chart(&path, title, y, &series)?;
        written.push(path);
        Ok(())
    };
    chart(
        "memory.svg",
        "Memory KSM saves",
        "MiB",
        vec![
            ("pages_shared".into(), line(&|r| mib(r.pages_shared))),
            (
                "pages_sharing (saved)".into(),
                line(&|r| mib(r.pages_sharing)),
            ),
            (
                "general_profit".into(),
                line(&|r| r.general_profit as f64 / (1 << 20) as f64),
            ),
        ],
    )?;
    chart(
        "ksmd-cpu.svg",
        "ksmd CPU",
        "% of one CPU",
        vec![("ksmd".into(), line(&|r| r.ksmd_cpu_percent))],
    )?;
    chart(
        "rates.svg",
        "Merges and copy-on-write breaks",
        "per second",
        vec![
            ("merges/s (traced)".into(), line(&|r| r.merges_per_s)),
            ("cow_ksm/s (kernel)".into(), line(&|r| r.cow_ksm_per_s)),
        ],
    )?;
    let scans: Vec<(f64, f64)> = rec
        .scans
        .full_scans
        .iter()
        .filter_map(|s| {
            Some((
                s.stop_ns.saturating_sub(rec.meta.start_ns) as f64 / 1e9,
                s.duration_ns()? as f64 / 1e6,
            ))
        })
        .collect();
    chart(
        "full-scans.svg",
        "Full-scan duration",
        "ms",
        vec![("full scan".into(), scans)],
    )?;
    let per_process: Vec<Series> = timeseries::process_columns(rec)
        .iter()
        .enumerate()
        .map(|(i, (pid, comm))| {
            let points = rows
                .iter()
                .filter_map(|r| Some((r.t_s, r.processes[i]? as f64)))
                .collect();
            (format!("{comm}[{pid}]"), points)
        })
        .collect();
    if !per_process.is_empty() {
        chart(
            "processes.svg",
            "Merged pages per process (ksm_merging_pages)",
            "pages",
            per_process,
        )?;
    }
    Ok(written)
}

fn line_chart(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let x_max = points().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0) * 1.05;
    let y_min = points().map(|p| p.1).fold(0.0_f64, f64::min);
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the recording began")
            .y_desc(y_label)
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            if points.len() < 60 {
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}
