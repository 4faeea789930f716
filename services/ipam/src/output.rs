//! How `ctl` and `show` print what the API answered: `-o table` for a person (the default on a
//! terminal), `-o json` for a program (the default when piped), `-o yaml`. The table is derived
//! from the JSON itself (scalars as rows, lists of objects as tables under their field's name), so
//! a field the API adds shows up without a change here.

use std::io::IsTerminal;

use comfy_table::{Table, presets};
use serde_json::{Map, Value};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

impl Format {
    /// The format asked for, else a table on a terminal and JSON when piped.
    pub fn chosen(asked: Option<Format>) -> Format {
        asked.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Json })
    }
}

/// Fields shown first, in this order, wherever they occur: what a reader looks for first.
const FIRST: [&str; 16] = [
    "outcome",
    "ip",
    "code",
    "message",
    "name",
    "network_id",
    "subnet_id",
    "cidr",
    "vnic_id",
    "vm_id",
    "mac",
    "host_id",
    "served_by",
    "status",
    "event_id",
    "type",
];

/// `value` as text in `format`, ending with a newline.
pub fn render(value: &Value, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml => serde_norway::to_string(value)?,
        Format::Table => table(value),
    })
}

fn table(value: &Value) -> String {
    match value {
        Value::Array(items) => rows(items),
        Value::Object(fields) => {
            let (mut out, mut lists) = (String::new(), Vec::new());
            let mut pairs = Vec::new();
            for (key, field) in ordered(fields) {
                match field {
                    Value::Array(items) if items.iter().any(Value::is_object) => lists.push((key, items)),
                    _ => flatten(key, field, &mut pairs),
                }
            }
            if !pairs.is_empty() {
                let mut grid = new_table();
                for (key, cell) in pairs {
                    grid.add_row(vec![key, cell]);
                }
                out.push_str(&grid.trim_fmt());
                out.push('\n');
            }
            for (key, items) in lists {
                out.push_str(&format!("\n{key}:\n{}", rows(items)));
            }
            out
        }
        scalar => format!("{}\n", cell(scalar)),
    }
}

/// A list of objects as one table, a column per field (nested objects' fields as dotted columns,
/// such as `reservation.ip`), in `FIRST` order, then as they come.
fn rows(items: &[Value]) -> String {
    if items.is_empty() {
        return "(none)\n".to_owned();
    }
    let flat: Vec<Vec<(String, String)>> = items
        .iter()
        .map(|item| {
            let mut pairs = Vec::new();
            match item {
                Value::Object(fields) => {
                    // A null object (no reservation) shows as dashes under its fields' columns.
                    for (key, field) in ordered(fields).into_iter().filter(|(_, field)| !field.is_null()) {
                        flatten(key, field, &mut pairs);
                    }
                }
                scalar => pairs.push((String::new(), cell(scalar))),
            }
            pairs
        })
        .collect();
    let mut columns: Vec<String> = Vec::new();
    for pairs in &flat {
        for (key, _) in pairs {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    // Grouped by their top-level field, each group in `FIRST` order.
    columns.sort_by_key(|column| {
        let (top, last) = (column.split('.').next().unwrap_or(column), column.rsplit('.').next().unwrap_or(column));
        (rank(top), rank(last))
    });
    let mut grid = new_table();
    if columns != [String::new()] {
        grid.set_header(columns.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>());
    }
    for pairs in &flat {
        grid.add_row(
            columns
                .iter()
                .map(|column| pairs.iter().find(|(key, _)| key == column).map_or("-".to_owned(), |(_, v)| v.clone()))
                .collect::<Vec<_>>(),
        );
    }
    format!("{}\n", grid.trim_fmt())
}

/// Where a field goes: those in `FIRST` first, in its order.
fn rank(key: &str) -> usize {
    FIRST.iter().position(|first| *first == key).unwrap_or(FIRST.len())
}

fn new_table() -> Table {
    let mut grid = Table::new();
    grid.load_style(presets::NOTHING);
    grid
}

/// An object's fields, those in `FIRST` first.
fn ordered(fields: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut pairs: Vec<_> = fields.iter().collect();
    pairs.sort_by_key(|(key, _)| rank(key));
    pairs
}

/// Nested objects become dotted rows (`reservation.ip`), so a view's details stay readable.
fn flatten(key: &str, value: &Value, into: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (inner, field) in ordered(fields) {
                flatten(&format!("{key}.{inner}"), field, into);
            }
        }
        _ => into.push((key.to_owned(), cell(value))),
    }
}

/// One value in one cell: strings bare, null as `-`, lists joined, a named object by its name.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(fields) => match fields.get("name").and_then(Value::as_str) {
            Some(name) => name.to_owned(),
            None => Value::Object(fields.clone()).to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_decision_reads_outcome_first_and_lists_become_tables() {
        let shown = table(&json!({
            "vnic_id": "v1", "outcome": "reserved", "ip": "10.0.0.2",
            "served_by": [{"host_id": "h1", "name": "alpha"}, {"host_id": "h2", "name": "beta"}],
        }));
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines[0].contains("outcome") && lines[0].contains("reserved"), "{shown}");
        assert!(lines[1].contains("ip") && lines[1].contains("10.0.0.2"), "{shown}");
        assert!(shown.contains("served_by:") && shown.contains("alpha") && shown.contains("HOST_ID"), "{shown}");
    }

    #[test]
    fn nested_objects_become_dotted_rows_and_nulls_dashes() {
        let shown = table(&json!({"reservation": {"ip": "10.0.0.9", "since": null}}));
        assert!(shown.contains("reservation.ip") && shown.contains("10.0.0.9"), "{shown}");
        assert!(shown.lines().any(|line| line.contains("reservation.since") && line.trim_end().ends_with('-')));
    }

    #[test]
    fn rows_show_nested_fields_as_dotted_columns() {
        let shown = rows(&[
            json!({"vnic_id": "v1", "reservation": {"ip": "10.0.0.2", "mac": "52:54:00:00:00:01"}}),
            json!({"vnic_id": "v2", "reservation": null}),
        ]);
        let header = shown.lines().next().unwrap_or_default();
        assert!(header.contains("RESERVATION.IP") && header.contains("RESERVATION.MAC"), "{shown}");
        assert!(shown.lines().nth(2).is_some_and(|line| line.contains("v2") && line.contains('-')), "{shown}");
    }

    #[test]
    fn an_empty_list_says_none() {
        assert_eq!(table(&json!([])), "(none)\n");
    }
}
