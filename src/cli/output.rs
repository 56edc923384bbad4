//! Printing for people: aligned tables and `key: value` lines.

use serde_json::Value;

use super::control::text;

pub fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Top-level fields as `key: value`; nested objects indented below.
pub fn print_fields(value: &Value) {
    print_object(value, 0);
}

fn print_object(value: &Value, indent: usize) {
    let Some(map) = value.as_object() else {
        println!("{:indent$}{}", "", text(value));
        return;
    };
    let width = map.keys().map(String::len).max().unwrap_or(0);
    for (key, v) in map {
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                println!("{:indent$}{key}:", "");
                print_object(v, indent + 2);
            }
            Value::Array(items) => {
                let all_scalar = items.iter().all(|i| !i.is_object() && !i.is_array());
                if all_scalar {
                    let joined: Vec<String> = items.iter().map(text).collect();
                    println!("{:indent$}{key:<width$}  {}", "", joined.join(", "));
                } else {
                    println!("{:indent$}{key}:", "");
                    for item in items {
                        print_object(item, indent + 2);
                    }
                }
            }
            other => println!("{:indent$}{key:<width$}  {}", "", text(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_aligns_columns() {
        let rows = vec![vec!["a".to_string(), "running".to_string()], vec!["longer".to_string(), "-".to_string()]];
        assert_eq!(super::table(&["NAME", "STATUS"], &rows), "NAME    STATUS\na       running\nlonger  -\n");
    }
}
