//! The text report's one table layout.

/// Left-aligns the columns in `left`, right-aligns the rest, two spaces of indent.
pub(super) fn table(rows: &[Vec<String>], left: &[usize]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        out.push(' ');
        for (c, value) in row.iter().enumerate() {
            let pad = widths[c] - value.chars().count();
            out.push(' ');
            if left.contains(&c) {
                out.push_str(value);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(value);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}
