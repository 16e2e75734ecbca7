//! This instance's share of its role's stats item in the store: every [`REPORT_EVERY`], the outcomes counted since the
//! last report are added (`ADD`) to `STATS#<role>`, with the oldest message age just seen. Every instance of the role
//! adds to the same item, so the console reads one item per role whatever the number of tasks.

use std::sync::Arc;
use std::time::Duration;

use store::StatsWrites;
use tokio_util::sync::CancellationToken;

use crate::consumer::Outcome;
use crate::health::Health;

/// How often an instance reports (the console samples every 5 s too).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// An idle instance still refreshes its oldest age this often.
const IDLE_REPORT_EVERY: u32 = 6;
/// How long the report made at shutdown may take.
const FINAL_REPORT_BUDGET: Duration = Duration::from_secs(3);

/// Reports until `stop`, then once more so the last counts are not lost.
pub async fn report(store: Arc<dyn StatsWrites>, health: Arc<Health>, stop: CancellationToken) {
    // The feed counts from the instance's start, all of which this reporter owes the store.
    let mut reported = Outcome::ALL.map(|outcome| (outcome, 0u64));
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_ticks = 0;
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = every.tick() => false,
            () = stop.cancelled() => true,
        };
        let now = health.live.counts();
        let deltas: Vec<(&'static str, u64)> = now
            .iter()
            .zip(reported.iter())
            .filter(|((outcome, _), _)| *outcome != Outcome::Released)
            .map(|((outcome, count), (_, before))| (outcome.as_str(), count.saturating_sub(*before)))
            .filter(|(_, delta)| *delta > 0)
            .collect();
        idle_ticks += 1;
        if !deltas.is_empty() || idle_ticks >= IDLE_REPORT_EVERY {
            let report = store.add_stats(health.role, &deltas, health.oldest_age().as_secs());
            // The last report must not hold a shutdown up during a store outage.
            let budget = if stopping { FINAL_REPORT_BUDGET } else { REPORT_EVERY * 12 };
            match tokio::time::timeout(budget, report).await {
                Ok(Ok(())) => {
                    if failing {
                        tracing::info!("role stats reported again");
                        failing = false;
                    }
                    reported = now;
                    idle_ticks = 0;
                }
                // Kept for the next report: counts are added, never lost to a failed call.
                Ok(Err(error)) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "role stats not reported; the counts are kept for the next report");
                }
                Ok(Err(error)) => tracing::debug!(%error, "role stats still not reported"),
                Err(_) => tracing::warn!(?budget, stopping, "role stats report timed out; the counts are kept"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::memory::MemoryOrders;
    use store::OrderReads;

    fn a_line() -> crate::live::OutcomeLine {
        crate::live::OutcomeLine::sample("m")
    }

    #[tokio::test(start_paused = true)]
    async fn counts_are_added_to_the_role_item_and_the_last_ones_flushed_at_stop() {
        let health = Arc::new(Health::new("process", "memory://queue".into(), crate::health::Limits::default()));
        let store = Arc::new(MemoryOrders::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(report(Arc::clone(&store) as Arc<dyn StatsWrites>, Arc::clone(&health), stop.clone()));
        for _ in 0..3 {
            health.live.publish(Outcome::Processed, a_line);
        }
        tokio::time::sleep(REPORT_EVERY * 2).await;
        health.live.publish(Outcome::Duplicate, a_line);
        stop.cancel();
        let _ = task.await;
        let stats = store.role_stats(&["process"]).await.unwrap_or_default();
        let outcomes = stats.get("process").map(|s| s.outcomes.clone()).unwrap_or_default();
        assert_eq!(outcomes.get("processed"), Some(&3));
        assert_eq!(outcomes.get("duplicate"), Some(&1), "flushed when stopping");
    }
}
