//! The Grafana dashboard shipped in `deploy/grafana/rewardfleet.json`: loading it, the metric
//! names its queries use, and the structural defects a Grafana import would trip on or that
//! would leave a panel empty.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use serde_json::Value;

/// The grid's width in Grafana's units.
pub const GRID_WIDTH: u64 = 24;

/// Grafana's own variables that an expression may use without defining them.
pub const BUILT_INS: &[&str] = &["__rate_interval", "__interval", "__range"];

/// The name of the datasource template variable every panel and target must query through.
pub const DATASOURCE_VARIABLE: &str = "datasource";

/// The dashboard's path in the repository.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/rewardfleet.json")
}

/// The shipped dashboard, parsed.
pub fn dashboard() -> Value {
    let path = path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows and the panels a collapsed row holds included, in document order.
pub fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in array(&dashboard["panels"]) {
        out.push(panel);
        out.extend(array(&panel["panels"]));
    }
    out
}

/// The titles of the dashboard's rows.
pub fn row_titles(dashboard: &Value) -> Vec<String> {
    all_panels(dashboard)
        .into_iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str().map(str::to_owned))
        .collect()
}

/// Every `expr` of every target of every panel (nested ones included).
pub fn exprs(dashboard: &Value) -> Vec<&str> {
    all_panels(dashboard)
        .into_iter()
        .flat_map(|p| array(&p["targets"]))
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// Every `rewardfleet_[a-z0-9_]+` token in the panels' queries, as written: a histogram's series
/// keep their `_bucket`, `_sum` or `_count` suffix, a counter its `_total`.
pub fn metric_names(dashboard: &Value) -> BTreeSet<String> {
    const PREFIX: &str = "rewardfleet_";
    let mut names = BTreeSet::new();
    for expr in exprs(dashboard) {
        let bytes = expr.as_bytes();
        let mut from = 0;
        while let Some(found) = expr[from..].find(PREFIX) {
            let start = from + found;
            let mut end = start + PREFIX.len();
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            let glued = start > 0 && is_name_byte(bytes[start - 1]);
            if !glued && end > start + PREFIX.len() {
                names.insert(expr[start..end].to_owned());
            }
            from = end;
        }
    }
    names
}

/// What is wrong with `dashboard`, one line per defect naming the panel (id and title) and the
/// defect; empty when nothing is.
pub fn problems(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for key in ["uid", "title"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("dashboard: no {key}"));
        }
    }
    if dashboard["schemaVersion"].as_u64().is_none() {
        problems.push("dashboard: no schemaVersion".to_owned());
    }
    if !dashboard["panels"].is_array() {
        problems.push("dashboard: no panels".to_owned());
    }

    let variables = variables(dashboard, &mut problems);

    let mut ids: HashMap<u64, usize> = HashMap::new();
    for panel in all_panels(dashboard) {
        let name = panel_name(panel);
        match panel["id"].as_u64() {
            Some(id) => *ids.entry(id).or_default() += 1,
            None => problems.push(format!("{name}: no id")),
        }
        for key in ["type", "title"] {
            if panel[key].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: no {key}"));
            }
        }
        if grid(panel).is_none() {
            problems.push(format!(
                "{name}: gridPos missing or invalid (h, w, x, y: whole numbers, h and w at least 1, x + w at most {GRID_WIDTH})"
            ));
        }
        check_targets(panel, &name, &variables, &mut problems);
    }
    let mut duplicated: Vec<_> = ids.into_iter().filter(|&(_, n)| n > 1).collect();
    duplicated.sort_unstable();
    for (id, n) in duplicated {
        problems.push(format!("panel id {id} is used by {n} panels"));
    }

    // Top-level panels share one grid; the panels of a collapsed row keep the places they take
    // when it is expanded, so they are checked among themselves.
    let top = array(&dashboard["panels"]).iter().collect::<Vec<_>>();
    overlaps(&top, &mut problems);
    for row in &top {
        let nested = array(&row["panels"]).iter().collect::<Vec<_>>();
        overlaps(&nested, &mut problems);
    }
    problems
}

/// The template variables' names; a missing or wrong datasource variable is a problem.
fn variables(dashboard: &Value, problems: &mut Vec<String>) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut datasource = false;
    for variable in array(&dashboard["templating"]["list"]) {
        let Some(name) = variable["name"].as_str().filter(|n| !n.is_empty()) else {
            problems.push("template variable without a name".to_owned());
            continue;
        };
        if !names.insert(name.to_owned()) {
            problems.push(format!("template variable ${name} is defined twice"));
        }
        if name == DATASOURCE_VARIABLE {
            datasource = variable["type"] == "datasource" && variable["query"] == "prometheus";
        } else if variable["type"] == "query" && !is_variable_ref(&variable["datasource"]) {
            problems.push(format!(
                "template variable ${name}: datasource is not the ${DATASOURCE_VARIABLE} variable"
            ));
        }
    }
    if !datasource {
        problems.push(format!(
            "no template variable ${DATASOURCE_VARIABLE} of type datasource with query prometheus"
        ));
    }
    names
}

fn check_targets(
    panel: &Value,
    name: &str,
    variables: &HashSet<String>,
    problems: &mut Vec<String>,
) {
    let targets = array(&panel["targets"]);
    let has_datasource = !panel["datasource"].is_null();
    if has_datasource && !is_variable_ref(&panel["datasource"]) {
        problems.push(format!(
            "{name}: datasource is not the ${DATASOURCE_VARIABLE} variable"
        ));
    }
    if !targets.is_empty() && !has_datasource {
        problems.push(format!(
            "{name}: no datasource (it would query the default one, not ${DATASOURCE_VARIABLE})"
        ));
    }
    let mut ref_ids = HashSet::new();
    for (i, target) in targets.iter().enumerate() {
        let ref_id = target["refId"].as_str().filter(|r| !r.is_empty());
        let at = format!("{name} target {}", ref_id.unwrap_or(&format!("#{i}")));
        match ref_id {
            None => problems.push(format!("{at}: no refId")),
            Some(r) if !ref_ids.insert(r) => {
                problems.push(format!("{name}: refId {r} is used by more than one target"));
            }
            Some(_) => {}
        }
        if !target["datasource"].is_null() && !is_variable_ref(&target["datasource"]) {
            problems.push(format!(
                "{at}: datasource is not the ${DATASOURCE_VARIABLE} variable"
            ));
        }
        let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
            problems.push(format!("{at}: no expr"));
            continue;
        };
        for var in used_variables(expr) {
            if !variables.contains(&var) && !BUILT_INS.contains(&var.as_str()) {
                problems.push(format!(
                    "{at}: ${var} is neither a template variable nor a Grafana built-in"
                ));
            }
        }
        if let Some(why) = unbalanced(expr) {
            problems.push(format!("{at}: unbalanced parentheses in expr ({why})"));
        }
    }
}

/// `{"type": "prometheus", "uid": "${datasource}"}` (or the legacy string form).
fn is_variable_ref(datasource: &Value) -> bool {
    let refers = |uid: &str| {
        uid == format!("${{{DATASOURCE_VARIABLE}}}") || uid == format!("${DATASOURCE_VARIABLE}")
    };
    match datasource {
        Value::String(uid) => refers(uid),
        Value::Object(o) => {
            o.get("uid").and_then(Value::as_str).is_some_and(refers)
                && o.get("type").is_none_or(|t| t == "prometheus")
        }
        _ => false,
    }
}

/// The variables `expr` refers to: `$name`, `${name}` and `${name:format}`.
pub fn used_variables(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let braced = bytes.get(i + 1) == Some(&b'{');
        let start = i + 1 + usize::from(braced);
        let mut end = start;
        while end < bytes.len() && is_name_byte(bytes[end]) {
            end += 1;
        }
        if end > start {
            out.push(expr[start..end].to_owned());
        }
        i = end.max(i + 1);
    }
    out
}

/// Why the brackets of `expr` do not pair up, outside string literals; `None` when they do.
pub fn unbalanced(expr: &str) -> Option<String> {
    let mut open = Vec::new();
    let mut chars = expr.chars();
    let mut quote = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' && q != '`' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let wanted = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if open.pop() != Some(wanted) {
                    return Some(format!("unexpected `{c}`"));
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Some("unterminated string".to_owned());
    }
    open.last().map(|c| format!("`{c}` never closed"))
}

#[derive(Clone, Copy, Debug)]
struct Grid {
    x: u64,
    y: u64,
    w: u64,
    h: u64,
}

fn grid(panel: &Value) -> Option<Grid> {
    let g = &panel["gridPos"];
    let grid = Grid {
        x: g["x"].as_u64()?,
        y: g["y"].as_u64()?,
        w: g["w"].as_u64()?,
        h: g["h"].as_u64()?,
    };
    (grid.w >= 1 && grid.h >= 1 && grid.x + grid.w <= GRID_WIDTH).then_some(grid)
}

fn overlaps(panels: &[&Value], problems: &mut Vec<String>) {
    let placed: Vec<_> = panels
        .iter()
        .filter_map(|p| grid(p).map(|g| (*p, g)))
        .collect();
    for (i, (a, ga)) in placed.iter().enumerate() {
        for (b, gb) in &placed[i + 1..] {
            let apart = ga.x + ga.w <= gb.x
                || gb.x + gb.w <= ga.x
                || ga.y + ga.h <= gb.y
                || gb.y + gb.h <= ga.y;
            if !apart {
                problems.push(format!(
                    "{}: gridPos overlaps {}",
                    panel_name(a),
                    panel_name(b)
                ));
            }
        }
    }
}

fn panel_name(panel: &Value) -> String {
    let id = panel["id"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |id| id.to_string());
    let title = panel["title"].as_str().unwrap_or("");
    format!("panel {id} {title:?}")
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
