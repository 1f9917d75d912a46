//! `client-bench`: the load generator. See `client-bench --help`.
//! `client-bench chaos …` is the fault harness (`client-bench chaos --help`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::anyhow;
use clap::Parser;

use client_bench::config::BenchConfig;
use client_bench::driver::Run;
use client_bench::html_report::{self, RunDoc};
use client_bench::report::{write_hist, Summary};
use client_bench::setup::{self, SetupReport};
use client_bench::stats::Live;
use client_bench::{progress, verify};

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "chaos") {
        return client_bench::chaos::main(std::env::args_os().collect());
    }
    let config = match BenchConfig::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(&config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("client-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &BenchConfig) -> anyhow::Result<ExitCode> {
    let plan = Arc::new(config.plan().map_err(|e| anyhow!(e))?);
    // Read before the run, so a bad file fails fast.
    let compare = config.compare.as_deref().map(RunDoc::load).transpose()?;
    let setup = if config.no_setup {
        if plan.redis.is_some() {
            // The load's EVALSHAs need the scripts loaded.
            setup::connect_redis(&plan).map_err(|e| e.context("setup failed"))?;
        }
        SetupReport::default()
    } else {
        setup::open_all(&plan).map_err(|e| e.context("setup failed"))?
    };

    let live = Arc::new(Live::default());
    let run = Run::start(plan.clone(), live.clone())?;
    progress::watch(&run, &live, &plan, config.no_progress);
    let out = run.join(&plan)?;
    debug_assert!(out.stats.is_balanced());

    let verified = if config.verify {
        let mut expect = out.stats.expect.clone();
        if config.verify_inject_error {
            verify::inject_error(&mut expect);
        }
        let unknown = out.stats.unknown_outcomes();
        Some(verify::verify(&plan, &expect, unknown)?)
    } else {
        None
    };

    let summary = Summary::new(config, &plan, &setup, &out, verified.as_ref());
    print!("{}", summary.to_text(&plan));
    if let Some(path) = &config.json {
        summary.write_json(path)?;
    }
    if let Some(path) = &config.hist {
        write_hist(&out.stats.hist, path)?;
    }
    if let Some(path) = &config.report {
        let mut runs = vec![RunDoc::from_summary(&summary)?];
        runs.extend(compare);
        html_report::write(path, &runs)?;
    }

    if verified.as_ref().is_some_and(|v| !v.ok()) {
        return Ok(ExitCode::from(2));
    }
    let meant_to_send = plan.planned_requests() != Some(0);
    if meant_to_send && out.stats.succeeded == 0 {
        eprintln!("client-bench: no request succeeded");
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
