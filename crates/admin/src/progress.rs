//! The rate limit and the progress bar of long runs.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

/// Spaces actions at least `1/rate` apart: a real limit, with no burst after an idle moment.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// `rate` actions per second (0 is taken as 1).
    pub fn new(rate: u32) -> Self {
        Self { interval: Duration::from_secs(1) / rate.max(1), next: None }
    }

    /// Waits until the next action may start.
    pub async fn wait(&mut self) {
        let now = Instant::now();
        let at = self.next.map_or(now, |next| next.max(now));
        tokio::time::sleep_until(at).await;
        self.next = Some(at + self.interval);
    }
}

/// Runs longer than this many messages get a progress bar (on a terminal).
pub const HANDFUL: u64 = 10;

/// A progress bar on stderr when stderr is a terminal and about `expected` (> [`HANDFUL`]) messages are ahead;
/// hidden otherwise, so logs and pipes get only the summary line.
pub fn bar(expected: u64, verb: &str) -> ProgressBar {
    if expected <= HANDFUL || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(expected), ProgressDrawTarget::stderr());
    // The template is a constant; if it were refused the default style is still a progress bar.
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
        .map(|s| s.progress_chars("=> "))
    {
        bar.set_style(style);
    }
    bar.set_message(verb.to_owned());
    bar
}

/// Prints a line on stderr without tearing the bar.
pub fn note(bar: &ProgressBar, line: &str) {
    bar.suspend(|| eprintln!("{line}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_actions_without_bursts() {
        let mut pacer = Pacer::new(4);
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // The first goes at once, then one every 250 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(idle.elapsed(), Duration::from_millis(250));
    }

    #[test]
    fn short_runs_have_no_bar() {
        assert!(bar(HANDFUL, "x").is_hidden());
    }
}
