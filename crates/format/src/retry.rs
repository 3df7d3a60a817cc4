//! The one retry policy of Weir: exponential backoff with jitter, never shorter than the wait the
//! server asked for (`google.rpc.RetryInfo` in an UNAVAILABLE answer). Every retry loop — the
//! client's calls, the producer's resends, the consumer's fetchers, a node joining the cluster,
//! writes forwarded to a Raft leader — takes its delays from a [`Backoff`] made here, so there is
//! one set of constants and one behaviour to reason about.
//!
//! Pure: it computes delays; callers sleep (and own their deadlines).

use std::time::Duration;

use backon::BackoffBuilder;

/// How a retry loop waits between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The first delay.
    pub first: Duration,
    /// The longest delay (jitter may add up to as much again).
    pub max: Duration,
    /// How much each delay grows over the previous one.
    pub factor: f32,
}

impl RetryPolicy {
    /// Client calls and forwarded writes: a leader change takes a few hundred milliseconds, so
    /// start quick and stay within a second.
    pub const REQUEST: Self = Self {
        first: Duration::from_millis(50),
        max: Duration::from_secs(1),
        factor: 2.0,
    };
    /// Background loops that wait for a cluster to change (a node joining, a fetcher whose
    /// partition has no leader): no hurry, and no storm of attempts while they wait.
    pub const BACKGROUND: Self = Self {
        first: Duration::from_millis(100),
        max: Duration::from_secs(2),
        factor: 2.0,
    };
    /// Resending an idempotent batch that overtook an earlier one (ABORTED): the earlier one is
    /// usually answered within milliseconds.
    pub const RESEND: Self = Self {
        first: Duration::from_millis(2),
        max: Duration::from_millis(200),
        factor: 2.0,
    };

    /// A fresh sequence of delays.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            inner: self.builder().build(),
        }
    }

    fn builder(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(self.factor)
            .with_jitter()
            .without_max_times()
    }
}

/// The delays of one retry loop.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    inner: backon::ExponentialBackoff,
}

impl Backoff {
    /// The wait before the next attempt: the policy's next delay (with jitter), or `hint` — the
    /// server's requested delay — when that is longer.
    pub fn next_delay(&mut self, hint: Option<Duration>) -> Duration {
        let delay = self.inner.next().unwrap_or(self.policy.max);
        hint.map_or(delay, |hint| delay.max(hint))
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.inner = self.policy.builder().build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_from_first_to_max_with_jitter_within_bounds() {
        let policy = RetryPolicy::REQUEST;
        let mut backoff = policy.backoff();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay(None)).collect();
        for delay in &delays {
            assert!(*delay >= policy.first, "{delay:?}");
            assert!(*delay <= policy.max * 2, "{delay:?}");
        }
        // The late delays sit at the cap (plus jitter), the first ones below it.
        assert!(delays[0] < policy.first * 2 + Duration::from_millis(1));
        assert!(delays[11] >= policy.max, "{delays:?}");
    }

    #[test]
    fn a_server_hint_longer_than_the_backoff_wins() {
        let mut backoff = RetryPolicy::REQUEST.backoff();
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        // A shorter hint does not shorten the backoff.
        assert!(backoff.next_delay(Some(Duration::from_millis(1))) >= Duration::from_millis(50));
    }

    #[test]
    fn jitter_spreads_retries_of_many_clients() {
        let firsts: std::collections::BTreeSet<Duration> = (0..32)
            .map(|_| {
                let mut b = RetryPolicy::REQUEST.backoff();
                b.next_delay(None);
                b.next_delay(None)
            })
            .collect();
        assert!(firsts.len() > 1, "no jitter: {firsts:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = RetryPolicy::REQUEST.backoff();
        for _ in 0..10 {
            backoff.next_delay(None);
        }
        backoff.reset();
        assert!(backoff.next_delay(None) < Duration::from_millis(101));
    }
}
