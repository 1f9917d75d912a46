//! The live progress line, drawn with indicatif on stderr only when stderr is
//! a terminal (never in pipes, files or CI logs).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{Plan, Stop};
use crate::driver::Run;
use crate::stats::Live;

/// Redraw period of the progress line.
const TICK: Duration = Duration::from_millis(250);

/// Whether a progress line would be drawn.
pub fn wanted(disabled: bool) -> bool {
    !disabled && std::io::stderr().is_terminal()
}

/// Shows progress until the run's threads have all finished. Returns at once
/// when no progress line is wanted (the caller then just joins the run).
pub fn watch(run: &Run, live: &Live, plan: &Plan, disabled: bool) {
    if !wanted(disabled) {
        return;
    }
    let bar = match plan.stop {
        Stop::Count(_) => {
            let total = plan.planned_requests().unwrap_or(0);
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        }
        Stop::After(d) => {
            let b = ProgressBar::with_draw_target(
                Some(d.as_millis() as u64),
                ProgressDrawTarget::stderr(),
            );
            b.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        }
    };
    let mut last = (Instant::now(), 0u64);
    while !run.is_finished() {
        std::thread::sleep(TICK);
        let [attempted, succeeded, failed, lost] = live.snapshot();
        let now = Instant::now();
        let dt = now.duration_since(last.0).as_secs_f64();
        let rate = if dt > 0.0 {
            succeeded.saturating_sub(last.1) as f64 / dt
        } else {
            0.0
        };
        last = (now, succeeded);
        match plan.stop {
            Stop::Count(_) => bar.set_position(attempted),
            Stop::After(_) => bar.set_position(run.started().elapsed().as_millis() as u64),
        }
        bar.set_message(format!(
            "attempted {attempted}  ok-replies {succeeded}  errors {failed}  lost {lost}  {rate:.0} req/s"
        ));
    }
    bar.finish_and_clear();
}
