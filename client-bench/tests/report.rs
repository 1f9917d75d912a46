//! `client-bench --report` end to end: two real runs against a real
//! gavel-server (memory store), the second with `--report` and `--compare`
//! on the first's `--json`; the page is then loaded in headless Chromium and
//! the rendered DOM must hold both plots with both runs' series, the
//! outcomes table and the configuration.
//!
//! Needs Debian's `chromium` (scripts/test.sh installs it); without it this
//! test fails and says so.

mod common;

use std::process::Command;

use common::{bench_bin, run, stdout, temp_path, Server};
use serde_json::Value;

/// The DOM Chromium built from `page`, serialized (`--dump-dom`).
fn rendered_dom(page: &std::path::Path) -> String {
    let profile = temp_path("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output();
    let _ = std::fs::remove_dir_all(&profile);
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`chromium` is not installed: this test renders the --report page in headless \
             Chromium. Install it (Debian: `apt-get install -y --no-install-recommends chromium`, \
             or run scripts/test.sh, which installs it)"
        ),
        Err(e) => panic!("cannot run chromium: {e}"),
    };
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 DOM")
}

/// The value of `attr` on the element whose id is `id`, in serialized DOM.
fn attr_of(dom: &str, id: &str, attr: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id} in the rendered DOM"));
    let start = dom[..at].rfind('<').expect("element start");
    let end = at + dom[at..].find('>').expect("element end");
    let tag = &dom[start..end];
    let key = format!(" {attr}=\"");
    let v = &tag[tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} on {id}: {tag}"))
        + key.len()..];
    v[..v.find('"').unwrap()].to_string()
}

fn bench(addr: &str, args: &[&str]) -> String {
    let mut all = vec!["--addr", addr, "--no-progress"];
    all.extend_from_slice(args);
    let out = run(bench_bin(), &all);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    stdout(&out)
}

#[test]
fn report_renders_both_runs_in_chromium() {
    let server = Server::start(&[]);
    let addr = server.addr();
    let before = temp_path("report-before.json");
    let after = temp_path("report-after.json");
    let page = temp_path("report.html");
    let (b, a, p) = (
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        page.to_str().unwrap(),
    );
    bench(
        &addr,
        &["--connections", "4", "--bids-per-conn", "300", "--json", b],
    );
    bench(
        &addr,
        &[
            "--connections",
            "8",
            "--pipeline",
            "4",
            "--duration",
            "1.5",
            "--json",
            a,
            "--report",
            p,
            "--compare",
            b,
        ],
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&after).unwrap()).unwrap();
    let points = json["latency_spectrum"].as_array().expect("spectrum").len();
    assert!(points > 5, "{json}");
    let seconds = json["per_second"]["results"]
        .as_array()
        .expect("per_second");
    assert!(!seconds.is_empty(), "{json}");

    let dom = rendered_dom(&page);
    for f in [&before, &after, &page] {
        let _ = std::fs::remove_file(f);
    }
    assert_report_dom(&dom, points);
}

/// The rendered page of the runs above: `points` spectrum points this run.
fn assert_report_dom(dom: &str, points: usize) {
    // The two plots, each with one series per run and a legend.
    assert!(dom.contains("<svg id=\"latency-spectrum\""), "{dom}");
    assert!(dom.contains("<svg id=\"throughput\""), "{dom}");
    assert_eq!(
        attr_of(dom, "latency-spectrum-series-0", "data-points"),
        points.to_string()
    );
    let d = attr_of(dom, "latency-spectrum-series-0", "d");
    assert_eq!(d.matches(['M', 'L']).count(), points, "{d}");
    assert!(dom.contains("id=\"latency-spectrum-series-1\""));
    assert!(dom.contains("id=\"throughput-series-0\""));
    assert!(dom.contains("id=\"throughput-series-1\""));
    for tick in [">0%<", ">90%<", ">99%<", ">99.9%<", ">99.99%<", ">99.999%<"] {
        assert!(dom.contains(tick), "x tick {tick} missing");
    }
    let legend = &dom[dom.find("id=\"latency-spectrum-legend\"").unwrap()..];
    assert!(legend.contains("this run: gavel bids, 8 conns × pipeline 4"));
    assert!(legend.contains("report-before.json: gavel bids, 4 conns × pipeline 1"));
    // The outcomes table: the comparison run's 1200 requests all answered.
    assert!(dom.contains("<table id=\"outcomes\">"), "{dom}");
    assert!(dom.contains("<tr><th>attempted</th>"));
    let ok_row = &dom[dom.find("<tr><th>OK</th>").expect("OK row")..];
    assert!(ok_row.starts_with("<tr><th>OK</th><td>"), "{ok_row}");
    assert!(dom.contains("<tr><th>succeeded</th><td>"));
    assert!(
        dom.contains("<td>1200</td></tr>"),
        "the compared run's counts"
    );
    assert!(dom.contains("<table id=\"config\">"));
    assert!(dom.contains("<tr><th>pipeline</th><td>4</td><td>1</td></tr>"));
}

#[test]
fn compare_needs_report_and_a_run_file() {
    let out = run(bench_bin(), &["--compare", "x.json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--report"), "{err}");

    let bogus = temp_path("report-bogus.json");
    std::fs::write(&bogus, "[1, 2]").unwrap();
    let page = temp_path("report-unused.html");
    let out = run(
        bench_bin(),
        &[
            "--report",
            page.to_str().unwrap(),
            "--compare",
            bogus.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&bogus);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a client-bench --json file"), "{err}");
    assert!(!page.exists(), "no run, no report");
}
