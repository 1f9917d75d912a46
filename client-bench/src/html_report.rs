//! `--report`: one self-contained HTML page about a run, optionally with a
//! second run (`--compare`, read from the file its `--json` wrote) overlaid.
//!
//! This module owns that page and nothing else: the latency percentile
//! spectrum drawn as HdrHistogram's plotter draws it (x: percentile on a log
//! scale of 1/(1-p), y: latency in ms), replies per second over the run, the
//! outcomes and errors table, a throughput/latency summary and the run's
//! configuration. Plots are inline SVG and the style is inline CSS: no
//! script, no network access, nothing to fetch. Every text put into the page
//! goes through [`esc`].
//!
//! Each run is read as its `--json` document ([`RunDoc`]); the current run's
//! [`Summary`] is serialized the same way first, so both runs take one path.
//! A field an older file lacks is shown as "—"; a file without
//! `latency_spectrum` is drawn from its `min_us`…`max_us` percentiles.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::report::{SpectrumPoint, Summary};

/// Series colours, in run order (this run first).
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Plot size and margins, in SVG units.
const WIDTH: f64 = 960.0;
const PLOT_HEIGHT: f64 = 400.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 60.0;
/// Height of one legend row under the plot.
const LEGEND_ROW: f64 = 22.0;

/// One run as the report sees it: a label for the legend and its `--json`
/// document.
#[derive(Debug, Clone)]
pub struct RunDoc {
    pub label: String,
    pub doc: Value,
}

impl RunDoc {
    /// The current run.
    pub fn from_summary(s: &Summary) -> anyhow::Result<RunDoc> {
        let doc = serde_json::to_value(s)?;
        Ok(RunDoc {
            label: describe("this run", &doc),
            doc,
        })
    }

    /// A run to compare with, from the file its `--json` wrote.
    pub fn load(path: &Path) -> anyhow::Result<RunDoc> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --compare {}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("--compare {}: not JSON", path.display()))?;
        if doc.get("attempted").and_then(Value::as_u64).is_none() {
            bail!(
                "--compare {}: not a client-bench --json file (no `attempted`)",
                path.display()
            );
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(RunDoc {
            label: describe(&name, &doc),
            doc,
        })
    }
}

/// `name: target workload, N conns × pipeline P` from what the document has.
fn describe(name: &str, doc: &Value) -> String {
    let c = &doc["config"];
    let text = |k: &str| match &c[k] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut parts = Vec::new();
    if let Some(t) = text("target") {
        parts.push(t);
    }
    if let Some(w) = text("workload") {
        parts.push(w);
    }
    let mut d = parts.join(" ");
    if let (Some(n), Some(p)) = (text("connections"), text("pipeline")) {
        let _ = write!(d, ", {n} conns × pipeline {p}");
    }
    if let Some(r) = text("rate") {
        let _ = write!(d, ", open loop {r} req/s");
    }
    if d.is_empty() {
        name.to_string()
    } else {
        format!("{name}: {d}")
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Writes the page for `runs` (the current run first) to `path`.
pub fn write(path: &Path, runs: &[RunDoc]) -> anyhow::Result<()> {
    std::fs::write(path, render(runs))
        .with_context(|| format!("cannot write --report {}", path.display()))
}

/// The whole page.
pub fn render(runs: &[RunDoc]) -> String {
    let mut h = String::new();
    h.push_str(HEAD);
    h.push_str("<h1>client-bench report</h1>\n<ul id=\"runs\">\n");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            h,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
            color(i),
            esc(&r.label)
        );
    }
    h.push_str("</ul>\n<h2>Latency by percentile</h2>\n");
    h.push_str(&render_plot(&latency_plot(runs)));
    h.push_str(
        "<p class=\"note\">HdrHistogram percentile spectrum of the answered requests \
         (RESULT or ERROR): x is the percentile on a log scale of 1/(1-p); the last \
         point (100%, the maximum) is drawn at the right edge.</p>\n",
    );
    h.push_str("<h2>Replies per second</h2>\n");
    h.push_str(&render_plot(&throughput_plot(runs)));
    h.push_str(
        "<p class=\"note\">Replies counted by the second of the run they arrived in \
         (solid: RESULT; dashed: ERROR, when there were any). A last, partial second \
         is scaled to a rate (one shorter than 0.1 s is not drawn, unless it is the whole run).</p>\n",
    );
    h.push_str("<h2>Outcomes and errors</h2>\n");
    h.push_str(&outcomes_table(runs));
    h.push_str("<h2>Throughput and latency</h2>\n");
    h.push_str(&summary_table(runs));
    h.push_str("<h2>Configuration</h2>\n");
    h.push_str(&config_table(runs));
    let _ = write!(
        h,
        "<p class=\"note\">Written by client-bench {}.</p>\n</body>\n</html>\n",
        esc(env!("CARGO_PKG_VERSION"))
    );
    h
}

const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>client-bench report</title>
<style>
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1000px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
ul#runs { list-style: none; padding: 0; }
ul#runs li { margin: 4px 0; }
.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 8px; vertical-align: middle; }
.note { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 10px; text-align: right; }
th:first-child { text-align: left; }
tr.section th { background: #eee; text-align: left; }
svg text { font-family: sans-serif; }
</style>
</head>
<body>
"#;

fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// An axis: its range in data units and labelled ticks.
#[derive(Debug, Clone)]
struct Axis {
    title: String,
    min: f64,
    max: f64,
    ticks: Vec<(f64, String)>,
}

/// Points of a plot line, (x, y) in data units.
type Points = Vec<(f64, f64)>;

/// Table rows: a row label and one cell per run.
type Rows = Vec<(String, Vec<String>)>;

/// One line of a plot, in data units.
#[derive(Debug, Clone)]
struct Series {
    label: String,
    color: &'static str,
    points: Points,
    dashed: bool,
    markers: bool,
}

#[derive(Debug, Clone)]
struct Plot {
    id: &'static str,
    title: &'static str,
    x: Axis,
    y: Axis,
    series: Vec<Series>,
}

/// x of a quantile on HdrHistogram's scale: log10(1/(1-q)); None for q = 1.
fn spectrum_x(q: f64) -> Option<f64> {
    (q < 1.0).then(|| (1.0 / (1.0 - q)).log10())
}

/// The run's spectrum: `latency_spectrum`, or for an older file the few
/// percentiles it carries.
fn spectrum_of(doc: &Value) -> Vec<SpectrumPoint> {
    if let Some(Ok(points)) = doc
        .get("latency_spectrum")
        .map(|v| serde_json::from_value::<Vec<SpectrumPoint>>(v.clone()))
    {
        if !points.is_empty() {
            return points;
        }
    }
    let fields = [
        (0.0, "min_us"),
        (0.5, "p50_us"),
        (0.9, "p90_us"),
        (0.99, "p99_us"),
        (0.999, "p999_us"),
        (1.0, "max_us"),
    ];
    let points: Vec<SpectrumPoint> = fields
        .iter()
        .filter_map(|&(quantile, k)| {
            let value_us = doc.get(k)?.as_u64()?;
            Some(SpectrumPoint { quantile, value_us })
        })
        .collect();
    if points.iter().all(|p| p.value_us == 0) {
        return Vec::new();
    }
    points
}

/// Label of the percentile `1 - 10^-decades`: 0%, 90%, 99%, 99.9%, ...
fn percentile_label(decades: u32) -> String {
    match decades {
        0 => "0%".into(),
        1 => "90%".into(),
        d => format!(
            "99{}{}%",
            if d > 2 { "." } else { "" },
            "9".repeat(d as usize - 2)
        ),
    }
}

fn latency_plot(runs: &[RunDoc]) -> Plot {
    let spectra: Vec<Vec<SpectrumPoint>> = runs.iter().map(|r| spectrum_of(&r.doc)).collect();
    let far = spectra
        .iter()
        .flatten()
        .filter_map(|p| spectrum_x(p.quantile))
        .fold(0.0f64, f64::max);
    let decades = (far.ceil() as u32).clamp(5, 9);
    let x_max = f64::from(decades);
    let series = runs
        .iter()
        .zip(&spectra)
        .enumerate()
        .map(|(i, (r, s))| Series {
            label: r.label.clone(),
            color: color(i),
            points: s
                .iter()
                .map(|p| {
                    let x = spectrum_x(p.quantile).map_or(x_max, |x| x.min(x_max));
                    (x, p.value_us as f64 / 1000.0)
                })
                .collect(),
            dashed: false,
            markers: false,
        })
        .collect::<Vec<_>>();
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    Plot {
        id: "latency-spectrum",
        title: "Latency by percentile",
        x: Axis {
            title: "Percentile".into(),
            min: 0.0,
            max: x_max,
            ticks: (0..=decades)
                .map(|d| (f64::from(d), percentile_label(d)))
                .collect(),
        },
        y: linear_axis("Latency (ms)", y_top),
        series,
    }
}

/// Rates of one per-second vector: (middle of the second, replies/s). A last,
/// partial second (what `duration_s` leaves) is scaled to a rate, and left
/// out when shorter than 0.1 s unless it is the only one (a short run).
fn rates(counts: &[u64], duration_s: Option<f64>) -> Points {
    let only = counts.len() == 1;
    counts
        .iter()
        .enumerate()
        .filter_map(|(i, &n)| {
            let start = i as f64;
            let width = duration_s.map_or(1.0, |d| (d - start).clamp(0.0, 1.0));
            let shown = width >= 0.1 || (only && width > 0.0);
            shown.then(|| (start + width / 2.0, n as f64 / width))
        })
        .collect()
}

/// A run's replies per second: (RESULT rates, ERROR rates).
fn throughput_of(doc: &Value) -> (Points, Points) {
    let counts = |k: &str| -> Vec<u64> {
        doc["per_second"][k]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let duration = doc["duration_s"].as_f64();
    let errors = counts("errors");
    let errors = if errors.iter().any(|&n| n > 0) {
        rates(&errors, duration)
    } else {
        Vec::new()
    };
    (rates(&counts("results"), duration), errors)
}

fn throughput_plot(runs: &[RunDoc]) -> Plot {
    let mut series = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let (results, errors) = throughput_of(&r.doc);
        let label = if results.is_empty() {
            format!("{} (no per-second data)", r.label)
        } else {
            format!("{}: RESULT/s", r.label)
        };
        series.push(Series {
            label,
            color: color(i),
            points: results,
            dashed: false,
            markers: true,
        });
        if !errors.is_empty() {
            series.push(Series {
                label: format!("{}: ERROR/s", r.label),
                color: color(i),
                points: errors,
                dashed: true,
                markers: true,
            });
        }
    }
    let all = || series.iter().flat_map(|s| s.points.iter());
    // Up to the end of the last second drawn (a point is a second's middle).
    let x_top = all().map(|p| p.0 + 0.5).fold(0.0f64, f64::max);
    let y_top = all().map(|p| p.1).fold(0.0f64, f64::max);
    Plot {
        id: "throughput",
        title: "Replies per second",
        x: linear_axis("Time since the start of the load phase (s)", x_top),
        y: linear_axis("Replies per second", y_top),
        series,
    }
}

/// 1, 2 or 5 times a power of ten, near `range / ticks`.
fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// An axis from 0 to a round number at or above `top`, about 5 ticks.
fn linear_axis(title: &str, top: f64) -> Axis {
    let top = if top.is_finite() && top > 0.0 {
        top
    } else {
        1.0
    };
    let step = nice_step(top, 5.0);
    let steps = (top / step - 1e-9).ceil().max(1.0) as u32;
    Axis {
        title: title.into(),
        min: 0.0,
        max: step * f64::from(steps),
        ticks: (0..=steps)
            .map(|k| {
                let v = step * f64::from(k);
                (v, fmt_tick(v))
            })
            .collect(),
    }
}

/// A number for a tick label or a table cell: integers plainly, others with
/// up to three decimals.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A tick label: like [`fmt_num`], with k/M for thousands and millions.
fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", fmt_num(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}k", fmt_num(v / 1e3))
    } else {
        fmt_num(v)
    }
}

/// Maps data coordinates to SVG coordinates.
struct Frame<'a> {
    x: &'a Axis,
    y: &'a Axis,
}

impl Frame<'_> {
    fn px(&self, x: f64) -> f64 {
        let span = (self.x.max - self.x.min).max(f64::MIN_POSITIVE);
        LEFT + (x - self.x.min) / span * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let span = (self.y.max - self.y.min).max(f64::MIN_POSITIVE);
        PLOT_HEIGHT - BOTTOM - (y - self.y.min) / span * (PLOT_HEIGHT - TOP - BOTTOM)
    }
}

fn render_plot(p: &Plot) -> String {
    let height = PLOT_HEIGHT + LEGEND_ROW * p.series.len() as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg id=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\">",
        p.id,
        esc(p.title)
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#fff\"/>"
    );
    let f = Frame { x: &p.x, y: &p.y };
    render_axes(&mut s, &f);
    let _ = writeln!(s, "<g class=\"plot-series\">");
    for (i, ser) in p.series.iter().enumerate() {
        render_series(&mut s, &f, p.id, i, ser);
    }
    s.push_str("</g>\n");
    if p.series.iter().all(|ser| ser.points.is_empty()) {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data</text>",
            (LEFT + WIDTH - RIGHT) / 2.0,
            (TOP + PLOT_HEIGHT - BOTTOM) / 2.0
        );
    }
    render_legend(&mut s, p.id, &p.series);
    s.push_str("</svg>\n");
    s
}

fn render_axes(s: &mut String, f: &Frame<'_>) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (PLOT_HEIGHT - BOTTOM, TOP);
    let _ = writeln!(s, "<g class=\"axes\" font-size=\"12\" fill=\"#333\">");
    for (v, label) in &f.x.ticks {
        let x = f.px(*v);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{y1}\" x2=\"{x:.1}\" y2=\"{y0}\" stroke=\"#e4e4e4\"/>\
             <text class=\"x-tick\" x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + 18.0,
            esc(label)
        );
    }
    for (v, label) in &f.y.ticks {
        let y = f.py(*v);
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text class=\"y-tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 8.0,
            y + 4.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{x0}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#555\"/>",
        x1 - x0,
        y0 - y1
    );
    let _ = writeln!(
        s,
        "<text class=\"x-title\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        (x0 + x1) / 2.0,
        y0 + 42.0,
        esc(&f.x.title)
    );
    let _ = writeln!(
        s,
        "<text class=\"y-title\" transform=\"translate(22 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\" font-size=\"14\">{}</text>",
        (y0 + y1) / 2.0,
        esc(&f.y.title)
    );
    s.push_str("</g>\n");
}

fn render_series(s: &mut String, f: &Frame<'_>, plot: &str, i: usize, ser: &Series) {
    if ser.points.is_empty() {
        return;
    }
    let mut d = String::new();
    for (k, &(x, y)) in ser.points.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1}",
            if k == 0 { "M" } else { " L" },
            f.px(x),
            f.py(y)
        );
    }
    let dash = if ser.dashed {
        " stroke-dasharray=\"6 4\""
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "<path id=\"{plot}-series-{i}\" class=\"series\" data-points=\"{}\" d=\"{d}\" \
         fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}><title>{}</title></path>",
        ser.points.len(),
        ser.color,
        esc(&ser.label)
    );
    if ser.markers {
        for &(x, y) in &ser.points {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>",
                f.px(x),
                f.py(y),
                ser.color
            );
        }
    }
}

fn render_legend(s: &mut String, plot: &str, series: &[Series]) {
    let _ = writeln!(
        s,
        "<g id=\"{plot}-legend\" class=\"legend\" font-size=\"13\">"
    );
    for (i, ser) in series.iter().enumerate() {
        let y = PLOT_HEIGHT + LEGEND_ROW * i as f64;
        let dash = if ser.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"3\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            LEFT + 30.0,
            ser.color,
            LEFT + 38.0,
            y + 4.5,
            esc(&ser.label)
        );
    }
    s.push_str("</g>\n");
}

/// A JSON value as a table cell ("—" when absent).
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "—".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) => fmt_num(f),
            _ => n.to_string(),
        },
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other.to_string(),
    }
}

/// A table: a header row of run labels, then sections of labelled rows.
fn table(id: &str, runs: &[RunDoc], sections: &[(&str, Rows)]) -> String {
    let mut t = String::new();
    let _ = write!(t, "<table id=\"{}\">\n<thead><tr><th></th>", esc(id));
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(
            t,
            "<th><span class=\"swatch\" style=\"background:{}\"></span>{}</th>",
            color(i),
            esc(&r.label)
        );
    }
    t.push_str("</tr></thead>\n<tbody>\n");
    for (title, rows) in sections {
        if !title.is_empty() {
            let _ = writeln!(
                t,
                "<tr class=\"section\"><th colspan=\"{}\">{}</th></tr>",
                runs.len() + 1,
                esc(title)
            );
        }
        for (name, cells) in rows {
            let _ = write!(t, "<tr><th>{}</th>", esc(name));
            for c in cells {
                let _ = write!(t, "<td>{}</td>", esc(c));
            }
            t.push_str("</tr>\n");
        }
    }
    t.push_str("</tbody>\n</table>\n");
    t
}

/// Rows of top-level fields, one cell per run.
fn field_rows(runs: &[RunDoc], keys: &[&str]) -> Rows {
    keys.iter()
        .map(|k| {
            let cells = runs.iter().map(|r| cell(r.doc.get(*k))).collect();
            (k.to_string(), cells)
        })
        .collect()
}

/// Rows of the union of the keys of an object field (e.g. `outcomes`). A
/// key a run lacks is 0 there with `absent_is_zero` (counters), else "—";
/// a run without the whole object shows "—".
fn map_rows(runs: &[RunDoc], field: &str, absent_is_zero: bool) -> Rows {
    let mut keys: Vec<String> = Vec::new();
    for m in runs.iter().filter_map(|r| r.doc.get(field)?.as_object()) {
        for k in m.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let zero = Value::from(0);
    keys.into_iter()
        .map(|k| {
            let cells = runs
                .iter()
                .map(|r| match r.doc.get(field).and_then(Value::as_object) {
                    Some(m) if absent_is_zero => cell(Some(m.get(&k).unwrap_or(&zero))),
                    Some(m) => cell(m.get(&k)),
                    None => "—".into(),
                })
                .collect();
            (k, cells)
        })
        .collect()
}

fn outcomes_table(runs: &[RunDoc]) -> String {
    let requests = [
        "attempted",
        "succeeded",
        "failed",
        "in_doubt",
        "lost",
        "unexpected",
        "replayed",
    ];
    let connections = [
        "connections_opened",
        "connect_failures",
        "handshake_failures",
        "closed_by_server",
        "timeouts",
        "protocol_errors",
        "pushes",
        "unmatched_replies",
    ];
    let mut errors = map_rows(runs, "errors", true);
    if errors.is_empty() {
        errors.push(("none".into(), runs.iter().map(|_| "—".into()).collect()));
    }
    table(
        "outcomes",
        runs,
        &[
            ("Requests", field_rows(runs, &requests)),
            ("Outcomes (RESULT status)", map_rows(runs, "outcomes", true)),
            ("Errors (ERROR code)", errors),
            ("Connections", field_rows(runs, &connections)),
        ],
    )
}

fn summary_table(runs: &[RunDoc]) -> String {
    let keys = [
        "duration_s",
        "rps",
        "success_rate",
        "mean_us",
        "min_us",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
    ];
    let mut rows = field_rows(runs, &keys);
    let lag: Vec<String> = runs
        .iter()
        .map(|r| match r.doc["send_lag_us"].as_array() {
            Some(a) if a.len() == 3 => format!("{} / {} / {}", a[0], a[1], a[2]),
            _ => "—".into(),
        })
        .collect();
    rows.push(("send lag p50 / p99 / max (us)".into(), lag));
    table("summary", runs, &[("", rows)])
}

fn config_table(runs: &[RunDoc]) -> String {
    table("config", runs, &[("", map_rows(runs, "config", false))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(label: &str, doc: Value) -> RunDoc {
        RunDoc {
            label: label.into(),
            doc,
        }
    }

    fn sample() -> Value {
        json!({
            "attempted": 10, "succeeded": 9, "failed": 1, "in_doubt": 0, "lost": 0,
            "duration_s": 2.5, "rps": 3.6,
            "outcomes": {"OK": 7, "OUTBID": 2}, "errors": {"BUSY": 1},
            "min_us": 100, "p50_us": 200, "p90_us": 300, "p99_us": 400, "p999_us": 450, "max_us": 500,
            "latency_spectrum": [
                {"quantile": 0.0, "value_us": 100}, {"quantile": 0.5, "value_us": 200},
                {"quantile": 0.9, "value_us": 300}, {"quantile": 1.0, "value_us": 500}
            ],
            "per_second": {"results": [4, 4, 1], "errors": [0, 1, 0]},
            "config": {"target": "gavel", "workload": "bids", "connections": 2, "pipeline": 4,
                       "addr": "<host>&\"x\""}
        })
    }

    /// The `d` attribute of the path with this id.
    fn path_points(html: &str, id: &str) -> usize {
        let at = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no {id}"));
        let d = &html[at..];
        let d = &d[d.find(" d=\"").unwrap() + 4..];
        let d = &d[..d.find('"').unwrap()];
        d.matches(['M', 'L']).count()
    }

    #[test]
    fn escapes_text() {
        assert_eq!(
            esc("<a href=\"x\">O'Neil & co</a>"),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;"
        );
        let html = render(&[run("<script>alert(1)</script>", sample())]);
        assert!(!html.contains("<script>"), "unescaped label");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            html.contains("&lt;host&gt;&amp;&quot;x&quot;"),
            "config not escaped"
        );
    }

    #[test]
    fn spectrum_path_has_one_point_per_quantile() {
        let html = render(&[run("a", sample())]);
        assert_eq!(path_points(&html, "latency-spectrum-series-0"), 4);
        assert!(html.contains("data-points=\"4\""));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
            assert!(html.contains(&format!(">{label}</text>")), "{label}");
        }
        // Two full seconds and the half second left: three points.
        assert_eq!(path_points(&html, "throughput-series-0"), 3);
        assert_eq!(rates(&[4, 4, 1], Some(2.05)), vec![(0.5, 4.0), (1.5, 4.0)]);
        let short = rates(&[50], Some(0.05));
        assert_eq!(short.len(), 1);
        assert!((short[0].1 - 1000.0).abs() < 1e-6, "{short:?}");
        assert!(rates(&[5], Some(0.0)).is_empty());
        // Errors are a second, dashed series of the same run.
        assert_eq!(path_points(&html, "throughput-series-1"), 3);
        assert!(html.contains("stroke-dasharray"));
        // Self-contained: nothing to run, nothing to fetch.
        for bad in ["<script", " src=", "<link", "@import", "url("] {
            assert!(!html.contains(bad), "{bad}");
        }
    }

    #[test]
    fn compare_adds_a_second_series_and_column() {
        let mut old = sample();
        let o = old.as_object_mut().unwrap();
        // An older file: no spectrum, no per-second counts.
        o.remove("latency_spectrum");
        o.remove("per_second");
        o.insert("outcomes".into(), json!({"OK": 3, "SOLD_OUT": 1}));
        let html = render(&[run("new", sample()), run("old", old)]);
        assert_eq!(path_points(&html, "latency-spectrum-series-0"), 4);
        // Rebuilt from min/p50/p90/p99/p99.9/max.
        assert_eq!(path_points(&html, "latency-spectrum-series-1"), 6);
        assert!(html.contains("old (no per-second data)"));
        let legend = &html[html.find("id=\"latency-spectrum-legend\"").unwrap()..];
        assert!(legend.find(">new</text>").is_some() && legend.find(">old</text>").is_some());
        // The outcome union: SOLD_OUT is 0 for the new run, OUTBID 0 for the old.
        assert!(html.contains("<tr><th>SOLD_OUT</th><td>0</td><td>1</td></tr>"));
        assert!(html.contains("<tr><th>OUTBID</th><td>2</td><td>0</td></tr>"));
        assert!(html.contains("<tr><th>attempted</th><td>10</td><td>10</td></tr>"));
    }

    #[test]
    fn axes_and_labels() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(5), "99.999%");
        assert_eq!(nice_step(7.3, 5.0), 2.0);
        assert_eq!(nice_step(0.012, 5.0), 0.005);
        let a = linear_axis("t", 7.3);
        assert_eq!(a.max, 8.0);
        assert_eq!(a.ticks.last().unwrap().1, "8");
        assert_eq!(linear_axis("t", 0.0).max, 1.0);
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(120000.0), "120000");
        assert_eq!(fmt_tick(120000.0), "120k");
        assert_eq!(fmt_tick(2_500_000.0), "2.5M");
        assert_eq!(fmt_tick(5000.0), "5000");
        let d = json!({"config": {"target": "redis", "workload": "buys"}});
        assert_eq!(describe("x.json", &d), "x.json: redis buys");
        assert_eq!(describe("x.json", &json!({})), "x.json");
    }

    #[test]
    fn empty_run_says_no_data() {
        let doc = json!({"attempted": 0, "succeeded": 0, "min_us": 0, "max_us": 0});
        let html = render(&[run("empty", doc)]);
        assert_eq!(html.matches(">no data</text>").count(), 2);
        assert!(!html.contains("class=\"series\""));
    }

    #[test]
    fn load_rejects_what_is_not_a_run() {
        let dir = std::env::temp_dir();
        let p = dir.join(format!("html-report-test-{}.json", std::process::id()));
        std::fs::write(&p, "{\"hello\": 1}").unwrap();
        let e = RunDoc::load(&p).unwrap_err().to_string();
        assert!(e.contains("not a client-bench --json file"), "{e}");
        std::fs::write(&p, sample().to_string()).unwrap();
        let r = RunDoc::load(&p).unwrap();
        assert!(
            r.label.ends_with(".json: gavel bids, 2 conns × pipeline 4"),
            "{}",
            r.label
        );
        let _ = std::fs::remove_file(&p);
        assert!(RunDoc::load(&p).is_err());
    }
}
