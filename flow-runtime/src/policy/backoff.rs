//! The retry delay schedule: `min(initial * factor^(n-1), max_delay)`.

use core::time::Duration;

/// An exponential delay schedule.
///
/// The delay before retry `n` (the `n`-th retry, which follows the `n`-th failed attempt) is
/// `min(initial * factor^(n-1), max_delay)`, before jitter. A `factor` of `1.0` gives a
/// constant delay; an `initial` of zero gives immediate retries, which never touch the timer.
///
/// ```
/// use std::time::Duration;
/// use flow_runtime::policy::Backoff;
///
/// let b = Backoff::exponential(Duration::from_millis(200), 2.0)
///     .with_max_delay(Duration::from_millis(500));
/// let delays: Vec<_> = b.delays().take(4).collect();
/// assert_eq!(delays, [200, 400, 500, 500].map(Duration::from_millis));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max_delay: Option<Duration>,
}

impl Backoff {
    /// No delay between attempts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flow_runtime::policy::Backoff;
    /// let b = Backoff::exponential(Duration::from_millis(100), 3.0);
    /// assert_eq!((b.initial(), b.factor(), b.max_delay()), (Duration::from_millis(100), 3.0, None));
    /// assert_eq!(b.delay(3), Duration::from_millis(900)); // before the 3rd retry: 100ms * 3^2
    /// assert_eq!(Backoff::NONE.delay(5), Duration::ZERO);
    /// assert_eq!(Backoff::default(), Backoff::NONE);
    /// ```
    pub const NONE: Backoff = Backoff {
        initial: Duration::ZERO,
        factor: 1.0,
        max_delay: None,
    };

    /// The same delay before every retry.
    pub const fn constant(delay: Duration) -> Self {
        Backoff {
            initial: delay,
            factor: 1.0,
            max_delay: None,
        }
    }

    /// A delay that starts at `initial` and is multiplied by `factor` after every retry.
    ///
    /// A `factor` below `1.0` (or not a number) is treated as `1.0`; the macros reject it at
    /// compile time.
    pub const fn exponential(initial: Duration, factor: f64) -> Self {
        // `f64::max` is not const; NaN fails the comparison and becomes 1.0 too.
        let factor = if factor >= 1.0 { factor } else { 1.0 };
        Backoff {
            initial,
            factor,
            max_delay: None,
        }
    }

    /// Caps every delay at `max_delay`.
    pub const fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = Some(max_delay);
        self
    }

    /// The first delay.
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// The multiplier applied after each retry.
    pub const fn factor(&self) -> f64 {
        self.factor
    }

    /// The cap on every delay, if any.
    pub const fn max_delay(&self) -> Option<Duration> {
        self.max_delay
    }

    /// The delay before retry `n` (1-based), before jitter.
    ///
    /// `n = 0` is treated as `1`. The result saturates instead of overflowing.
    #[inline]
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1);
        let cap = self.max_delay.unwrap_or(Duration::MAX);
        if self.initial.is_zero() {
            return Duration::ZERO;
        }
        let scale = self.factor.powi(i32::try_from(exp).unwrap_or(i32::MAX));
        let secs = self.initial.as_secs_f64() * scale;
        // `try_from_secs_f64` fails on overflow and infinity: both mean "past the cap".
        match Duration::try_from_secs_f64(secs) {
            Ok(d) => d.min(cap),
            Err(_) => cap,
        }
    }

    /// The delays before retry 1, 2, 3, ... (an endless iterator, before jitter).
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            n: 0,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::NONE
    }
}

/// The iterator returned by [`Backoff::delays`].
///
/// ```
/// use std::time::Duration;
/// use flow_runtime::policy::{Backoff, Delays};
/// let mut delays: Delays = Backoff::constant(Duration::from_secs(1)).delays();
/// assert_eq!(delays.next(), Some(Duration::from_secs(1)));
/// assert_eq!(delays.next(), Some(Duration::from_secs(1)));
/// assert_eq!(Backoff::NONE.delays().next(), Some(Duration::ZERO));
/// ```
#[derive(Clone, Debug)]
pub struct Delays {
    backoff: Backoff,
    n: u32,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.n = self.n.saturating_add(1);
        Some(self.backoff.delay(self.n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn exponential_doubles_then_caps() {
        let b = Backoff::exponential(ms(200), 2.0).with_max_delay(ms(5000));
        let got: Vec<_> = b.delays().take(8).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(ms));
    }

    #[test]
    fn constant_and_none() {
        assert_eq!(Backoff::constant(ms(7)).delay(1), ms(7));
        assert_eq!(Backoff::constant(ms(7)).delay(50), ms(7));
        assert_eq!(Backoff::NONE.delay(3), Duration::ZERO);
    }

    #[test]
    fn huge_exponents_saturate_at_the_cap() {
        let b = Backoff::exponential(ms(1), 10.0).with_max_delay(ms(9));
        assert_eq!(b.delay(u32::MAX), ms(9));
        let uncapped = Backoff::exponential(ms(1), 10.0);
        assert_eq!(uncapped.delay(10_000), Duration::MAX);
    }

    #[test]
    fn factor_below_one_is_clamped() {
        let b = Backoff::exponential(ms(100), 0.5);
        assert_eq!(b.factor(), 1.0);
        assert_eq!(b.delay(3), ms(100));
        assert_eq!(Backoff::exponential(ms(100), f64::NAN).factor(), 1.0);
    }

    #[test]
    fn fractional_factor() {
        let b = Backoff::exponential(ms(100), 1.5);
        assert_eq!(b.delay(3), ms(225));
    }
}
