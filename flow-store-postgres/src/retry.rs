//! The schedule of attempts after a transient failure: exponential backoff with jitter,
//! within a total budget.

use std::time::{Duration, Instant};

/// The first delay.
const FIRST: Duration = Duration::from_millis(50);
/// The longest delay between two attempts.
const MAX: Duration = Duration::from_secs(2);

/// Delays between attempts: 50 ms, 100 ms, 200 ms ... up to 2 s, each drawn at random
/// between half and all of it (so that workers that failed together do not come back
/// together), as long as the total stays within the budget.
pub(crate) struct Backoff {
    started: Instant,
    budget: Option<Duration>,
    next: Duration,
    attempts: u32,
    /// The delays given so far (slept by the caller, so at most the time elapsed).
    given: Duration,
}

impl Backoff {
    /// A schedule that ends once `budget` has passed since now.
    pub(crate) fn new(budget: Duration) -> Self {
        Backoff {
            started: Instant::now(),
            budget: Some(budget),
            next: FIRST,
            attempts: 1,
            given: Duration::ZERO,
        }
    }

    /// A schedule that never ends.
    pub(crate) fn forever() -> Self {
        Backoff {
            budget: None,
            ..Backoff::new(Duration::ZERO)
        }
    }

    /// The delay before the next attempt, or `None` if it would end past the budget.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let full = self.next;
        self.next = (self.next * 2).min(MAX);
        let half = full / 2;
        let jitter = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let delay = half + Duration::from_micros(fastrand::u64(0..=jitter));
        if let Some(budget) = self.budget
            && self.started.elapsed().max(self.given) + delay > budget
        {
            return None;
        }
        self.attempts += 1;
        self.given += delay;
        Some(delay)
    }

    /// How many attempts were made (the first one included), if every delay given was used.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long since the first attempt.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_stop_at_the_budget() {
        let mut b = Backoff::forever();
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay().unwrap()).collect();
        let fulls = [50, 100, 200, 400, 800, 1600, 2000, 2000].map(Duration::from_millis);
        for (d, full) in delays.iter().zip(fulls) {
            assert!(*d >= full / 2 && *d <= full, "{d:?} for {full:?}");
        }
        assert_eq!(b.attempts(), 9);
        let mut b = Backoff::new(Duration::from_millis(10));
        assert_eq!(b.next_delay(), None, "the first delay is past the budget");
        let mut b = Backoff::new(Duration::from_millis(200));
        let total: Duration = std::iter::from_fn(|| b.next_delay()).sum();
        assert!(total <= Duration::from_millis(200), "{total:?}");
    }
}
