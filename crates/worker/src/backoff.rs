//! Delays: how long a failed message stays invisible before its retry, and how long to wait after an SQS or store
//! error.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// SQS's ceiling for a message's visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Cap of the delay between attempts while SQS or the store is failing.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Visibility for a message whose handler failed on its `receive_count`-th receive: `base * 2^(n-1)`, capped.
pub fn retry_visibility(receive_count: u32, base: Duration, max: Duration) -> Duration {
    let exponent = receive_count.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exponent).min(max).min(MAX_VISIBILITY)
}

/// Exponential backoff with jitter for SQS or the store being unreachable, throttling or failing; never gives up, never
/// exceeds
/// [`RETRY_BACKOFF_MAX`] (jitter included).
pub struct RetryBackoff(ExponentialBackoff);

impl Default for RetryBackoff {
    fn default() -> Self {
        Self(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(RETRY_BACKOFF_MAX)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }
}

impl RetryBackoff {
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(RETRY_BACKOFF_MAX).min(RETRY_BACKOFF_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_visibility_doubles_then_caps() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(300);
        let seconds: Vec<u64> = (1..=8).map(|n| retry_visibility(n, base, max).as_secs()).collect();
        assert_eq!(seconds, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(retry_visibility(0, base, max), base, "a missing receive count acts as the first receive");
    }

    proptest! {
        /// Never decreasing with more receives, never above the cap or SQS's 12 h.
        #[test]
        fn retry_visibility_is_monotonic_and_bounded(n in 0u32..10_000, base in 0u64..10_000, max in 0u64..100_000) {
            let (base, max) = (Duration::from_secs(base), Duration::from_secs(max));
            let now = retry_visibility(n, base, max);
            let next = retry_visibility(n.saturating_add(1), base, max);
            prop_assert!(now <= next);
            prop_assert!(now <= max && now <= MAX_VISIBILITY);
        }

        /// Retry backoff never exceeds its cap (jitter included) and never ends.
        #[test]
        fn retry_backoff_is_capped_and_endless(steps in 1usize..200) {
            let mut backoff = RetryBackoff::default();
            let mut last = Duration::ZERO;
            for _ in 0..steps {
                last = backoff.next_delay();
                prop_assert!(last > Duration::ZERO && last <= RETRY_BACKOFF_MAX);
            }
            // Long outages settle near the cap instead of hammering SQS.
            if steps > 20 {
                prop_assert!(last >= RETRY_BACKOFF_MAX / 2, "{last:?}");
            }
        }
    }
}
