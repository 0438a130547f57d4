//! Text tables as kubectl prints them.

/// Rows of cells as kubectl lays a table out (its tabwriter: minimum width 6, padding 3):
/// columns left-aligned, at least three spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| (rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0) + 3).max(6))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_like_kubectls_tabwriter() {
        let t =
            table(&[vec!["A".into(), "LONGER-HEADER".into(), "Z".into()], vec!["x".into(), "y".into(), "zz".into()]]);
        assert_eq!(t, "A     LONGER-HEADER   Z\nx     y               zz\n");
    }
}
