//! Outputs of a run: the text summary on stdout, `--json` and `--hist`.
//!
//! The JSON field names are stable (scripts and CI read them): `attempted`,
//! `succeeded`, `success_rate`, `rps`, `rpm`, `connect_failures`, `errors`
//! (code name → count), `outcomes` (status name → count), `min_us`, `p50_us`,
//! `p90_us`, `p99_us`, `p999_us`, `max_us`, `duration_s`, and `config` (the
//! flags of the run, without the auth token), plus the extra counters of
//! [`Summary`]. Added later (absent from older files, which readers must
//! accept): `latency_spectrum` (HdrHistogram's percentile distribution as
//! `{quantile, value_us}` points) and `per_second` (`results` and `errors`:
//! replies by second of the run), which `--report` plots. `in_doubt` counts the requests answered ERROR `IN_DOUBT`
//! (also in `failed` and in `errors`): unlike every other ERROR, they may
//! have been applied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{BenchConfig, Pacing, Plan, Stop};
use crate::driver::RunOutput;
use crate::setup::SetupReport;
use crate::stats::PerSecond;
use crate::verify::VerifyReport;

/// `--verify` result as reported.
#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    pub ok: bool,
    pub auctions_checked: u64,
    pub sales_checked: u64,
    pub unknown_outcomes: u64,
    pub mismatches: Vec<String>,
}

/// Everything the run reports; serialized as the `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests issued.
    pub attempted: u64,
    /// Requests answered by a RESULT (any business outcome).
    pub succeeded: u64,
    /// succeeded / attempted (0 when nothing was attempted).
    pub success_rate: f64,
    /// succeeded per second of `duration_s`.
    pub rps: f64,
    pub rpm: f64,
    pub connect_failures: u64,
    /// ERROR frames received, by code name.
    pub errors: BTreeMap<String, u64>,
    /// RESULTs received, by status name.
    pub outcomes: BTreeMap<String, u64>,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// Open loop only: p50/p99/max of how late requests left after their
    /// intended send time (high values: the generator could not keep up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<[u64; 3]>,
    /// Load phase, from its start until the last connection ended.
    pub duration_s: f64,
    /// Requests answered by an ERROR frame.
    pub failed: u64,
    /// Of `failed`, those answered `IN_DOUBT`: they may have been applied
    /// (their outcome is unknown; a retry with the same key would tell).
    pub in_doubt: u64,
    /// Requests never answered (connection closed, broken or timed out first).
    pub lost: u64,
    /// Requests answered by a reply of an unexpected kind.
    pub unexpected: u64,
    pub connections_opened: u64,
    pub handshake_failures: u64,
    pub timeouts: u64,
    pub closed_by_server: u64,
    pub protocol_errors: u64,
    pub replayed: u64,
    pub pushes: u64,
    pub unmatched_replies: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_connect_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_protocol_error: Option<String>,
    pub id_base: u64,
    pub auctions_opened: u64,
    pub sales_opened: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySummary>,
    pub config: BenchConfig,
    /// The latency percentile spectrum (HdrHistogram's distribution, 5
    /// ticks per half distance), as `--hist` prints it.
    pub latency_spectrum: Vec<SpectrumPoint>,
    /// Replies by second of the load phase.
    pub per_second: PerSecondSummary,
}

/// One point of the latency percentile spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    /// Fraction of the answered requests at or below `value_us` (0 to 1).
    pub quantile: f64,
    pub value_us: u64,
}

/// Replies per second of the load phase, as in `--json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerSecondSummary {
    /// RESULT replies that arrived in second `i` of the run.
    pub results: Vec<u64>,
    /// ERROR replies that arrived in second `i` of the run.
    pub errors: Vec<u64>,
}

impl From<&PerSecond> for PerSecondSummary {
    fn from(p: &PerSecond) -> Self {
        PerSecondSummary {
            results: p.results.clone(),
            errors: p.errors.clone(),
        }
    }
}

/// HdrHistogram's percentile spectrum of `h` (empty when `h` is).
pub fn spectrum(h: &Histogram<u64>) -> Vec<SpectrumPoint> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| SpectrumPoint {
            quantile: v.quantile_iterated_to(),
            value_us: v.value_iterated_to(),
        })
        .collect()
}

impl Summary {
    pub fn new(
        config: &BenchConfig,
        plan: &Plan,
        setup: &SetupReport,
        out: &RunOutput,
        verify: Option<&VerifyReport>,
    ) -> Summary {
        let s = &out.stats;
        let h = &s.hist;
        let duration_s = out.elapsed.as_secs_f64();
        let rps = if duration_s > 0.0 {
            s.succeeded as f64 / duration_s
        } else {
            0.0
        };
        let (min, max, mean) = if h.is_empty() {
            (0, 0, 0.0)
        } else {
            (h.min(), h.max(), h.mean())
        };
        let pct = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        Summary {
            attempted: s.attempted,
            succeeded: s.succeeded,
            success_rate: if s.attempted > 0 {
                s.succeeded as f64 / s.attempted as f64
            } else {
                0.0
            },
            rps,
            rpm: rps * 60.0,
            connect_failures: s.connect_failures,
            errors: to_map(s.errors_by_name()),
            outcomes: to_map(s.outcomes_by_name()),
            min_us: min,
            p50_us: pct(0.50),
            p90_us: pct(0.90),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            max_us: max,
            mean_us: mean,
            send_lag_us: (!s.send_lag.is_empty()).then(|| {
                let l = &s.send_lag;
                [l.value_at_quantile(0.5), l.value_at_quantile(0.99), l.max()]
            }),
            duration_s,
            failed: s.failed,
            in_doubt: s.in_doubt,
            lost: s.lost,
            unexpected: s.unexpected,
            connections_opened: s.connections_opened,
            handshake_failures: s.handshake_failures,
            timeouts: s.timeouts,
            closed_by_server: s.closed_by_server,
            protocol_errors: s.protocol_errors,
            replayed: s.replayed,
            pushes: s.pushes,
            unmatched_replies: s.unmatched,
            first_connect_error: s.first_connect_error.clone(),
            first_protocol_error: s.first_protocol_error.clone(),
            id_base: plan.id_base,
            auctions_opened: setup.auctions_opened,
            sales_opened: setup.sales_opened,
            verify: verify.map(|v| VerifySummary {
                ok: v.ok(),
                auctions_checked: v.auctions_checked,
                sales_checked: v.sales_checked,
                unknown_outcomes: v.unknown_outcomes,
                mismatches: v.mismatches.clone(),
            }),
            config: config.clone(),
            latency_spectrum: spectrum(h),
            per_second: PerSecondSummary::from(&s.per_second),
        }
    }

    /// The human-readable summary.
    pub fn to_text(&self, plan: &Plan) -> String {
        let mut t = String::new();
        let c = &self.config;
        let mode = match (plan.stop, plan.pacing) {
            (Stop::Count(n), _) => format!("{n} requests/connection"),
            (Stop::After(d), _) => format!("{:.1} s", d.as_secs_f64()),
        };
        let pacing = match plan.pacing {
            Pacing::Closed { think } if think.is_zero() => "closed loop".to_string(),
            Pacing::Closed { think } => format!("closed loop, think {} ms", think.as_millis()),
            Pacing::Open { per_conn_rate } => format!(
                "open loop {:.0} req/s",
                per_conn_rate * f64::from(plan.connections)
            ),
        };
        let _ = writeln!(
            t,
            "client-bench: {} workload against {} ({}), {} connections x pipeline {}, {} threads, {}, {}",
            c.workload.name(),
            plan.addr,
            c.target.name(),
            plan.connections,
            plan.pipeline,
            plan.threads,
            mode,
            pacing
        );
        let _ = writeln!(
            t,
            "  keys:         {} auctions, {} skus, skew {}, id_base {}",
            plan.auctions, plan.skus, plan.skew, self.id_base
        );
        let _ = writeln!(t, "  duration:     {:.3} s", self.duration_s);
        let _ = writeln!(t, "  attempted:    {}", self.attempted);
        let _ = writeln!(
            t,
            "  succeeded:    {} ({:.3}% of attempted; replies with a RESULT)",
            self.succeeded,
            self.success_rate * 100.0
        );
        let _ = writeln!(t, "  failed:       {} (answered by ERROR)", self.failed);
        if self.in_doubt > 0 {
            let _ = writeln!(
                t,
                "  in doubt:     {} (of failed: answered IN_DOUBT, may have been applied)",
                self.in_doubt
            );
        }
        let _ = writeln!(t, "  lost:         {} (never answered)", self.lost);
        if self.unexpected > 0 {
            let _ = writeln!(
                t,
                "  unexpected:   {} (answered by an unexpected reply)",
                self.unexpected
            );
        }
        let _ = writeln!(
            t,
            "  throughput:   {:.1} req/s ({:.0} req/min)",
            self.rps, self.rpm
        );
        let _ = writeln!(
            t,
            "  connections:  {} opened, {} connect failures, {} handshake failures, {} closed by server, {} timed out",
            self.connections_opened,
            self.connect_failures,
            self.handshake_failures,
            self.closed_by_server,
            self.timeouts
        );
        if let Some(e) = &self.first_connect_error {
            let _ = writeln!(t, "  first connect error: {e}");
        }
        if let Some(e) = &self.first_protocol_error {
            let _ = writeln!(t, "  protocol error: {e}");
        }
        let _ = writeln!(t, "  outcomes:     {}", fmt_map(&self.outcomes));
        let _ = writeln!(t, "  errors:       {}", fmt_map(&self.errors));
        if self.replayed > 0 || self.pushes > 0 || self.unmatched_replies > 0 {
            let _ = writeln!(
                t,
                "  other:        {} replayed, {} pushes, {} unmatched replies",
                self.replayed, self.pushes, self.unmatched_replies
            );
        }
        let _ = writeln!(
            t,
            "  latency (us): min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
            self.min_us,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us
        );
        if let Some([p50, p99, max]) = self.send_lag_us {
            let _ = writeln!(
                t,
                "  send lag (us): p50 {p50}  p99 {p99}  max {max}  (open loop: sent after intended time)"
            );
        }
        if let Some(v) = &self.verify {
            if v.ok {
                let _ = writeln!(
                    t,
                    "  verify:       OK ({} auctions, {} sales checked)",
                    v.auctions_checked, v.sales_checked
                );
            } else {
                let _ = writeln!(t, "  verify:       {} MISMATCHES", v.mismatches.len());
                for m in &v.mismatches {
                    let _ = writeln!(t, "    {m}");
                }
            }
            if v.unknown_outcomes > 0 {
                let _ = writeln!(
                    t,
                    "    ({} requests have unknown outcomes; the checks allow for them)",
                    v.unknown_outcomes
                );
            }
        }
        t
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut body = serde_json::to_string_pretty(self)?;
        body.push('\n');
        std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn to_map(v: Vec<(&'static str, u64)>) -> BTreeMap<String, u64> {
    v.into_iter().map(|(k, n)| (k.to_string(), n)).collect()
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// HdrHistogram's classic percentile distribution, values in microseconds.
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>14}", "inf")
            };
            let _ = writeln!(
                t,
                "{:>12.3} {:>14.12} {:>10} {}",
                v.value_iterated_to() as f64,
                q,
                total,
                inv
            );
        }
    }
    let mean = if h.is_empty() { 0.0 } else { h.mean() };
    let stdev = if h.is_empty() { 0.0 } else { h.stdev() };
    let _ = writeln!(
        t,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        t,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64,
        h.len()
    );
    let _ = writeln!(
        t,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    t
}

pub fn write_hist(h: &Histogram<u64>, path: &Path) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(percentile_distribution(h).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_format() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let d = percentile_distribution(&h);
        assert!(d.starts_with("       Value"));
        assert!(d.contains("#[Max     ="));
        let last = d
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        assert!(last.contains("1000"), "{last}");
        let empty = percentile_distribution(&Histogram::<u64>::new(3).unwrap());
        assert!(empty.contains("Total count    =            0"));
    }

    #[test]
    fn spectrum_points() {
        assert!(spectrum(&Histogram::<u64>::new(3).unwrap()).is_empty());
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let s = spectrum(&h);
        assert!(s.len() > 10, "{}", s.len());
        assert!(s.windows(2).all(|w| w[0].quantile <= w[1].quantile));
        assert!(s.windows(2).all(|w| w[0].value_us <= w[1].value_us));
        let last = s.last().unwrap();
        assert_eq!((last.quantile, last.value_us), (1.0, h.max()));
    }

    #[test]
    fn maps() {
        assert_eq!(fmt_map(&BTreeMap::new()), "none");
        let m = to_map(vec![("OK", 2), ("OUTBID", 1)]);
        assert_eq!(fmt_map(&m), "OK=2 OUTBID=1");
    }
}
