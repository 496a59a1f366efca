//! `ksm-trace plot`: SVG charts of a recording's time series (plotters), one line-chart helper
//! for all of them: memory saved, ksmd CPU, merge and COW-break rates, full-scan duration, and
//! merged pages per process; the KSM advisor's target vs achieved scan time and the
//! pages_to_scan it chose, when it ran; and the sharing matrix as a heatmap.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use plotters::prelude::*;

use crate::{recording::Recording, timeseries};

/// A named set of points, joined by a line or drawn as dots only.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub line: bool,
}

fn lines(series: Vec<(&str, Vec<(f64, f64)>)>) -> Vec<Series> {
    series
        .into_iter()
        // A counter the kernel lacks has no points: no legend entry either.
        .filter(|(_, points)| !points.is_empty())
        .map(|(name, points)| Series {
            name: name.to_owned(),
            points,
            line: true,
        })
        .collect()
}

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
        draw(
            &path,
            title,
            "seconds since the recording began",
            y,
            &series,
        )?;
        written.push(path);
        Ok(())
    };
    chart(
        "memory.svg",
        "Memory KSM saves",
        "MiB",
        lines(vec![
            ("pages_shared", line(&|r| mib(r.pages_shared))),
            ("pages_sharing (saved)", line(&|r| mib(r.pages_sharing))),
            // Kernels before 6.6 have no general_profit: no line, rather than a line at 0.
            (
                "general_profit",
                rows.iter()
                    .filter_map(|r| Some((r.t_s, r.general_profit? as f64 / (1 << 20) as f64)))
                    .collect(),
            ),
        ]),
    )?;
    chart(
        "ksmd-cpu.svg",
        "ksmd CPU",
        "% of one CPU",
        lines(vec![("ksmd", line(&|r| r.ksmd_cpu_percent))]),
    )?;
    chart(
        "rates.svg",
        "Merges and copy-on-write breaks",
        "per second",
        lines(vec![
            ("merges/s (traced)", line(&|r| r.merges_per_s)),
            ("cow_ksm/s (kernel)", line(&|r| r.cow_ksm_per_s)),
        ]),
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
        lines(vec![("full scan", scans)]),
    )?;
    let per_process: Vec<Series> = timeseries::process_columns(rec)
        .iter()
        .enumerate()
        .map(|(i, (pid, comm))| {
            let points = rows
                .iter()
                .filter_map(|r| Some((r.t_s, r.processes[i]? as f64)))
                .collect();
            Series {
                name: format!("{comm}[{pid}]"),
                points,
                line: true,
            }
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
    if let Some(a) = crate::report::advisor::AdvisorReport::of(rec) {
        let achieved: Vec<(f64, f64)> = a
            .scans
            .iter()
            .filter_map(|s| Some((s.t_s, s.scan_s?)))
            .collect();
        let target: Vec<(f64, f64)> = a
            .target_s
            .map(|t| a.scans.iter().map(|s| (s.t_s, t as f64)).collect())
            .unwrap_or_default();
        chart(
            "advisor-scan-time.svg",
            "KSM advisor: full-scan time, target and achieved",
            "s",
            lines(vec![("target", target), ("achieved (traced)", achieved)]),
        )?;
        chart(
            "advisor-pages-to-scan.svg",
            "KSM advisor: the pages_to_scan it chose",
            "pages per batch",
            lines(vec![(
                "pages_to_scan",
                a.scans
                    .iter()
                    .map(|s| (s.t_s, s.pages_to_scan as f64))
                    .collect(),
            )]),
        )?;
    }
    // Who shares with whom: by guest when the recording has guests.
    let by = if rec.processes.iter().any(|p| p.guest.is_some()) {
        crate::kernel::process::By::Guest
    } else {
        crate::kernel::process::By::Process
    };
    if let Some(m) = crate::sharing::traced_matrix(rec, by).filter(|m| !m.groups.is_empty()) {
        let path = dir.join("sharing.svg");
        crate::sharing::heatmap::svg(&m, &path)?;
        written.push(path);
    }
    Ok(written)
}

/// The one chart drawer: axes from 0 (or the lowest value), a legend, lines and/or dots.
pub fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0_f64, f64::max) * 1.05;
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
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let legend = move |(x, y): (i32, i32)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            };
            if s.line {
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))?
                    .label(s.name.as_str())
                    .legend(legend);
            }
            if !s.line || s.points.len() < 60 {
                let dots = chart
                    .draw_series(s.points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
                if !s.line {
                    dots.label(s.name.as_str()).legend(legend);
                }
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
