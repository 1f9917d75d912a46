//! `docs/grafana/gavel.json` queries only series a real server exposes:
//! every `gavel_*` name in a panel's (or a variable's) query must be a
//! sample name in a live `/metrics` scrape (histograms as `_bucket`, `_sum`,
//! `_count`; counters with `_total`), every `label="value"` matcher on it
//! must match one of its samples. Metric families on no panel are listed
//! (not a failure: metrics are added more often than the dashboard).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::crash::temp_dir;
use common::Server;
use gavel_protocol::{BidRequest, BuyRequest, Request, Status};
use serde_json::Value;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/gavel.json");

/// Every PromQL query in the dashboard: panel targets' `expr` (rows may
/// nest panels) and query variables' `query`, with where each came from.
fn queries(dash: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str();
                let expr = expr.unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((format!("panel {title:?}"), expr.to_string()));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            let name = v["name"].as_str().unwrap_or("?");
            out.push((format!("variable {name}"), q.unwrap().to_string()));
        }
    }
    out
}

/// `gavel_*` metric names in a PromQL expression, each with its
/// `label="value"` equality matchers (regex and negative matchers, and
/// values taken from dashboard variables, are not checked).
fn selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("gavel_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && ident(b[end]) {
            end += 1;
        }
        i = end;
        if start > 0 && ident(b[start - 1]) {
            continue; // inside another name
        }
        let name = expr[start..end].to_string();
        let mut matchers = Vec::new();
        if b.get(end) == Some(&b'{') {
            let close = expr[end..].find('}').expect("unclosed {") + end;
            for m in expr[end + 1..close].split(',') {
                let m = m.trim();
                if m.is_empty() || m.contains("=~") || m.contains("!") {
                    continue;
                }
                let (label, value) = m.split_once('=').expect("label matcher");
                let value = value.trim().trim_matches('"');
                if !value.starts_with('$') {
                    matchers.push((label.trim().to_string(), value.to_string()));
                }
            }
            i = close + 1;
        }
        out.push((name, matchers));
    }
    out
}

/// Sample name -> the label sets of its samples, from the text exposition;
/// and the metric family names (`# TYPE` lines).
fn exposition(text: &str) -> (BTreeMap<String, Vec<String>>, BTreeSet<String>) {
    let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            families.insert(t.split_whitespace().next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = match line[end..].strip_prefix('{') {
                Some(rest) => rest[..rest.find('}').unwrap()].to_string(),
                None => String::new(),
            };
            samples
                .entry(line[..end].to_string())
                .or_default()
                .push(labels);
        }
    }
    (samples, families)
}

/// A sample name's family: what `# TYPE` names (counters lose `_total`,
/// histograms `_bucket`, `_sum`, `_count`).
fn family_of<'a>(name: &'a str, families: &BTreeSet<String>) -> Option<&'a str> {
    ["", "_total", "_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|f| families.contains(*f))
}

/// Every problem with the dashboard's queries against one scrape, and the
/// metric families no query uses.
fn problems(dash: &Value, text: &str) -> (Vec<String>, Vec<String>) {
    let (samples, families) = exposition(text);
    let mut used = BTreeSet::new();
    let mut out = Vec::new();
    for (place, expr) in queries(dash) {
        let found = selectors(&expr);
        if found.is_empty() {
            out.push(format!("{place}: no gavel_ metric in {expr:?}"));
        }
        for (name, matchers) in found {
            let Some(sets) = samples.get(&name) else {
                out.push(format!("{place}: {name} is not exposed (in {expr:?})"));
                continue;
            };
            used.extend(family_of(&name, &families).map(str::to_string));
            for (label, value) in matchers {
                let want = format!("{label}=\"{value}\"");
                if !sets.iter().any(|s| s.split(',').any(|kv| kv == want)) {
                    out.push(format!("{place}: no {name}{{{want}}} sample (in {expr:?})"));
                }
            }
        }
    }
    let unused = families.difference(&used).cloned().collect();
    (out, unused)
}

#[test]
fn selectors_are_extracted() {
    let got = selectors(
        r#"histogram_quantile(0.99, sum by (le) (rate(gavel_a_bucket{instance=~"$instance"}[5m]))) / sum(gavel_b_total{code="BUSY", x="$v"}) + xgavel_c"#,
    );
    assert_eq!(
        got,
        vec![
            ("gavel_a_bucket".to_string(), vec![]),
            (
                "gavel_b_total".to_string(),
                vec![("code".to_string(), "BUSY".to_string())]
            ),
        ]
    );
}

/// The check itself catches what it is for: a misspelt name, a histogram
/// queried without its suffix, a counter without `_total`, a label value the
/// server never uses; and it lists a metric missing from the dashboard.
#[test]
fn problems_are_reported() {
    let text = "# TYPE gavel_x counter\ngavel_x_total{code=\"BUSY\"} 1\n\
                # TYPE gavel_h histogram\ngavel_h_bucket{le=\"+Inf\"} 0\ngavel_h_sum 0\ngavel_h_count 0\n\
                # TYPE gavel_g gauge\ngavel_g 3\n";
    let dash = |exprs: &[&str]| {
        let targets: Vec<Value> = exprs
            .iter()
            .map(|e| serde_json::json!({ "expr": e }))
            .collect();
        serde_json::json!({ "panels": [{ "title": "p", "targets": targets }] })
    };
    let ok = dash(&[
        "rate(gavel_x_total{code=\"BUSY\"}[1m])",
        "histogram_quantile(0.5, rate(gavel_h_bucket[1m]))",
        "gavel_g",
    ]);
    assert_eq!(problems(&ok, text), (vec![], vec![]));
    for bad in [
        "rate(gavel_y_total[1m])",
        "gavel_h",
        "rate(gavel_x{code=\"BUSY\"}[1m])",
        "rate(gavel_x_total{code=\"BUZY\"}[1m])",
    ] {
        let d = dash(&["rate(gavel_x_total[1m])", "gavel_h_count", "gavel_g", bad]);
        let (found, _) = problems(&d, text);
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
    }
    let missing = dash(&["gavel_g", "gavel_h_sum"]);
    assert_eq!(
        problems(&missing, text),
        (vec![], vec!["gavel_x".to_string()])
    );
}

/// The real dashboard against a real server with a durable SQLite store
/// (so the journal writer and materializer run), after some traffic.
#[test]
fn dashboard_queries_only_exposed_series() {
    let raw = std::fs::read_to_string(DASHBOARD).expect("read docs/grafana/gavel.json");
    let dash: Value = serde_json::from_str(&raw).expect("gavel.json is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable"
    );
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }

    let dir = temp_dir("grafana");
    let store = format!("sqlite:{}/gavel.db", dir.display());
    let s = Server::start(&["--store", &store, "--metrics-listen", "127.0.0.1:0"]);
    let mut c = s.client();
    assert_eq!(
        c.open_auction(1, 100, 1, 0).unwrap().result.status,
        Status::Ok
    );
    c.open_sale(2, 10, 0, 0, 0).unwrap();
    for i in 1..=5u64 {
        c.send(&Request::Bid(BidRequest {
            auction_id: 1,
            bidder_id: i,
            amount: 100 + i,
            bid_id: i,
        }));
        c.send(&Request::Buy(BuyRequest {
            sku_id: 2,
            buyer_id: i,
            quantity: 1,
            order_id: i,
        }));
    }
    c.flush().unwrap();
    for _ in 0..10 {
        c.recv().unwrap();
    }
    let (code, text) = s.http_get("/metrics");
    assert_eq!(code, 200);
    let (found, unused) = problems(&dash, &text);
    assert!(found.is_empty(), "{}\n\nscrape:\n{text}", found.join("\n"));
    if !unused.is_empty() {
        eprintln!(
            "note: metrics on no panel of docs/grafana/gavel.json: {}",
            unused.join(", ")
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
