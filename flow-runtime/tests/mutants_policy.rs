//! Tests that pin down the policy types' documented values exactly, written for the mutants
//! of `flow-runtime/src/policy/` that the other tests let survive (`cargo mutants`, see
//! MUTANTS.md): accessors that nothing else reads, the exact bounds of the jitter bands, and
//! the SplitMix64 sequence itself (the other tests only check that draws look spread out, which
//! a weakened mixing function still passes).

use core::time::Duration;

use flow_runtime::policy::{Backoff, Jitter, SplitMix64};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------- Backoff accessors

#[test]
fn backoff_accessors_return_what_was_configured() {
    let b = Backoff::exponential(ms(250), 2.5);
    assert_eq!(b.initial(), ms(250));
    assert_eq!(b.factor(), 2.5);
    assert_eq!(b.max_delay(), None);

    let capped = b.with_max_delay(ms(4_000));
    assert_eq!(capped.max_delay(), Some(ms(4_000)));
    assert_eq!(capped.factor(), 2.5);

    let constant = Backoff::constant(ms(7));
    assert_eq!(constant.initial(), ms(7));
    assert_eq!(constant.factor(), 1.0);
    assert_eq!(constant.max_delay(), None);
}

// ---------------------------------------------------------------- SplitMix64

/// The reference SplitMix64 (Steele, Lea and Flood; Vigna's `splitmix64.c`): from state 0,
/// the first outputs are these. Any change to the mixing steps changes them.
#[test]
fn splitmix64_matches_the_reference_sequence() {
    let rng = SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
}

// ---------------------------------------------------------------- Jitter bounds

/// `uniform` draws in `[lo, hi]` inclusive: over a span of 1 ns both ends come up.
#[test]
fn full_jitter_reaches_both_ends_of_a_tiny_interval() {
    let d = Duration::from_nanos(1);
    let rng = SplitMix64::new(7);
    let draws: Vec<Duration> = (0..64).map(|_| Jitter::Full.apply(d, &rng)).collect();
    assert!(draws.contains(&Duration::ZERO), "{draws:?}");
    assert!(draws.contains(&d), "{draws:?}");
    assert!(draws.iter().all(|x| *x <= d), "{draws:?}");
}

/// Over a span of 2 ns, all three values come up (the inclusive upper end included).
#[test]
fn equal_jitter_reaches_its_upper_end() {
    let d = Duration::from_nanos(4); // [2, 4] ns
    let rng = SplitMix64::new(11);
    let mut seen = [false; 5];
    for _ in 0..200 {
        let x = Jitter::Equal.apply(d, &rng).as_nanos() as usize;
        assert!((2..=4).contains(&x), "{x} ns");
        seen[x] = true;
    }
    assert_eq!(seen, [false, false, true, true, true]);
}

/// `Spread(f)` is uniform in `[d(1-f), d(1+f)]`: draws fall on both sides of `d`.
#[test]
fn spread_jitter_goes_below_and_above_the_delay() {
    let d = ms(800);
    let rng = SplitMix64::new(3);
    let draws: Vec<Duration> = (0..2_000)
        .map(|_| Jitter::Spread(0.5).apply(d, &rng))
        .collect();
    let min = *draws.iter().min().unwrap();
    let max = *draws.iter().max().unwrap();
    assert!(min >= ms(400) && max <= ms(1_200), "{min:?} .. {max:?}");
    // The band is covered, not one side of it.
    assert!(min < ms(440), "min {min:?}");
    assert!(max > ms(1_160), "max {max:?}");
}

/// A factor outside `[0, 1]` is clamped; NaN means no spread.
#[test]
fn spread_factor_is_clamped() {
    let d = ms(100);
    let rng = SplitMix64::new(5);
    assert_eq!(Jitter::Spread(0.0).apply(d, &rng), d);
    assert_eq!(Jitter::Spread(f64::NAN).apply(d, &rng), d);
    assert_eq!(Jitter::Spread(-3.0).apply(d, &rng), d);
    for _ in 0..500 {
        let x = Jitter::Spread(7.0).apply(d, &rng);
        assert!(x <= ms(200), "{x:?}");
    }
}

// ---------------------------------------------------------------- backoff::ExponentialBackoff

/// A positive randomization factor becomes `Jitter::Spread` with the same factor.
#[cfg(feature = "backoff")]
#[test]
fn backoff_crate_randomization_becomes_spread() {
    use flow_runtime::policy::Retry;

    let b = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(ms(100))
        .with_multiplier(2.0)
        .with_randomization_factor(0.25)
        .build();
    let r: Retry<()> = Retry::from(&b);
    assert_eq!(r.jitter(), Jitter::Spread(0.25));
    assert_eq!(r.backoff().delay(2), ms(200));
}
