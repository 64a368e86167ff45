//! What `gradline up` leaves behind: a JSON summary of every cycle, and a self-contained
//! HTML report (plots drawn as inline SVG, nothing fetched) — validation loss per cycle,
//! score and weight per miner per cycle, bytes moved per role — plus the table printed
//! after each cycle.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::display::human_bytes;

/// A whole network run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The folder of pipelines the network was made of.
    pub pipelines: String,
    /// The network folder: store, hub, ledger, runs, this report.
    pub network: String,
    pub roles: Vec<RoleInfo>,
    pub cycles: Vec<CycleRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoleInfo {
    pub label: String,
    pub uid: Option<i64>,
    pub pipeline: String,
    /// Its run folder (journal and artifacts).
    pub run: String,
}

/// One cycle of the network.
#[derive(Clone, Debug, Serialize)]
pub struct CycleRow {
    pub cycle: u64,
    pub window: i64,
    pub duration_ms: u64,
    /// The new checkpoint's loss on held-out text.
    pub validation_loss: Option<f64>,
    /// How many updates the validator merged.
    pub merged: Option<i64>,
    pub miners: Vec<MinerRow>,
    pub roles: Vec<RoleBytes>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MinerRow {
    pub uid: i64,
    pub label: String,
    /// Its training loss on its batch, before and after its inner steps.
    pub loss_before: Option<f64>,
    pub loss_after: Option<f64>,
    pub score: Option<f64>,
    /// Its share of the weights the validator set.
    pub weight: Option<f64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub accepted: bool,
    /// `accepted`, or the first check it failed and why.
    pub verdict: String,
}

/// Bytes a role uploaded and downloaded in a cycle.
#[derive(Clone, Debug, Serialize)]
pub struct RoleBytes {
    pub label: String,
    pub up: u64,
    pub down: u64,
}

pub const HTML_FILE: &str = "report.html";
pub const JSON_FILE: &str = "summary.json";

/// Writes `report.html` and `summary.json` into the network folder; their names.
pub fn write(folder: &Path, summary: &Summary) -> Result<(&'static str, &'static str)> {
    let json = serde_json::to_string_pretty(summary)?;
    std::fs::write(folder.join(JSON_FILE), json + "\n")
        .with_context(|| format!("cannot write {}", folder.join(JSON_FILE).display()))?;
    std::fs::write(folder.join(HTML_FILE), html(summary))
        .with_context(|| format!("cannot write {}", folder.join(HTML_FILE).display()))?;
    Ok((HTML_FILE, JSON_FILE))
}

/// The table printed after a cycle.
pub fn cycle_table(row: &CycleRow, previous_loss: Option<f64>) -> String {
    let loss = match (row.validation_loss, previous_loss) {
        (Some(now), Some(before)) => format!("validation loss {now:.4} ({:+.4})", now - before),
        (Some(now), None) => format!("validation loss {now:.4}"),
        (None, _) => "no validation loss".into(),
    };
    let merged = row
        .merged
        .map(|n| format!(" · {n} merged"))
        .unwrap_or_default();
    let mut out = format!(
        "cycle {} · {loss}{merged} · {:.1}s\n  {:>3}  {:14} {:>7} {:>7} {:>7} {:>9} {:>9}  verdict\n",
        row.cycle,
        row.duration_ms as f64 / 1000.0,
        "uid",
        "miner",
        "loss",
        "score",
        "weight",
        "up",
        "down"
    );
    for m in &row.miners {
        let _ = writeln!(
            out,
            "  {:>3}  {:14} {:>7} {:>7} {:>7} {:>9} {:>9}  {}",
            m.uid,
            m.label,
            m.loss_after.map_or("—".into(), |l| format!("{l:.3}")),
            m.score.map_or("—".into(), |s| format!("{s:.4}")),
            m.weight.map_or("—".into(), |w| format!("{w:.3}")),
            human_bytes(m.bytes_up),
            human_bytes(m.bytes_down),
            shorten(&m.verdict, 70)
        );
    }
    out
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The report page.
pub fn html(summary: &Summary) -> String {
    let loss: Vec<(f64, f64)> = summary
        .cycles
        .iter()
        .filter_map(|c| c.validation_loss.map(|l| (c.cycle as f64, l)))
        .collect();
    let per_miner = |pick: fn(&MinerRow) -> Option<f64>| -> Vec<Series> {
        let mut series: BTreeMap<i64, Series> = BTreeMap::new();
        for cycle in &summary.cycles {
            for m in &cycle.miners {
                let entry = series.entry(m.uid).or_insert_with(|| Series {
                    name: format!("uid {} ({})", m.uid, m.label),
                    points: Vec::new(),
                });
                if let Some(v) = pick(m) {
                    entry.points.push((cycle.cycle as f64, v));
                }
            }
        }
        series.into_values().collect()
    };
    let mut bytes: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for cycle in &summary.cycles {
        for role in &cycle.roles {
            let entry = bytes.entry(&role.label).or_default();
            entry.0 += role.up;
            entry.1 += role.down;
        }
    }
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradline up — {}</title>\n<style>{STYLE}</style></head><body>\n<h1>gradline up</h1>\n<p>Pipelines <code>{}</code>, network folder <code>{}</code>, {} cycle(s).</p>\n",
        escape(&summary.pipelines),
        escape(&summary.pipelines),
        escape(&summary.network),
        summary.cycles.len()
    );
    page.push_str("<div class=\"plots\">\n");
    page.push_str(&line_chart(
        "Validation loss per cycle",
        &[Series {
            name: "validation loss".into(),
            points: loss,
        }],
    ));
    page.push_str(&line_chart(
        "Score per miner per cycle",
        &per_miner(|m| m.score),
    ));
    page.push_str(&line_chart(
        "Weight per miner per cycle",
        &per_miner(|m| m.weight),
    ));
    page.push_str(&bar_chart("Bytes moved per role (all cycles)", &bytes));
    page.push_str("</div>\n<h2>Cycles</h2>\n<table><tr><th>cycle</th><th>validation loss</th><th>uid</th><th>miner</th><th>loss</th><th>score</th><th>weight</th><th>up</th><th>down</th><th>verdict</th></tr>\n");
    for cycle in &summary.cycles {
        for (i, m) in cycle.miners.iter().enumerate() {
            let first = if i == 0 {
                format!(
                    "<td rowspan=\"{}\">{}</td><td rowspan=\"{}\">{}</td>",
                    cycle.miners.len(),
                    cycle.cycle,
                    cycle.miners.len(),
                    cycle
                        .validation_loss
                        .map_or("—".into(), |l| format!("{l:.4}"))
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                page,
                "<tr>{first}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                m.uid,
                escape(&m.label),
                m.loss_after.map_or("—".into(), |l| format!("{l:.3}")),
                m.score.map_or("—".into(), |s| format!("{s:.4}")),
                m.weight.map_or("—".into(), |w| format!("{w:.3}")),
                human_bytes(m.bytes_up),
                human_bytes(m.bytes_down),
                if m.accepted { "ok" } else { "bad" },
                escape(&m.verdict)
            );
        }
    }
    page.push_str("</table>\n<h2>Roles</h2>\n<table><tr><th>role</th><th>uid</th><th>pipeline</th><th>run folder</th></tr>\n");
    for role in &summary.roles {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(&role.label),
            role.uid.map_or("—".into(), |u| u.to_string()),
            escape(&role.pipeline),
            escape(&role.run)
        );
    }
    page.push_str("</table>\n</body></html>\n");
    page
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
.plots{display:flex;flex-wrap:wrap;gap:1em}svg{border:1px solid #ddd;background:#fff}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}\
td.ok{color:#2a7a2a;text-align:left}td.bad{color:#b22;text-align:left}code{font-size:12px}";

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 520.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// Lines over cycles, with axes, ticks and a legend.
fn line_chart(title: &str, series: &[Series]) -> String {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    let mut svg = svg_open(title);
    if all.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text></svg>",
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (y0, y1) = bounds(all.iter().map(|p| p.1));
    let (y0, y1) = pad(y0, y1);
    let x = |v: f64| LEFT + (v - x0) / (x1 - x0).max(1e-12) * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v - y0) / (y1 - y0).max(1e-12)) * (HEIGHT - TOP - BOTTOM);
    axes(&mut svg, "cycle");
    for i in 0..=4 {
        let v = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{}</text><line x1=\"{LEFT}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            LEFT - 6.0,
            y(v) + 4.0,
            tick(v),
            WIDTH - RIGHT,
            y(v),
            y(v)
        );
    }
    let cycles: Vec<f64> = {
        let mut c: Vec<f64> = all.iter().map(|p| p.0).collect();
        c.sort_by(f64::total_cmp);
        c.dedup();
        c
    };
    let step = (cycles.len() / 10).max(1);
    for c in cycles.iter().step_by(step) {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{c}</text>",
            x(*c),
            HEIGHT - BOTTOM + 16.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(px, py) in &s.points {
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{}: cycle {px}, {}</title></circle>",
                x(px),
                y(py),
                escape(&s.name),
                tick(py)
            );
        }
        let ly = TOP + 16.0 * i as f64;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            WIDTH - RIGHT + 12.0,
            ly,
            WIDTH - RIGHT + 26.0,
            ly + 9.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Upload and download bars per role.
fn bar_chart(title: &str, bytes: &BTreeMap<&str, (u64, u64)>) -> String {
    let mut svg = svg_open(title);
    let max = bytes
        .values()
        .map(|(u, d)| (*u).max(*d))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    axes(&mut svg, "");
    let n = bytes.len().max(1) as f64;
    let slot = (WIDTH - LEFT - RIGHT) / n;
    let scale = |v: u64| v as f64 / max * (HEIGHT - TOP - BOTTOM);
    for (i, (label, (up, down))) in bytes.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let w = slot * 0.35;
        for (j, (value, color)) in [(*up, COLORS[0]), (*down, COLORS[3])].iter().enumerate() {
            let h = scale(*value);
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{color}\"><title>{}: {} {}</title></rect>",
                x + w * j as f64,
                HEIGHT - BOTTOM - h,
                escape(label),
                if j == 0 { "up" } else { "down" },
                human_bytes(*value)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
            x + w,
            HEIGHT - BOTTOM + 14.0,
            escape(label)
        );
    }
    for (j, (name, color)) in [("uploaded", COLORS[0]), ("downloaded", COLORS[3])]
        .iter()
        .enumerate()
    {
        let ly = TOP + 16.0 * j as f64;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{name}</text>",
            WIDTH - RIGHT + 12.0,
            WIDTH - RIGHT + 26.0,
            ly + 9.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{}</text></svg>",
        LEFT - 6.0,
        TOP + 4.0,
        human_bytes(max as u64)
    );
    svg
}

fn svg_open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\"><title>{0}</title><text x=\"{LEFT}\" y=\"18\" font-weight=\"bold\">{0}</text>",
        escape(title)
    )
}

fn axes(svg: &mut String, x_label: &str) {
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{0}\" stroke=\"#444\"/><line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#444\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"middle\" font-size=\"11\">{x_label}</text>",
        HEIGHT - BOTTOM,
        WIDTH - RIGHT,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 6.0
    );
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// A little room above and below; a flat line gets a band around it.
fn pad(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= f64::EPSILON {
        let d = lo.abs().max(1.0) * 0.1;
        (lo - d, hi + d)
    } else {
        (lo - span * 0.05, hi + span * 0.05)
    }
}

fn tick(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cycle: u64, loss: f64, weight: f64) -> CycleRow {
        CycleRow {
            cycle,
            window: cycle as i64,
            duration_ms: 1000,
            validation_loss: Some(loss),
            merged: Some(1),
            miners: vec![MinerRow {
                uid: 1,
                label: "miner <1>".into(),
                loss_before: Some(5.0),
                loss_after: Some(4.0),
                score: Some(0.1),
                weight: Some(weight),
                bytes_up: 2048,
                bytes_down: 4096,
                accepted: true,
                verdict: "accepted".into(),
            }],
            roles: vec![RoleBytes {
                label: "validator".into(),
                up: 10,
                down: 20,
            }],
        }
    }

    #[test]
    fn the_report_is_one_self_contained_page_with_four_plots() {
        let summary = Summary {
            pipelines: "pipelines/local".into(),
            network: "net".into(),
            roles: vec![],
            cycles: vec![row(1, 5.0, 1.0), row(2, 4.5, 1.0)],
        };
        let page = html(&summary);
        assert_eq!(page.matches("<svg").count(), 4);
        assert!(!page.contains("<script") && !page.contains("src=\"http"));
        assert!(page.contains("miner &lt;1&gt;"), "labels are escaped");
        assert!(page.contains("<polyline"));
    }

    #[test]
    fn the_cycle_table_shows_the_loss_change() {
        let table = cycle_table(&row(2, 4.5, 1.0), Some(5.0));
        assert!(
            table.contains("validation loss 4.5000 (-0.5000)"),
            "{table}"
        );
        assert!(table.contains("accepted"));
    }
}
