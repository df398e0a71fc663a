//! Text output for the `weft` CLI: server-side Tables as aligned columns
//! (kubectl's layout) and `describe` pages.

use serde_json::Value;

/// Options of table printing.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions<'a> {
    /// Show the priority-1 (wide) columns too.
    pub wide: bool,
    /// Add a NAMESPACE column first.
    pub namespace: bool,
    /// Print the header line.
    pub headers: bool,
    /// Prefix names with this ("deployment.apps/") when several kinds print.
    pub name_prefix: Option<&'a str>,
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// The rows of a Table as text lines (header first when asked).
pub fn table_lines(table: &Value, opts: TableOptions<'_>) -> Vec<Vec<String>> {
    let defs = table["columnDefinitions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let shown: Vec<usize> = defs
        .iter()
        .enumerate()
        .filter(|(_, d)| opts.wide || d["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut lines = Vec::new();
    if opts.headers {
        let mut h: Vec<String> = Vec::new();
        if opts.namespace {
            h.push("NAMESPACE".into());
        }
        h.extend(
            shown
                .iter()
                .map(|i| defs[*i]["name"].as_str().unwrap_or_default().to_uppercase()),
        );
        lines.push(h);
    }
    for row in table["rows"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let cells = row["cells"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut line = Vec::new();
        if opts.namespace {
            line.push(
                row["object"]["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        for i in &shown {
            let mut text = cells.get(*i).map(cell).unwrap_or_default();
            if defs[*i]["format"] == "name"
                && let Some(p) = opts.name_prefix
            {
                text = format!("{p}{text}");
            }
            line.push(text);
        }
        lines.push(line);
    }
    lines
}

/// Aligns lines into columns separated by three spaces.
pub fn align(lines: &[Vec<String>]) -> String {
    align_with(lines, &mut Vec::new())
}

/// Aligns lines to `widths` (widened as needed and kept, so that rows printed
/// later, as a watch prints them, line up with the ones before).
pub fn align_with(lines: &[Vec<String>], widths: &mut Vec<usize>) -> String {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    if widths.len() < cols {
        widths.resize(cols, 0);
    }
    for l in lines {
        for (i, c) in l.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for l in lines {
        let mut s = String::new();
        for (i, c) in l.iter().enumerate() {
            if i + 1 == l.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    }
    out
}

fn describe_value(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Object(inner) if inner.is_empty() => {
                        out.push_str(&format!("{pad}{k}:  <none>\n"))
                    }
                    Value::Array(a) if a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:  <none>\n"))
                    }
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        describe_value(out, val, indent + 2);
                    }
                    other => out.push_str(&format!("{pad}{k}:  {}\n", cell(other))),
                }
            }
        }
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}[{i}]\n"));
                        describe_value(out, item, indent + 2);
                    }
                    other => out.push_str(&format!("{pad}- {}\n", cell(other))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", cell(other))),
    }
}

fn map_line(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join("\n              "),
        _ => "<none>".into(),
    }
}

/// The length of a base64 value (0 if it is not base64).
fn decoded_len(v: &Value) -> usize {
    use base64::Engine as _;
    v.as_str().map_or(0, |b64| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_or(0, |b| b.len())
    })
}

/// A `describe` page: identity, labels and annotations, spec and status,
/// then the object's Events.
pub fn describe(obj: &Value, events: &[Value]) -> String {
    let m = &obj["metadata"];
    let mut out = String::new();
    out.push_str(&format!("Name:         {}\n", cell(&m["name"])));
    if m["namespace"].is_string() {
        out.push_str(&format!("Namespace:    {}\n", cell(&m["namespace"])));
    }
    out.push_str(&format!(
        "Kind:         {} ({})\n",
        cell(&obj["kind"]),
        cell(&obj["apiVersion"])
    ));
    out.push_str(&format!("Labels:       {}\n", map_line(&m["labels"])));
    let mut annotations = m["annotations"].clone();
    if let Some(a) = annotations.as_object_mut() {
        a.remove(crate::client::LAST_APPLIED);
    }
    out.push_str(&format!("Annotations:  {}\n", map_line(&annotations)));
    out.push_str(&format!(
        "Created:      {}\n",
        cell(&m["creationTimestamp"])
    ));
    if m["deletionTimestamp"].is_string() {
        out.push_str(&format!(
            "Deleting:     since {}\n",
            cell(&m["deletionTimestamp"])
        ));
    }
    if let Some(owners) = m["ownerReferences"].as_array() {
        for o in owners {
            out.push_str(&format!(
                "Controlled By:  {}/{}\n",
                cell(&o["kind"]),
                cell(&o["name"])
            ));
        }
    }
    for section in [
        "spec",
        "status",
        "subsets",
        "endpoints",
        "ports",
        "addressType",
        "involvedObject",
        "reason",
        "message",
        "type",
    ] {
        let v = &obj[section];
        if v.is_null() {
            continue;
        }
        let title = section[..1].to_uppercase() + &section[1..];
        match v {
            Value::Object(_) | Value::Array(_) => {
                out.push_str(&format!("{title}:\n"));
                describe_value(&mut out, v, 2);
            }
            other => out.push_str(&format!("{title}:  {}\n", cell(other))),
        }
    }
    match obj["kind"].as_str() {
        // As kubectl: a Secret's keys with their sizes, never a value.
        Some("Secret") => {
            out.push_str("Data:\n");
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                out.push_str(&format!("  {k}:  {} bytes\n", decoded_len(v)));
            }
        }
        Some("ConfigMap") => {
            out.push_str("Data:\n");
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                out.push_str(&format!(
                    "  {k}:\n    {}\n",
                    cell(v).replace('\n', "\n    ")
                ));
            }
            for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
                out.push_str(&format!(
                    "  {k}:  {} bytes of binary data\n",
                    decoded_len(v)
                ));
            }
        }
        _ => {}
    }
    if events.is_empty() {
        out.push_str("Events:       <none>\n");
    } else {
        out.push_str("Events:\n");
        let mut lines = vec![vec![
            "  Type".to_string(),
            "Reason".into(),
            "Age".into(),
            "From".into(),
            "Message".into(),
        ]];
        lines.push(vec![
            "  ----".into(),
            "------".into(),
            "----".into(),
            "----".into(),
            "-------".into(),
        ]);
        for e in events {
            let when = e["lastTimestamp"]
                .as_str()
                .or(e["eventTime"].as_str())
                .or(e["metadata"]["creationTimestamp"].as_str());
            lines.push(vec![
                format!("  {}", cell(&e["type"])),
                cell(&e["reason"]),
                crate::meta::age(when),
                cell(&e["source"]["component"]),
                cell(&e["message"]),
            ]);
        }
        out.push_str(&align(&lines));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_hide_wide_columns() {
        let t = json!({
            "columnDefinitions": [
                {"name": "Name", "format": "name", "priority": 0},
                {"name": "Status", "format": "", "priority": 0},
                {"name": "IP", "format": "", "priority": 1}
            ],
            "rows": [
                {"cells": ["a-long-name", "Running", "10.0.0.1"], "object": {"metadata": {"namespace": "ns"}}},
                {"cells": ["b", "Pending", null], "object": {"metadata": {"namespace": "ns"}}}
            ]
        });
        let text = align(&table_lines(
            &t,
            TableOptions {
                headers: true,
                ..Default::default()
            },
        ));
        assert_eq!(
            text,
            "NAME          STATUS\na-long-name   Running\nb             Pending\n"
        );
        let wide = align(&table_lines(
            &t,
            TableOptions {
                headers: true,
                wide: true,
                namespace: true,
                name_prefix: Some("pod/"),
            },
        ));
        let lines: Vec<Vec<&str>> = wide
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["NAMESPACE", "NAME", "STATUS", "IP"]);
        assert_eq!(lines[1], ["ns", "pod/a-long-name", "Running", "10.0.0.1"]);
        assert_eq!(lines[2], ["ns", "pod/b", "Pending", "<none>"]);
        // Columns line up: STATUS starts at the same offset on every line.
        let at: Vec<usize> = wide
            .lines()
            .map(|l| {
                l.find("STATUS")
                    .or(l.find("Running"))
                    .or(l.find("Pending"))
                    .unwrap()
            })
            .collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{wide}");
    }
}
