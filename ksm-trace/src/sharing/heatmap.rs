//! The sharing matrix as a picture: one cell per pair of groups, darker where they share more
//! KSM pages, the diagonal holding each group's own KSM pages (plotters, SVG).
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::Matrix;

/// Writes the heatmap of `m` to `path`.
pub fn svg(m: &Matrix, path: &Path) -> Result<()> {
    let n = m.groups.len();
    if n == 0 {
        bail!("no KSM page is mapped by the processes seen: nothing to draw");
    }
    let mut cells = vec![vec![0u64; n]; n];
    for (i, pages) in m.group_pages.iter().enumerate() {
        cells[i][i] = *pages;
    }
    let index = |g: &String| m.groups.iter().position(|x| x == g);
    for (a, b, pages) in &m.pairs {
        if let (Some(i), Some(j)) = (index(a), index(b)) {
            cells[i][j] = *pages;
            cells[j][i] = *pages;
        }
    }
    let max = cells.iter().flatten().copied().max().unwrap_or(0).max(1);
    let size = (320 + 60 * n as u32).min(4000);
    let root = SVGBackend::new(path, (size, size)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    // Segmented axes put each group's label at the middle of its row and column.
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "KSM pages shared between groups (diagonal: each group's own)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(120)
        .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
        .map_err(|e| fail(&e))?;
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            m.groups.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n)
        .y_labels(n)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .x_label_style(("sans-serif", 11))
        .y_label_style(("sans-serif", 11))
        .draw()
        .map_err(|e| fail(&e))?;
    let shade = |pages: u64| (255.0 * (1.0 - pages as f64 / max as f64)) as u8;
    chart
        .draw_series(cells.iter().enumerate().flat_map(|(i, row)| {
            row.iter().enumerate().map(move |(j, &pages)| {
                let s = shade(pages);
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), SegmentValue::Exact(j)),
                        (SegmentValue::Exact(i + 1), SegmentValue::Exact(j + 1)),
                    ],
                    RGBColor(s, s, 255).filled(),
                )
            })
        }))
        .map_err(|e| fail(&e))?;
    // The count in each cell, light on dark cells.
    chart
        .draw_series(cells.iter().enumerate().flat_map(|(i, row)| {
            row.iter().enumerate().map(move |(j, &pages)| {
                let color = if shade(pages) < 128 { &WHITE } else { &BLACK };
                Text::new(
                    pages.to_string(),
                    (SegmentValue::CenterOf(i), SegmentValue::CenterOf(j)),
                    ("sans-serif", 11)
                        .into_font()
                        .color(color)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )
            })
        }))
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_group_and_refuses_an_empty_matrix() {
        let m = Matrix {
            groups: vec!["/tenant-a".into(), "/tenant-b".into()],
            group_pages: vec![500, 800],
            pairs: vec![("/tenant-a".into(), "/tenant-b".into(), 300)],
            ..Default::default()
        };
        let path =
            std::env::temp_dir().join(format!("ksm-trace-heatmap-{}.svg", std::process::id()));
        svg(&m, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("/tenant-a") && text.contains("/tenant-b"));
        assert!(text.matches("<rect").count() >= 4, "a cell per pair");
        assert!(
            text.contains("300") && text.contains("800"),
            "counts in the cells"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(svg(&Matrix::default(), &path).is_err());
    }
}
