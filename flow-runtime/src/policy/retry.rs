//! Retry rules: how many attempts, which failures, and how long to wait.

use core::fmt;
use core::time::Duration;

use super::{Backoff, Jitter};
use crate::error::Failure;

/// Which failures a [`Retry`] rule applies to.
///
/// ```
/// use std::time::Duration;
/// use flow_runtime::Failure;
/// use flow_runtime::policy::{On, Retry};
/// let timeouts: Retry<String> = Retry::new(3).on(On::Timeouts);
/// assert!(timeouts.matches(&Failure::TimedOut(Duration::from_secs(1))));
/// assert!(!timeouts.matches(&Failure::Error("bad request".into())));
/// let busy: Retry<String> = Retry::new(3).on(On::When(|e: &String| e.contains("busy")));
/// assert!(busy.matches(&Failure::Error("server busy".into())));
/// assert!(!Retry::<String>::new(3).on(On::Any).matches(&Failure::Panicked("boom".into())));
/// ```
pub enum On<E> {
    /// Every failure that can be retried: the step's errors and timed-out attempts.
    Any,
    /// Only the step's own errors.
    Errors,
    /// Only timed-out attempts.
    Timeouts,
    /// The step's errors for which the predicate returns `true`.
    When(fn(&E) -> bool),
}

impl<E> Clone for On<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for On<E> {}

impl<E> fmt::Debug for On<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            On::Any => f.write_str("Any"),
            On::Errors => f.write_str("Errors"),
            On::Timeouts => f.write_str("Timeouts"),
            On::When(_) => f.write_str("When(..)"),
        }
    }
}

/// One retry rule of a step.
///
/// A step may have several rules. When an attempt fails, the first rule (in order) whose
/// [`On`] matches the failure handles it, and only that rule's counter advances, as in Amazon
/// States Language's `Retry` list. A failure that no rule matches, and a panic, ends the step at
/// once.
///
/// Semantics of one rule:
///
/// - `max_attempts` counts every attempt that failed with a failure this rule matches,
///   including the first attempt. With a single rule, it is the total number of attempts.
///   A value of zero is treated as one (the macros reject it at compile time).
/// - The delay before retry `n` (the rule's `n`-th retry) is
///   [`Backoff::delay(n)`](Backoff::delay) = `min(initial * factor^(n-1), max_delay)`, then
///   [`Jitter`].
/// - With `max_elapsed`, a retry whose delay would end later than `max_elapsed` after the
///   first attempt started is not made: the step fails with its last failure.
/// - A delay of zero retries at once without going through the timer.
///
/// ```
/// use std::time::Duration;
/// use flow_runtime::Failure;
/// use flow_runtime::policy::{Backoff, Jitter, Retry};
/// fn transient(e: &String) -> bool { e.starts_with("503") }
/// let rule: Retry<String> = Retry::new(5)
///     .with_backoff(Backoff::exponential(Duration::from_millis(200), 2.0))
///     .with_jitter(Jitter::Full)
///     .with_max_elapsed(Duration::from_secs(30))
///     .when(transient);
/// assert_eq!((rule.max_attempts(), rule.jitter()), (5, Jitter::Full));
/// assert_eq!(rule.backoff().delay(2), Duration::from_millis(400));
/// assert_eq!(rule.max_elapsed(), Some(Duration::from_secs(30)));
/// assert!(rule.matches(&Failure::Error("503 unavailable".into())));
/// assert!(!rule.matches(&Failure::Error("404 not found".into())));
/// ```
pub struct Retry<E> {
    max_attempts: u32,
    backoff: Backoff,
    jitter: Jitter,
    max_elapsed: Option<Duration>,
    on: On<E>,
}

impl<E> Clone for Retry<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Retry<E> {}

impl<E> fmt::Debug for Retry<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("jitter", &self.jitter)
            .field("max_elapsed", &self.max_elapsed)
            .field("on", &self.on)
            .finish()
    }
}

impl<E> Retry<E> {
    /// A rule allowing `max_attempts` attempts in all, retrying at once, on any failure.
    pub const fn new(max_attempts: u32) -> Self {
        Retry {
            max_attempts: if max_attempts == 0 { 1 } else { max_attempts },
            backoff: Backoff::NONE,
            jitter: Jitter::None,
            max_elapsed: None,
            on: On::Any,
        }
    }

    /// Sets the delay schedule.
    pub const fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the jitter applied to each delay.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets a total time budget, measured from the start of the step's first attempt.
    pub const fn with_max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// Restricts the rule to some failures.
    pub const fn on(mut self, on: On<E>) -> Self {
        self.on = on;
        self
    }

    /// Restricts the rule to the step's errors for which `predicate` returns `true`.
    pub const fn when(self, predicate: fn(&E) -> bool) -> Self {
        self.on(On::When(predicate))
    }

    /// The attempts allowed by this rule, the first one included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay schedule.
    pub const fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The jitter.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The total time budget, if any.
    pub const fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// Whether this rule handles `failure`. Panics are never retried.
    pub fn matches(&self, failure: &Failure<E>) -> bool {
        match (failure, &self.on) {
            (Failure::Panicked(_) | Failure::Signal(_), _) => false,
            (_, On::Any) => true,
            (Failure::Error(_), On::Errors) => true,
            (Failure::TimedOut(_), On::Timeouts) => true,
            (Failure::Error(e), On::When(p)) => p(e),
            _ => false,
        }
    }
}

#[cfg(feature = "backoff")]
impl<E, C> From<&backoff::exponential::ExponentialBackoff<C>> for Retry<E> {
    /// Takes `initial_interval`, `multiplier`, `max_interval`, `max_elapsed_time` and
    /// `randomization_factor` (as [`Jitter::Spread`]). `backoff` has no attempt limit, so the
    /// rule allows `u32::MAX` attempts and relies on `max_elapsed_time` to stop.
    fn from(b: &backoff::exponential::ExponentialBackoff<C>) -> Self {
        let schedule =
            Backoff::exponential(b.initial_interval, b.multiplier).with_max_delay(b.max_interval);
        let jitter = if b.randomization_factor > 0.0 {
            Jitter::Spread(b.randomization_factor)
        } else {
            Jitter::None
        };
        let mut rule = Retry::new(u32::MAX)
            .with_backoff(schedule)
            .with_jitter(jitter);
        rule.max_elapsed = b.max_elapsed_time;
        rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum E {
        Busy,
        Broken,
    }

    fn is_busy(e: &E) -> bool {
        matches!(e, E::Busy)
    }

    #[test]
    fn matching() {
        let any = Retry::<E>::new(3);
        assert!(any.matches(&Failure::Error(E::Broken)));
        assert!(any.matches(&Failure::TimedOut(Duration::from_secs(1))));
        assert!(!any.matches(&Failure::Panicked("boom".into())));

        let busy = Retry::new(3).when(is_busy);
        assert!(busy.matches(&Failure::Error(E::Busy)));
        assert!(!busy.matches(&Failure::Error(E::Broken)));
        assert!(!busy.matches(&Failure::TimedOut(Duration::from_secs(1))));

        let timeouts = Retry::<E>::new(3).on(On::Timeouts);
        assert!(timeouts.matches(&Failure::TimedOut(Duration::from_secs(1))));
        assert!(!timeouts.matches(&Failure::Error(E::Busy)));

        let errors = Retry::<E>::new(3).on(On::Errors);
        assert!(errors.matches(&Failure::Error(E::Busy)));
        assert!(!errors.matches(&Failure::TimedOut(Duration::from_secs(1))));
    }

    #[test]
    fn zero_attempts_means_one() {
        assert_eq!(Retry::<E>::new(0).max_attempts(), 1);
    }

    #[cfg(feature = "backoff")]
    #[test]
    fn from_backoff_crate() {
        let b = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(100))
            .with_multiplier(3.0)
            .with_max_interval(Duration::from_secs(1))
            .with_randomization_factor(0.0)
            .with_max_elapsed_time(Some(Duration::from_secs(10)))
            .build();
        let r: Retry<E> = Retry::from(&b);
        assert_eq!(r.backoff().delay(1), Duration::from_millis(100));
        assert_eq!(r.backoff().delay(2), Duration::from_millis(300));
        assert_eq!(r.backoff().delay(4), Duration::from_secs(1));
        assert_eq!(r.max_elapsed(), Some(Duration::from_secs(10)));
        assert_eq!(r.jitter(), Jitter::None);
    }
}
