//! Jitter: randomising a delay so that many clients do not retry in lockstep.

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// How a retry delay `d` is randomised.
///
/// ```
/// use std::time::Duration;
/// use flow_runtime::policy::{Jitter, SplitMix64};
/// let rng = SplitMix64::new(7);
/// let d = Duration::from_secs(10);
/// assert_eq!(Jitter::None.apply(d, &rng), d);
/// assert!(Jitter::Full.apply(d, &rng) <= d);
/// let equal = Jitter::Equal.apply(d, &rng);
/// assert!(equal >= d / 2 && equal <= d);
/// let spread = Jitter::Spread(0.2).apply(d, &rng);
/// assert!(spread >= Duration::from_secs(8) && spread <= Duration::from_secs(12));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Jitter {
    /// Exactly `d`.
    #[default]
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
    /// Uniform in `[d * (1 - f), d * (1 + f)]`, the `backoff` crate's "randomization factor".
    /// `f` is clamped to `[0, 1]`.
    Spread(f64),
}

impl Jitter {
    /// Applies this jitter to `d`, drawing randomness from `rng`.
    #[inline]
    pub fn apply(&self, d: Duration, rng: &SplitMix64) -> Duration {
        match *self {
            Jitter::None => d,
            Jitter::Full => uniform(Duration::ZERO, d, rng),
            Jitter::Equal => {
                let half = d / 2;
                uniform(half, d, rng)
            }
            Jitter::Spread(f) => {
                let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
                let lo = mul_saturating(d, 1.0 - f).min(d);
                let hi = d.saturating_add(mul_saturating(d, f));
                uniform(lo, hi, rng)
            }
        }
    }
}

/// `d * x` for `x` in `[0, 1]`, saturating at `Duration::MAX` (`Duration::mul_f64` panics when
/// rounding takes a product of `Duration::MAX` above it).
fn mul_saturating(d: Duration, x: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * x).unwrap_or(Duration::MAX)
}

/// A uniformly distributed duration in `[lo, hi]` (inclusive, nanosecond resolution).
fn uniform(lo: Duration, hi: Duration, rng: &SplitMix64) -> Duration {
    let lo_n = lo.as_nanos();
    let span = hi.as_nanos().saturating_sub(lo_n);
    // Durations above u64::MAX nanoseconds (584 years) are not worth randomising exactly.
    let span = u64::try_from(span).unwrap_or(u64::MAX);
    let x = rng.next_u64();
    let offset = ((u128::from(x) * (u128::from(span) + 1)) >> 64) as u64;
    lo.saturating_add(Duration::from_nanos(offset))
}

/// The SplitMix64 generator (Steele, Lea and Flood, 2014): tiny, fast, good enough for jitter,
/// and shareable between the branches of a run because its state is one atomic counter.
///
/// ```
/// use flow_runtime::policy::SplitMix64;
/// let (a, b) = (SplitMix64::new(42), SplitMix64::new(42));
/// let first = a.next_u64();
/// assert_eq!(first, b.next_u64()); // the same seed gives the same sequence
/// assert_ne!(a.next_u64(), first);
/// ```
#[derive(Debug)]
pub struct SplitMix64 {
    state: AtomicU64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`: the same seed gives the same sequence.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 {
            state: AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .state
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(800);

    #[test]
    fn none_is_exact() {
        let rng = SplitMix64::new(1);
        assert_eq!(Jitter::None.apply(D, &rng), D);
    }

    #[test]
    fn full_stays_in_zero_to_d_and_spreads() {
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for seed in 0..10_000 {
            let got = Jitter::Full.apply(D, &SplitMix64::new(seed));
            assert!(got <= D, "seed {seed}: {got:?} > {D:?}");
            min = min.min(got);
            max = max.max(got);
        }
        // Over 10,000 seeds the draws cover the interval, not one corner of it.
        assert!(min < D / 20, "min {min:?}");
        assert!(max > D - D / 20, "max {max:?}");
    }

    #[test]
    fn equal_stays_in_half_d_to_d_and_spreads() {
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for seed in 0..10_000 {
            let got = Jitter::Equal.apply(D, &SplitMix64::new(seed));
            assert!(got >= D / 2 && got <= D, "seed {seed}: {got:?}");
            min = min.min(got);
            max = max.max(got);
        }
        assert!(min < D / 2 + D / 40, "min {min:?}");
        assert!(max > D - D / 40, "max {max:?}");
    }

    #[test]
    fn spread_stays_in_band() {
        for seed in 0..2_000 {
            let got = Jitter::Spread(0.5).apply(D, &SplitMix64::new(seed));
            assert!(got >= D / 2 && got <= D + D / 2, "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn saturated_delays_do_not_panic() {
        let rng = SplitMix64::new(5);
        for j in [
            Jitter::Spread(0.0),
            Jitter::Spread(0.5),
            Jitter::Spread(1.0),
            Jitter::Full,
            Jitter::Equal,
        ] {
            assert!(j.apply(Duration::MAX, &rng) <= Duration::MAX);
        }
        assert_eq!(Jitter::Spread(0.0).apply(D, &rng), D);
    }

    #[test]
    fn zero_delay_stays_zero() {
        let rng = SplitMix64::new(9);
        for j in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Spread(1.0),
        ] {
            assert_eq!(j.apply(Duration::ZERO, &rng), Duration::ZERO);
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let a = SplitMix64::new(42);
        let b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
