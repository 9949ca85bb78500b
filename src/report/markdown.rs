//! polars tables rendered as GitHub-flavoured Markdown.

use polars::prelude::*;

/// A number as a reader wants it: integers plainly, small p-values in scientific notation,
/// everything else to four decimals.
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn cell(value: AnyValue) -> String {
    match value {
        AnyValue::Null => "–".to_owned(),
        AnyValue::Float64(x) => format_number(x),
        AnyValue::Float32(x) => format_number(f64::from(x)),
        AnyValue::String(s) => s.replace('|', "\\|"),
        AnyValue::StringOwned(s) => s.replace('|', "\\|"),
        other => other.to_string(),
    }
}

pub fn table(df: &DataFrame) -> String {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut out = format!(
        "| {} |\n|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for row in 0..df.height() {
        let cells: Vec<String> = df
            .columns()
            .iter()
            .map(|c| c.get(row).map_or_else(|_| "?".to_owned(), cell))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_nulls() {
        assert_eq!(format_number(12.0), "12");
        assert_eq!(format_number(0.58793), "0.5879");
        assert_eq!(format_number(6.27e-11), "6.270e-11");
        let df = DataFrame::new_infer_height(vec![
            Column::new("a".into(), [Some(1.5), None]),
            Column::new("b".into(), ["x|y", "z"]),
        ])
        .unwrap();
        assert_eq!(
            table(&df),
            "| a | b |\n|---|---|\n| 1.5000 | x\\|y |\n| – | z |\n"
        );
    }
}
